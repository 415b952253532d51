//! `wasnap rm INSTANCE`

use std::path::Path;

use anyhow::Result;
use clap::Args;

use wasnap::store::InstanceId;

/// Delete an instance and all its versions, and free the pages only they
/// used.
#[derive(Args, Debug)]
pub struct Rm {
    /// The instance.
    instance: InstanceId,
}

impl Rm {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let store = super::open_existing(db)?;
        let removed = store.remove_instance(self.instance)?;
        let freed = store.gc()?;
        note!(
            "wasnap: removed instance {} and its {} versions; freed {} pages ({} bytes)",
            self.instance,
            removed.versions,
            freed.pages,
            freed.bytes
        );
        Ok(())
    }
}
