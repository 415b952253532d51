//! wasnap's integration tests, one binary with a module per topic.

mod asyncified;
mod binaryen;
mod browser;
mod cli;
mod demos;
mod errors;
mod fuzz;
mod guests;
mod harness;
mod instrument;
mod interpreters;
mod limits;
mod real_programs;
mod serve;
mod smith;
mod store;
