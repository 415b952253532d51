//! `wasnap log INSTANCE [--json]`

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use clap::Args;

use super::json;
use wasnap::runtime::{Timer, utc_text};
use wasnap::store::{InstanceId, VersionInfo, VersionKind};

/// Show an instance's version tree.
#[derive(Args, Debug)]
pub struct Log {
    /// The instance.
    instance: InstanceId,
    /// One JSON object per version and line instead of a tree.
    #[arg(long)]
    json: bool,
}

impl Log {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let store = super::open_existing(db)?;
        let info = store.instance(self.instance)?;
        let versions = store.versions(self.instance)?;
        if self.json {
            for v in &versions {
                println!("{}", version_json(v));
            }
            return Ok(());
        }
        let mut children: BTreeMap<Option<u32>, Vec<&VersionInfo>> = BTreeMap::new();
        for v in &versions {
            children.entry(v.parent).or_default().push(v);
        }
        println!(
            "instance {} ({}, head {})",
            self.instance,
            info.state.as_str(),
            info.head.map_or("-".into(), |h| h.to_string())
        );
        let roots = children.get(&None).cloned().unwrap_or_default();
        for (i, root) in roots.iter().enumerate() {
            draw(&children, root, "", i + 1 == roots.len(), info.head);
        }
        Ok(())
    }
}

fn describe(v: &VersionInfo, head: Option<u32>) -> String {
    let mut text = format!("v{}", v.number);
    match (v.kind, v.timer) {
        (VersionKind::Suspended, Some(Timer::Sleep { wake_at })) => {
            text += &format!(" sleeps until {}", utc_text(wake_at))
        }
        (VersionKind::Suspended, timer) => {
            text += &format!(" yielded {:?}", String::from_utf8_lossy(&v.value));
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
    if !v.reply.is_empty() {
        text += &format!(" (after reply {:?})", String::from_utf8_lossy(&v.reply));
    }
    if head == Some(v.number) {
        text += "  <- head";
    }
    text
}

fn draw(
    children: &BTreeMap<Option<u32>, Vec<&VersionInfo>>,
    v: &VersionInfo,
    prefix: &str,
    last: bool,
    head: Option<u32>,
) {
    let branch = if last { "└─ " } else { "├─ " };
    println!("{prefix}{branch}{}", describe(v, head));
    let prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
    let kids = children.get(&Some(v.number)).cloned().unwrap_or_default();
    for (i, child) in kids.iter().enumerate() {
        draw(children, child, &prefix, i + 1 == kids.len(), head);
    }
}

fn version_json(v: &VersionInfo) -> String {
    json::object(&[
        ("version", v.number.to_string()),
        ("parent", json::number(v.parent)),
        ("kind", json::string(v.kind.as_str())),
        ("value", json::bytes(&v.value)),
        ("reply", json::bytes(&v.reply)),
        ("created_ms", v.created_ms.to_string()),
        ("memory_bytes", v.memory_bytes.to_string()),
        ("stored_bytes", v.stored_bytes.to_string()),
        (
            "message",
            v.message.as_deref().map_or("null".into(), json::string),
        ),
        ("wake_at", json::number(v.timer.map(Timer::wake_at))),
    ])
}
