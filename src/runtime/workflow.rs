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

use super::abi::{Handles, HostState, Pending};
use super::unwinder::Unwinder;
use super::{Module, Output, Settings, state};
use crate::instrument::{
    self, MEMORY_EXPORT_PREFIX, STATE_NORMAL, STATE_UNWINDING, TABLE_EXPORT_PREFIX,
};
use crate::snapshot::{Coroutine, CoroutineState, HostSide, Snapshot};

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
    module: Module,
    store: Store<HostState>,
    instance: Instance,
    finished: bool,
    time_limit: Option<std::time::Duration>,
    /// The pages of the last snapshot (or of the restored one), so that the
    /// next snapshot copies only the pages that changed since.
    pages: state::PageHistory,
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
        workflow.handles().unwinder.reserve(&mut workflow.store)?;
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
        let (store, instance) = (&mut workflow.store, &workflow.instance);
        state::restore_memories(store, instance, &snapshot.memories)?;
        workflow.pages = state::PageHistory::of(&snapshot.memories);
        state::restore_globals(store, instance, &snapshot.globals)?;
        let data = store.data_mut();
        data.coroutines = snapshot.coroutines.clone();
        data.current = host.current;
        data.next_coroutine_id = host.next_coroutine_id;
        data.suspended_in = host.suspended_in.clone();
        data.yielded = host.yielded.clone();
        data.reply = host.reply.clone();
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
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&args).envs(&env).inherit_stderr();
        match &settings.stdout {
            Output::Inherit => wasi.inherit_stdout(),
            Output::Capture(captured) => wasi.stdout(captured.0.clone()),
        };
        for directory in &settings.policy.directories {
            wasi.preopened_dir(
                &directory.host,
                &directory.guest,
                wasmtime_wasi::FsPerms::ReadWrite,
            )
            .map_err(anyhow::Error::from)
            .with_context(|| format!("granting directory {}", directory.host.display()))?;
        }
        let mut limits = wasmtime::StoreLimitsBuilder::new();
        if let Some(bytes) = settings.policy.memory_limit {
            // A clear trap rather than a failed memory.grow the guest may
            // not check.
            limits = limits
                .memory_size(usize::try_from(bytes).unwrap_or(usize::MAX))
                .trap_on_grow_failure(true);
        }
        let host = HostState {
            wasi: wasi.build_p1(),
            limits: limits.build(),
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
        };
        let mut store = Store::new(module.inner.compiled.engine(), host);
        store.limiter(|host| &mut host.limits);
        // A new store's epoch deadline is "now": give the start function,
        // if any, all the time it needs; `run` sets the real deadline.
        store.set_epoch_deadline(NO_DEADLINE);
        let instance = module
            .inner
            .instance_pre
            .instantiate(&mut store)
            .map_err(anyhow::Error::from)
            .context("instantiating the module")?;
        let metadata = module.metadata();
        let handles = Handles {
            unwinder: Unwinder::of(
                &mut store,
                &instance,
                metadata.binaryen,
                metadata.initial_pages_of_memory0,
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
            time_limit: settings.policy.time_limit,
            pages: state::PageHistory::default(),
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

    /// Runs the workflow until it yields or finishes. A trap is an error,
    /// with the guest's backtrace; the workflow cannot run after one.
    pub fn run(&mut self) -> Result<Step> {
        if self.finished {
            bail!("the workflow has finished");
        }
        let ticks = match self.time_limit {
            Some(limit) => (limit.as_millis() / super::EPOCH_TICK.as_millis()).max(1) as u64,
            None => NO_DEADLINE,
        };
        self.store.set_epoch_deadline(ticks);
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

    /// Calls into coroutine `id`: rewinds it when it was suspended, starts
    /// it when it is fresh.
    fn run_coroutine(&mut self, id: u32) -> Result<Exit> {
        let handles = self.handles();
        let coroutine = self
            .store
            .data()
            .coroutine(id)
            .expect("current exists")
            .clone();
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
                None if error.downcast_ref::<wasmtime::Trap>()
                    == Some(&wasmtime::Trap::Interrupt) =>
                {
                    match self.time_limit {
                        Some(limit) => bail!("the workflow ran past its time limit of {limit:?}"),
                        None => bail!("the workflow was interrupted"),
                    }
                }
                // A trap while unwinding is the check after a call in a
                // function the instrumentation options kept from suspending.
                None if self.handles().unwinder.state(&mut self.store).ok()
                    == Some(STATE_UNWINDING) =>
                {
                    let function = innermost_function(&error);
                    Err(anyhow::Error::from(error).context(format!(
                        "the workflow suspended inside {function}, which its instrumentation options say never suspends (see Options::only_functions); it trapped in coroutine {id}"
                    )))
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
        let coroutine = host.coroutine_mut(current);
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
                host.coroutine_mut(target).resume_value = value;
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
        let coroutine = host.coroutine_mut(current);
        coroutine.state = CoroutineState::Finished;
        coroutine.stack.clear();
        if current == 0 {
            self.finished = true;
            return Ok(Some(Step::Finished(0)));
        }
        // A finished parent hands control further up, as greenlets do.
        let mut parent = coroutine.parent;
        while parent != 0
            && host.coroutine(parent).map(|c| c.state) == Some(CoroutineState::Finished)
        {
            parent = host.coroutine(parent).map_or(0, |c| c.parent);
        }
        host.coroutine_mut(parent).resume_value = 0;
        host.current = parent;
        Ok(None)
    }

    fn handles(&self) -> Handles {
        self.store.data().handles.expect("set at instantiation")
    }

    /// The workflow's complete state; valid while it is suspended (after
    /// [`Workflow::run`] returned [`Step::Yielded`], or before the first run).
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        if self.finished {
            bail!("the workflow has finished; there is nothing to snapshot");
        }
        let metadata = self.module.metadata().clone();
        let memories =
            state::capture_memories(&mut self.store, &self.instance, &metadata, &mut self.pages);
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
            },
        })
    }
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
