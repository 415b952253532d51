//! A running or suspended workflow instance, and the coroutine scheduler.
//!
//! Only one coroutine's frames are ever in the stack memory: when a
//! coroutine unwinds (it yielded, or switched to another), its frames are
//! moved out into its [`Coroutine::stack`], and when it is switched back
//! into they are moved back and rewound. So a snapshot holds every
//! coroutine's stack without the stack memory itself, which is empty at
//! every suspension.

use anyhow::{Context as _, Result, bail};
use wasmtime::{Func, Instance, Store, Val};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use super::abi::{Handles, HostState, LimitReached, MemoryLimit, Pending};
use super::journal::{
    Inputs, Journal, JournalledMonotonicClock, JournalledRandom, JournalledWallClock, Mismatch,
    SharedJournal,
};
use super::stdin::Terminal;
use super::unwinder::Unwinder;
use super::{Module, Output, Settings, state};
use crate::instrument::{
    self, MEMORY_EXPORT_PREFIX, STATE_NORMAL, STATE_REWINDING, STATE_UNWINDING, TABLE_EXPORT_PREFIX,
};
use crate::snapshot::{Coroutine, CoroutineState, HostSide, Snapshot, Stdin};

/// Epochs until the deadline when there is no time limit: never reached.
const NO_DEADLINE: u64 = u64::MAX / 2;

/// Where a call to [`Workflow::run`] stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The workflow called `yield` with this value and is suspended; it can
    /// be snapshotted, sent a reply, and run again. `sleep` and
    /// `yield_timeout` suspend the same way, with a timer
    /// ([`Workflow::timer`]); `sleep`'s value is empty.
    Yielded(Vec<u8>),
    /// The workflow's main function returned, or it called WASI `proc_exit`
    /// with this status (0 when it returned).
    Finished(i32),
}

/// One workflow instance: a wasmtime store and instance, and the state of
/// its coroutines.
pub struct Workflow {
    /// The pages of the last snapshot (or of the restored one), so that the
    /// next snapshot copies only the pages that changed since. First, so
    /// that it is dropped first: its thread filling pages stops before
    /// the memory it fills is unmapped.
    pages: state::PageHistory,
    pub(super) module: Module,
    pub(super) store: Store<HostState>,
    pub(super) instance: Instance,
    finished: bool,
    /// Why the workflow cannot go on: a handler failed halfway through.
    pub(super) broken: Option<String>,
    /// Whether a run or handler call began since instantiation: the
    /// journal then keeps only the inputs of the latest one.
    pub(super) called: bool,
    pub(super) time_limit: Option<std::time::Duration>,
}

impl Workflow {
    pub(super) fn start(module: Module, settings: Settings) -> Result<Workflow> {
        let args = if settings.args.is_empty() {
            vec!["workflow".to_string()]
        } else {
            settings.args.clone()
        };
        let env = settings.policy.env.clone();
        let mut workflow = Workflow::instantiate(module, &settings, args, env)?;
        workflow.store.data_mut().coroutines.push(Coroutine {
            id: 0,
            parent: 0,
            state: CoroutineState::Fresh,
            entry_function: 0,
            entry_argument: 0,
            stack_pointer: 0,
            stack: Vec::new(),
            resume_value: 0,
        });
        workflow.store.data_mut().next_coroutine_id = 1;
        Ok(workflow)
    }

    pub(super) fn restore(
        module: Module,
        snapshot: &Snapshot,
        settings: Settings,
    ) -> Result<Workflow> {
        let metadata = module.metadata();
        if snapshot.memories.len() != metadata.memory_count as usize
            || snapshot.globals.len() != metadata.global_count as usize
        {
            bail!(
                "the snapshot has {} memories and {} globals, the module {} and {}",
                snapshot.memories.len(),
                snapshot.globals.len(),
                metadata.memory_count,
                metadata.global_count
            );
        }
        let host = &snapshot.host;
        // A policy's environment replaces the recorded one; else the
        // workflow sees what it was started with.
        let env = if settings.policy.env.is_empty() {
            host.env.clone()
        } else {
            settings.policy.env.clone()
        };
        let mut workflow = Workflow::instantiate(module, &settings, host.args.clone(), env)?;
        // A start function ran again at instantiation; what it read belongs
        // to the first run, whose state the snapshot now replaces.
        workflow.take_inputs();
        let (store, instance) = (&mut workflow.store, &workflow.instance);
        workflow.pages = state::restore_memories(
            store,
            instance,
            &snapshot.memories,
            settings.change_tracking,
            settings.memory_restore,
        )?;
        state::restore_globals(store, instance, &snapshot.globals)?;
        let data = store.data_mut();
        data.coroutines = snapshot.coroutines.clone();
        data.current = host.current;
        data.next_coroutine_id = host.next_coroutine_id;
        data.suspended_in = host.suspended_in.clone();
        data.yielded = host.yielded.clone();
        data.reply = host.reply.clone();
        data.stdin = host.stdin.clone();
        if data.coroutine(host.current).is_none() {
            bail!(
                "the snapshot's running coroutine {} does not exist",
                host.current
            );
        }
        Ok(workflow)
    }

