//! The durable layer: an [`Engine`] joined with a [`Database`], so that every
//! run of a workflow ends as a committed version.
//!
//! ```text
//! Executor::add_module(wasm)        instrument + compile, then store (a module
//!                                   that cannot run is never stored)
//! Executor::start(module, args)     a new instance, run to its first suspension
//! Executor::resume(instance, at)    from its head or any suspended version
//! Executor::restore(file)           a snapshot file as a new instance
//! Executor::query(instance, name)   a query handler on a version; commits nothing
//! Executor::update(instance, name)  an update handler on the head; a new version
//! Executor::upgrade(instance, new)  the head moved to new code, by replay
//! Executor::diff(instance, a, b)    what changed between two versions
//! ```
//!
//! Every run records the inputs it took from outside (clocks, random
//! bytes, host function answers, patches; see
//! [`journal`](crate::runtime::journal)) with the version it commits, so
//! that an upgrade can replay the instance's history on new code.
//!
//! Each of these takes the instance's lease, runs the workflow to its next
//! suspension or end, and commits the outcome as one version whose parent
//! is the version it ran from: a [`Report`] says which. A run that traps or
//! exceeds a limit is committed as a failed version, and the version it
//! started from stays resumable. Compiled modules are cached in the
//! database, so a new process skips instrumentation and compilation.
//!
//! ```
//! use wasnap::executor::{Ended, Executor, RunOptions};
//!
//! # fn main() -> anyhow::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("wasnap.db");
//! let wasm = wat::parse_str(r#"
//!     (module
//!       (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
//!       (memory (export "memory") 1)
//!       (data (i32.const 0) "approve?")
//!       (func (export "run") (drop (call $yield (i32.const 0) (i32.const 8)))))
//! "#)?;
//! let executor = Executor::open(&path)?;
//! let module = executor.add_module(&wasm)?;
//! let first = executor.start(&module, &["approval".into()], &RunOptions::default())?;
//! assert_eq!(first.ended, Ended::Suspended { value: b"approve?".to_vec() });
//!
//! // Any time later, in any process:
//! let executor = Executor::open(&path)?;
//! let last = executor.resume(first.instance, None, b"yes", &RunOptions::default())?;
//! assert_eq!((last.version, last.parent), (2, Some(1)));
//! assert_eq!(last.ended, Ended::Finished { exit_status: 0 });
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use anyhow::{Result, bail};

mod diff;
mod handlers;
mod live;
pub mod script;
mod upgrade;

pub use diff::Diffed;
pub use handlers::Updated;
pub use live::LiveWorkflows;
pub use upgrade::{Divergence, Upgrade, UpgradeOptions, UpgradeReport};

use crate::runtime::{
    Engine, Module, Output, Policy, Settings, Step, Timer, UnreadablePage, Workflow, module_hash,
    now_ms,
};
use crate::snapshot::{ModuleHash, Snapshot, Stdin, file};
use crate::store::{
    Batch, Claim, Commit, Database, InstanceId, Lease, Origin, Outcome, Prepared, Provenance,
    Refused, Request, VersionKind, Work,
};

/// Runs a database's workflow instances and commits every outcome as a
/// version. Cheap to clone and safe to share between threads.
#[derive(Clone)]
pub struct Executor {
    engine: Engine,
    database: Database,
    live: Option<LiveWorkflows>,
}

/// How one run ended, as committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The workflow yielded this value and waits for a reply (or slept:
    /// an empty value, and the report's timer).
    Suspended {
        /// The yielded bytes.
        value: Vec<u8>,
    },
    /// The workflow finished (its main function returned, or it called WASI
    /// `proc_exit`).
    Finished {
        /// Its exit status; 0 when it returned.
        exit_status: i32,
    },
    /// The run trapped, ran out of a limit, or failed in the host.
    Failed {
        /// The cause, one line.
        message: String,
    },
}

/// What one run committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The instance that ran.
    pub instance: InstanceId,
    /// The version its outcome was committed as (its new head).
    pub version: u32,
    /// The version it ran from; `None` for an instance's first run.
    pub parent: Option<u32>,
    /// How the run ended.
    pub ended: Ended,
    /// The suspension's timer: when a `sleep` wakes, or when a question
    /// asked with `yield_timeout` times out.
    pub timer: Option<Timer>,
}

