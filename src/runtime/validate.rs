//! Checking a snapshot against the module it is restored into, before any
//! of it runs.
//!
//! A snapshot file is checksummed, but a checksum is no signature: anyone
//! can edit a file and seal it again, and a database can be edited too. So
//! every snapshot is checked for being a state the module could really
//! have suspended in, by [`check`], which [`super::Engine::restore_with`]
//! calls for every restore (from a file, from the store, or from an
//! embedder's bytes):
//!
//! - it belongs to this module and instrumenter version;
//! - its memories, globals and tables are as many as the module has, each
//!   memory's size within the module's limits, each global's value of the
//!   global's type;
//! - its coroutines form a tree that the guest ABI can build: main (id 0)
//!   first, every other coroutine created after its parent (so the tree
//!   has no cycle), each in a state it can be in at a suspension (main
//!   never finished; the running coroutine suspended; a coroutine that
//!   has children has run);
//! - every suspended coroutine's unwound stack is a chain the code can
//!   rewind: the frames' functions and call sites exist and their sizes
//!   are what those calls save; the outermost frame is the coroutine's
//!   entry function; each call leads to the next frame's function; the
//!   innermost call is the suspending import the coroutine waits in
//!   (`switch`, or for the running coroutine the import the workflow
//!   suspended in).
//!
//! What is left unchecked is what the guest itself could have written: the
//! contents of memories, the values of globals and of saved locals. A
//! snapshot that passes is one the module could have produced, and a
//! restore of it rewinds to exactly the calls it names.
//!
//! Frames written by a module that `wasm-opt --asyncify` instrumented are
//! Binaryen's and carry no function indices; for those only the sizes are
//! checked.

use std::collections::HashMap;

use anyhow::{Result, bail};
use wasmtime::{ExternType, Mutability, ValType};

use super::Module;
use super::unwinder::binaryen_loan;
use crate::instrument::{
    self, GLOBAL_EXPORT_PREFIX, LocalOrigin, MEMORY_EXPORT_PREFIX, Metadata, SavedFrame,
};
use crate::snapshot::file::check_memory;
use crate::snapshot::{Coroutine, CoroutineState, GlobalValue, Snapshot};

/// The import a coroutine that switched to another waits in.
const SWITCH_IMPORT: &str = "wasnap.switch";

/// Size of the `{pos, end}` header in front of unwound frames.
const UNWIND_HEADER: usize = 8;

/// Checks that `snapshot` is a state `module` can be restored to; see the
/// module documentation. The error names the first thing that is not.
pub(crate) fn check(snapshot: &Snapshot, module: &Module) -> Result<()> {
    check_identity(snapshot, module)?;
    let invalid = |e: anyhow::Error| anyhow::anyhow!("the snapshot is not valid: {e}");
    check_memories(snapshot, module).map_err(invalid)?;
    check_globals(snapshot, module).map_err(invalid)?;
    check_tables(snapshot, module.metadata()).map_err(invalid)?;
    check_coroutines(snapshot, module.metadata()).map_err(invalid)?;
    check_stacks(snapshot, module).map_err(invalid)
}

fn check_identity(snapshot: &Snapshot, module: &Module) -> Result<()> {
    if snapshot.module_hash != module.hash() {
        bail!(
            "the snapshot belongs to module {}, not to module {}",
            super::short_hash(&snapshot.module_hash),
            super::short_hash(&module.hash())
        );
    }
    if snapshot.instrumenter_version != instrument::INSTRUMENTER_VERSION {
        bail!(
            "the snapshot was made by instrumenter version {}, this wasnap has version {}",
            snapshot.instrumenter_version,
            instrument::INSTRUMENTER_VERSION
        );
    }
    Ok(())
}

/// The type of an export of the compiled module.
fn export_type(module: &Module, name: &str) -> Result<ExternType> {
    match module.inner.compiled.get_export(name) {
        Some(ty) => Ok(ty),
        None => bail!("the instrumented module lacks its export {name}"),
    }
}