    fn instantiate(
        module: Module,
        settings: &Settings,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<Workflow> {
        let journal = Journal::new(settings.replaying.clone(), settings.unrecorded);
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&args).envs(&env).inherit_stderr();
        journal_inputs(&mut wasi, &journal);
        let permissions = match settings.replaying {
            Some(_) => wasmtime_wasi::FsPerms::ReadOnly,
            None => wasmtime_wasi::FsPerms::ReadWrite,
        };
        match (&settings.stdout, module.inner.stdin_suspends) {
            (Output::Inherit, false) => wasi.inherit_stdout(),
            (Output::Capture(captured), false) => wasi.stdout(captured.0.clone()),
            (Output::Inherit, true) => wasi.stdout(Terminal(tokio::io::stdout())),
            (Output::Capture(captured), true) => wasi.stdout(Terminal(captured.0.clone())),
        };
        for directory in &settings.policy.directories {
            wasi.preopened_dir(&directory.host, &directory.guest, permissions)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("granting directory {}", directory.host.display()))?;
        }
        let host = HostState {
            wasi: wasi.build_p1(),
            memory_limit: MemoryLimit(
                settings
                    .policy
                    .memory_limit
                    .map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX)),
            ),
            handles: None,
            coroutines: Vec::new(),
            current: 0,
            next_coroutine_id: 1,
            pending: None,
            suspended_in: String::new(),
            yielded: Vec::new(),
            reply: Vec::new(),
            args,
            env,
            timer: None,
            woken: false,
            journal,
            handler: None,
            loan: None,
            suspend_again: false,
            stdin: if module.inner.stdin_suspends {
                Stdin::Suspending {
                    buffered: Vec::new(),
                }
            } else {
                Stdin::Empty
            },
        };
        let mut store = Store::new(module.inner.compiled.engine(), host);
        store.limiter(|host| &mut host.memory_limit);
        // A new store's epoch deadline is "now": the module's start
        // function, if any, runs under the time limit too (it may loop);
        // `run` sets the deadline again for each run.
        store.set_epoch_deadline(deadline_ticks(settings.policy.time_limit));
        let instance = match module.inner.instance_pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(error) if is_interrupt(&error) => {
                bail!(
                    "the module's start function ran past the time limit of {:?}",
                    settings.policy.time_limit.unwrap_or_default()
                )
            }
            Err(error) => {
                return Err(anyhow::Error::from(error).context("instantiating the module"));
            }
        };
        let metadata = module.metadata();
        let handles = Handles {
            unwinder: Unwinder::of(
                &mut store,
                &instance,
                metadata.binaryen,
                module.inner.max_wasm_stack,
            )?,
            memory: instance.get_memory(&mut store, &format!("{MEMORY_EXPORT_PREFIX}0")),
            stack_pointer: module.metadata().stack_pointer_global.and_then(|index| {
                instance.get_global(
                    &mut store,
                    &format!("{}{index}", instrument::GLOBAL_EXPORT_PREFIX),
                )
            }),
            table: instance.get_table(&mut store, &format!("{TABLE_EXPORT_PREFIX}0")),
        };
        store.data_mut().handles = Some(handles);
        Ok(Workflow {
            module,
            store,
            instance,
            finished: false,
            broken: None,
            called: false,
            time_limit: settings.policy.time_limit,
            pages: state::PageHistory::new(settings.change_tracking)?,
        })
    }

    /// Sets what the pending `yield` returns (its length) and what
    /// `wasnap.reply` copies out when the workflow runs again.
    pub fn send(&mut self, reply: &[u8]) {
        let host = self.store.data_mut();
        host.reply = reply.to_vec();
        host.woken = false;
    }

    /// Continues the workflow as its timer firing rather than with a
    /// reply: a pending `sleep` returns, a pending `yield_timeout` returns
    /// -1 (it timed out). A plain `yield` returns 0, as with an empty reply.
    pub fn wake(&mut self) {
        let host = self.store.data_mut();
        host.reply.clear();
        host.woken = true;
    }

    /// The timer of the suspension [`Workflow::run`] last stopped at: when
    /// a `sleep` wakes, or a `yield_timeout` times out. `None` for a plain
    /// `yield` (and for a workflow restored from a snapshot, which does not
    /// carry it: the store keeps it with the version).
    pub fn timer(&self) -> Option<super::Timer> {
        self.store.data().timer
    }

    /// The value of the last `yield`.
    pub fn yielded(&self) -> &[u8] {
        &self.store.data().yielded
    }

    /// Whether the workflow has finished.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The module this workflow runs.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// The inputs (clock readings, random bytes, host function answers,
    /// patches) the workflow took in its latest run or handler call (for
    /// the first, since it was started), and not taken yet; see
    /// [`journal`](super::journal). Empty while replaying.
    pub fn take_inputs(&mut self) -> Inputs {
        Journal::lock(&self.store.data().journal).take()
    }

    /// A run or handler call begins: the journal keeps only its inputs
    /// (and, for the first, those of instantiation), so that a workflow
    /// whose inputs nobody takes does not collect them forever.
    pub(super) fn begin_call(&mut self) {
        if self.called {
            self.take_inputs();
        }
        self.called = true;
    }

    /// From now on the workflow replays `inputs`, until [`Workflow::record`]:
    /// its clocks, random draws and host functions give what they gave the
    /// recorded run. Give each recorded run's inputs before running it
    /// again, and check with [`Workflow::check_replayed`] after it.
    pub fn replay(&mut self, inputs: Inputs) {
        Journal::lock(&self.store.data().journal).replay(inputs);
    }

    /// Back to recording inputs, after a replay.
    pub fn record(&mut self) {
        Journal::lock(&self.store.data().journal).record();
    }

    /// After a replayed run: fails with the first place where the run asked
    /// for something else than the recorded run did, or when it left
    /// recorded inputs unused.
    pub fn check_replayed(&self) -> std::result::Result<(), Mismatch> {
        Journal::lock(&self.store.data().journal).check_replayed()
    }

    /// The first divergence of a replay, if one is known.
    pub fn divergence(&self) -> Option<Mismatch> {
        Journal::lock(&self.store.data().journal)
            .divergence()
            .cloned()
    }

    /// Fails when the workflow cannot run, snapshot or handle anything.
    pub(super) fn check_usable(&self) -> Result<()> {
        if self.finished {
            bail!("the workflow has finished");
        }
        if let Some(cause) = &self.broken {
            bail!("the workflow cannot go on: {cause}");
        }
        Ok(())
    }

    /// Gives the next call into the guest the workflow's time limit.
    pub(super) fn set_deadline(&mut self) {
        self.store
            .set_epoch_deadline(deadline_ticks(self.time_limit));
    }

    /// Runs the workflow until it yields or finishes. A trap is an error,
    /// with the guest's backtrace; the workflow cannot run after one.
    ///
    /// The Wasm code runs where the native stack fits the engine's Wasm
    /// stack limit: on the calling thread when its stack has the room,
    /// else on a thread of its own.
    pub fn run(&mut self) -> Result<Step> {
        self.call_guest(|workflow| {
            workflow.check_usable()?;
            workflow.begin_call();
            workflow.set_deadline();
            workflow.run_to_suspension()
        })
    }

    /// Every call into the guest (a run, a handler) goes through here: the
    /// Wasm code runs where the native stack fits the engine's Wasm stack
    /// limit (see `on_workflow_stack`), and afterwards a page of a lazily
    /// restored memory that could not be read from the store (the guest
    /// saw zeros) makes the call fail and the workflow unusable: nothing
    /// it did can be trusted.
    pub(crate) fn call_guest<T: Send>(
        &mut self,
        call: impl FnOnce(&mut Workflow) -> Result<T> + Send,
    ) -> Result<T> {
        let max_wasm_stack = self.module.inner.max_wasm_stack;
        super::on_workflow_stack(max_wasm_stack, || {
            let result = call(self);
            if let Err(error) = self.pages.check() {
                self.finished = true;
                return Err(error);
            }
            result
        })
    }

    fn run_to_suspension(&mut self) -> Result<Step> {
        loop {
            let current = self.store.data().current;
            let returned = self.run_coroutine(current)?;
            let instrumentation = self.handles().unwinder.state(&mut self.store)?;
            match (returned, instrumentation) {
                (Exit::Status(status), _) => {
                    self.finished = true;
                    return Ok(Step::Finished(status));
                }
                (Exit::Returned, STATE_UNWINDING) => {
                    if let Some(step) = self.suspend_current()? {
                        return Ok(step);
                    }
                }
                (Exit::Returned, STATE_NORMAL) => {
                    if let Some(step) = self.finish_current()? {
                        return Ok(step);
                    }
                }
                (Exit::Returned, _) => bail!(
                    "rewinding coroutine {current} did not reach the call it was suspended in: the snapshot does not match the module"
                ),
            }
        }
    }

    /// Rewinds the running coroutine to the call it is suspended in and
    /// suspends it there again at once, running none of the guest's own
    /// code, and returns the snapshot then. It equals the snapshot the
    /// workflow was restored from exactly when the rewind went through the
    /// frames that snapshot holds and into the call it names: a check,
    /// for tests and fuzzing, that a restore resumes where it should.
    #[doc(hidden)]
    pub fn rewind_and_suspend_again(&mut self) -> Result<Snapshot> {
        let host = self.store.data();
        let suspended = host
            .coroutine(host.current)
            .is_some_and(|c| c.state == CoroutineState::Suspended);
        if suspended {
            let reply = host.reply.clone();
            self.store.data_mut().suspend_again = true;
            let step = self.run();
            self.store.data_mut().suspend_again = false;
            if !matches!(step?, Step::Yielded(_)) {
                bail!("the rewind did not reach the call the workflow was suspended in");
            }
            self.store.data_mut().reply = reply;
        }
        self.snapshot()
    }

    /// Calls into coroutine `id`: rewinds it when it was suspended, starts
    /// it when it is fresh.
    fn run_coroutine(&mut self, id: u32) -> Result<Exit> {
        let handles = self.handles();
        let Some(coroutine) = self.store.data().coroutine(id).cloned() else {
            bail!("the running coroutine {id} does not exist");
        };
        if let Some(stack_pointer) = handles.stack_pointer
            && (coroutine.state == CoroutineState::Suspended || id != 0)
        {
            stack_pointer.set(&mut self.store, Val::I32(coroutine.stack_pointer as i32))?;
        }
        if coroutine.state == CoroutineState::Suspended {
            handles
                .unwinder
                .start_rewind(&mut self.store, &coroutine.stack)?;
        }
        let (entry, argument) = self.entry_of(&coroutine)?;
        let mut no_results = [];
        let result = match argument {
            Some(argument) => entry.call(&mut self.store, &[Val::I32(argument)], &mut no_results),
            None => entry.call(&mut self.store, &[], &mut no_results),
        };
        match result {
            Ok(()) => Ok(Exit::Returned),
            Err(error) => match error.downcast_ref::<I32Exit>() {
                Some(exit) => Ok(Exit::Status(exit.0)),
                None if is_interrupt(&error) => match self.time_limit {
                    Some(limit) => Err(LimitReached(format!(
                        "the workflow ran past its time limit of {limit:?}"
                    ))
                    .into()),
                    None => bail!("the workflow was interrupted"),
                },
                None if error.is::<LimitReached>() => Err(anyhow::Error::new(
                    error.downcast::<LimitReached>().expect("checked"),
                )),
                None if error.downcast_ref::<wasmtime::Trap>()
                    == Some(&wasmtime::Trap::StackOverflow) =>
                {
                    let limit = super::format_size(self.module.inner.max_wasm_stack);
                    let how =
                        "raise it with --max-wasm-stack SIZE, or EngineBuilder::max_wasm_stack";
                    // A resume rebuilds the suspended frames in the code
                    // that resumes, whose frames are larger than those of
                    // the code that ran (see `instrument::rewrite`).
                    let rewinding = self.handles().unwinder.state(&mut self.store).ok()
                        == Some(STATE_REWINDING);
                    // One line, like every limit; the trap's backtrace
                    // would make it many.
                    let message = if rewinding {
                        format!(
                            "the workflow's suspended stack is too deep to resume within the engine's limit of {limit} (coroutine {id}, in {}): resuming rebuilds its frames in code that takes more stack than the run that suspended it did ({how})",
                            innermost_function(&error)
                        )
                    } else {
                        format!(
                            "the workflow overflowed its call stack in {} (coroutine {id}): it ran out of Wasm stack (call stack exhausted), recursing deeper than the engine's limit of {limit} allows ({how})",
                            innermost_function(&error)
                        )
                    };
                    Err(LimitReached(message).into())
                }
                // A trap while unwinding is the check after a call in a
                // function the instrumentation options kept from suspending,
                // or a Binaryen module's frames running out of memory 0.
                None if self.handles().unwinder.state(&mut self.store).ok()
                    == Some(STATE_UNWINDING) =>
                {
                    let unwinder = self.handles().unwinder;
                    let context = match unwinder.explain_trap(&mut self.store, &error) {
                        Some(cause) => {
                            format!("the workflow could not suspend in coroutine {id}: {cause}")
                        }
                        None => format!(
                            "the workflow suspended inside {}, which its instrumentation options say never suspends (see Options::only_functions); it trapped in coroutine {id}",
                            innermost_function(&error)
                        ),
                    };
                    Err(anyhow::Error::from(error).context(context))
                }

                None => Err(anyhow::Error::from(error)
                    .context(format!("the workflow trapped in coroutine {id}"))),
            },
        }
    }

    fn entry_of(&mut self, coroutine: &Coroutine) -> Result<(Func, Option<i32>)> {
        if coroutine.id == 0 {
            let entry = self.module.entry().to_string();
            let func = self
                .instance
                .get_func(&mut self.store, &entry)
                .expect("entry checked at load");
            return Ok((func, None));
        }
        let Some(table) = self.handles().table else {
            bail!(
                "coroutine {} needs table 0, and the module has none",
                coroutine.id
            );
        };
        let element = table.get(&mut self.store, coroutine.entry_function as u64);
        let Some(func) = element.and_then(|r| r.as_func().flatten().copied()) else {
            bail!(
                "coroutine {}'s function {} is not a function in table 0",
                coroutine.id,
                coroutine.entry_function
            );
        };
        Ok((func, Some(coroutine.entry_argument as i32)))
    }

    /// The running coroutine unwound: keep its stack, then either suspend
    /// the workflow (a yield) or switch (returns `None`).
    fn suspend_current(&mut self) -> Result<Option<Step>> {
        let handles = self.handles();
        handles.unwinder.stop_unwind(&mut self.store)?;
        let stack = handles.unwinder.take_frames(&mut self.store)?;
        let stack_pointer = match handles.stack_pointer {
            Some(global) => global.get(&mut self.store).unwrap_i32() as u32,
            None => 0,
        };
        let host = self.store.data_mut();
        let current = host.current;
        let coroutine = host.coroutine_mut(current)?;
        coroutine.stack = stack;
        coroutine.stack_pointer = stack_pointer;
        coroutine.state = CoroutineState::Suspended;
        match host.pending.take() {
            Some(Pending::Yield {
                import,
                value,
                timer,
            }) => {
                host.suspended_in = import;
                host.yielded = value.clone();
                host.reply.clear();
                host.timer = timer;
                host.woken = false;
                Ok(Some(Step::Yielded(value)))
            }
            Some(Pending::Switch { target, value }) => {
                host.coroutine_mut(target)?.resume_value = value;
                host.current = target;
                Ok(None)
            }
            None => bail!("the workflow unwound without a suspending call"),
        }
    }

    /// The running coroutine's function returned: the workflow finishes
    /// when it is main, else its parent resumes with 0.
    fn finish_current(&mut self) -> Result<Option<Step>> {
        let host = self.store.data_mut();
        let current = host.current;
        let coroutine = host.coroutine_mut(current)?;
        coroutine.state = CoroutineState::Finished;
        coroutine.stack.clear();
        if current == 0 {
            self.finished = true;
            return Ok(Some(Step::Finished(0)));
        }
        // A finished parent hands control further up, as greenlets do.
        // Parents are created before their children, so the walk ends.
        let mut parent = coroutine.parent;
        while parent != 0
            && host.coroutine(parent).map(|c| c.state) == Some(CoroutineState::Finished)
        {
            parent = host.coroutine(parent).map_or(0, |c| c.parent);
        }
        host.coroutine_mut(parent)?.resume_value = 0;
        host.current = parent;
        Ok(None)
    }

    pub(super) fn handles(&self) -> Handles {
        self.store.data().handles.expect("set at instantiation")
    }

    /// The workflow's complete state; valid while it is suspended (after
    /// [`Workflow::run`] returned [`Step::Yielded`], or before the first run).
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        if self.finished {
            bail!("the workflow has finished; there is nothing to snapshot");
        }
        self.check_usable()?;
        let metadata = self.module.metadata().clone();
        let memories =
            state::capture_memories(&mut self.store, &self.instance, &metadata, &mut self.pages)?;
        let globals = state::capture_globals(&mut self.store, &self.instance, &metadata)?;
        let tables = state::capture_tables(&metadata)?;
        let host = self.store.data();
        Ok(Snapshot {
            module_hash: self.module.hash(),
            instrumenter_version: instrument::INSTRUMENTER_VERSION,
            memories,
            globals,
            tables,
            coroutines: host.coroutines.clone(),
            host: HostSide {
                current: host.current,
                next_coroutine_id: host.next_coroutine_id,
                suspended_in: host.suspended_in.clone(),
                yielded: host.yielded.clone(),
                reply: host.reply.clone(),
                args: host.args.clone(),
                env: host.env.clone(),
                stdin: host.stdin.clone(),
            },
        })
    }
}

