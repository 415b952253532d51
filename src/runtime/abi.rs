//! The host side of the guest ABI: the `wasnap` import module.
//!
//! A suspending import (`yield`, `switch`) is called twice for one
//! suspension. The first time (state normal) it records what the guest
//! asked for and starts an unwind; the instrumented code then saves every
//! frame and returns to the host. When the workflow is continued, the stack
//! is rewound and the same import is called again with the same arguments
//! (state rewinding): now it ends the rewind and returns the answer.
//!
//! While a query or update handler runs ([`HandlerCall`]), nothing may
//! suspend or start a coroutine: `yield`, `switch`, `spawn` and suspending
//! host functions trap, so that the handler changes nothing but memory and
//! globals, and the workflow still waits where it waited. `reply` gives the
//! handler its argument and `respond` sets its result; `handler_name`
//! tells a handler for any name (`query_*`, `update_*`) which one was
//! asked for, and `handler_fail` ends a handler with an error.

use wasmtime::{Caller, Global, Linker, Memory, Table};
use wasmtime::{Result, bail};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::Timer;
use super::journal::{Journal, SharedJournal};
use super::unwinder::{Loan, Unwinder};
use crate::instrument::STATE_REWINDING;
use crate::snapshot::{Coroutine, CoroutineState, Stdin};

/// What a Store holds for one workflow.
pub(crate) struct HostState {
    pub wasi: WasiP1Ctx,
    pub memory_limit: MemoryLimit,
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
    /// The inputs this workflow took from outside, or the recorded ones a
    /// replay hands back.
    pub journal: SharedJournal,
    /// The query or update handler running now, if one is.
    pub handler: Option<HandlerCall>,
    /// The part of memory 0 a Binaryen module's frames occupy during an
    /// unwind or a rewind, with the guest's bytes to put back.
    pub loan: Option<Loan>,
    /// Set to unwind again as soon as a rewind reaches its call.
    pub suspend_again: bool,
    /// What reads of standard input find (see `stdin.rs`).
    pub stdin: Stdin,
}

/// A query or update handler while it runs.
#[derive(Debug)]
pub(crate) struct HandlerCall {
    /// The handler asked for, `query_NAME` or `update_NAME` (also when
    /// the export that runs is the module's `query_*` or `update_*`).
    pub export: String,
    /// Its `NAME`.
    pub name: String,
    /// What it passed to `respond` last.
    pub result: Vec<u8>,
}

/// Stops a memory from growing past a number of bytes, with an error that
/// names the limit (rather than a failed `memory.grow` the guest may not
/// check).
pub(crate) struct MemoryLimit(pub Option<usize>);

/// The error a run ends with when one of its limits stopped it: the time
/// limit or the memory limit of its [`super::Settings`], or the call
/// stack's depth. The workflow cannot go on, and the snapshot it was
/// restored from, or any taken before, is as good as it was.
#[derive(Debug)]
pub struct LimitReached(pub(crate) String);

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitReached {}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        match self.0 {
            Some(limit) if desired > limit => Err(wasmtime::Error::new(LimitReached(format!(
                "the workflow ran past its memory limit of {limit} bytes (a memory of {current} bytes was to grow to {desired})"
            )))),
            _ => Ok(true),
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        Ok(true)
    }
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

    /// Coroutine `id`, which the scheduler expects to exist: a restored
    /// snapshot's coroutines were checked to be a tree (see
    /// `runtime::validate`), and `switch` checks its target.
    pub fn coroutine_mut(&mut self, id: u32) -> anyhow::Result<&mut Coroutine> {
        match self.coroutines.iter_mut().find(|c| c.id == id) {
            Some(coroutine) => Ok(coroutine),
            None => anyhow::bail!("coroutine {id} does not exist"),
        }
    }
}

