//! `wasnap diff INSTANCE@A INSTANCE@B`

use std::path::Path;

use anyhow::Result;
use clap::Args;
use wasnap::snapshot::diff::SnapshotDiff;

use super::Target;
use super::session;

/// Byte ranges listed per memory before the rest are counted.
const RANGES_SHOWN: usize = 12;

/// Show what changed between two versions: memory pages and byte ranges,
/// globals, the pending call, and per coroutine the frames and saved
/// values that differ, by function name.
#[derive(Args, Debug)]
pub struct Diff {
    /// The version before: `INSTANCE@VERSION` (or `INSTANCE`, its head).
    a: Target,
    /// The version after.
    b: Target,
}

impl Diff {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let executor = session::open_existing(db, &session::EngineArgs::default())?;
        let a = (self.a.instance, self.a.version_in(executor.database())?);
        let b = (self.b.instance, self.b.version_in(executor.database())?);
        let diffed = executor.diff(a, b)?;
        println!("--- {}@{}", a.0, a.1);
        println!("+++ {}@{}", b.0, b.1);
        print!("{}", render(&diffed.diff));
        Ok(())
    }
}

/// The diff as text, one line per difference.
fn render(diff: &SnapshotDiff) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if diff.is_empty() {
        out += "no differences\n";
        return out;
    }
    if diff.module_changed {
        out += "module: changed (an upgrade)\n";
    }
    for (what, before, after) in &diff.host {
        let _ = writeln!(out, "{what}: {before} -> {after}");
    }
    for m in &diff.memories {
        let _ = write!(out, "memory {}:", m.index);
        if m.pages.0 != m.pages.1 {
            let _ = write!(out, " {} -> {} pages,", m.pages.0, m.pages.1);
        }
        let pages: Vec<String> = m.changed_pages.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            " {} page{} changed ({}), {} byte range{}",
            pages.len(),
            if pages.len() == 1 { "" } else { "s" },
            pages.join(", "),
            m.ranges.len(),
            if m.ranges.len() == 1 { "" } else { "s" }
        );
        for (start, end) in m.ranges.iter().take(RANGES_SHOWN) {
            let _ = writeln!(out, "  bytes {start:#x}..{end:#x} ({} bytes)", end - start);
        }
        if m.ranges.len() > RANGES_SHOWN {
            let _ = writeln!(out, "  ... {} more ranges", m.ranges.len() - RANGES_SHOWN);
        }
    }
    for g in &diff.globals {
        let name = g
            .name
            .as_deref()
            .map_or(String::new(), |n| format!(" ({n})"));
        let _ = writeln!(
            out,
            "global {}{name}: {} -> {}",
            g.index, g.values.0, g.values.1
        );
    }
    for c in &diff.coroutines {
        let state = |s: &Option<String>| s.clone().unwrap_or_else(|| "absent".into());
        let _ = write!(out, "coroutine {}", c.id);
        if c.states.0 != c.states.1 {
            let _ = write!(out, ": {} -> {}", state(&c.states.0), state(&c.states.1));
        }
        out += "\n";
        for f in &c.frames {
            let name = |n: &Option<String>| n.clone().unwrap_or_else(|| "(no frame)".into());
            if f.functions.0 == f.functions.1 {
                let _ = writeln!(out, "  frame {} {}", f.depth, name(&f.functions.0));
            } else {
                let _ = writeln!(
                    out,
                    "  frame {}: {} -> {}",
                    f.depth,
                    name(&f.functions.0),
                    name(&f.functions.1)
                );
            }
            for (value, before, after) in &f.values {
                let _ = writeln!(out, "    {value}: {before} -> {after}");
            }
        }
    }
    out
}
