//! `wasnap run MODULE.wasm|SCRIPT.js|SCRIPT.py [--stdin MODE] [LIMITS AND GRANTS] [-- ARGS...]`

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use wasnap::executor::RunOptions;
use wasnap::executor::script::{self, Language};

use super::session::{self, EngineArgs, PolicyArgs};

/// Start a new instance of a module, or of a script in its language's
/// runtime, and run it to its first yield or end.
#[derive(Args, Debug)]
pub struct Run {
    /// The workflow: a module (`.wasm`, or `.wat` text), or a script
    /// (`.js`, `.py`) for the JavaScript or Python runtime.
    module: PathBuf,
    /// What reads of standard input do: find its end (`empty`), or
    /// suspend the workflow when nothing is buffered (`suspend`); the
    /// reply of the resume that continues it is what the read returns, as
    /// a line, and an empty reply is the end of the input. Kept with the
    /// instance.
    #[arg(long, value_enum, default_value = "empty", value_name = "MODE")]
    stdin: Stdin,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Arguments passed to the workflow (WASI), after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

impl Run {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let (wasm, args) = match Language::of(&self.module) {
            Some(language) => (
                language.runtime()?,
                script_arguments(&self.module, self.args)?,
            ),
            None => {
                let program = self
                    .module
                    .file_name()
                    .map_or("workflow".into(), |n| n.to_string_lossy().into_owned());
                let args = std::iter::once(program).chain(self.args).collect();
                (super::read_module(&self.module)?, args)
            }
        };
        let executor =
            session::open(db, &self.engine)?.with_stdin_suspending(self.stdin == Stdin::Suspend)?;
        // Instrumented and compiled before anything is stored, so a module
        // that cannot run leaves the database as it was.
        let module = executor
            .add_module(&wasm)
            .with_context(|| format!("{}", self.module.display()))?;
        let options = RunOptions {
            policy: self.policy.policy(),
            ..RunOptions::default()
        };
        let report = executor
            .start(&module, &args, &options)
            .with_context(|| format!("{}", self.module.display()))?;
        session::leave(executor);
        session::report(&report)
    }
}

/// What reads of standard input do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Stdin {
    /// They find its end, as a program without input does.
    Empty,
    /// Each read with nothing buffered suspends the workflow.
    Suspend,
}

/// The WASI arguments that run the script file `path` with its own `args`.
fn script_arguments(path: &Path, args: Vec<String>) -> Result<Vec<String>> {
    let source = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let source = String::from_utf8(source)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    let name = path
        .file_name()
        .map_or_else(|| "script".into(), |n| n.to_string_lossy().into_owned());
    Ok(script::arguments(&name, source, args))
}
