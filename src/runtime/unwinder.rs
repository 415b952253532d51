//! The two ways a module can unwind and rewind: wasnap's own
//! instrumentation, and a module that `wasm-opt --asyncify` already
//! instrumented, used as it is.
//!
//! Both follow the Asyncify protocol (state 0 normal, 1 unwinding, 2
//! rewinding; a `{pos, end}` header followed by frames). They differ in
//! where the state lives and where the frames go:
//!
//! - wasnap's output exports its state and data globals, and keeps frames in
//!   a stack memory of its own, which grows on demand;
//! - Binaryen's output keeps its state private, behind the exported
//!   `asyncify_*` functions, and writes its frames into memory 0, which
//!   belongs to the guest.
//!
//! # Lending memory 0 to Binaryen's frames
//!
//! No part of memory 0 is provably free: a guest's allocator may own all of
//! it, including pages grown before it first ran (wasi-libc's dlmalloc
//! takes everything from `__heap_base` to the memory's size at its first
//! `malloc`). So the engine never keeps a buffer there. It *lends* the top
//! [`binaryen_loan`] bytes of memory 0 for the time of one unwind or one
//! rewind, and puts back what the guest had there before any guest code
//! runs again:
//!
//! - an unwind runs no guest code but the frame stores, and the frames are
//!   copied out before the guest's bytes are put back;
//! - a rewind runs no guest code but the frame loads until it reaches the
//!   suspending import, which ends the rewind and gets the bytes back
//!   before it returns to the guest.
//!
//! The loan ends at the top of the memory, so frames that do not fit run
//! into its end and trap instead of overwriting the guest's data;
//! [`Unwinder::explain_trap`] turns that trap into an error saying so.

use anyhow::{Context as _, Result, bail};
use wasmtime::{AsContext, AsContextMut, Func, Global, Instance, Memory, Val};

use super::abi::HostState;
use crate::instrument::{
    DATA_GLOBAL_EXPORT, MEMORY_EXPORT_PREFIX, STACK_MEMORY_EXPORT, STATE_GLOBAL_EXPORT,
    STATE_NORMAL, STATE_REWINDING, STATE_UNWINDING,
};

/// The most of memory 0 lent to a Binaryen module's frames at a time, by
/// the engine's Wasm stack limit: its unwound stack must fit in this (less
/// the header). An eighth of the limit, and 1 MiB at least (the default
/// 8 MiB lends that). Binaryen's frames are not bounded by the native
/// stack, but they follow it: recursions instrumented by Binaryen (Lua, a
/// WAT fixture) stored a third to an eighth of the native stack they
/// unwound, so a stack too deep for the default limit needs a larger
/// `--max-wasm-stack` anyway, and that also lends its frames more room
/// (the error says how much was lent). The loan is copied out and back at
/// every suspension, so it does not simply take all of memory 0.
pub fn binaryen_loan(max_wasm_stack: usize) -> usize {
    (max_wasm_stack / 8).max(1 << 20)
}

const PAGE: usize = 65536;
/// Size of the `{pos, end}` header.
const HEADER: usize = 8;

/// How to drive the unwinding of one instance.
#[derive(Clone, Copy)]
pub(crate) enum Unwinder {
    /// wasnap's own instrumentation.
    Own {
        state: Global,
        data: Global,
        stack: Memory,
    },
    /// A module instrumented by Binaryen.
    Binaryen {
        /// How much of memory 0 an unwind may borrow: [`binaryen_loan`].
        loan: usize,
        get_state: Func,
        start_unwind: Func,
        stop_unwind: Func,
        start_rewind: Func,
        stop_rewind: Func,
        memory: Memory,
    },
}

/// Bytes of memory 0 lent to a Binaryen module's frames, and what the
/// guest had there.
pub(crate) struct Loan {
    /// Where the lent bytes start: the `{pos, end}` header, then frames.
    address: usize,
    /// The guest's bytes, to be put back.
    saved: Vec<u8>,
}

