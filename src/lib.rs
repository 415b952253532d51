//! wasnap: a WebAssembly snapshotting virtual machine.
//!
//! Workflows written in any language that compiles to WebAssembly run inside
//! wasmtime. When one blocks on a suspending host call, its Wasm stack is
//! unwound, and its memories, globals, tables and unwound stacks become a
//! [`snapshot::Snapshot`] that can be stored and restored in another process.
#![deny(missing_docs)]

pub mod instrument;
pub mod snapshot;
pub mod store;
