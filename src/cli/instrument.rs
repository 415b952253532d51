//! `wasnap instrument MODULE.wasm -o OUT.wasm`

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use wasnap::instrument::{Options, instrument};

/// Instrument a module for suspension (Binaryen Asyncify ABI), without
/// running it: a drop-in for `wasm-opt --asyncify`.
#[derive(Args, Debug)]
pub struct Instrument {
    /// The module to instrument.
    module: PathBuf,
    /// Where to write the instrumented module.
    #[arg(short, long)]
    output: PathBuf,
    /// More suspending imports, as `module.name` with `*` wildcards
    /// (`wasnap.yield` and `wasnap.switch` always suspend).
    #[arg(long = "suspend", value_name = "PATTERN")]
    suspend: Vec<String>,
    /// Only functions named like this (`*` wildcards; repeatable) may be on
    /// the stack when the module suspends, like Binaryen's
    /// `asyncify-onlylist`; a suspension through any other function traps.
    #[arg(long = "only", value_name = "PATTERN")]
    only: Vec<String>,
}

impl Instrument {
    pub(super) fn execute(self) -> Result<()> {
        let wasm = super::read_module(&self.module)?;
        let options = self
            .suspend
            .into_iter()
            .fold(Options::default(), Options::suspending);
        let options = self.only.into_iter().fold(options, Options::only_functions);
        let output =
            instrument(&wasm, &options).with_context(|| format!("{}", self.module.display()))?;
        std::fs::write(&self.output, &output.wasm)
            .with_context(|| format!("cannot write {}", self.output.display()))?;
        note!(
            "wasnap: instrumented {} of the module's functions; wrote {} ({} bytes)",
            output.metadata.frames.len(),
            self.output.display(),
            output.wasm.len()
        );
        Ok(())
    }
}
