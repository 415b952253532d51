//! The portable snapshot file format.
