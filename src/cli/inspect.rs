//! `wasnap inspect INSTANCE[@VERSION] [--full]`

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::Args;
use wasnap::instrument::{Options, instrument};
use wasnap::snapshot::CoroutineState;
use wasnap::snapshot::file;
use wasnap::snapshot::inspect::{CoroutineView, inspect};

use super::Target;
use super::show::shown;

/// Show a suspended version: every coroutine's call stack with its saved
/// locals, memory use, and the snapshot's size.
#[derive(Args, Debug)]
pub struct Inspect {
    /// `INSTANCE` (its head version) or `INSTANCE@VERSION`.
    target: Target,
    /// Show the yielded value whole (otherwise its first 64 bytes).
    #[arg(long)]
    full: bool,
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
        let value = &inspection.yielded;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "instance {instance} version {version}: suspended in {} with value {}",
            inspection.suspended_in,
            shown(value, value.len() as u64, self.full).quoted()
        )?;
        for coroutine in &inspection.coroutines {
            print_coroutine(&mut out, coroutine)?;
        }
        for (index, memory) in inspection.memories.iter().enumerate() {
            writeln!(
                out,
                "memory {index}: {} of {} pages in use ({} of {} bytes are on non-zero pages)",
                memory.pages_in_use,
                memory.page_count,
                memory.pages_in_use * wasnap::snapshot::PAGE_SIZE,
                memory.bytes()
            )?;
        }
        let compressed = file::encode(&snapshot, None)?.len();
        writeln!(
            out,
            "snapshot: {compressed} bytes compressed (module not included)"
        )?;
        Ok(())
    }
}

fn print_coroutine(out: &mut impl Write, coroutine: &CoroutineView) -> Result<()> {
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
    writeln!(
        out,
        "{name} (parent {}, {state}{running}, stack pointer {:#x}, {} stack bytes)",
        coroutine.parent, coroutine.stack_pointer, coroutine.stack_bytes
    )?;
    for (depth, frame) in coroutine.frames.iter().enumerate() {
        writeln!(
            out,
            "  #{depth} {} at code offset {:#x}",
            frame.display_name(),
            frame.code_offset
        )?;
        let values: Vec<String> = frame
            .values
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if !values.is_empty() {
            writeln!(out, "       {}", values.join(" "))?;
        }
    }
    Ok(())
}
