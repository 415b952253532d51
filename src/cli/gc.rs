//! `wasnap gc`

use std::path::Path;

use anyhow::Result;
use clap::Args;

/// Free the memory pages no version uses any more.
#[derive(Args, Debug)]
pub struct Gc {}

impl Gc {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let store = super::open_existing(db)?;
        let report = store.gc()?;
        note!(
            "wasnap: freed {} pages, {} bytes",
            report.pages,
            report.bytes
        );
        Ok(())
    }
}
