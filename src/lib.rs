//! wasnap: a WebAssembly snapshotting virtual machine.
//!
//! Workflows written in any language that compiles to WebAssembly run inside
//! wasmtime. When one blocks on a suspending host call, its Wasm stack is
//! unwound, and its memories, globals, tables and unwound stacks become a
//! [`Snapshot`] that can be stored, sent anywhere, and restored in another
//! process, where the workflow continues exactly where it stopped.
//!
//! ```
//! use wasnap::{Settings, Engine, Step, snapshot::file};
//!
//! # fn main() -> anyhow::Result<()> {
//! // A workflow that asks a question and reports the answer's length.
//! let wasm = wat::parse_str(r#"
//!     (module
//!       (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
//!       (memory (export "memory") 1)
//!       (data (i32.const 0) "ready?done")
//!       (func (export "run")
//!         (drop (call $yield (i32.const 0) (i32.const 6)))   ;; "ready?"
//!         (drop (call $yield (i32.const 6) (i32.const 4)))))  ;; "done"
//! "#)?;
//!
//! let engine = Engine::new()?;
//! let module = engine.load(&wasm)?;              // instrument + compile, cached
//! let mut workflow = engine.start(&module, Settings::default())?;
//! assert_eq!(workflow.run()?, Step::Yielded(b"ready?".to_vec()));
//!
//! // Suspended: its whole state as bytes, restorable any time, anywhere.
//! let bytes = file::encode(&workflow.snapshot()?, None)?;
//! drop(workflow);
//!
//! let (snapshot, _) = file::decode(&bytes)?;
//! let mut workflow = engine.restore(&module, &snapshot)?;
//! workflow.send(b"yes");                         // what the pending yield returns
//! assert_eq!(workflow.run()?, Step::Yielded(b"done".to_vec()));
//! assert_eq!(workflow.run()?, Step::Finished(0));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod executor;
pub mod instrument;
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
pub mod snapshot;
pub mod store;

pub use executor::Executor;
pub use runtime::{Engine, Module, Output, Policy, Settings, Step, Timer, Workflow};
pub use snapshot::Snapshot;
