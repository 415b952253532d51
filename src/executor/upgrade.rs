//! Moving a suspended instance to new code, by deterministic replay.
//!
//! A suspended instance's frames fit only the code they were unwound from,
//! so its state cannot simply be loaded into another module. Instead the
//! new module is run from its start through the instance's whole history,
//! root to head, with what each version recorded: the reply each resume
//! sent, each update's handler and argument, and the inputs each run took
//! from outside (clocks, random bytes, host function answers, patches),
//! handed back in order by the workflow's journal. The new code must yield
//! the same value at every step, give every update the same result, take
//! exactly the recorded inputs, and arrive suspended in the same call with
//! the same value as the head. Then its state is committed as a new
//! version, a child of the head, on the new module; the old versions stay
//! restorable on the old one. At the first difference nothing is committed
//! and the [`Divergence`] says where and how.
//!
//! New code tells replayed steps from new ones with `wasnap.patched(id)`:
//! true when running normally (and recorded), and when replaying, true only
//! where the recorded run took that patch too. So a changed step can be
//! written `if patched("id") { new } else { old }`: old histories replay the
//! old path, everything after them takes the new.
//!
//! The replay prints nothing (its stdout is dropped: the recorded runs
//! printed it already) and sees granted directories read-only, so that it
//! cannot write again what the recorded runs wrote.

use anyhow::{Result, bail};

use super::{Executor, one_line};
use crate::runtime::journal::Inputs;
use crate::runtime::{Captured, Output, Settings, Step, Workflow, short_hash};
use crate::snapshot::ModuleHash;
use crate::store::{InstanceId, InstanceState, Origin, Outcome, Provenance, Step as Recorded};

/// How an upgrade is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpgradeOptions {
    /// Check that the instance can move, and commit nothing.
    pub dry_run: bool,
}

/// What an upgrade found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The instance moved: this is its new head, on the new module.
    Moved {
        /// The new head version.
        version: u32,
    },
    /// A dry run: the instance can move.
    Possible,
    /// The new code does not replay the history; nothing changed.
    Diverged(Divergence),
}

/// The first step at which the new code did not do what the old code did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The step, 1 for the root version, along the path to the head.
    pub step: usize,
    /// The version recorded at that step.
    pub version: u32,
    /// What the step is (the start, a resume with its reply, an update).
    pub action: String,
    /// What the old code did there.
    pub old: String,
    /// What the new code does there.
    pub new: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {} (version {}, {}): the old code {}; the new code {}",
            self.step, self.version, self.action, self.old, self.new
        )
    }
}

/// One instance's upgrade, checked or made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeReport {
    /// The instance.
    pub instance: InstanceId,
    /// Its head when the upgrade began.
    pub head: u32,
    /// The module it ran.
    pub from: ModuleHash,
    /// The module it was checked against or moved to.
    pub to: ModuleHash,
    /// The steps replayed (versions on the path from the root to the head).
    pub steps: usize,
    /// What came of it.
    pub outcome: Upgrade,
}

impl Executor {
    /// Moves the suspended `instance` to the module `new_wasm` by
    /// replaying its history (see the module documentation), or with
    /// `options.dry_run` only checks that it can. A divergence is not an
    /// error: it is reported in [`UpgradeReport::outcome`], and nothing
    /// changed (the new module is stored only when the instance moves).
    /// Errors are what prevents the check itself: an instance that is not
    /// suspended or is busy, a history with no recorded inputs, a module
    /// that cannot be compiled.
    pub fn upgrade(
        &self,
        instance: InstanceId,
        new_wasm: &[u8],
        options: UpgradeOptions,
    ) -> Result<UpgradeReport> {
        let module = self.engine.load(new_wasm)?;
        let new = &module.hash();
        let lease = match options.dry_run {
            true => None,
            false => Some(self.database.lease(instance)?),
        };
        let info = self.database.instance(instance)?;
        if info.state != InstanceState::Suspended {
            bail!(
                "instance {instance} is {}: only a suspended instance can move to new code",
                info.state.as_str()
            );
        }
        let head = self.head(instance)?;
        if info.module_hash == *new {
            bail!(
                "instance {instance} already runs module {}",
                short_hash(new)
            );
        }
        let history = self.database.history(instance, head)?;
        check_replayable(instance, &history)?;
        let head_snapshot = self.database.load_version(instance, head)?;
        let settings = Settings::default()
            .args(info.args.iter().cloned())
            .policy(info.policy.clone())
            .stdout(Output::Capture(Captured::default()));
        let replayed = replay(self, &module, settings, &history, instance)?;
        let mut report = UpgradeReport {
            instance,
            head,
            from: info.module_hash,
            to: *new,
            steps: history.len(),
            outcome: Upgrade::Possible,
        };
        let mut workflow = match replayed {
            Ok(workflow) => workflow,
            Err(divergence) => {
                report.outcome = Upgrade::Diverged(divergence);
                return Ok(report);
            }
        };
        let last = history.last().expect("a history has its head");
        let snapshot = workflow.snapshot()?;
        if snapshot.host.suspended_in != head_snapshot.host.suspended_in {
            report.outcome = Upgrade::Diverged(Divergence {
                step: history.len(),
                version: last.number,
                action: action(last, history.len()),
                old: format!("waits in {}", head_snapshot.host.suspended_in),
                new: format!("waits in {}", snapshot.host.suspended_in),
            });
            return Ok(report);
        }
        let Some(lease) = lease else {
            return Ok(report);
        };
        self.database.put_module(new_wasm)?;
        self.keep_artifact(&module)?;
        let provenance = Provenance {
            origin: Origin::Upgrade,
            inputs: Some(&[]),
            ..Provenance::UNRECORDED_RUN
        };
        let version = self.database.commit_version_from(
            &lease,
            Some(head),
            &Outcome::Suspended(&snapshot),
            &[],
            &provenance,
        )?;
        report.outcome = Upgrade::Moved { version };
        Ok(report)
    }

