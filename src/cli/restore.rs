//! `wasnap restore FILE [--send TEXT]`

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use wasnap::executor::RunOptions;
use wasnap::snapshot::file;

use super::session::{self, EngineArgs, PolicyArgs};

/// Load a snapshot file as a new instance (its version 1) and resume it.
#[derive(Args, Debug)]
pub struct Restore {
    /// A file written by `wasnap snapshot`.
    file: PathBuf,
    /// The reply the pending yield returns.
    #[arg(long)]
    send: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

impl Restore {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        // A file that cannot be read as a snapshot is refused before the
        // database is opened (or created).
        let (snapshot, wasm) =
            file::decode(&bytes).with_context(|| format!("{}", self.file.display()))?;
        let executor = session::open(db, &self.engine)?;
        let options = RunOptions {
            policy: self.policy.policy(),
            ..RunOptions::default()
        };
        let reply = self.send.unwrap_or_default();
        let restored = executor
            .restore_decoded(&snapshot, wasm, reply.as_bytes(), &options)
            .with_context(|| format!("{}", self.file.display()))?;
        note!(
            "wasnap: restored {} as instance {} version {}",
            self.file.display(),
            restored.report.instance,
            restored.first
        );
        session::report(&restored.report)
    }
}
