//! Two versions of an instance compared.

use anyhow::Result;

use super::Executor;
use crate::snapshot::diff::{SnapshotDiff, diff};
use crate::store::InstanceId;

/// Two versions compared.
#[derive(Clone, Debug, PartialEq)]
pub struct Diffed {
    /// The instance and version compared from (before).
    pub a: (InstanceId, u32),
    /// The instance and version compared to (after).
    pub b: (InstanceId, u32),
    /// What differs.
    pub diff: SnapshotDiff,
}

impl Executor {
    /// What changed from version `a` to version `b` (of the same or
    /// another instance): memory, globals, the pending call, and each
    /// coroutine's frames and saved values, by function name. Both must be
    /// suspensions; each is read with its own module's instrumentation.
    pub fn diff(&self, a: (InstanceId, u32), b: (InstanceId, u32)) -> Result<Diffed> {
        let sa = self.database.load_version(a.0, a.1)?;
        let sb = self.database.load_version(b.0, b.1)?;
        let ma = self.module(&sa.module_hash)?;
        let mb = self.module(&sb.module_hash)?;
        Ok(Diffed {
            a,
            b,
            diff: diff(&sa, ma.metadata(), &sb, mb.metadata())?,
        })
    }
}