    /// [`Executor::upgrade`] for every suspended instance whose head runs
    /// module `old`, by id; each instance's own error (busy, no recorded
    /// history) is its entry's.
    pub fn upgrade_all(
        &self,
        old: &ModuleHash,
        new_wasm: &[u8],
        options: UpgradeOptions,
    ) -> Result<Vec<(InstanceId, Result<UpgradeReport>)>> {
        self.engine.load(new_wasm)?;
        Ok(self
            .database
            .suspended_instances_of(old)?
            .into_iter()
            .map(|instance| (instance, self.upgrade(instance, new_wasm, options)))
            .collect())
    }
}

/// A history can be replayed when it starts at a run from the module's
/// start and every step's inputs were recorded.
fn check_replayable(instance: InstanceId, history: &[Recorded]) -> Result<()> {
    let root = history.first().expect("a history has its head");
    if root.origin == Origin::Restore {
        bail!(
            "instance {instance} began from a snapshot file (version {}), not from its module's start: there is no recorded run to replay",
            root.number
        );
    }
    if let Some(step) = history.iter().find(|s| s.inputs.is_none()) {
        bail!(
            "version {} of instance {instance} was made before wasnap recorded the inputs of runs: its history cannot be replayed",
            step.number
        );
    }
    Ok(())
}

/// What step `index` (1-based) did, in words.
fn action(step: &Recorded, index: usize) -> String {
    match step.origin {
        Origin::Run if index == 1 => "the first run".into(),
        Origin::Run if step.reply.is_empty() => "a resume without a reply".into(),
        Origin::Run => format!("the resume with reply {}", quoted(&step.reply)),
        Origin::Wake => "the timer firing".into(),
        Origin::Update => format!(
            "update {} with argument {}",
            step.handler.as_deref().unwrap_or("?"),
            quoted(&step.reply)
        ),
        Origin::Upgrade => "an earlier upgrade".into(),
        Origin::Restore => "a restored snapshot".into(),
    }
}

/// Bytes as a quoted string for reports.
fn quoted(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// Runs `module` from its start through `history`. `Ok(Err(..))` is the
/// first divergence; `Err` an error of the host.
fn replay(
    executor: &Executor,
    module: &crate::runtime::Module,
    settings: Settings,
    history: &[Recorded],
    instance: InstanceId,
) -> Result<Result<Workflow, Divergence>> {
    let inputs_of = |step: &Recorded| Inputs::decode(step.inputs.as_deref().unwrap_or_default());
    let first = inputs_of(&history[0]).map_err(|e| {
        anyhow::anyhow!(
            "the inputs of version {} of instance {instance} are corrupt: {e}",
            history[0].number
        )
    })?;
    let diverged = |index: usize, old: String, new: String| Divergence {
        step: index + 1,
        version: history[index].number,
        action: action(&history[index], index + 1),
        old,
        new,
    };
    let mut workflow = match executor.engine.start(module, settings.replaying(first)) {
        Ok(workflow) => workflow,
        Err(error) => {
            let old = "started".to_string();
            let new = format!("cannot start: {}", one_line(&error));
            return Ok(Err(diverged(0, old, new)));
        }
    };
    for (index, step) in history.iter().enumerate() {
        let inputs = inputs_of(step).map_err(|e| {
            anyhow::anyhow!(
                "the inputs of version {} of instance {instance} are corrupt: {e}",
                step.number
            )
        })?;
        let (old, new) = match step.origin {
            Origin::Run | Origin::Wake => {
                if index > 0 {
                    match step.origin {
                        Origin::Wake => workflow.wake(),
                        _ => workflow.send(&step.reply),
                    }
                    workflow.replay(inputs);
                }
                let old = format!("yielded {}", quoted(&step.value));
                let ran = workflow.run();
                match (workflow.divergence(), ran) {
                    (Some(m), _) => (m.old, m.new),
                    (None, Ok(Step::Yielded(value))) if value == step.value => {
                        match workflow.check_replayed() {
                            Ok(()) => continue,
                            Err(m) => (m.old, m.new),
                        }
                    }
                    (None, Ok(Step::Yielded(value))) => (old, format!("yields {}", quoted(&value))),
                    (None, Ok(Step::Finished(0))) => (old, "finishes".to_string()),
                    (None, Ok(Step::Finished(status))) => {
                        (old, format!("finishes with exit status {status}"))
                    }
                    (None, Err(error)) => (old, format!("fails: {}", one_line(&error))),
                }
            }
            Origin::Update => {
                workflow.replay(inputs);
                let name = step.handler.as_deref().unwrap_or_default();
                let old = format!("responded {}", quoted(&step.result));
                match (workflow.update(name, &step.reply), workflow.divergence()) {
                    (_, Some(m)) => (m.old, m.new),
                    (Ok(result), None) if result == step.result => {
                        match workflow.check_replayed() {
                            Ok(()) => continue,
                            Err(m) => (m.old, m.new),
                        }
                    }
                    (Ok(result), None) => (old, format!("responds {}", quoted(&result))),
                    (Err(error), None) => (old, format!("fails: {}", one_line(&error))),
                }
            }
            // The state moved as it was: nothing ran.
            Origin::Upgrade => continue,
            Origin::Restore => bail!(
                "version {} of instance {instance} is a restored snapshot inside a history",
                step.number
            ),
        };
        return Ok(Err(diverged(index, old, new)));
    }
    workflow.record();
    Ok(Ok(workflow))
}
