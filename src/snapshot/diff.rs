//! What changed between two snapshots: memory pages and the byte ranges
//! inside them, globals, the pending call, and per coroutine its state,
//! frames and saved values, named by function. `wasnap diff` prints it.

use std::collections::BTreeMap;

use anyhow::Result;

use super::inspect::{CoroutineView, FrameView, inspect};
use super::{GlobalValue, MemoryImage, PAGE_SIZE, Snapshot};
use crate::instrument::Metadata;

/// Differing bytes closer than this are reported as one range.
const RANGE_GAP: usize = 16;

/// The differences between two snapshots, `a` (before) and `b` (after).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotDiff {
    /// Whether they belong to different modules.
    pub module_changed: bool,
    /// The pending call, value and running coroutine, where they differ,
    /// as `(what, before, after)`.
    pub host: Vec<(String, String, String)>,
    /// Memories that differ.
    pub memories: Vec<MemoryDiff>,
    /// Globals that differ.
    pub globals: Vec<GlobalChange>,
    /// Coroutines that differ.
    pub coroutines: Vec<CoroutineDiff>,
}

impl SnapshotDiff {
    /// Whether the two snapshots are the same state.
    pub fn is_empty(&self) -> bool {
        !self.module_changed
            && self.host.is_empty()
            && self.memories.is_empty()
            && self.globals.is_empty()
            && self.coroutines.is_empty()
    }
}

/// How one memory differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryDiff {
    /// The memory's index.
    pub index: u32,
    /// Its size in pages, before and after.
    pub pages: (u64, u64),
    /// The pages whose contents differ.
    pub changed_pages: Vec<u32>,
    /// The byte ranges `[start, end)` that differ, in ascending order
    /// (differences less than 16 bytes apart are one range).
    pub ranges: Vec<(u64, u64)>,
}

/// A global whose value differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalChange {
    /// Its index.
    pub index: u32,
    /// What it is, when known (the shadow-stack pointer).
    pub name: Option<String>,
    /// Its value before and after, in the notation of its type.
    pub values: (String, String),
}

/// How one coroutine differs.
#[derive(Clone, Debug, PartialEq)]
pub struct CoroutineDiff {
    /// Its id.
    pub id: u32,
    /// Its state before and after (`None`: it did not exist).
    pub states: (Option<String>, Option<String>),
    /// Frames that differ, outermost first.
    pub frames: Vec<FrameDiff>,
}

/// A frame that differs, at the same depth of a coroutine's stack.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameDiff {
    /// Its depth, 0 for the outermost frame.
    pub depth: usize,
    /// The function before and after (`None`: no frame at this depth).
    pub functions: (Option<String>, Option<String>),
    /// Saved values that differ, as `(name, before, after)`, when the
    /// function is the same.
    pub values: Vec<(String, String, String)>,
}

/// Compares snapshot `a` (read with its module's `meta_a`) with `b`.
pub fn diff(
    a: &Snapshot,
    meta_a: &Metadata,
    b: &Snapshot,
    meta_b: &Metadata,
) -> Result<SnapshotDiff> {
    let mut host = Vec::new();
    let mut note = |what: &str, before: String, after: String| {
        if before != after {
            host.push((what.to_string(), before, after));
        }
    };
    note(
        "waits in",
        a.host.suspended_in.clone(),
        b.host.suspended_in.clone(),
    );
    note("value", text(&a.host.yielded), text(&b.host.yielded));
    note(
        "running coroutine",
        a.host.current.to_string(),
        b.host.current.to_string(),
    );
    let mut memories = Vec::new();
    for i in 0..a.memories.len().max(b.memories.len()) {
        memories.extend(memory_diff(i as u32, a.memories.get(i), b.memories.get(i))?);
    }
    Ok(SnapshotDiff {
        module_changed: a.module_hash != b.module_hash,
        host,
        memories,
        globals: global_changes(a, meta_a, b, meta_b),
        coroutines: coroutine_diffs(a, meta_a, b, meta_b)?,
    })
}

