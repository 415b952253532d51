//! wasnap's integration tests, one binary with a module per topic.

mod asyncified;
mod binaryen;
mod cli;
mod demos;
mod diff;
mod errors;
mod fuzz;
mod guests;
mod handlers;
mod harness;
mod instrument;
mod interpreters;
mod limits;
mod real_programs;
mod smith;
mod store;
mod upgrade;