/// Gives WASI clocks and a random generator that go through the journal.
fn journal_inputs(wasi: &mut WasiCtxBuilder, journal: &SharedJournal) {
    wasi.wall_clock(JournalledWallClock {
        journal: journal.clone(),
        clock: wasmtime_wasi::clocks::WallClock::new(),
    })
    .monotonic_clock(JournalledMonotonicClock {
        journal: journal.clone(),
        clock: wasmtime_wasi::clocks::MonotonicClock::new(),
    })
    .secure_random(JournalledRandom {
        journal: journal.clone(),
        random: wasmtime_wasi::random::thread_rng(),
    });
}

/// The epochs a run may last under a time limit.
fn deadline_ticks(time_limit: Option<std::time::Duration>) -> u64 {
    match time_limit {
        Some(limit) => (limit.as_millis() / super::EPOCH_TICK.as_millis()).max(1) as u64,
        None => NO_DEADLINE,
    }
}

/// Whether a run was stopped by its deadline.
fn is_interrupt(error: &wasmtime::Error) -> bool {
    error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt)
}

/// How a call into a coroutine ended.
enum Exit {
    /// The entry function returned (normally, or at the end of an unwind).
    Returned,
    /// WASI `proc_exit` with this status.
    Status(i32),
}

/// The name (or index) of the innermost Wasm function in a trap's
/// backtrace, for error messages.
fn innermost_function(error: &wasmtime::Error) -> String {
    let frame = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|backtrace| backtrace.frames().first());
    match frame {
        Some(frame) => match frame.func_name() {
            Some(name) => format!("function {} ({name})", frame.func_index()),
            None => format!("function {}", frame.func_index()),
        },
        None => "a function".to_string(),
    }
}

/// A snapshot restores only into a module whose reads of standard input
/// suspend exactly when the snapshot's did: the two are instrumented
/// differently, so this is said before anything compares their frames.
pub(super) fn check_stdin_mode(snapshot: &Snapshot, module: &Module) -> Result<()> {
    match (&snapshot.host.stdin, module.inner.stdin_suspends) {
        (Stdin::Suspending { .. }, false) => bail!(
            "the snapshot's reads of standard input suspend (wasnap run --stdin suspend): restore it with an engine whose options say so (Options::suspend_on_stdin)"
        ),
        (Stdin::Empty, true) => bail!(
            "the snapshot's reads of standard input do not suspend, and this engine's do (Options::suspend_on_stdin): restore it with an engine without that option"
        ),
        _ => Ok(()),
    }
}
