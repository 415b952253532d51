//! `wasnap run MODULE.wasm [LIMITS AND GRANTS] [-- ARGS...]`

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use wasnap::executor::RunOptions;

use super::session::{self, PolicyArgs};

/// Start a new instance of a module and run it to its first yield or end.
#[derive(Args, Debug)]
pub struct Run {
    /// The workflow module (`.wasm`, or `.wat` text).
    module: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Arguments passed to the workflow (WASI), after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

impl Run {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let wasm = super::read_module(&self.module)?;
        let executor = session::open(db)?;
        // Instrumented and compiled before anything is stored, so a module
        // that cannot run leaves the database as it was.
        let module = executor
            .add_module(&wasm)
            .with_context(|| format!("{}", self.module.display()))?;
        let program = self
            .module
            .file_name()
            .map_or("workflow".into(), |n| n.to_string_lossy().into_owned());
        let args: Vec<String> = std::iter::once(program).chain(self.args).collect();
        let options = RunOptions {
            policy: self.policy.policy(),
            ..RunOptions::default()
        };
        let report = executor
            .start(&module, &args, &options)
            .with_context(|| format!("{}", self.module.display()))?;
        session::report(&report)
    }
}