fn check_memories(snapshot: &Snapshot, module: &Module) -> Result<()> {
    let metadata = module.metadata();
    if snapshot.memories.len() != metadata.memory_count as usize {
        bail!(
            "it has {} memories, the module {}",
            snapshot.memories.len(),
            metadata.memory_count
        );
    }
    for (index, image) in snapshot.memories.iter().enumerate() {
        check_memory(image).map_err(|e| anyhow::anyhow!("memory {index}: {e}"))?;
        let ExternType::Memory(ty) =
            export_type(module, &format!("{MEMORY_EXPORT_PREFIX}{index}"))?
        else {
            bail!("export {MEMORY_EXPORT_PREFIX}{index} is not a memory");
        };
        let largest = match (ty.maximum(), ty.is_64()) {
            (Some(maximum), _) => maximum,
            (None, false) => 1 << 16,
            (None, true) => 1 << 48,
        };
        if image.page_count < ty.minimum() || image.page_count > largest {
            bail!(
                "memory {index} has {} pages, the module allows {} to {largest}",
                image.page_count,
                ty.minimum()
            );
        }
    }
    Ok(())
}

fn check_globals(snapshot: &Snapshot, module: &Module) -> Result<()> {
    let count = module.metadata().global_count;
    if snapshot.globals.len() != count as usize {
        bail!(
            "it has {} globals, the module {count}",
            snapshot.globals.len()
        );
    }
    for (index, value) in snapshot.globals.iter().enumerate() {
        let ExternType::Global(ty) =
            export_type(module, &format!("{GLOBAL_EXPORT_PREFIX}{index}"))?
        else {
            bail!("export {GLOBAL_EXPORT_PREFIX}{index} is not a global");
        };
        let fits = matches!(
            (value, ty.content()),
            (GlobalValue::I32(_), ValType::I32)
                | (GlobalValue::I64(_), ValType::I64)
                | (GlobalValue::F32(_), ValType::F32)
                | (GlobalValue::F64(_), ValType::F64)
                | (GlobalValue::V128(_), ValType::V128)
        ) || matches!(
            (value, ty.content()),
            (GlobalValue::NullRef, ValType::Ref(r)) if r.is_nullable()
        );
        if !fits {
            bail!(
                "global {index} holds {value:?}, but it is a{} {}",
                if ty.mutability() == Mutability::Var {
                    " mutable"
                } else {
                    "n immutable"
                },
                ty.content()
            );
        }
    }
    Ok(())
}

/// Tables are not saved (the module never writes them at run time, or it
/// could not have been snapshotted): each is there, empty.
fn check_tables(snapshot: &Snapshot, metadata: &Metadata) -> Result<()> {
    if snapshot.tables.len() != metadata.table_count as usize {
        bail!(
            "it has {} tables, the module {}",
            snapshot.tables.len(),
            metadata.table_count
        );
    }
    if let Some(index) = snapshot.tables.iter().position(|t| !t.elements.is_empty()) {
        bail!("table {index} holds elements, which this wasnap never saves nor restores");
    }
    Ok(())
}

fn check_coroutines(snapshot: &Snapshot, metadata: &Metadata) -> Result<()> {
    let coroutines = &snapshot.coroutines;
    let host = &snapshot.host;
    let Some(main) = coroutines.first().filter(|c| c.id == 0) else {
        bail!("its first coroutine is not main (id 0)");
    };
    if main.parent != 0 {
        bail!("main's parent is {}, not 0", main.parent);
    }
    let by_id: HashMap<u32, &Coroutine> = coroutines.iter().map(|c| (c.id, c)).collect();
    if by_id.len() != coroutines.len() {
        bail!("two coroutines share an id");
    }
    for coroutine in &coroutines[1..] {
        check_coroutine(coroutine, &by_id, host.next_coroutine_id)?;
    }
    let Some(current) = by_id.get(&host.current) else {
        bail!("its running coroutine {} does not exist", host.current);
    };
    match main.state {
        // Snapshotted before its first run: nothing has happened yet.
        CoroutineState::Fresh => {
            if coroutines.len() != 1 || host.current != 0 || !host.suspended_in.is_empty() {
                bail!("main has not started, yet coroutines exist or the workflow is suspended");
            }
        }
        CoroutineState::Finished => {
            bail!("main has finished, and a finished workflow has no snapshot")
        }
        CoroutineState::Suspended => {
            if current.state != CoroutineState::Suspended {
                bail!(
                    "its running coroutine {} is {}, not suspended",
                    current.id,
                    state_name(current.state)
                );
            }
            if host.suspended_in.is_empty() {
                bail!("it names no import the workflow is suspended in");
            }
        }
    }
    check_stack_pointer(snapshot, metadata, current)?;
    for coroutine in coroutines {
        if metadata.stack_pointer_global.is_none()
            && coroutine.state == CoroutineState::Suspended
            && coroutine.stack_pointer != 0
        {
            bail!(
                "coroutine {} has a saved stack pointer, but the module has no stack pointer global",
                coroutine.id
            );
        }
        let saved = !coroutine.stack.is_empty();
        if saved != (coroutine.state == CoroutineState::Suspended) {
            bail!(
                "coroutine {} is {} with {} bytes of unwound stack",
                coroutine.id,
                state_name(coroutine.state),
                coroutine.stack.len()
            );
        }
    }
    Ok(())
}