/// How a run is made: where the workflow's stdout goes, limits or grants
/// of this run's own, and whether a timer fires.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// For a new instance, the policy it keeps for every later run; for a
    /// resume, what overrides the instance's policy for this run only
    /// (see [`Policy::overridden_by`]).
    pub policy: Policy,
    /// Where the workflow's WASI stdout goes.
    pub stdout: Output,
    /// Resume as the version's timer firing, whether it is due or not: a
    /// sleep wakes, a question with a deadline times out (its
    /// `yield_timeout` returns -1). Without it, a resume is a reply, and a
    /// sleep that is not due yet is refused.
    pub wake: bool,
}

/// A snapshot file loaded as a new instance and resumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The file's state, committed as the new instance's first version.
    pub first: u32,
    /// The run resumed from it.
    pub report: Report,
}

/// A run that has ended and whose outcome is prepared but not committed:
/// a service commits many of them at once ([`Executor::write_round`]).
pub struct Ran {
    lease: Lease,
    prepared: Prepared,
    parent: Option<u32>,
    ended: Ended,
    timer: Option<Timer>,
    /// The workflow, while it is suspended: kept live after the commit.
    workflow: Option<Workflow>,
}

impl Ran {
    /// The instance that ran.
    pub fn instance(&self) -> InstanceId {
        self.lease.instance()
    }

    /// The lease it ran under, to renew while the commit waits.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

impl Executor {
    /// Joins an engine with a database.
    pub fn new(engine: Engine, database: Database) -> Executor {
        Executor {
            engine,
            database,
            live: None,
        }
    }

    /// Opens (or creates) the database at `path`, a SQLite file or a
    /// PostgreSQL URL (see [`Database::open`]), with a default engine.
    pub fn open(path: impl AsRef<Path>) -> Result<Executor> {
        Ok(Executor::new(Engine::new()?, Database::open(path)?))
    }

