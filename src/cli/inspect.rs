//! `wasnap inspect INSTANCE[@VERSION] [--full]`

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::Args;
use wasmparser::ValType;

use super::Target;
use super::show::shown;
use crate::instrument::{LocalOrigin, Metadata, Options, instrument};
use crate::snapshot::{Coroutine, CoroutineState, PAGE_SIZE, Snapshot, file};

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
        let wasm = store.module(&snapshot.module_hash)?;
        let metadata = instrument(&wasm, &Options::default())?.metadata;
        let host = &snapshot.host;
        let value = shown(&host.yielded, host.yielded.len() as u64, self.full);
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "instance {instance} version {version}: suspended in {} with value {}",
            host.suspended_in,
            value.quoted()
        )?;
        for coroutine in &snapshot.coroutines {
            print_coroutine(&mut out, coroutine, host.current, &metadata)?;
        }
        print_memory(&mut out, &snapshot)?;
        let compressed = file::encode(&snapshot, None)?.len();
        writeln!(
            out,
            "snapshot: {compressed} bytes compressed (module not included)"
        )?;
        Ok(())
    }
}

fn print_coroutine(
    out: &mut impl Write,
    coroutine: &Coroutine,
    current: u32,
    metadata: &Metadata,
) -> Result<()> {
    let state = match coroutine.state {
        CoroutineState::Fresh => "not started",
        CoroutineState::Suspended => "suspended",
        CoroutineState::Finished => "finished",
    };
    let running = if coroutine.id == current {
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
        coroutine.parent,
        coroutine.stack_pointer,
        coroutine.stack.len()
    )?;
    let mut frames = metadata.saved_frames(&coroutine.stack)?;
    // Innermost first, as a backtrace reads.
    frames.reverse();
    for (depth, frame) in frames.iter().enumerate() {
        let function = metadata
            .function_names
            .get(&frame.function)
            .cloned()
            .unwrap_or_else(|| format!("function {}", frame.function));
        writeln!(
            out,
            "  #{depth} {function} at code offset {:#x}",
            frame.site.code_offset
        )?;
        let values: Vec<String> = frame
            .site
            .saved
            .iter()
            .map(|local| {
                let bytes = &frame.bytes[local.offset as usize..];
                let name = match local.origin {
                    LocalOrigin::Local(i) => format!("local{i}"),
                    LocalOrigin::Operand(h) => format!("stack{h}"),
                };
                format!("{name}={}", render(local.ty, bytes))
            })
            .collect();
        if !values.is_empty() {
            writeln!(out, "       {}", values.join(" "))?;
        }
    }
    Ok(())
}

fn render(ty: ValType, bytes: &[u8]) -> String {
    let take = |n: usize| -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..n].copy_from_slice(&bytes[..n]);
        out
    };
    match ty {
        ValType::I32 => (u32::from_le_bytes(take(4)[..4].try_into().unwrap()) as i32).to_string(),
        ValType::I64 => (u64::from_le_bytes(take(8)[..8].try_into().unwrap()) as i64).to_string(),
        ValType::F32 => f32::from_le_bytes(take(4)[..4].try_into().unwrap()).to_string(),
        ValType::F64 => f64::from_le_bytes(take(8)[..8].try_into().unwrap()).to_string(),
        ValType::V128 => format!("{:#034x}", u128::from_le_bytes(take(16))),
        ValType::Ref(_) => "ref".to_string(),
    }
}

fn print_memory(out: &mut impl Write, snapshot: &Snapshot) -> Result<()> {
    for (index, memory) in snapshot.memories.iter().enumerate() {
        let total = memory.page_count * PAGE_SIZE as u64;
        writeln!(
            out,
            "memory {index}: {} of {} pages in use ({} of {} bytes are on non-zero pages)",
            memory.pages.len(),
            memory.page_count,
            memory.pages.len() * PAGE_SIZE,
            total
        )?;
    }
    Ok(())
}