/// The running coroutine's saved shadow-stack pointer is the global's
/// value: it is read from the global when the coroutine suspends, and put
/// back into it when the coroutine resumes.
fn check_stack_pointer(
    snapshot: &Snapshot,
    metadata: &Metadata,
    current: &Coroutine,
) -> Result<()> {
    if current.state != CoroutineState::Suspended {
        return Ok(());
    }
    let Some(global) = metadata.stack_pointer_global else {
        return Ok(());
    };
    let value = snapshot.globals.get(global as usize);
    if value != Some(&GlobalValue::I32(current.stack_pointer)) {
        bail!(
            "the running coroutine {}'s stack pointer {:#x} is not the value of the stack pointer global ({value:?})",
            current.id,
            current.stack_pointer
        );
    }
    Ok(())
}

/// A coroutine other than main: `spawn` handed out its id after its
/// parent's, while the parent ran.
fn check_coroutine(
    coroutine: &Coroutine,
    by_id: &HashMap<u32, &Coroutine>,
    next_id: u32,
) -> Result<()> {
    let id = coroutine.id;
    if id == 0 {
        bail!("two coroutines share the id 0 of main");
    }
    if id >= next_id {
        bail!("coroutine {id} has an id not handed out yet (the next is {next_id})");
    }
    let Some(parent) = by_id.get(&coroutine.parent) else {
        bail!(
            "coroutine {id}'s parent {} does not exist",
            coroutine.parent
        );
    };
    if parent.id >= id {
        bail!("coroutine {id}'s parent {} was created after it", parent.id);
    }
    if parent.state == CoroutineState::Fresh {
        bail!(
            "coroutine {id}'s parent {} has not started, so it cannot have created it",
            parent.id
        );
    }
    Ok(())
}

fn state_name(state: CoroutineState) -> &'static str {
    match state {
        CoroutineState::Fresh => "not started",
        CoroutineState::Suspended => "suspended",
        CoroutineState::Finished => "finished",
    }
}

fn check_stacks(snapshot: &Snapshot, module: &Module) -> Result<()> {
    let metadata = module.metadata();
    for coroutine in &snapshot.coroutines {
        if coroutine.state != CoroutineState::Suspended {
            continue;
        }
        let waits_in = if coroutine.id == snapshot.host.current {
            snapshot.host.suspended_in.as_str()
        } else {
            SWITCH_IMPORT
        };
        let checked = if metadata.binaryen {
            check_binaryen_stack(&coroutine.stack, module.inner.max_wasm_stack)
        } else {
            check_frames(coroutine, waits_in, module)
        };
        checked.map_err(|e| anyhow::anyhow!("coroutine {}: {e}", coroutine.id))?;
    }
    Ok(())
}

fn check_binaryen_stack(stack: &[u8], max_wasm_stack: usize) -> Result<()> {
    let capacity = binaryen_loan(max_wasm_stack) - UNWIND_HEADER;
    if stack.len() > capacity {
        bail!(
            "its unwound stack of {} bytes does not fit the {capacity} bytes of memory 0 lent to Binaryen's frames (an eighth of --max-wasm-stack, 1 MiB at least)",
            stack.len()
        );
    }
    Ok(())
}

