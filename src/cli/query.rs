//! `wasnap query INSTANCE[@VERSION] NAME [--arg TEXT]`

use std::path::Path;

use anyhow::Result;
use clap::Args;
use wasnap::executor::RunOptions;

use super::Target;
use super::session;

/// Ask a suspended version a question: call the guest's query handler
/// `query_NAME` on its state and print the result. Nothing is stored.
#[derive(Args, Debug)]
pub struct Query {
    /// `INSTANCE` (its head version) or `INSTANCE@VERSION`.
    target: Target,
    /// The handler's name (the export `query_NAME`).
    name: String,
    /// The argument the handler reads with `wasnap.reply`.
    #[arg(long, default_value = "")]
    arg: String,
    #[command(flatten)]
    engine: session::EngineArgs,
}

impl Query {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let executor = session::open_existing(db, &self.engine)?;
        let target = self.target;
        let result = executor.query(
            target.instance,
            target.version,
            &self.name,
            self.arg.as_bytes(),
            &RunOptions::default(),
        )?;
        session::print_value(&result)
    }
}
