//! wasnap's integration tests, one binary with a module per topic.

mod artifacts;
mod asyncified;
mod binaryen;
mod cli;
mod demos;
mod errors;
mod forged;
mod forgery;
mod fuzz;
mod guests;
mod harness;
mod instrument;
mod interpreters;
mod limits;
mod output;
mod real_programs;
mod runaway;
mod smith;
mod store;
mod wasi;
mod writers;
