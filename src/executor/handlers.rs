//! Queries and updates: a guest's handlers run on a stored version.
//!
//! A query restores the version into a scratch workflow, calls
//! `query_NAME` and throws the workflow away: nothing is committed, and
//! the instance's lease is not needed (a committed version never changes).
//! An update takes the lease, runs `update_NAME` on the head and commits
//! the changed state as a new version, a child of the head that waits at
//! the same call with the same value; the handler's name, argument, result
//! and inputs are kept with it, so that an upgrade can replay it.

use anyhow::{Context as _, Result, bail};

use super::{Ended, Executor, Report, RunOptions};
use crate::store::{InstanceId, Origin, Outcome, Provenance};

/// What an update committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Updated {
    /// The new version (still suspended at the head's pending call).
    pub report: Report,
    /// What the handler responded.
    pub result: Vec<u8>,
}

impl Executor {
    /// Calls the query handler `query_NAME` with `arg` on `version` of
    /// `instance` (its head when `None`) and returns its result. The
    /// database is unchanged, whatever the handler does; a handler that
    /// tries to suspend is an error.
    pub fn query(
        &self,
        instance: InstanceId,
        version: Option<u32>,
        name: &str,
        arg: &[u8],
        options: &RunOptions,
    ) -> Result<Vec<u8>> {
        let version = match version {
            Some(version) => version,
            None => self.head(instance)?,
        };
        let mut workflow = self.restore_version(instance, version, None, options)?;
        workflow
            .query(name, arg)
            .with_context(|| format!("query {name} on version {version} of instance {instance}"))
    }

    /// Calls the update handler `update_NAME` with `arg` on the head of
    /// `instance` and commits the state it leaves as a new version, a child
    /// of the head, still waiting at the head's pending call. When the
    /// handler fails, nothing is committed.
    pub fn update(
        &self,
        instance: InstanceId,
        name: &str,
        arg: &[u8],
        options: &RunOptions,
    ) -> Result<Updated> {
        let lease = self.database.lease(instance)?;
        let head = self.head(instance)?;
        let mut workflow = self.restore_version(instance, head, Some(&lease), options)?;
        let result = workflow
            .update(name, arg)
            .with_context(|| format!("update {name} on version {head} of instance {instance}"))?;
        let inputs = workflow.take_inputs().encode();
        let snapshot = workflow.snapshot()?;
        let provenance = Provenance {
            origin: Origin::Update,
            handler: Some(name),
            result: Some(&result),
            inputs: Some(&inputs),
        };
        let version = self.database.commit_version_from(
            &lease,
            Some(head),
            &Outcome::Suspended(&snapshot),
            arg,
            &provenance,
        )?;
        Ok(Updated {
            report: Report {
                instance,
                version,
                parent: Some(head),
                ended: Ended::Suspended {
                    value: snapshot.host.yielded.clone(),
                },
                timer: None,
            },
            result,
        })
    }

    /// The head version of `instance`.
    pub(super) fn head(&self, instance: InstanceId) -> Result<u32> {
        match self.database.instance(instance)?.head {
            Some(head) => Ok(head),
            None => bail!("instance {instance} has no version yet"),
        }
    }
}
