//! `wasnap log INSTANCE [--json] [--full]`

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::Args;

use super::json;
use super::show::{PREVIEW_BYTES, shown};
use wasnap::runtime::{Timer, short_hash, utc_text};
use wasnap::store::{InstanceId, Origin, VersionInfo, VersionKind};

/// Show an instance's version tree.
#[derive(Args, Debug)]
pub struct Log {
    /// The instance.
    instance: InstanceId,
    /// One JSON object per version and line instead of a tree.
    #[arg(long)]
    json: bool,
    /// Show values and replies whole (otherwise their first 64 bytes).
    #[arg(long)]
    full: bool,
}

impl Log {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let store = super::open_existing(db)?;
        let info = store.instance(self.instance)?;
        let versions = if self.full {
            store.versions(self.instance)?
        } else {
            store.versions_shortened(self.instance, PREVIEW_BYTES)?
        };
        let mut out = std::io::stdout().lock();
        if self.json {
            for v in &versions {
                writeln!(out, "{}", version_json(v, self.full))?;
            }
            return Ok(());
        }
        let mut children: BTreeMap<Option<u32>, Vec<&VersionInfo>> = BTreeMap::new();
        for v in &versions {
            children.entry(v.parent).or_default().push(v);
        }
        writeln!(
            out,
            "instance {} ({}, head {})",
            self.instance,
            info.state.as_str(),
            info.head.map_or("-".into(), |h| h.to_string())
        )?;
        let tree = Tree {
            children: &children,
            head: info.head,
            full: self.full,
        };
        let roots = children.get(&None).cloned().unwrap_or_default();
        for (i, root) in roots.iter().enumerate() {
            tree.draw(&mut out, root, "", i + 1 == roots.len())?;
        }
        Ok(())
    }
}

fn describe(v: &VersionInfo, head: Option<u32>, full: bool) -> String {
    let mut text = format!("v{}", v.number);
    match (v.kind, v.timer) {
        (VersionKind::Suspended, Some(Timer::Sleep { wake_at })) => {
            text += &format!(" sleeps until {}", utc_text(wake_at))
        }
        (VersionKind::Suspended, timer) => {
            text += &format!(" yielded {}", shown(&v.value, v.value_len, full).quoted());
            if let Some(timer) = timer {
                text += &format!(" (deadline {})", utc_text(timer.wake_at()));
            }
        }
        (VersionKind::Finished, _) => text += " finished",
        (VersionKind::Failed, _) => {
            text += &format!(
                " failed: {}",
                v.message.as_deref().unwrap_or("unknown cause")
            )
        }
    }
    let reply = shown(&v.reply, v.reply_len, full).quoted();
    match v.origin {
        Origin::Run if v.reply_len == 0 => {}
        Origin::Run => text += &format!(" (after reply {reply})"),
        Origin::Wake => text += " (after its timer fired)",
        Origin::Update => {
            let handler = v.handler.as_deref().unwrap_or("?");
            text += &format!(" (update {handler} with {reply})");
        }
        Origin::Upgrade => text += &format!(" (upgraded to module {})", short_hash(&v.module_hash)),
        Origin::Restore => text += " (restored from a snapshot file)",
    }
    if head == Some(v.number) {
        text += "  <- head";
    }
    text
}

/// An instance's versions by parent, drawn as a tree.
struct Tree<'a> {
    children: &'a BTreeMap<Option<u32>, Vec<&'a VersionInfo>>,
    head: Option<u32>,
    full: bool,
}

impl Tree<'_> {
    fn draw(&self, out: &mut impl Write, v: &VersionInfo, prefix: &str, last: bool) -> Result<()> {
        let branch = if last { "└─ " } else { "├─ " };
        writeln!(out, "{prefix}{branch}{}", describe(v, self.head, self.full))?;
        let prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
        let kids = self
            .children
            .get(&Some(v.number))
            .cloned()
            .unwrap_or_default();
        for (i, child) in kids.iter().enumerate() {
            self.draw(out, child, &prefix, i + 1 == kids.len())?;
        }
        Ok(())
    }
}

fn version_json(v: &VersionInfo, full: bool) -> String {
    let mut fields = vec![
        ("version".to_string(), v.number.to_string()),
        ("parent".to_string(), json::number(v.parent)),
        ("kind".to_string(), json::string(v.kind.as_str())),
    ];
    fields.extend(shown(&v.value, v.value_len, full).json_fields("value"));
    fields.extend(shown(&v.reply, v.reply_len, full).json_fields("reply"));
    fields.extend([
        ("created_ms".to_string(), v.created_ms.to_string()),
        ("memory_bytes".to_string(), v.memory_bytes.to_string()),
        ("stored_bytes".to_string(), v.stored_bytes.to_string()),
        ("origin".to_string(), json::string(v.origin.as_str())),
        (
            "handler".to_string(),
            v.handler.as_deref().map_or("null".into(), json::string),
        ),
        (
            "module".to_string(),
            json::string(&wasnap::store::hex(&v.module_hash)),
        ),
        (
            "message".to_string(),
            v.message.as_deref().map_or("null".into(), json::string),
        ),
        (
            "wake_at".to_string(),
            json::number(v.timer.map(Timer::wake_at)),
        ),
    ]);
    json::object(&fields)
}
