//! wasnap's integration tests, one binary with a module per topic.

mod harness;
mod instrument;
