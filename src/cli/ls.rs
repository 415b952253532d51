//! `wasnap ls [--json] [--full]`

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
use clap::Args;

use super::json;
use super::show::{PREVIEW_BYTES, shown};
use wasnap::runtime::{Timer, duration_text, now_ms, utc_text};
use wasnap::store::hex;

/// List instances: id, module, state, head version, last value, and when a
/// sleeping one wakes (or a question's deadline).
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
        let now = now_ms();
        for info in instances {
            let value = shown(
                info.last_value.as_deref().unwrap_or_default(),
                info.last_value_len.unwrap_or(0),
                self.full,
            );
            let sleeping = matches!(info.timer, Some(Timer::Sleep { .. }));
            let state = if sleeping {
                "sleeping"
            } else {
                info.state.as_str()
            };
            let mut text = value.plain();
            if let Some(timer) = info.timer {
                let at = timer.wake_at();
                let when = match at.checked_sub(now) {
                    Some(left) if left > 0 => format!("in {}", duration_text(left)),
                    _ => "due".to_string(),
                };
                let what = if sleeping { "wakes" } else { "deadline" };
                let timer_text = format!("{what} {} ({when})", utc_text(at));
                text = if text.is_empty() {
                    timer_text
                } else {
                    format!("{text}  [{timer_text}]")
                };
            }
            if self.json {
                let mut fields = vec![
                    ("instance".to_string(), info.id.to_string()),
                    ("module".to_string(), json::string(&hex(&info.module_hash))),
                    ("state".to_string(), json::string(state)),
                    ("head".to_string(), json::number(info.head)),
                ];
                fields.extend(value.json_fields("last_value"));
                fields.push((
                    "wake_at".to_string(),
                    json::number(info.timer.map(Timer::wake_at)),
                ));
                writeln!(out, "{}", json::object(&fields))?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<12}  {:<9}  {:>4}  {}",
                    info.id,
                    &hex(&info.module_hash)[..12],
                    state,
                    info.head.map_or("-".into(), |h| h.to_string()),
                    text
                )?;
            }
        }
        Ok(())
    }
}
