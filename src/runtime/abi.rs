//! The host side of the guest ABI: the `wasnap` import module.
//!
//! A suspending import (`yield`, `switch`) is called twice for one
//! suspension. The first time (state normal) it records what the guest
//! asked for and starts an unwind; the instrumented code then saves every
//! frame and returns to the host. When the workflow is continued, the stack
//! is rewound and the same import is called again with the same arguments
//! (state rewinding): now it ends the rewind and returns the answer.

use wasmtime::{Caller, Global, Linker, Memory, Table};
use wasmtime::{Result, bail};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::Timer;
use super::unwinder::Unwinder;
use crate::instrument::STATE_REWINDING;
use crate::snapshot::{Coroutine, CoroutineState};

/// What a Store holds for one workflow.
pub(crate) struct HostState {
    pub wasi: WasiP1Ctx,
    pub limits: wasmtime::StoreLimits,
    pub handles: Option<Handles>,
    pub coroutines: Vec<Coroutine>,
    pub current: u32,
    pub next_coroutine_id: u32,
    /// Set by a suspending import on its way out, taken by the scheduler.
    pub pending: Option<Pending>,
    pub suspended_in: String,
    pub yielded: Vec<u8>,
    pub reply: Vec<u8>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The timer of the pending suspension (`sleep`, `yield_timeout`).
    pub timer: Option<Timer>,
    /// Set when the workflow is continued by its timer rather than a
    /// reply: a pending `yield_timeout` then returns -1.
    pub woken: bool,
}

/// Exports of the instance the host functions use.
#[derive(Clone, Copy)]
pub(crate) struct Handles {
    pub unwinder: Unwinder,
    pub memory: Option<Memory>,
    pub stack_pointer: Option<Global>,
    pub table: Option<Table>,
}

/// Why the guest is unwinding.
#[derive(Debug)]
pub(crate) enum Pending {
    /// `yield`, `sleep`, `yield_timeout`, or an embedder's suspending
    /// function (named `import`): suspend the whole workflow, publishing a
    /// value, with the timer of `sleep` and `yield_timeout`.
    Yield {
        import: String,
        value: Vec<u8>,
        timer: Option<Timer>,
    },
    /// `switch`: run another coroutine.
    Switch { target: u32, value: u32 },
}

impl HostState {
    pub fn coroutine(&self, id: u32) -> Option<&Coroutine> {
        self.coroutines.iter().find(|c| c.id == id)
    }

    pub fn coroutine_mut(&mut self, id: u32) -> &mut Coroutine {
        self.coroutines
            .iter_mut()
            .find(|c| c.id == id)
            .expect("coroutine ids handed out exist")
    }
}

fn handles(caller: &Caller<'_, HostState>) -> Handles {
    caller
        .data()
        .handles
        .expect("host functions run only in a set-up instance")
}

/// The second call of a suspending import: end the rewind.
pub(crate) fn is_rewinding(caller: &mut Caller<'_, HostState>) -> Result<bool> {
    let unwinder = handles(caller).unwinder;
    if unwinder
        .state(&mut *caller)
        .map_err(wasmtime::Error::from_anyhow)?
        != STATE_REWINDING
    {
        return Ok(false);
    }
    unwinder
        .stop_rewind(&mut *caller)
        .map_err(wasmtime::Error::from_anyhow)?;
    Ok(true)
}

/// The first call of a suspending import: start the unwind.
pub(crate) fn start_unwind(caller: &mut Caller<'_, HostState>, pending: Pending) -> Result<()> {
    handles(caller)
        .unwinder
        .start_unwind(&mut *caller)
        .map_err(wasmtime::Error::from_anyhow)?;
    caller.data_mut().pending = Some(pending);
    Ok(())
}

pub(crate) fn guest_memory<'a>(caller: &'a mut Caller<'_, HostState>) -> Result<&'a mut [u8]> {
    let Some(memory) = handles(caller).memory else {
        bail!("the module has no memory 0 for the wasnap imports to use");
    };
    Ok(memory.data_mut(caller))
}

pub(crate) fn guest_range(memory: &[u8], ptr: i32, len: i32) -> Result<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start + len as u32 as usize;
    if end > memory.len() {
        bail!("wasnap import given bytes {start}..{end} outside memory 0");
    }
    Ok(start..end)
}

