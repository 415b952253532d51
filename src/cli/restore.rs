//! `wasnap restore FILE [--send TEXT]`

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::session::Session;
use crate::runtime::{Settings, module_hash};
use crate::snapshot::file;
use crate::store::Outcome;

/// Load a snapshot file as a new instance (its version 1) and resume it.
#[derive(Args, Debug)]
pub struct Restore {
    /// A file written by `wasnap snapshot`.
    file: PathBuf,
    /// The reply the pending yield returns.
    #[arg(long)]
    send: Option<String>,
}

impl Restore {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        let (snapshot, wasm) =
            file::decode(&bytes).with_context(|| format!("{}", self.file.display()))?;
        let Some(wasm) = wasm else {
            bail!(
                "{} holds no module, so it cannot be restored on its own",
                self.file.display()
            );
        };
        if module_hash(&wasm) != snapshot.module_hash {
            bail!(
                "{}: the embedded module does not match the snapshot",
                self.file.display()
            );
        }
        let session = Session::open(db)?;
        // Everything that can fail on the file's content is checked before
        // the database is written.
        let module = session.engine.load(&wasm)?;
        let mut workflow = session
            .engine
            .restore_with(&module, &snapshot, Settings::default())?;
        let hash = session.store.put_module(&wasm)?;
        let instance = session.store.create_instance(&hash, &snapshot.host.args)?;
        let lease = session.store.lease(instance)?;
        let first =
            session
                .store
                .commit_version(&lease, None, &Outcome::Suspended(&snapshot), &[])?;
        note!(
            "wasnap: restored {} as instance {instance} version {first}",
            self.file.display()
        );
        let reply = self.send.unwrap_or_default();
        workflow.send(reply.as_bytes());
        session.drive(&lease, &mut workflow, Some(first), reply.as_bytes())
    }
}