/// Traps when a handler runs or a replay has diverged: `what` (a suspending
/// import, or `spawn`) may not happen now.
pub(crate) fn check_may_suspend(caller: &Caller<'_, HostState>, what: &str) -> Result<()> {
    if let Some(handler) = &caller.data().handler {
        bail!(
            "handler {} called {what}: a query or update handler must not suspend or start coroutines",
            handler.export
        );
    }
    check_not_diverged(caller)
}

/// Traps as soon as a replay is known to have diverged, so that the new
/// code does not run on with made-up inputs.
pub(crate) fn check_not_diverged(caller: &Caller<'_, HostState>) -> Result<()> {
    if let Some(divergence) = Journal::lock(&caller.data().journal).divergence() {
        bail!("the replay diverged: {divergence}");
    }
    Ok(())
}

/// The instance's exports the imports work with. They are there once the
/// instance is set up; before that, only the module's start function can
/// call an import, and wasnap's imports are not for it: a start function
/// cannot be suspended (nothing can call into it again to rewind it), and
/// the workflow does not exist until it has returned.
fn handles(caller: &Caller<'_, HostState>, import: &str) -> Result<Handles> {
    match caller.data().handles {
        Some(handles) => Ok(handles),
        None => bail!(
            "the module's start function called {import}, but wasnap's imports can only be used once the workflow runs (from _start or run), not while the module is instantiated"
        ),
    }
}

/// The second call of a suspending import: end the rewind.
pub(crate) fn is_rewinding(caller: &mut Caller<'_, HostState>, import: &str) -> Result<bool> {
    let unwinder = handles(caller, import)?.unwinder;
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
    if std::mem::take(&mut caller.data_mut().suspend_again) {
        // The rewind reached the call; suspend in it once more, as it was.
        let host = caller.data();
        let pending = Pending::Yield {
            import: host.suspended_in.clone(),
            value: host.yielded.clone(),
            timer: host.timer,
        };
        start_unwind(caller, pending)?;
    }
    Ok(true)
}

/// Whether the import was called to be suspended again at once (see
/// `Workflow::rewind_and_suspend_again`): what it returns is not used.
pub(crate) fn suspended_again(caller: &Caller<'_, HostState>) -> bool {
    caller.data().pending.is_some()
}

/// The first call of a suspending import: start the unwind.
pub(crate) fn start_unwind(caller: &mut Caller<'_, HostState>, pending: Pending) -> Result<()> {
    let import = match &pending {
        Pending::Yield { import, .. } => import.as_str(),
        Pending::Switch { .. } => "wasnap.switch",
    };
    handles(caller, import)?
        .unwinder
        .start_unwind(&mut *caller)
        .map_err(wasmtime::Error::from_anyhow)?;
    caller.data_mut().pending = Some(pending);
    Ok(())
}

pub(crate) fn guest_memory<'a>(
    caller: &'a mut Caller<'_, HostState>,
    import: &str,
) -> Result<&'a mut [u8]> {
    let Some(memory) = handles(caller, import)?.memory else {
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
    linker.func_wrap("wasnap", "respond", wasnap_respond)?;
    linker.func_wrap("wasnap", "handler_name", wasnap_handler_name)?;
    linker.func_wrap("wasnap", "handler_fail", wasnap_handler_fail)?;
    linker.func_wrap("wasnap", "patched", wasnap_patched)?;
    Ok(())
}

