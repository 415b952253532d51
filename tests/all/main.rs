//! wasnap's integration tests, one binary with a module per topic.

mod demos;
mod errors;
mod guests;
mod harness;
mod instrument;
