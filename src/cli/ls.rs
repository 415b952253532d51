//! `wasnap ls [--json] [--full]`

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
use clap::Args;

use super::json;
use super::show::{PREVIEW_BYTES, shown};
use wasnap::store::hex;

/// List instances: id, module, state, head version, last value.
#[derive(Args, Debug)]
pub struct Ls {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Show each last value whole (otherwise its first 64 bytes).
    #[arg(long)]
    full: bool,
}

impl Ls {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let store = super::open_existing(db)?;
        let instances = if self.full {
            store.instances()?
        } else {
            store.instances_shortened(PREVIEW_BYTES)?
        };
        let mut out = std::io::stdout().lock();
        if !self.json {
            writeln!(
                out,
                "{:>8}  {:<12}  {:<9}  {:>4}  LAST VALUE",
                "INSTANCE", "MODULE", "STATE", "HEAD"
            )?;
        }
        for info in instances {
            let value = shown(
                info.last_value.as_deref().unwrap_or_default(),
                info.last_value_len.unwrap_or(0),
                self.full,
            );
            if self.json {
                let mut fields = vec![
                    ("instance".to_string(), info.id.to_string()),
                    ("module".to_string(), json::string(&hex(&info.module_hash))),
                    ("state".to_string(), json::string(info.state.as_str())),
                    ("head".to_string(), json::number(info.head)),
                ];
                fields.extend(value.json_fields("last_value"));
                writeln!(out, "{}", json::object(&fields))?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<12}  {:<9}  {:>4}  {}",
                    info.id,
                    &hex(&info.module_hash)[..12],
                    info.state.as_str(),
                    info.head.map_or("-".into(), |h| h.to_string()),
                    value.plain()
                )?;
            }
        }
        Ok(())
    }
}