fn wasnap_yield(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> Result<i32> {
    if is_rewinding(&mut caller, "wasnap.yield")? {
        return Ok(caller.data().reply.len() as i32);
    }
    check_may_suspend(&caller, "wasnap.yield")?;
    let memory = guest_memory(&mut caller, "wasnap.yield")?;
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
    if is_rewinding(&mut caller, "wasnap.sleep")? {
        return Ok(());
    }
    check_may_suspend(&caller, "wasnap.sleep")?;
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
    if is_rewinding(&mut caller, "wasnap.yield_timeout")? {
        let host = caller.data();
        return Ok(if host.woken {
            -1
        } else {
            host.reply.len() as i32
        });
    }
    check_may_suspend(&caller, "wasnap.yield_timeout")?;
    let memory = guest_memory(&mut caller, "wasnap.yield_timeout")?;
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
    let memory = guest_memory(&mut caller, "wasnap.reply")?;
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
    check_may_suspend(&caller, "wasnap.spawn")?;
    handles(&caller, "wasnap.spawn")?;
    let host = caller.data_mut();
    let id = host.next_coroutine_id;
    let Some(next) = id.checked_add(1) else {
        bail!("wasnap.spawn: the workflow has used up every coroutine id");
    };
    host.next_coroutine_id = next;
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
    if is_rewinding(&mut caller, "wasnap.switch")? {
        let current = caller.data().current;
        return Ok(caller
            .data()
            .coroutine(current)
            .map_or(0, |c| c.resume_value) as i32);
    }
    check_may_suspend(&caller, "wasnap.switch")?;
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

/// `respond(ptr, len)`: the running handler's result becomes those bytes.
fn wasnap_respond(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> Result<()> {
    if caller.data().handler.is_none() {
        bail!("wasnap.respond called outside a query or update handler");
    }
    let memory = guest_memory(&mut caller, "wasnap.respond")?;
    let bytes = memory[guest_range(memory, ptr, len)?].to_vec();
    if let Some(handler) = &mut caller.data_mut().handler {
        handler.result = bytes;
    }
    Ok(())
}

/// `handler_name(ptr, cap) -> i32`: the running handler's name (`status`
/// for `wasnap query ID status`), up to `cap` bytes of it copied to `ptr`;
/// returns its whole length. A module that exports `query_*` or
/// `update_*` answers any name: an interpreter, whose scripts register
/// their handlers at run time, reads the name to find the script's.
fn wasnap_handler_name(mut caller: Caller<'_, HostState>, ptr: i32, cap: i32) -> Result<i32> {
    let Some(handler) = &caller.data().handler else {
        bail!("wasnap.handler_name called outside a query or update handler");
    };
    let name = handler.name.clone().into_bytes();
    let memory = guest_memory(&mut caller, "wasnap.handler_name")?;
    let count = name.len().min(cap.max(0) as usize);
    let range = guest_range(memory, ptr, count as i32)?;
    memory[range].copy_from_slice(&name[..count]);
    Ok(name.len() as i32)
}

/// `handler_fail(ptr, len)`: ends the running handler with the error
/// message [ptr, ptr+len) (an exception a script's handler raised, a name
/// no handler answers). Nothing is committed: an update that fails leaves
/// the instance as it was.
fn wasnap_handler_fail(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> Result<()> {
    if caller.data().handler.is_none() {
        bail!("wasnap.handler_fail called outside a query or update handler");
    }
    let memory = guest_memory(&mut caller, "wasnap.handler_fail")?;
    let message = String::from_utf8_lossy(&memory[guest_range(memory, ptr, len)?]).into_owned();
    Err(wasmtime::Error::new(HandlerFailed(message)))
}

/// The error a handler ended itself with (`handler_fail`).
#[derive(Debug)]
pub(crate) struct HandlerFailed(pub String);

impl std::fmt::Display for HandlerFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerFailed {}

/// `patched(ptr, len) -> i32`: 1 when the code should take the patch named
/// by the bytes: always when running normally (and the choice is recorded),
/// and when replaying only where the recorded run took it too. Old
/// histories replay on the old path; everything after them takes the new.
fn wasnap_patched(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> Result<i32> {
    check_not_diverged(&caller)?;
    let memory = guest_memory(&mut caller, "wasnap.patched")?;
    let id = String::from_utf8_lossy(&memory[guest_range(memory, ptr, len)?]).into_owned();
    let taken = Journal::lock(&caller.data().journal).patched(&id);
    Ok(taken as i32)
}
