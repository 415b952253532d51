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
//!   `asyncify_*` functions, and needs a buffer in memory 0. The engine
//!   places that buffer itself, [`BINARYEN_BUFFER_PAGES`] pages grown at the
//!   end of memory 0's initial size when the workflow starts, so that it is
//!   at the same address in every process; it is zeroed after each unwind
//!   so that it costs nothing in a snapshot.

use anyhow::{Context as _, Result, bail};
use wasmtime::{AsContext, AsContextMut, Func, Global, Instance, Memory, Val};

use crate::instrument::{
    DATA_GLOBAL_EXPORT, STACK_MEMORY_EXPORT, STATE_GLOBAL_EXPORT, STATE_NORMAL, STATE_REWINDING,
    STATE_UNWINDING,
};

/// Wasm pages the engine reserves in memory 0 for a Binaryen module's frames.
pub const BINARYEN_BUFFER_PAGES: u64 = 16;

const PAGE: u64 = 65536;
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
        get_state: Func,
        start_unwind: Func,
        stop_unwind: Func,
        start_rewind: Func,
        stop_rewind: Func,
        memory: Memory,
        /// Address of the buffer (its header) in memory 0.
        buffer: u32,
    },
}

impl Unwinder {
    /// Finds the unwinding machinery of an instance.
    pub fn of(
        store: &mut impl AsContextMut,
        instance: &Instance,
        binaryen: bool,
        initial_pages: u64,
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
            get_state: func("asyncify_get_state")?,
            start_unwind: func("asyncify_start_unwind")?,
            stop_unwind: func("asyncify_stop_unwind")?,
            start_rewind: func("asyncify_start_rewind")?,
            stop_rewind: func("asyncify_stop_rewind")?,
            memory: instance
                .get_memory(
                    &mut *store,
                    &format!("{}0", crate::instrument::MEMORY_EXPORT_PREFIX),
                )
                .context("a module instrumented by Binaryen needs memory 0 for its frames")?,
            buffer: (initial_pages * PAGE) as u32,
        })
    }

    /// Reserves the Binaryen buffer at the start of a workflow.
    pub fn reserve(&self, mut store: impl AsContextMut) -> Result<()> {
        if let Unwinder::Binaryen { memory, buffer, .. } = *self {
            if memory.data_size(&store) as u64 != buffer as u64 {
                bail!("memory 0 changed size before the workflow started");
            }
            memory
                .grow(&mut store, BINARYEN_BUFFER_PAGES)
                .map_err(anyhow::Error::from)
                .context("memory 0 cannot grow to hold the asyncify buffer")?;
        }
        Ok(())
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
    pub fn start_unwind(&self, mut store: impl AsContextMut) -> Result<()> {
        self.write_header(&mut store, 0)?;
        match *self {
            Unwinder::Own { state, data, .. } => {
                data.set(&mut store, Val::I32(0))?;
                state.set(&mut store, Val::I32(STATE_UNWINDING))?;
            }
            Unwinder::Binaryen {
                start_unwind,
                buffer,
                ..
            } => start_unwind.call(&mut store, &[Val::I32(buffer as i32)], &mut [])?,
        }
        Ok(())
    }

    /// Ends an unwind, once the entry function has returned.
    pub fn stop_unwind(&self, store: impl AsContextMut) -> Result<()> {
        self.set_normal(store, |u| match u {
            Unwinder::Binaryen { stop_unwind, .. } => Some(*stop_unwind),
            Unwinder::Own { .. } => None,
        })
    }

    /// Ends a rewind, from inside the suspending import it reached.
    pub fn stop_rewind(&self, store: impl AsContextMut) -> Result<()> {
        self.set_normal(store, |u| match u {
            Unwinder::Binaryen { stop_rewind, .. } => Some(*stop_rewind),
            Unwinder::Own { .. } => None,
        })
    }

    fn set_normal(
        &self,
        mut store: impl AsContextMut,
        binaryen_function: impl Fn(&Unwinder) -> Option<Func>,
    ) -> Result<()> {
        match (self, binaryen_function(self)) {
            (Unwinder::Own { state, .. }, _) => state.set(&mut store, Val::I32(STATE_NORMAL))?,
            (_, Some(function)) => function.call(&mut store, &[], &mut [])?,
            (_, None) => unreachable!("Binaryen unwinders have every function"),
        }
        Ok(())
    }

    /// Puts a coroutine's frames back and starts rewinding them.
    pub fn start_rewind(&self, mut store: impl AsContextMut, frames: &[u8]) -> Result<()> {
        self.write_header(&mut store, frames.len())?;
        let (memory, base) = self.frames_at(&store);
        memory.data_mut(&mut store)[base..base + frames.len()].copy_from_slice(frames);
        match *self {
            Unwinder::Own { state, data, .. } => {
                data.set(&mut store, Val::I32(0))?;
                state.set(&mut store, Val::I32(STATE_REWINDING))?;
            }
            Unwinder::Binaryen {
                start_rewind,
                buffer,
                ..
            } => start_rewind.call(&mut store, &[Val::I32(buffer as i32)], &mut [])?,
        }
        Ok(())
    }

    /// Takes the frames of a finished unwind out, leaving the buffer empty.
    pub fn take_frames(&self, mut store: impl AsContextMut) -> Result<Vec<u8>> {
        let (memory, base) = self.frames_at(&store);
        let header = base - HEADER;
        let data = memory.data_mut(&mut store);
        let pos = u32::from_le_bytes(data[header..header + 4].try_into().unwrap()) as usize;
        if pos < base || pos > data.len() {
            bail!("the unwound stack's header is corrupt (pos {pos})");
        }
        let frames = data[base..pos].to_vec();
        if let Unwinder::Binaryen { .. } = self {
            // The buffer lives in memory 0, which every snapshot holds.
            data[header..pos].fill(0);
        }
        Ok(frames)
    }

    /// The memory holding the frames, and where the first frame goes.
    fn frames_at(&self, store: &impl AsContext) -> (Memory, usize) {
        let _ = store;
        match *self {
            Unwinder::Own { stack, .. } => (stack, HEADER),
            Unwinder::Binaryen { memory, buffer, .. } => (memory, buffer as usize + HEADER),
        }
    }

    /// Writes `{pos, end}` for `used` bytes of frames, growing the stack
    /// memory first when they do not fit.
    fn write_header(&self, mut store: impl AsContextMut, used: usize) -> Result<()> {
        let (memory, base) = self.frames_at(&store);
        let header = base - HEADER;
        let end = match *self {
            Unwinder::Own { stack, .. } => {
                let needed = base + used;
                let size = stack.data_size(&store);
                if needed > size {
                    let pages = (needed - size).div_ceil(PAGE as usize) as u64;
                    stack
                        .grow(&mut store, pages)
                        .map_err(anyhow::Error::from)
                        .context("growing the stack memory")?;
                }
                stack.data_size(&store)
            }
            Unwinder::Binaryen { buffer, .. } => {
                let end = buffer as usize + (BINARYEN_BUFFER_PAGES * PAGE) as usize;
                if base + used > end {
                    bail!("the unwound stack ({used} bytes) does not fit the asyncify buffer");
                }
                end
            }
        };
        let data = memory.data_mut(&mut store);
        data[header..header + 4].copy_from_slice(&((base + used) as u32).to_le_bytes());
        data[header + 4..header + 8]
            .copy_from_slice(&(end.min(u32::MAX as usize) as u32).to_le_bytes());
        Ok(())
    }
}