impl Unwinder {
    /// Finds the unwinding machinery of an instance, run by an engine whose
    /// Wasm stack limit is `max_wasm_stack`.
    pub fn of(
        store: &mut impl AsContextMut,
        instance: &Instance,
        binaryen: bool,
        max_wasm_stack: usize,
    ) -> Result<Unwinder> {
        if !binaryen {
            return Ok(Unwinder::Own {
                state: instance
                    .get_global(&mut *store, STATE_GLOBAL_EXPORT)
                    .context("the instrumented module lacks its state global")?,
                data: instance
                    .get_global(&mut *store, DATA_GLOBAL_EXPORT)
                    .context("the instrumented module lacks its data global")?,
                stack: instance
                    .get_memory(&mut *store, STACK_MEMORY_EXPORT)
                    .context("the instrumented module lacks its stack memory")?,
            });
        }
        let mut func = |name: &str| {
            instance
                .get_func(&mut *store, name)
                .with_context(|| format!("the module exports asyncify functions but not {name}"))
        };
        Ok(Unwinder::Binaryen {
            loan: binaryen_loan(max_wasm_stack),
            get_state: func("asyncify_get_state")?,
            start_unwind: func("asyncify_start_unwind")?,
            stop_unwind: func("asyncify_stop_unwind")?,
            start_rewind: func("asyncify_start_rewind")?,
            stop_rewind: func("asyncify_stop_rewind")?,
            memory: instance
                .get_memory(&mut *store, &format!("{MEMORY_EXPORT_PREFIX}0"))
                .context("a module instrumented by Binaryen needs memory 0 for its frames")?,
        })
    }

    /// The current state: normal, unwinding or rewinding.
    pub fn state(&self, mut store: impl AsContextMut) -> Result<i32> {
        match *self {
            Unwinder::Own { state, .. } => Ok(state.get(&mut store).unwrap_i32()),
            Unwinder::Binaryen { get_state, .. } => {
                let mut result = [Val::I32(0)];
                get_state.call(&mut store, &[], &mut result)?;
                Ok(result[0].unwrap_i32())
            }
        }
    }

    /// Starts an unwind, from inside a suspending import.
    pub fn start_unwind(&self, mut store: impl AsContextMut<Data = HostState>) -> Result<()> {
        match *self {
            Unwinder::Own { state, data, stack } => {
                let end = stack_end(&mut store, stack, 0)?;
                write_header(stack.data_mut(&mut store), 0, HEADER, end);
                data.set(&mut store, Val::I32(0))?;
                state.set(&mut store, Val::I32(STATE_UNWINDING))?;
            }
            Unwinder::Binaryen {
                loan,
                start_unwind,
                memory,
                ..
            } => {
                let loan = lend(&store, memory, loan, HEADER + 4)?;
                let top = loan.address + loan.saved.len();
                write_header(memory.data_mut(&mut store), loan.address, HEADER, top);
                let address = loan.address as i32;
                store.as_context_mut().data_mut().loan = Some(loan);
                start_unwind.call(&mut store, &[Val::I32(address)], &mut [])?;
            }
        }
        Ok(())
    }

    /// Ends an unwind, once the entry function has returned.
    pub fn stop_unwind(&self, mut store: impl AsContextMut) -> Result<()> {
        match *self {
            Unwinder::Own { state, .. } => state.set(&mut store, Val::I32(STATE_NORMAL))?,
            Unwinder::Binaryen { stop_unwind, .. } => stop_unwind.call(&mut store, &[], &mut [])?,
        }
        Ok(())
    }

    /// Ends a rewind, from inside the suspending import it reached; memory
    /// 0 is the guest's again.
    pub fn stop_rewind(&self, mut store: impl AsContextMut<Data = HostState>) -> Result<()> {
        match *self {
            Unwinder::Own { state, .. } => state.set(&mut store, Val::I32(STATE_NORMAL))?,
            Unwinder::Binaryen {
                stop_rewind,
                memory,
                ..
            } => {
                stop_rewind.call(&mut store, &[], &mut [])?;
                let loan = take_loan(&mut store)?;
                let end = loan.address + loan.saved.len();
                memory.data_mut(&mut store)[loan.address..end].copy_from_slice(&loan.saved);
            }
        }
        Ok(())
    }

    /// Puts a coroutine's frames back and starts rewinding them.
    pub fn start_rewind(
        &self,
        mut store: impl AsContextMut<Data = HostState>,
        frames: &[u8],
    ) -> Result<()> {
        match *self {
            Unwinder::Own { state, data, stack } => {
                let end = stack_end(&mut store, stack, frames.len())?;
                let memory = stack.data_mut(&mut store);
                write_header(memory, 0, HEADER + frames.len(), end);
                memory[HEADER..HEADER + frames.len()].copy_from_slice(frames);
                data.set(&mut store, Val::I32(0))?;
                state.set(&mut store, Val::I32(STATE_REWINDING))?;
            }
            Unwinder::Binaryen {
                start_rewind,
                memory,
                ..
            } => {
                let needed = HEADER + frames.len();
                let loan = lend(&store, memory, needed, needed)?;
                let (address, top) = (loan.address, loan.address + loan.saved.len());
                let data = memory.data_mut(&mut store);
                write_header(data, address, HEADER + frames.len(), top);
                // The loan may be a few bytes larger: it starts aligned.
                data[address + HEADER..address + needed].copy_from_slice(frames);
                store.as_context_mut().data_mut().loan = Some(loan);
                start_rewind.call(&mut store, &[Val::I32(address as i32)], &mut [])?;
            }
        }
        Ok(())
    }