/// Defines the `wasnap` imports.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap("wasnap", "yield", wasnap_yield)?;
    linker.func_wrap("wasnap", "sleep", wasnap_sleep)?;
    linker.func_wrap("wasnap", "yield_timeout", wasnap_yield_timeout)?;
    linker.func_wrap("wasnap", "reply", wasnap_reply)?;
    linker.func_wrap("wasnap", "spawn", wasnap_spawn)?;
    linker.func_wrap("wasnap", "switch", wasnap_switch)?;
    linker.func_wrap("wasnap", "current", |caller: Caller<'_, HostState>| {
        caller.data().current as i32
    })?;
    Ok(())
}

fn wasnap_yield(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> Result<i32> {
    if is_rewinding(&mut caller)? {
        return Ok(caller.data().reply.len() as i32);
    }
    let memory = guest_memory(&mut caller)?;
    let value = memory[guest_range(memory, ptr, len)?].to_vec();
    let pending = Pending::Yield {
        import: "wasnap.yield".into(),
        value,
        timer: None,
    };
    start_unwind(&mut caller, pending)?;
    Ok(0)
}

/// `sleep(ms)`: suspends with a timer `ms` from now and no value; when the
/// workflow is continued (its timer fired, or it was woken early) it
/// returns. A reply sent with the wake-up is readable with `reply`.
fn wasnap_sleep(mut caller: Caller<'_, HostState>, ms: i64) -> Result<()> {
    if is_rewinding(&mut caller)? {
        return Ok(());
    }
    let pending = Pending::Yield {
        import: "wasnap.sleep".into(),
        value: Vec::new(),
        timer: Some(Timer::Sleep {
            wake_at: super::clock::after_ms(ms),
        }),
    };
    start_unwind(&mut caller, pending)
}

/// `yield_timeout(ptr, len, ms)`: a question with a deadline. Publishes
/// the bytes like `yield` and suspends until a reply arrives (it returns
/// the reply's length) or `ms` from now, when its timer fires and it
/// returns -1.
fn wasnap_yield_timeout(
    mut caller: Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    ms: i64,
) -> Result<i32> {
    if is_rewinding(&mut caller)? {
        let host = caller.data();
        return Ok(if host.woken {
            -1
        } else {
            host.reply.len() as i32
        });
    }
    let memory = guest_memory(&mut caller)?;
    let value = memory[guest_range(memory, ptr, len)?].to_vec();
    let pending = Pending::Yield {
        import: "wasnap.yield_timeout".into(),
        value,
        timer: Some(Timer::Deadline {
            wake_at: super::clock::after_ms(ms),
        }),
    };
    start_unwind(&mut caller, pending)?;
    Ok(0)
}

fn wasnap_reply(mut caller: Caller<'_, HostState>, ptr: i32, cap: i32) -> Result<i32> {
    let reply = std::mem::take(&mut caller.data_mut().reply);
    let memory = guest_memory(&mut caller)?;
    let count = reply.len().min(cap.max(0) as usize);
    let range = guest_range(memory, ptr, count as i32)?;
    memory[range].copy_from_slice(&reply[..count]);
    caller.data_mut().reply = reply;
    Ok(count as i32)
}

fn wasnap_spawn(
    mut caller: Caller<'_, HostState>,
    function: i32,
    argument: i32,
    stack_ptr: i32,
    stack_len: i32,
) -> Result<i32> {
    let host = caller.data_mut();
    let id = host.next_coroutine_id;
    host.next_coroutine_id += 1;
    let parent = host.current;
    host.coroutines.push(Coroutine {
        id,
        parent,
        state: CoroutineState::Fresh,
        entry_function: function as u32,
        entry_argument: argument as u32,
        // Shadow stacks grow down from the end of their region.
        stack_pointer: (stack_ptr as u32).wrapping_add(stack_len as u32),
        stack: Vec::new(),
        resume_value: 0,
    });
    Ok(id as i32)
}

fn wasnap_switch(mut caller: Caller<'_, HostState>, target: i32, value: i32) -> Result<i32> {
    if is_rewinding(&mut caller)? {
        let current = caller.data().current;
        return Ok(caller
            .data()
            .coroutine(current)
            .map_or(0, |c| c.resume_value) as i32);
    }
    let target = target as u32;
    match caller.data().coroutine(target) {
        None => bail!("switch to coroutine {target}, which does not exist"),
        Some(c) if c.state == CoroutineState::Finished => {
            bail!("switch to coroutine {target}, which has finished")
        }
        Some(_) if target == caller.data().current => {
            // Switching to oneself is a no-op that returns the value.
            return Ok(value);
        }
        Some(_) => {}
    }
    start_unwind(
        &mut caller,
        Pending::Switch {
            target,
            value: value as u32,
        },
    )?;
    Ok(0)
}
