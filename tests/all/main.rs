//! wasnap's integration tests, one binary with a module per topic.

mod binaryen;
mod demos;
mod fuzz;
mod harness;
mod instrument;
mod smith;
