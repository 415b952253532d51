//! `wasnap rm INSTANCE`

use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::store::InstanceId;

/// Delete an instance and all its versions.
#[derive(Args, Debug)]
pub struct Rm {
    /// The instance.
    instance: InstanceId,
}

impl Rm {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let store = super::open_existing(db)?;
        let report = store.remove_instance(self.instance)?;
        eprintln!(
            "wasnap: removed instance {}: {} versions, {} page references, {} bytes ({} to free them)",
            self.instance, report.versions, report.page_refs, report.bytes, "run `wasnap gc`"
        );
        Ok(())
    }
}