    /// Takes the frames of a finished unwind out. wasnap's stack memory is
    /// left empty; memory 0 is the guest's again.
    pub fn take_frames(&self, mut store: impl AsContextMut<Data = HostState>) -> Result<Vec<u8>> {
        match *self {
            Unwinder::Own { stack, .. } => {
                let data = stack.data(&store);
                Ok(data[HEADER..frames_end(data, 0, data.len())?].to_vec())
            }
            Unwinder::Binaryen { memory, .. } => {
                let loan = take_loan(&mut store)?;
                let top = loan.address + loan.saved.len();
                let data = memory.data_mut(&mut store);
                let end = frames_end(data, loan.address, top)?;
                let frames = data[loan.address + HEADER..end].to_vec();
                // The unwind wrote nothing above `end`.
                data[loan.address..end].copy_from_slice(&loan.saved[..end - loan.address]);
                Ok(frames)
            }
        }
    }

    /// Why a trap during an unwind happened, when the unwinding machinery
    /// knows: frames of a Binaryen module that ran past the end of memory 0.
    pub fn explain_trap(
        &self,
        mut store: impl AsContextMut<Data = HostState>,
        error: &wasmtime::Error,
    ) -> Option<String> {
        let Unwinder::Binaryen { memory, .. } = *self else {
            return None;
        };
        let lent = store.as_context().data().loan.as_ref()?.saved.len();
        let memory_size = memory.data_size(&store);
        let ran_out = error.downcast_ref::<wasmtime::Trap>()
            == Some(&wasmtime::Trap::MemoryOutOfBounds)
            && self.state(&mut store).ok() == Some(STATE_UNWINDING);
        ran_out.then(|| {
            format!(
                "its stack, unwound by Binaryen's instrumentation, needs more than the {lent} bytes wasnap lends it at the top of memory 0 (of {memory_size} bytes; an eighth of --max-wasm-stack is lent, 1 MiB at least); load the original module instead and wasnap instruments it itself (or use `wasnap instrument`), with a stack memory that grows as needed"
            )
        })
    }
}

/// Lends the top `wanted` bytes of memory 0, or as many as it has but no
/// fewer than `needed`, keeping what the guest had there.
fn lend(store: &impl AsContext, memory: Memory, wanted: usize, needed: usize) -> Result<Loan> {
    let data = memory.data(store);
    // `end` is a u32 in the header: a 4 GiB memory lends from just below it.
    let top = data.len().min(u32::MAX as usize & !(HEADER - 1));
    let address = top.saturating_sub(wanted) & !(HEADER - 1);
    if top - address < needed {
        bail!(
            "memory 0 ({} bytes) is too small for the unwound stack ({needed} bytes)",
            data.len()
        );
    }
    Ok(Loan {
        address,
        saved: data[address..top].to_vec(),
    })
}

fn take_loan(mut store: impl AsContextMut<Data = HostState>) -> Result<Loan> {
    store
        .as_context_mut()
        .data_mut()
        .loan
        .take()
        .context("memory 0 was not lent to an unwind or a rewind")
}

/// Writes the `{pos, end}` header at `header`: `used` bytes (the header
/// included) are taken, the frames may grow up to `end`.
fn write_header(memory: &mut [u8], header: usize, used: usize, end: usize) {
    let pos = (header + used) as u32;
    memory[header..header + 4].copy_from_slice(&pos.to_le_bytes());
    memory[header + 4..header + 8].copy_from_slice(&(end as u32).to_le_bytes());
}

/// Where the frames after the header at `header` end, by the header's
/// `pos`, checked to lie within the header's region.
fn frames_end(memory: &[u8], header: usize, top: usize) -> Result<usize> {
    let pos = u32::from_le_bytes(memory[header..header + 4].try_into().unwrap()) as usize;
    if pos < header + HEADER || pos > top {
        bail!("the unwound stack's header is corrupt (pos {pos})");
    }
    Ok(pos)
}

/// Grows wasnap's stack memory to hold `used` bytes of frames after the
/// header, and returns its size.
fn stack_end(mut store: impl AsContextMut, stack: Memory, used: usize) -> Result<usize> {
    let needed = HEADER + used;
    let size = stack.data_size(&store);
    if needed > size {
        let pages = (needed - size).div_ceil(PAGE) as u64;
        stack
            .grow(&mut store, pages)
            .map_err(anyhow::Error::from)
            .context("growing the stack memory")?;
    }
    Ok(stack.data_size(&store).min(u32::MAX as usize))
}
