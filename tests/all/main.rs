//! wasnap's integration tests, one binary with a module per topic.

mod asyncified;
mod cli;
mod demos;
mod errors;
mod guests;
mod harness;
mod instrument;
mod store;
