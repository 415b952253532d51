//! `wasnap resume INSTANCE[@VERSION] [--send TEXT | --send-file PATH]`

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use wasnap::executor::RunOptions;

use super::Target;
use super::session::{self, EngineArgs, PolicyArgs};

/// Continue an instance from its head, or from an older version (a branch).
///
/// `INSTANCE` alone resumes whatever its head is when this command takes the
/// instance's lease; `INSTANCE@VERSION` resumes exactly that version, so a
/// reply always reaches the question it was meant for.
///
/// A sleeping instance is resumed once its wake-up time has come; `--now`
/// wakes it early. A question asked with a deadline is answered with
/// `--send`; `--now` lets its deadline pass at once.
#[derive(Args, Debug)]
pub struct Resume {
    /// `INSTANCE` (its head version) or `INSTANCE@VERSION`.
    target: Target,
    /// The reply the pending yield returns.
    #[arg(long, conflicts_with = "send_file")]
    send: Option<String>,
    /// Send the contents of a file as the reply.
    #[arg(long, value_name = "PATH")]
    send_file: Option<PathBuf>,
    /// Fire the version's timer now: wake a sleep early, or let a
    /// question's deadline pass.
    #[arg(long)]
    now: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

impl Resume {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let reply = session::reply(self.send, self.send_file.as_deref())?;
        let executor = session::open_existing(db, &self.engine)?;
        let options = RunOptions {
            policy: self.policy.policy(),
            wake: self.now,
            ..RunOptions::default()
        };
        let target = self.target;
        let report = executor.resume(target.instance, target.version, &reply, &options)?;
        session::leave(executor);
        session::report(&report)
    }
}
