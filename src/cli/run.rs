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
    /// The most native stack the workflow's Wasm code may use, like 8MiB
    /// (default 8 MiB); deeper recursion fails the run.
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size_arg)]
    max_wasm_stack: Option<usize>,
}

impl Run {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let wasm = super::read_module(&self.module)?;
        // Instrument and compile before anything is stored, so a module
        // that cannot run leaves the database as it was.
        let session = Session::open(db)?.with_max_wasm_stack(self.max_wasm_stack)?;
        let module = session
            .engine
            .load(&wasm)
            .with_context(|| format!("{}", self.module.display()))?;
        let hash = session.store.put_module(&wasm)?;
        let fingerprint = session.engine.fingerprint();
        if session.store.compiled(&hash, &fingerprint)?.is_none() {
            session
                .store
                .put_compiled(&hash, &fingerprint, &module.serialize()?)?;
        }
        let program = self
            .module
            .file_name()
            .map_or("workflow".into(), |n| n.to_string_lossy().into_owned());
        let mut args = vec![program];
        args.extend(self.args);
        let instance = session.store.create_instance(&hash, &args)?;
        let lease = session.store.lease(instance)?;
        let mut workflow = session
            .engine
            .start(&module, Settings::default().args(args))?;
        session.drive(&lease, &mut workflow, None, &[])
    }
}