    /// Keeps up to `capacity` suspended workflows in memory after their
    /// versions are committed, so that resuming the version an instance
    /// just committed skips loading and restoring it. For a long-lived
    /// process that resumes the same instances again and again (a
    /// service); what is committed is the same either way.
    pub fn keep_live(mut self, capacity: usize) -> Executor {
        self.live = Some(LiveWorkflows::new(capacity));
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// This executor's database with an engine whose workflows' reads of
    /// standard input suspend, or do not (see
    /// [`Engine::with_stdin_suspending`]). An instance keeps the mode it was
    /// started in: a resume or a restore runs in the mode of the version it
    /// starts from, whichever executor runs it.
    pub fn with_stdin_suspending(&self, suspends: bool) -> Result<Executor> {
        Ok(Executor::new(
            self.engine.with_stdin_suspending(suspends)?,
            self.database.clone(),
        ))
    }

    /// This executor, or one in the stdin mode `snapshot` was made in.
    fn in_mode_of(&self, snapshot: &Snapshot) -> Result<Executor> {
        self.with_stdin_suspending(matches!(snapshot.host.stdin, Stdin::Suspending { .. }))
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Instruments and compiles `wasm`, and only then stores it with its
    /// compiled artifact, so that a module that cannot run leaves the
    /// database as it was. Returns its content hash. A module stored
    /// before with an artifact for this engine is not compiled again: an
    /// interpreter's runtime module takes a minute to instrument and
    /// compile, and every script it runs starts it anew. Nor is that
    /// artifact read here: [`Executor::module`] reads it to run it.
    pub fn add_module(&self, wasm: &[u8]) -> Result<ModuleHash> {
        let hash = module_hash(wasm);
        if self
            .database
            .has_compiled(&hash, &self.engine.fingerprint())?
        {
            return Ok(hash);
        }
        let module = self.engine.load(wasm)?;
        let hash = self.database.put_module(wasm)?;
        self.keep_artifact(&module)?;
        Ok(hash)
    }

    /// The stored module `hash`, ready to run: from the compiled artifact
    /// this engine left in the database before, or compiled now (and the
    /// artifact kept for next time).
    pub fn module(&self, hash: &ModuleHash) -> Result<Module> {
        if let Some(module) = self.engine.cached(hash) {
            return Ok(module);
        }
        let wasm = self.database.module(hash)?;
        let artifact = self.database.compiled(hash, &self.engine.fingerprint())?;
        // SAFETY: the database hands back only artifacts it authenticated
        // with this user's key, which no database holds: bytes that
        // `Module::serialize` wrote for this module in a process of this
        // user (see `store::ArtifactKey`).
        let module = unsafe { self.engine.load_with_artifact(&wasm, artifact.as_deref()) }?;
        if artifact.is_none() {
            // None stored, or one that failed its authentication: either
            // way the one just compiled takes its place.
            self.store_artifact(&module)?;
        }
        Ok(module)
    }

    /// Stores the compiled code of `module` for later runs, unless some is
    /// stored already (checked without reading it: an interpreter's
    /// artifact is over 100 MB).
    fn keep_artifact(&self, module: &Module) -> Result<()> {
        if !self
            .database
            .has_compiled(&module.hash(), &self.engine.fingerprint())?
        {
            self.store_artifact(module)?;
        }
        Ok(())
    }

    /// Stores the compiled code of `module`, replacing any stored.
    fn store_artifact(&self, module: &Module) -> Result<()> {
        let fingerprint = self.engine.fingerprint();
        self.database
            .put_compiled(&module.hash(), &fingerprint, &module.serialize()?)
    }

    /// Starts a new instance of the stored module `module` with WASI
    /// arguments `args` (program name first) and `options.policy` as the
    /// policy it keeps, and runs it to its first suspension or end.
    pub fn start(
        &self,
        module: &ModuleHash,
        args: &[String],
        options: &RunOptions,
    ) -> Result<Report> {
        let loaded = self.module(module)?;
        let settings = Settings::default()
            .args(args.iter().cloned())
            .stdout(options.stdout.clone())
            .policy(options.policy.clone());
        // Instantiating runs the module's start function: it fails here,
        // before the instance exists, when it cannot run.
        let mut workflow = self.engine.start(&loaded, settings)?;
        let instance = self
            .database
            .create_instance(module, args, &options.policy)?;
        let lease = self.database.lease(instance)?;
        self.run_and_commit(lease, workflow.run(), workflow, None, &[], false)
    }

    /// Resumes `instance` from `version`, or from its head when `version` is
    /// `None` (whatever the head is when the lease is taken), with `reply`
    /// as what the pending call returns (or as its timer firing, with
    /// `options.wake`). Resuming a version that already has children
    /// starts a branch. The instance's policy applies, overridden by
    /// `options.policy` for this run. A sleep that is not due is refused
    /// unless woken ([`RunOptions::wake`]).
    pub fn resume(
        &self,
        instance: InstanceId,
        version: Option<u32>,
        reply: &[u8],
        options: &RunOptions,
    ) -> Result<Report> {
        let lease = self.database.lease(instance)?;
        self.resume_leased(lease, version, reply, options)
    }

    /// Resumes the instance `lease` is on, as [`Executor::resume`] does,
    /// under that lease: how a worker that took an instance with
    /// [`Database::lease_any`] runs it. The lease is released when it returns.
    pub fn resume_leased(
        &self,
        lease: Lease,
        version: Option<u32>,
        reply: &[u8],
        options: &RunOptions,
    ) -> Result<Report> {
        let instance = lease.instance();
        let version = match version {
            Some(version) => version,
            None => self.head(instance)?,
        };
        let mut workflow = self.resumable(instance, version, Some(&lease), options)?;
        match options.wake {
            true => workflow.wake(),
            false => workflow.send(reply),
        }
        let step = workflow.run();
        self.run_and_commit(lease, step, workflow, Some(version), reply, options.wake)
    }

    /// The workflow of suspended `version` of `instance`, ready to be sent
    /// its reply or woken: taken live from memory when it is there, else
    /// restored (lazily under `lease`, see [`Executor::restore_version`]).
    /// Checks the version's timer against `options.wake`.
    fn resumable(
        &self,
        instance: InstanceId,
        version: u32,
        lease: Option<&Lease>,
        options: &RunOptions,
    ) -> Result<Workflow> {
        let info = self.database.version(instance, version)?;
        if info.kind != VersionKind::Suspended {
            bail!(
                "version {version} of instance {instance} is {}: there is nothing to resume (resume an earlier version with INSTANCE@VERSION)",
                info.kind.as_str()
            );
        }
        match info.timer {
            Some(Timer::Sleep { wake_at }) if !options.wake && wake_at > now_ms() => {
                return Err(Refused::Conflict(crate::store::sleeping_message(
                    instance, version, wake_at,
                ))
                .into());
            }
            None if options.wake => {
                return Err(Refused::Conflict(format!(
                    "version {version} of instance {instance} waits for a reply: it has no timer to wake"
                ))
                .into());
            }
            _ => {}
        }
        let default_run =
            options.policy == Policy::default() && matches!(options.stdout, Output::Inherit);
        if let Some(live) = &self.live
            && default_run
            && let Some(workflow) = live.take(instance, version)
        {
            return Ok(workflow);
        }
        self.restore_version(instance, version, lease, options)
    }

    /// A suspended version restored into a new workflow, with the
    /// instance's policy overridden by `options`. Under a `lease` its pages
    /// are read when the run first touches them (the lease keeps them from
    /// being removed meanwhile); without one, all at once.
    fn restore_version(
        &self,
        instance: InstanceId,
        version: u32,
        lease: Option<&Lease>,
        options: &RunOptions,
    ) -> Result<Workflow> {
        let info = self.database.instance(instance)?;
        let kind = self.database.version(instance, version)?.kind;
        if kind != VersionKind::Suspended {
            bail!(
                "version {version} of instance {instance} is {}: there is nothing to resume (resume an earlier version with INSTANCE@VERSION)",
                kind.as_str()
            );
        }
        // Pages are read from the database when the run first touches
        // them: a resume costs what the run touches, not the memory's size.
        let snapshot = match lease {
            Some(lease) => self.database.load_version_lazily(lease, version)?,
            None => self.database.load_version(instance, version)?,
        };
        let executor = self.in_mode_of(&snapshot)?;
        let module = executor.module(&snapshot.module_hash)?;
        let settings = Settings::default()
            .stdout(options.stdout.clone())
            .policy(info.policy.overridden_by(&options.policy));
        executor.engine.restore_with(&module, &snapshot, settings)
    }

    /// Loads a snapshot file (one written with its module) as a new
    /// instance, whose first version is the file's state, then resumes it
    /// with `reply`. Everything about the file is checked before the
    /// database is written.
    pub fn restore(&self, file: &[u8], reply: &[u8], options: &RunOptions) -> Result<Restored> {
        let (snapshot, wasm) = file::decode(file)?;
        self.restore_decoded(&snapshot, wasm, reply, options)
    }

    /// [`Executor::restore`] of a file already decoded with
    /// [`file::decode`] (and so known to be well-formed before the database
    /// was opened).
    pub fn restore_decoded(
        &self,
        snapshot: &Snapshot,
        wasm: Option<Vec<u8>>,
        reply: &[u8],
        options: &RunOptions,
    ) -> Result<Restored> {
        let Some(wasm) = wasm else {
            bail!("the snapshot file holds no module, so it cannot be restored on its own");
        };
        if module_hash(&wasm) != snapshot.module_hash {
            bail!("the snapshot file's module does not match its snapshot");
        }
        let executor = self.in_mode_of(snapshot)?;
        let module = executor.engine.load(&wasm)?;
        let settings = Settings::default()
            .stdout(options.stdout.clone())
            .policy(options.policy.clone());
        let mut workflow = executor.engine.restore_with(&module, snapshot, settings)?;
        let hash = self.database.put_module(&wasm)?;
        executor.keep_artifact(&module)?;
        let instance =
            self.database
                .create_instance(&hash, &snapshot.host.args, &options.policy)?;
        let lease = self.database.lease(instance)?;
        let provenance = Provenance {
            origin: Origin::Restore,
            ..Provenance::UNRECORDED_RUN
        };
        let first = self.database.commit_version_from(
            &lease,
            None,
            &Outcome::Suspended(snapshot),
            &[],
            &provenance,
        )?;
        match options.wake {
            true => workflow.wake(),
            false => workflow.send(reply),
        }
        let step = workflow.run();
        let report =
            self.run_and_commit(lease, step, workflow, Some(first), reply, options.wake)?;
        Ok(Restored { first, report })
    }

    /// Commits the outcome of a run as a child of `parent`, under `lease`.
    fn run_and_commit(
        &self,
        lease: Lease,
        step: Result<Step>,
        workflow: Workflow,
        parent: Option<u32>,
        reply: &[u8],
        woken: bool,
    ) -> Result<Report> {
        let ran = self.prepare(lease, step, workflow, parent, reply, woken)?;
        let number = self.database.commit_prepared(&ran.lease, ran.prepared)?;
        if let (Some(live), Some(workflow)) = (&self.live, ran.workflow) {
            live.put(ran.lease.instance(), number, workflow);
        }
        Ok(Report {
            instance: ran.lease.instance(),
            version: number,
            parent: ran.parent,
            ended: ran.ended,
            timer: ran.timer,
        })
    }

    /// Prepares the outcome of a run (a snapshot of a suspension, with the
    /// inputs the run took, and whether it was `woken` by its parent's
    /// timer rather than sent `reply`) for a commit.
    fn prepare(
        &self,
        lease: Lease,
        step: Result<Step>,
        mut workflow: Workflow,
        parent: Option<u32>,
        reply: &[u8],
        woken: bool,
    ) -> Result<Ran> {
        let inputs = workflow.take_inputs().encode();
        let prepare = |outcome: &Outcome| {
            let mut prepared = self.database.prepare_version(
                &lease,
                parent,
                outcome,
                reply,
                Some(inputs.clone()),
            )?;
            prepared.set_woken(woken);
            anyhow::Ok(prepared)
        };
        let (prepared, ended, timer, live) = match step {
            Ok(Step::Yielded(value)) => {
                let snapshot = workflow.snapshot()?;
                let timer = workflow.timer();
                let mut prepared = prepare(&Outcome::Suspended(&snapshot))?;
                prepared.set_timer(timer);
                (prepared, Ended::Suspended { value }, timer, Some(workflow))
            }
            Ok(Step::Finished(exit_status)) => {
                let outcome = Outcome::Finished {
                    exit_status: Some(exit_status),
                    result: &[],
                };
                (
                    prepare(&outcome)?,
                    Ended::Finished { exit_status },
                    None,
                    None,
                )
            }
            // The database could not give a page of the version resumed
            // from: the run did not fail, the database did, and no version
            // records it.
            Err(error) if error.is::<UnreadablePage>() => return Err(error),
            Err(error) => {
                let message = one_line(&error);
                let prepared = prepare(&Outcome::Failed { message: &message })?;
                (prepared, Ended::Failed { message }, None, None)
            }
        };
        Ok(Ran {
            lease,
            prepared,
            parent,
            ended,
            timer,
            workflow: live,
        })
    }

    /// Runs claimed work ([`Database::claim`]) to its next suspension or
    /// end and prepares its outcome, to be committed with others by
    /// [`Executor::write_round`]. Work that cannot even start (its module
    /// or version cannot be loaded, a request that no longer fits) ends as
    /// a failed version too, so that it is not claimed again and again.
    pub fn run_claim(&self, claim: Claim, stdout: &Output) -> Result<Ran> {
        let Claim { lease, work } = claim;
        let instance = lease.instance();
        let options = RunOptions {
            stdout: stdout.clone(),
            ..RunOptions::default()
        };
        let (parent, reply, wake) = match work {
            Work::Requested(Request {
                version,
                reply,
                wake,
            }) => (version, reply, wake),
            Work::TimerDue { version, .. } => (Some(version), Vec::new(), true),
        };
        // A request was checked when it was recorded, and a due timer is
        // the head's: a live workflow at that version needs no more checks.
        let live = parent.and_then(|v| self.live.as_ref()?.take(instance, v));
        let started = match (parent, live) {
            (_, Some(mut workflow)) => {
                match wake {
                    true => workflow.wake(),
                    false => workflow.send(&reply),
                }
                Ok(workflow)
            }
            (None, None) => self.first_workflow(instance, &options),
            (Some(version), None) => {
                let options = RunOptions { wake, ..options };
                self.resumable(instance, version, Some(&lease), &options)
                    .map(|mut w| {
                        match wake {
                            true => w.wake(),
                            false => w.send(&reply),
                        }
                        w
                    })
            }
        };
        match started {
            Ok(mut workflow) => {
                let step = workflow.run();
                self.prepare(lease, step, workflow, parent, &reply, wake)
            }
            Err(error) => {
                let message = one_line(&error);
                let outcome = Outcome::Failed { message: &message };
                let prepared = self
                    .database
                    .prepare_version(&lease, parent, &outcome, &reply, None)?;
                Ok(Ran {
                    lease,
                    prepared,
                    parent,
                    ended: Ended::Failed { message },
                    timer: None,
                    workflow: None,
                })
            }
        }
    }

    /// A new workflow for the first run of `instance`, which exists with
    /// its arguments and policy.
    fn first_workflow(&self, instance: InstanceId, options: &RunOptions) -> Result<Workflow> {
        let info = self.database.instance(instance)?;
        let module = self.module(&info.module_hash)?;
        let settings = Settings::default()
            .args(info.args.iter().cloned())
            .stdout(options.stdout.clone())
            .policy(info.policy.clone());
        self.engine.start(&module, settings)
    }

    /// One transaction of a service ([`Database::write_batch`]): records
    /// requests, commits the outcomes of finished runs (each ending its
    /// request and releasing its lease), renews leases, and claims new
    /// work. Suspended workflows are kept live (see
    /// [`Executor::keep_live`]) once their versions are committed.
    pub fn write_round(&self, round: Round) -> Result<RoundDone> {
        let mut rest = Vec::with_capacity(round.runs.len());
        let mut commits = Vec::with_capacity(round.runs.len());
        for ran in round.runs {
            let instance = ran.lease.instance();
            commits.push(Commit {
                lease: ran.lease,
                prepared: ran.prepared,
            });
            rest.push((instance, ran.parent, ran.ended, ran.timer, ran.workflow));
        }
        let done = self.database.write_batch(Batch {
            requests: round.requests,
            commits,
            renew: round.renew,
            claim: round.claim,
            ttl: round.ttl,
        })?;
        let reports = done
            .commits
            .into_iter()
            .zip(rest)
            .map(|(number, (instance, parent, ended, timer, workflow))| {
                let version = number?;
                if let (Some(live), Some(workflow)) = (&self.live, workflow) {
                    live.put(instance, version, workflow);
                }
                Ok(Report {
                    instance,
                    version,
                    parent,
                    ended,
                    timer,
                })
            })
            .collect();
        Ok(RoundDone {
            requests: done.requests,
            reports,
            claims: done.claims,
        })
    }
}

/// What [`Executor::write_round`] writes in one transaction.
#[derive(Default)]
pub struct Round {
    /// Requests to record: instance, request, branch allowed.
    pub requests: Vec<(InstanceId, Request, bool)>,
    /// Finished runs to commit.
    pub runs: Vec<Ran>,
    /// Renew the leases of this process's runs in progress.
    pub renew: bool,
    /// Claim up to this many runnable instances.
    pub claim: usize,
    /// How long renewed and claimed leases last.
    pub ttl: std::time::Duration,
}

/// What [`Executor::write_round`] did, item by item.
pub struct RoundDone {
    /// For each request: the version it resumes, or why it was refused.
    pub requests: Vec<Result<Option<u32>>>,
    /// For each run: what it committed, or why it could not.
    pub reports: Vec<Result<Report>>,
    /// New work claimed.
    pub claims: Vec<Claim>,
}

/// An error and its causes on one line, each cause once: how errors are
/// shown and how a failed version records its cause. A trap's Wasm
/// backtrace (many lines, the frames of the guest) is left out: the trap's
/// cause follows it in the chain.
pub fn one_line(error: &anyhow::Error) -> String {
    const BACKTRACE: &str = "error while executing at wasm backtrace";
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or_default().trim();
        if first.starts_with(BACKTRACE) || (!line.is_empty() && line.contains(first)) {
            continue;
        }
        if !line.is_empty() {
            line += ": ";
        }
        line += first;
    }
    line
}