fn text(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// A memory's stored pages by index (pages not stored are zero). A page
/// that cannot be read fails the diff.
fn pages_of(m: Option<&MemoryImage>) -> Result<BTreeMap<u32, &[u8]>> {
    let mut pages = BTreeMap::new();
    for page in m.iter().flat_map(|m| &m.pages) {
        pages.insert(page.index, page.data.bytes()?);
    }
    Ok(pages)
}

fn memory_diff(
    index: u32,
    a: Option<&MemoryImage>,
    b: Option<&MemoryImage>,
) -> Result<Option<MemoryDiff>> {
    let (pa, pb) = (pages_of(a)?, pages_of(b)?);
    let zero = vec![0u8; PAGE_SIZE];
    let mut indices: Vec<u32> = pa.keys().chain(pb.keys()).copied().collect();
    indices.sort_unstable();
    indices.dedup();
    let mut changed_pages = Vec::new();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for index in indices {
        let before = pa.get(&index).copied().unwrap_or(&zero);
        let after = pb.get(&index).copied().unwrap_or(&zero);
        if before == after {
            continue;
        }
        changed_pages.push(index);
        let base = index as u64 * PAGE_SIZE as u64;
        for (offset, _) in before
            .iter()
            .zip(after)
            .enumerate()
            .filter(|(_, (x, y))| x != y)
        {
            let at = base + offset as u64;
            match ranges.last_mut() {
                Some(last) if at <= last.1 + RANGE_GAP as u64 => last.1 = at + 1,
                _ => ranges.push((at, at + 1)),
            }
        }
    }
    let pages = (a.map_or(0, |m| m.page_count), b.map_or(0, |m| m.page_count));
    if changed_pages.is_empty() && pages.0 == pages.1 {
        return Ok(None);
    }
    Ok(Some(MemoryDiff {
        index,
        pages,
        changed_pages,
        ranges,
    }))
}

fn global_changes(
    a: &Snapshot,
    meta_a: &Metadata,
    b: &Snapshot,
    meta_b: &Metadata,
) -> Vec<GlobalChange> {
    (0..a.globals.len().max(b.globals.len()))
        .filter_map(|i| {
            let (before, after) = (a.globals.get(i), b.globals.get(i));
            if before == after {
                return None;
            }
            let index = i as u32;
            let is_stack_pointer = |m: &Metadata| m.stack_pointer_global == Some(index);
            let name = (is_stack_pointer(meta_a) || is_stack_pointer(meta_b))
                .then(|| "__stack_pointer".to_string());
            Some(GlobalChange {
                index,
                name,
                values: (global_text(before), global_text(after)),
            })
        })
        .collect()
}

fn global_text(value: Option<&GlobalValue>) -> String {
    match value {
        None => "(none)".into(),
        Some(GlobalValue::I32(v)) => (*v as i32).to_string(),
        Some(GlobalValue::I64(v)) => (*v as i64).to_string(),
        Some(GlobalValue::F32(bits)) => f32::from_bits(*bits).to_string(),
        Some(GlobalValue::F64(bits)) => f64::from_bits(*bits).to_string(),
        Some(GlobalValue::V128(v)) => format!("{v:#034x}"),
        Some(GlobalValue::NullRef) => "null".into(),
        Some(GlobalValue::FuncRef(f)) => format!("function {f}"),
    }
}

fn coroutine_diffs(
    a: &Snapshot,
    meta_a: &Metadata,
    b: &Snapshot,
    meta_b: &Metadata,
) -> Result<Vec<CoroutineDiff>> {
    let views = |s: &Snapshot, m: &Metadata| -> Result<BTreeMap<u32, CoroutineView>> {
        Ok(inspect(s, m)?
            .coroutines
            .into_iter()
            .map(|c| (c.id, c))
            .collect())
    };
    let (va, vb) = (views(a, meta_a)?, views(b, meta_b)?);
    let mut ids: Vec<u32> = va.keys().chain(vb.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let state = |c: Option<&CoroutineView>| c.map(|c| format!("{:?}", c.state).to_lowercase());
    Ok(ids
        .into_iter()
        .filter_map(|id| {
            let (before, after) = (va.get(&id), vb.get(&id));
            let frames = frame_diffs(
                before.map_or(&[][..], |c| &c.frames),
                after.map_or(&[][..], |c| &c.frames),
            );
            let states = (state(before), state(after));
            (states.0 != states.1 || !frames.is_empty()).then_some(CoroutineDiff {
                id,
                states,
                frames,
            })
        })
        .collect())
}

/// Frames compared at the same depth from the outermost, where a call
/// stack's identity is.
fn frame_diffs(before: &[FrameView], after: &[FrameView]) -> Vec<FrameDiff> {
    let (before, after): (Vec<_>, Vec<_>) =
        (before.iter().rev().collect(), after.iter().rev().collect());
    (0..before.len().max(after.len()))
        .filter_map(|depth| {
            let (x, y) = (before.get(depth), after.get(depth));
            let functions = (x.map(|f| f.display_name()), y.map(|f| f.display_name()));
            let values = match (x, y) {
                (Some(x), Some(y)) if x.function == y.function => {
                    let old: BTreeMap<_, _> = x.values.iter().cloned().collect();
                    y.values
                        .iter()
                        .filter(|(name, value)| old.get(name) != Some(value))
                        .map(|(name, value)| {
                            let was = old.get(name).cloned().unwrap_or_else(|| "(none)".into());
                            (name.clone(), was, value.clone())
                        })
                        .collect()
                }
                _ => Vec::new(),
            };
            let same_function = functions.0 == functions.1;
            let same_site = match (x, y) {
                (Some(x), Some(y)) => x.code_offset == y.code_offset,
                _ => false,
            };
            (!same_function || !same_site || !values.is_empty()).then_some(FrameDiff {
                depth,
                functions,
                values,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Page;

    #[test]
    fn byte_ranges_merge_close_differences_and_name_their_pages() {
        let page = |index: u32, edits: &[(usize, u8)]| {
            let mut data = vec![0u8; PAGE_SIZE];
            for &(at, value) in edits {
                data[at] = value;
            }
            Page {
                index,
                data: data.into(),
            }
        };
        let a = MemoryImage {
            page_count: 3,
            pages: vec![page(0, &[(10, 1)])].into(),
        };
        let b = MemoryImage {
            page_count: 4,
            pages: vec![page(0, &[(10, 2), (20, 1), (100, 1)]), page(2, &[(5, 9)])].into(),
        };
        let d = memory_diff(0, Some(&a), Some(&b)).unwrap().unwrap();
        assert_eq!(d.pages, (3, 4));
        assert_eq!(d.changed_pages, vec![0, 2]);
        let page2 = 2 * PAGE_SIZE as u64;
        assert_eq!(d.ranges, vec![(10, 21), (100, 101), (page2 + 5, page2 + 6)]);
        assert!(memory_diff(0, Some(&a), Some(&a)).unwrap().is_none());
    }
}
