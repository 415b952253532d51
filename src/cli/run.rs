//! `wasnap run MODULE.wasm [-- ARGS...]`

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;

use super::session::Session;
use crate::runtime::Settings;

/// Start a new instance of a module and run it to its first yield or end.
#[derive(Args, Debug)]
pub struct Run {
    /// The workflow module (`.wasm`).
    module: PathBuf,
    /// Arguments passed to the workflow (WASI), after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

impl Run {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let wasm = super::read_module(&self.module)?;
        let program = self
            .module
            .file_name()
            .map_or("workflow".into(), |n| n.to_string_lossy().into_owned());
        let mut args = vec![program];
        args.extend(self.args);
        // Instrument, compile and instantiate (which runs the module's
        // start function) before anything is stored, so a module that
        // cannot run leaves the database as it was.
        let session = Session::open(db)?;
        let module = session
            .engine
            .load(&wasm)
            .with_context(|| format!("{}", self.module.display()))?;
        let mut workflow = session
            .engine
            .start(&module, Settings::default().args(args.clone()))
            .with_context(|| format!("{}", self.module.display()))?;
        let hash = session.store.put_module(&wasm)?;
        let fingerprint = session.engine.fingerprint();
        if session.store.compiled(&hash, &fingerprint)?.is_none() {
            session
                .store
                .put_compiled(&hash, &fingerprint, &module.serialize()?)?;
        }
        let instance = session.store.create_instance(&hash, &args)?;
        let lease = session.store.lease(instance)?;
        session.drive(&lease, &mut workflow, None, &[])
    }
}
