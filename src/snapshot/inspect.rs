//! Reading a snapshot as a person would: every coroutine's suspended call
//! stack, innermost frame first, with the values each frame saved, and how
//! much of each memory is in use. `wasnap inspect` prints it; the service
//! serves it as JSON.

use anyhow::Result;
use wasmparser::ValType;

use super::{Coroutine, CoroutineState, PAGE_SIZE, Snapshot};
use crate::instrument::{LocalOrigin, Metadata};

/// A suspended workflow, described.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    /// The suspending import the workflow waits in, as `module.name`.
    pub suspended_in: String,
    /// The value it published when it suspended.
    pub yielded: Vec<u8>,
    /// Every coroutine, main (id 0) first.
    pub coroutines: Vec<CoroutineView>,
    /// Every memory's use.
    pub memories: Vec<MemoryUse>,
}

/// One coroutine and its suspended call stack.
#[derive(Clone, Debug, PartialEq)]
pub struct CoroutineView {
    /// Its id; 0 is main.
    pub id: u32,
    /// The coroutine that created it.
    pub parent: u32,
    /// Where it is in its life.
    pub state: CoroutineState,
    /// Whether it is the one that suspended the workflow.
    pub running: bool,
    /// Its shadow-stack pointer while switched out.
    pub stack_pointer: u32,
    /// Bytes of its unwound Wasm stack.
    pub stack_bytes: usize,
    /// Its frames, innermost (the suspending call) first.
    pub frames: Vec<FrameView>,
}

/// One suspended function activation.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameView {
    /// The function's index in the module.
    pub function: u32,
    /// Its name from the name section, if the module has one.
    pub name: Option<String>,
    /// Where in the code section the suspended call is.
    pub code_offset: usize,
    /// The values saved across that call, as `(name, value)`: `localN` for
    /// locals, `stackN` for operands held on the Wasm stack.
    pub values: Vec<(String, String)>,
}

/// How much of one memory holds data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    /// Pages holding at least one non-zero byte.
    pub pages_in_use: usize,
    /// The memory's size in pages.
    pub page_count: u64,
}

impl MemoryUse {
    /// The memory's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.page_count.saturating_mul(PAGE_SIZE as u64)
    }
}

impl FrameView {
    /// The function's name, or `function N` when the module names none.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("function {}", self.function))
    }
}

/// Describes `snapshot`, whose frames are read with the instrumentation
/// `metadata` of its module. Fails when a stack does not fit the metadata.
pub fn inspect(snapshot: &Snapshot, metadata: &Metadata) -> Result<Inspection> {
    let coroutines = snapshot
        .coroutines
        .iter()
        .map(|c| describe_coroutine(c, snapshot.host.current, metadata))
        .collect::<Result<_>>()?;
    let memories = snapshot
        .memories
        .iter()
        .map(|m| MemoryUse {
            pages_in_use: m.pages.len(),
            page_count: m.page_count,
        })
        .collect();
    Ok(Inspection {
        suspended_in: snapshot.host.suspended_in.clone(),
        yielded: snapshot.host.yielded.clone(),
        coroutines,
        memories,
    })
}

fn describe_coroutine(
    coroutine: &Coroutine,
    current: u32,
    metadata: &Metadata,
) -> Result<CoroutineView> {
    // Innermost (the suspending call) first, as a backtrace reads.
    let frames = metadata
        .saved_frames(&coroutine.stack)?
        .into_iter()
        .rev()
        .map(|frame| FrameView {
            function: frame.function,
            name: metadata.function_names.get(&frame.function).cloned(),
            code_offset: frame.site.code_offset,
            values: frame
                .site
                .saved
                .iter()
                .map(|local| {
                    let name = match local.origin {
                        LocalOrigin::Local(i) => format!("local{i}"),
                        LocalOrigin::Operand(h) => format!("stack{h}"),
                    };
                    let bytes = &frame.bytes[local.offset as usize..];
                    (name, render(local.ty, bytes))
                })
                .collect(),
        })
        .collect();
    Ok(CoroutineView {
        id: coroutine.id,
        parent: coroutine.parent,
        state: coroutine.state,
        running: coroutine.id == current,
        stack_pointer: coroutine.stack_pointer,
        stack_bytes: coroutine.stack.len(),
        frames,
    })
}

/// A saved value in the notation of its type.
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
