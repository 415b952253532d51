//! `wasnap resume INSTANCE[@VERSION] [--send TEXT | --send-file PATH]`

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::Target;
use super::session::Session;
use crate::runtime::Settings;
use crate::store::VersionKind;

/// Continue an instance from its head, or from an older version (a branch).
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
    /// The most native stack the workflow's Wasm code may use, like 8MiB
    /// (default 8 MiB); deeper recursion fails the run.
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size_arg)]
    max_wasm_stack: Option<usize>,
}

impl Resume {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let reply = match (&self.send, &self.send_file) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(path)) => {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
            }
            (None, None) => Vec::new(),
        };
        let session = Session::open_existing(db)?.with_max_wasm_stack(self.max_wasm_stack)?;
        let instance = self.target.instance;
        let lease = session.store.lease(instance)?;
        let version = self.target.version_in(&session.store)?;
        let info = session.store.version(instance, version)?;
        if info.kind != VersionKind::Suspended {
            bail!(
                "version {version} of instance {instance} is {}: there is nothing to resume (resume an earlier version with INSTANCE@VERSION)",
                info.kind.as_str()
            );
        }
        let snapshot = session.store.load_version(instance, version)?;
        let module = session.module(&snapshot.module_hash)?;
        let mut workflow = session
            .engine
            .restore_with(&module, &snapshot, Settings::default())?;
        workflow.send(&reply);
        session.drive(&lease, &mut workflow, Some(version), &reply)
    }
}
