//! `wasnap update INSTANCE NAME [--arg TEXT]`

use std::path::Path;

use anyhow::Result;
use clap::Args;
use wasnap::executor::RunOptions;
use wasnap::store::InstanceId;

use super::session;

/// Change a waiting instance: call the guest's update handler `update_NAME`
/// on its head and commit the changed state as a new version, which still
/// waits at the same call. Prints the handler's result.
#[derive(Args, Debug)]
pub struct Update {
    /// The instance (its head is updated).
    instance: InstanceId,
    /// The handler's name (the export `update_NAME`).
    name: String,
    /// The argument the handler reads with `wasnap.reply`.
    #[arg(long, default_value = "")]
    arg: String,
    #[command(flatten)]
    engine: session::EngineArgs,
}

impl Update {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let executor = session::open_existing(db, &self.engine)?;
        let updated = executor.update(
            self.instance,
            &self.name,
            self.arg.as_bytes(),
            &RunOptions::default(),
        )?;
        session::print_value(&updated.result)?;
        let report = updated.report;
        eprintln!(
            "wasnap: instance {} updated by {} at version {} (child of {}), still waiting",
            report.instance,
            self.name,
            report.version,
            report.parent.map_or("-".into(), |p| p.to_string())
        );
        Ok(())
    }
}
