//! `wasnap ls [--json]`

use std::path::Path;

use anyhow::Result;
use clap::Args;

use super::json;
use wasnap::runtime::{Timer, duration_text, now_ms, utc_text};
use wasnap::store::hex;

/// List instances: id, module, state, head version, last value, and when a
/// sleeping one wakes (or a question's deadline).
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
        let now = now_ms();
        for info in instances {
            let module = hex(&info.module_hash)[..12].to_string();
            let value = info.last_value.as_deref().unwrap_or_default();
            let sleeping = matches!(info.timer, Some(Timer::Sleep { .. }));
            let state = if sleeping {
                "sleeping"
            } else {
                info.state.as_str()
            };
            let mut shown = String::from_utf8_lossy(value).into_owned();
            if let Some(timer) = info.timer {
                let at = timer.wake_at();
                let when = match at.checked_sub(now) {
                    Some(left) if left > 0 => format!("in {}", duration_text(left)),
                    _ => "due".to_string(),
                };
                let what = if sleeping { "wakes" } else { "deadline" };
                let text = format!("{what} {} ({when})", utc_text(at));
                shown = if shown.is_empty() {
                    text
                } else {
                    format!("{shown}  [{text}]")
                };
            }
            if self.json {
                println!(
                    "{}",
                    json::object(&[
                        ("instance", info.id.to_string()),
                        ("module", json::string(&hex(&info.module_hash))),
                        ("state", json::string(state)),
                        ("head", json::number(info.head)),
                        ("last_value", json::bytes(value)),
                        ("wake_at", json::number(info.timer.map(Timer::wake_at))),
                    ])
                );
            } else {
                println!(
                    "{:>8}  {:<12}  {:<9}  {:>4}  {}",
                    info.id,
                    module,
                    state,
                    info.head.map_or("-".into(), |h| h.to_string()),
                    shown
                );
            }
        }
        Ok(())
    }
}
