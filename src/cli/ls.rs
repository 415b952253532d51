//! `wasnap ls [--json]`

use std::path::Path;

use anyhow::Result;
use clap::Args;

use super::json;
use wasnap::store::hex;

/// List instances: id, module, state, head version, last value.
#[derive(Args, Debug)]
pub struct Ls {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

impl Ls {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let store = super::open_existing(db)?;
        let instances = store.instances()?;
        if !self.json {
            println!(
                "{:>8}  {:<12}  {:<9}  {:>4}  LAST VALUE",
                "INSTANCE", "MODULE", "STATE", "HEAD"
            );
        }
        for info in instances {
            let module = hex(&info.module_hash)[..12].to_string();
            let value = info.last_value.as_deref().unwrap_or_default();
            if self.json {
                println!(
                    "{}",
                    json::object(&[
                        ("instance", info.id.to_string()),
                        ("module", json::string(&hex(&info.module_hash))),
                        ("state", json::string(info.state.as_str())),
                        ("head", json::number(info.head)),
                        ("last_value", json::bytes(value)),
                    ])
                );
            } else {
                println!(
                    "{:>8}  {:<12}  {:<9}  {:>4}  {}",
                    info.id,
                    module,
                    info.state.as_str(),
                    info.head.map_or("-".into(), |h| h.to_string()),
                    String::from_utf8_lossy(value)
                );
            }
        }
        Ok(())
    }
}
