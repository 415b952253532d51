//! `wasnap snapshot INSTANCE[@VERSION] -o FILE`

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;

use super::Target;
use wasnap::snapshot::file;

/// Write a version as a self-contained snapshot file (module included).
#[derive(Args, Debug)]
pub struct SnapshotCommand {
    /// `INSTANCE` (its head version) or `INSTANCE@VERSION`.
    target: Target,
    /// The file to write.
    #[arg(short, long)]
    output: PathBuf,
}

impl SnapshotCommand {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let store = super::open_existing(db)?;
        let version = self.target.version_in(&store)?;
        let snapshot = store.load_version(self.target.instance, version)?;
        let module = store.module(&snapshot.module_hash)?;
        let bytes = file::encode(&snapshot, Some(&module))?;
        // Write beside the target and rename, so a failed write never
        // leaves a truncated snapshot under the requested name.
        let partial = self.output.with_extension("partial");
        std::fs::write(&partial, &bytes)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, &self.output)
            .with_context(|| format!("cannot write {}", self.output.display()))?;
        note!(
            "wasnap: wrote instance {} version {version} to {} ({} bytes)",
            self.target.instance,
            self.output.display(),
            bytes.len()
        );
        Ok(())
    }
}
