//! `wasnap inspect INSTANCE[@VERSION]`

use std::path::Path;

use anyhow::Result;
use clap::Args;
use wasnap::instrument::{Options, instrument};
use wasnap::snapshot::CoroutineState;
use wasnap::snapshot::file;
use wasnap::snapshot::inspect::{CoroutineView, inspect};

use super::Target;

/// Show a suspended version: every coroutine's call stack with its saved
/// locals, memory use, and the snapshot's size.
#[derive(Args, Debug)]
pub struct Inspect {
    /// `INSTANCE` (its head version) or `INSTANCE@VERSION`.
    target: Target,
}

impl Inspect {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let store = super::open_existing(db)?;
        let instance = self.target.instance;
        let version = self.target.version_in(&store)?;
        let snapshot = store.load_version(instance, version)?;
        // The metadata alone: a read needs no compiled module.
        let wasm = store.module(&snapshot.module_hash)?;
        let metadata = instrument(&wasm, &Options::default())?.metadata;
        let inspection = inspect(&snapshot, &metadata)?;
        println!(
            "instance {instance} version {version}: suspended in {} with value {:?}",
            inspection.suspended_in,
            String::from_utf8_lossy(&inspection.yielded)
        );
        for coroutine in &inspection.coroutines {
            print_coroutine(coroutine);
        }
        for (index, memory) in inspection.memories.iter().enumerate() {
            println!(
                "memory {index}: {} of {} pages in use ({} of {} bytes are on non-zero pages)",
                memory.pages_in_use,
                memory.page_count,
                memory.pages_in_use * wasnap::snapshot::PAGE_SIZE,
                memory.bytes()
            );
        }
        let compressed = file::encode(&snapshot, None)?.len();
        println!("snapshot: {compressed} bytes compressed (module not included)");
        Ok(())
    }
}

fn print_coroutine(coroutine: &CoroutineView) {
    let state = match coroutine.state {
        CoroutineState::Fresh => "not started",
        CoroutineState::Suspended => "suspended",
        CoroutineState::Finished => "finished",
    };
    let running = if coroutine.running {
        ", the one that suspended the workflow"
    } else {
        ""
    };
    let name = if coroutine.id == 0 {
        "main".to_string()
    } else {
        format!("coroutine {}", coroutine.id)
    };
    println!(
        "{name} (parent {}, {state}{running}, stack pointer {:#x}, {} stack bytes)",
        coroutine.parent, coroutine.stack_pointer, coroutine.stack_bytes
    );
    for (depth, frame) in coroutine.frames.iter().enumerate() {
        println!(
            "  #{depth} {} at code offset {:#x}",
            frame.display_name(),
            frame.code_offset
        );
        let values: Vec<String> = frame
            .values
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if !values.is_empty() {
            println!("       {}", values.join(" "));
        }
    }
}