/// The frames of a suspended coroutine form the chain of calls from its
/// entry function to the import it waits in.
fn check_frames(coroutine: &Coroutine, waits_in: &str, module: &Module) -> Result<()> {
    let metadata = module.metadata();
    if coroutine.stack.len() > u32::MAX as usize - UNWIND_HEADER {
        bail!("its unwound stack does not fit a memory");
    }
    let frames = metadata.saved_frames(&coroutine.stack)?;
    if let (Some(outermost), Some(entry)) = (frames.first(), entry_function(coroutine, module)?)
        && outermost.function != entry
    {
        bail!(
            "its outermost frame is of {}, but its entry is {}",
            describe(metadata, outermost.function),
            describe(metadata, entry)
        );
    }
    for (index, frame) in frames.iter().enumerate() {
        check_call(metadata, frame, frames.get(index + 1), waits_in)?;
    }
    Ok(())
}

/// The function a coroutine's outermost frame must belong to, when it is
/// known: main's is the module's entry, another coroutine's is in table 0.
fn entry_function(coroutine: &Coroutine, module: &Module) -> Result<Option<u32>> {
    let metadata = module.metadata();
    if coroutine.id == 0 {
        return Ok(metadata.exported_functions.get(module.entry()).copied());
    }
    let Some(slots) = &metadata.table0_functions else {
        return Ok(None);
    };
    match slots.get(&coroutine.entry_function) {
        Some(&function) => Ok(Some(function)),
        None => bail!(
            "it is suspended, but its entry, slot {} of table 0, holds no function",
            coroutine.entry_function
        ),
    }
}

/// A frame's call leads to the next frame's function, or, for the
/// innermost frame, to the import the coroutine waits in.
fn check_call(
    metadata: &Metadata,
    frame: &SavedFrame,
    inner: Option<&SavedFrame>,
    waits_in: &str,
) -> Result<()> {
    let (function, call) = (frame.function, frame.call_index);
    let Some(callee) = frame.site.callee.or(indirect_callee(metadata, frame)?) else {
        // An indirect call through a table whose contents are not known.
        return Ok(());
    };
    let import = metadata.imported_functions.get(callee as usize);
    match (import, inner) {
        (Some(import), None) if import == waits_in => Ok(()),
        (Some(import), None) => bail!(
            "its innermost call (call {call} of {}) is to {import}, but it waits in {waits_in}",
            describe(metadata, function)
        ),
        (Some(import), Some(_)) => bail!(
            "call {call} of {} is to the import {import}, yet more frames follow it",
            describe(metadata, function)
        ),
        (None, None) => bail!(
            "its innermost call (call {call} of {}) is to {}, whose frame is missing",
            describe(metadata, function),
            describe(metadata, callee)
        ),
        (None, Some(inner)) if inner.function != callee => bail!(
            "call {call} of {} is to {}, but the next frame is of {}",
            describe(metadata, function),
            describe(metadata, callee),
            describe(metadata, inner.function)
        ),
        (None, Some(_)) => Ok(()),
    }
}

/// The function a `call_indirect` through table 0 calls, from the element
/// index it saved (the operand on top of the stack at the call) and what
/// table 0 holds, when that is known. The module never writes its tables
/// (or it could not have been snapshotted), so table 0 holds what
/// instantiation put there.
fn indirect_callee(metadata: &Metadata, frame: &SavedFrame) -> Result<Option<u32>> {
    let (Some(0), Some(slots)) = (frame.site.table, &metadata.table0_functions) else {
        return Ok(None);
    };
    let index_operand = frame
        .site
        .saved
        .iter()
        .filter_map(|value| match value.origin {
            LocalOrigin::Operand(height) => Some((height, value)),
            LocalOrigin::Local(_) => None,
        })
        .max_by_key(|(height, _)| *height)
        .map(|(_, value)| value);
    let Some(operand) = index_operand else {
        return Ok(None);
    };
    let at = operand.offset as usize;
    let slot = match (operand.ty, frame.bytes.get(at..at + 4)) {
        (wasmparser::ValType::I32, Some(bytes)) => {
            u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
        }
        _ => return Ok(None),
    };
    match slots.get(&slot) {
        Some(&function) => Ok(Some(function)),
        None => bail!(
            "call {} of {} is through slot {slot} of table 0, which holds no function",
            frame.call_index,
            describe(metadata, frame.function)
        ),
    }
}

/// Function `function` for an error message, with its name from the name
/// section escaped so that the message stays on one line.
fn describe(metadata: &Metadata, function: u32) -> String {
    match metadata.function_names.get(&function) {
        Some(name) => format!("function {function} ({})", name.escape_debug()),
        None => format!("function {function}"),
    }
}
