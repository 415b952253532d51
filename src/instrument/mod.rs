//! The instrumenter.
