//! wasnap's integration tests, one binary with a module per topic.

mod demos;
mod harness;
mod instrument;
