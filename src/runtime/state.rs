//! Copying an instance's memories, globals and tables to and from the
//! engine-neutral snapshot form.

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use wasmtime::{Instance, Memory, Store, V128, Val};

use super::abi::HostState;
use super::paging::{self, ChangeTracking, Filler, MemoryRestore, Tracker};
use super::uffd::{self, Userfaultfd};
use crate::instrument::{GLOBAL_EXPORT_PREFIX, MEMORY_EXPORT_PREFIX, Metadata};
use crate::snapshot::{
    GlobalValue, MemoryImage, PAGE_SIZE, Page, PageData, PageList, RUN_PAGES, TableImage,
};

pub(crate) fn memory(store: &mut Store<HostState>, instance: &Instance, index: u32) -> Memory {
    instance
        .get_memory(&mut *store, &format!("{MEMORY_EXPORT_PREFIX}{index}"))
        .expect("the instrumenter exports every memory")
}

/// The pages of a workflow's memories as of its last capture or restore,
/// by memory and group of [`RUN_PAGES`] places (`None`: all zeros then),
/// and how the writes since are found.
///
/// How a capture finds the pages that changed: where the kernel tracks
/// writes ([`Tracker`]: userfaultfd's write protection), only the pages
/// written since are read, and every other page is the one kept here;
/// elsewhere a capture compares each page with the one kept here, and
/// shares the kept copy when they are equal (a comparison reads the page
/// once and stops at its first difference; it is several times faster than
/// hashing it). The kept copies are the very pages of the last snapshot,
/// not copies of them; after a lazy restore, those not touched since were
/// never even read from the store.
///
/// A page that was all zeros then, outside the tracked range, is read
/// again only if the kernel has mapped it since (see [`touched_pages`]):
/// a sparse memory costs what its guest touched, not its size.
///
/// The pages are kept as the runs of the last snapshot's [`PageList`]s,
/// one per group of places: a group none of whose pages was written since
/// goes into the next snapshot as that very run, one reference for all
/// its pages.
#[derive(Default)]
pub(crate) struct PageHistory {
    memories: Vec<Vec<Option<Arc<[Page]>>>>,
    /// Whether `memories` describes every page (after a capture or a
    /// restore), so that a page it has as zeros and nobody touched since is
    /// still zeros.
    complete: bool,
    tracker: Tracker,
    /// Fills the pages of a lazily restored memory as they are touched.
    filler: Option<Filler>,
}

impl PageHistory {
    /// The history of a workflow not captured yet, whose writes will be
    /// tracked as `tracking` says.
    pub(crate) fn new(tracking: ChangeTracking) -> Result<PageHistory> {
        Ok(PageHistory {
            tracker: Tracker::new(tracking)?,
            ..PageHistory::default()
        })
    }

    /// Why the workflow cannot go on, if a page of its memory could not be
    /// read from the store when it was first touched.
    pub(crate) fn check(&self) -> Result<()> {
        match self.filler.as_ref().and_then(Filler::error) {
            Some(error) => Err(UnreadablePage(error).into()),
            None => Ok(()),
        }
    }
}

/// The error of a run or snapshot of a lazily restored workflow one of
/// whose pages could not be read from the store when it was first touched
/// (the page is missing, or its contents do not match its name). The
/// workflow saw zeros there and cannot go on; the fault is the store's,
/// not the run's.
#[derive(Debug)]
pub struct UnreadablePage(String);

impl std::fmt::Display for UnreadablePage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnreadablePage {}

/// For each 64 KiB page of `memory`, whether the kernel has mapped any of
/// its 4 KiB pages (or swapped one out), from `/proc/self/pagemap`; `None`
/// where that cannot be known.
///
/// Linear memory is anonymous memory, or, for the pages of the module's
/// data segments, a private copy-on-write mapping of them; a page of either
/// that was never mapped holds what it held when the mapping was made. So a
/// page that was all zeros at the last capture or restore, or that the
/// memory grew by, and that is not mapped now, is still all zeros: it need
/// not be read (reading it would map it). Only on x86-64, whose kernel
/// pages are always 4 KiB.
fn touched_pages(memory: &[u8]) -> Option<Vec<bool>> {
    use std::os::unix::fs::FileExt as _;
    const KERNEL_PAGE: usize = 4096;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    if !cfg!(all(target_os = "linux", target_arch = "x86_64"))
        || memory.is_empty()
        || !(memory.as_ptr() as usize).is_multiple_of(KERNEL_PAGE)
    {
        return None;
    }
    let pagemap = std::fs::File::open("/proc/self/pagemap").ok()?;
    let mut entries = vec![0u8; memory.len() / KERNEL_PAGE * 8];
    let offset = (memory.as_ptr() as usize / KERNEL_PAGE * 8) as u64;
    pagemap.read_exact_at(&mut entries, offset).ok()?;
    let per_page = PAGE_SIZE / KERNEL_PAGE * 8;
    Some(
        entries
            .chunks_exact(per_page)
            .map(|page| {
                page.chunks_exact(8).any(|entry| {
                    let entry = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
                    entry & (PRESENT | SWAPPED) != 0
                })
            })
            .collect(),
    )
}

/// Every memory as its size and non-zero pages. Pages equal to those of
/// `history` are shared with it rather than copied; `history` becomes this
/// capture. Fails if a page of a lazily restored memory, or one kept from
/// it, cannot be read from the store.
pub(crate) fn capture_memories(
    store: &mut Store<HostState>,
    instance: &Instance,
    metadata: &Metadata,
    history: &mut PageHistory,
) -> Result<Vec<MemoryImage>> {
    history.check()?;
    history
        .memories
        .resize_with(metadata.memory_count as usize, Vec::new);
    let mut memories = Vec::with_capacity(metadata.memory_count as usize);
    for index in 0..metadata.memory_count {
        let memory = memory(store, instance, index);
        // Pages beyond the module's minimum size were added by growing
        // the memory: they start as zeros, so they need no history.
        let grown_from = memory.ty(&*store).minimum() as usize;
        let data = memory.data(&*store);
        let (base, len) = (data.as_ptr() as usize, data.len());
        let i = index as usize;
        let written = match history.complete {
            true => history.tracker.written(i, base, len),
            false => None,
        };
        let tracked = written.as_ref().map_or(0, |w| w.tracked);
        let complete = history.complete;
        // Only pages outside the tracked range need the page map.
        let touched = (tracked < len / PAGE_SIZE)
            .then(|| touched_pages(data))
            .flatten();
        let untouched = |page: usize| {
            (complete || page >= grown_from) && touched.as_ref().is_some_and(|t| !t[page])
        };
        let groups = &mut history.memories[i];
        groups.resize((len / PAGE_SIZE).div_ceil(RUN_PAGES), None);
        let unwritten = |page: usize| {
            written
                .as_ref()
                .is_some_and(|w| page < w.tracked && !w.pages[page])
        };
        let page = |index: usize| &data[index * PAGE_SIZE..(index + 1) * PAGE_SIZE];
        for (group, kept) in groups.iter_mut().enumerate() {
            let places = group * RUN_PAGES..((group + 1) * RUN_PAGES).min(len / PAGE_SIZE);
            if places.clone().all(unwritten) {
                // Nothing written here since: the kept run is still what is there.
                continue;
            }
            let old: &[Page] = kept.as_deref().unwrap_or(&[]);
            let mut old = old.iter().peekable();
            let mut pages = Vec::new();
            for page_index in places {
                while old.next_if(|p| (p.index as usize) < page_index).is_some() {}
                let old = old
                    .next_if(|p| p.index as usize == page_index)
                    .map(|p| &p.data);
                let data = match old {
                    Some(old) if unwritten(page_index) => old.clone(),
                    None if unwritten(page_index) => continue,
                    Some(old) if old.bytes()? == page(page_index) => old.clone(),
                    None if untouched(page_index) => continue,
                    _ if is_zero(page(page_index)) => continue,
                    _ => PageData::from(page(page_index)),
                };
                pages.push(Page {
                    index: page_index as u32,
                    data,
                });
            }
            *kept = keep_run(kept.take(), pages);
        }
        history.tracker.track(i, base, len);
        memories.push(MemoryImage {
            page_count: (len / PAGE_SIZE) as u64,
            pages: PageList::from_runs(history.memories[i].iter().flatten().cloned()),
        });
    }
    history.complete = true;
    Ok(memories)
}

/// The run to keep for a group of places that now holds `pages`: the old
/// run itself if every page in it is still the very same (so that the next
/// snapshot and the store see it unchanged), else a new one; `None` where
/// the group is all zeros.
fn keep_run(old: Option<Arc<[Page]>>, pages: Vec<Page>) -> Option<Arc<[Page]>> {
    match old {
        Some(old)
            if old.len() == pages.len()
                && old
                    .iter()
                    .zip(&pages)
                    .all(|(a, b)| a.index == b.index && a.data.same(&b.data)) =>
        {
            Some(old)
        }
        _ if pages.is_empty() => None,
        _ => Some(pages.into()),
    }
}

/// Whether a page is all zeros, a machine word at a time.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let (prefix, words, suffix) = unsafe { bytes.align_to::<u128>() };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

/// Below this many non-zero pages (2 MiB), [`MemoryRestore::Auto`] restores
/// eagerly: starting the filling thread and taking a fault per page costs
/// more than reading a few pages ahead (docs/PERFORMANCE.md).
const LAZY_MIN_PAGES: usize = 32;

/// A lazy restore reads every remaining page ahead, between faults, once
/// the workflow has touched this many: past that point reading the rest
/// costs less than faulting it in (docs/PERFORMANCE.md).
const PREFETCH_AFTER_FAULTS: usize = 64;

/// Makes each memory of a fresh instance equal to its image, and returns
/// the workflow's page history. Where userfaultfd works, the memory is
/// replaced by fresh memory whose pages are placed already write-protected
/// (so writes are tracked from the start), either all before the workflow
/// runs or each when first touched ([`MemoryRestore`]); elsewhere only the
/// pages that are non-zero on either side are written: growing a memory
/// gives zero pages for free.
pub(crate) fn restore_memories(
    store: &mut Store<HostState>,
    instance: &Instance,
    images: &[MemoryImage],
    tracking: ChangeTracking,
    restore: MemoryRestore,
) -> Result<PageHistory> {
    let support = paging::support();
    let non_zero: usize = images.iter().map(|m| m.pages.len()).sum();
    let lazy = match restore {
        MemoryRestore::Eager => false,
        MemoryRestore::Lazy if !support.fill_on_demand => bail!(
            "lazy restore is not available here: it needs userfaultfd and the privilege to handle the page faults of system calls (CAP_SYS_PTRACE, or sysctl vm.unprivileged_userfaultfd = 1)"
        ),
        MemoryRestore::Lazy => true,
        MemoryRestore::Auto => {
            support.fill_on_demand
                && tracking != ChangeTracking::Compare
                && non_zero >= LAZY_MIN_PAGES
        }
    };
    let lazy_uffd = match (lazy, restore) {
        (false, _) => None,
        (true, MemoryRestore::Lazy) => Some(Userfaultfd::open(true)?),
        // Out of descriptors, say: an eager restore still works.
        (true, _) => Userfaultfd::open(true).ok(),
    };
    let lazy = lazy_uffd.is_some();
    let mut tracker = match lazy_uffd {
        Some(uffd) => Tracker::on(Arc::new(uffd)),
        None => Tracker::new(tracking)?,
    };
    let mut lazy_memories = Vec::new();
    for (index, image) in images.iter().enumerate() {
        let memory = memory(store, instance, index as u32);
        let initialised = grow_to(store, &memory, index, image)? as usize * PAGE_SIZE;
        let data = memory.data_mut(&mut *store);
        let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        check_pages(image, index, data.len())?;
        match tracker.userfaultfd() {
            Some(_) if range.is_empty() => {}
            Some(uffd) => {
                // SAFETY: nothing refers to the memory's bytes while it is
                // restored (`data` is not used again), and all of it is
                // about to be replaced by the snapshot's pages.
                unsafe { uffd::discard(range.clone()) }?;
                uffd.register(range.clone(), lazy)?;
                // Every page is marked, populated or not: the kernel's scan
                // reports a page with neither a page nor a mark as written.
                // A marked page that is missing still faults to the filler.
                uffd.write_protect(range.clone())?;
                if lazy {
                    lazy_memories.push((range.clone(), image));
                } else {
                    place_pages(uffd, range.start, image)?;
                }
                // A lazy restore registers for write protection too; with
                // page comparison asked for, captures just do not use it.
                if tracking != ChangeTracking::Compare {
                    tracker.tracked(index, range.start, range.end - range.start);
                }
            }
            None => copy_pages(store, &memory, index, image, initialised)?,
        }
    }
    // Sizes are known to be sound here: every memory grew to its size.
    let kept = images
        .iter()
        .enumerate()
        .map(|(index, image)| {
            let groups = (image.page_count as usize).div_ceil(RUN_PAGES);
            image.pages.by_place(groups).with_context(|| {
                format!("the pages of memory {index} of the snapshot are not in ascending order of index")
            })
        })
        .collect::<Result<_>>()?;
    let filler = match (lazy, tracker.userfaultfd()) {
        (true, Some(uffd)) => Some(Filler::start(
            Arc::clone(uffd),
            lazy_memories,
            PREFETCH_AFTER_FAULTS,
        )?),
        _ => None,
    };
    Ok(PageHistory {
        memories: kept,
        complete: true,
        tracker,
        filler,
    })
}

/// Grows memory `index` to the size of its image; returns the size it had,
/// in pages.
fn grow_to(
    store: &mut Store<HostState>,
    memory: &Memory,
    index: usize,
    image: &MemoryImage,
) -> Result<u64> {
    let current = memory.size(&*store);
    if image.page_count < current {
        bail!(
            "memory {index} of the snapshot has {} pages, fewer than the module's minimum of {current}",
            image.page_count
        );
    }
    memory
        .grow(&mut *store, image.page_count - current)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("growing memory {index} to {} pages", image.page_count))?;
    Ok(current)
}

fn check_pages(image: &MemoryImage, index: usize, len: usize) -> Result<()> {
    if let Some(page) = image
        .pages
        .iter()
        .find(|p| (p.index as usize + 1) * PAGE_SIZE > len)
    {
        bail!("page {} is outside memory {index}", page.index);
    }
    Ok(())
}

/// Below this many pages to read, a second thread costs more than it
/// saves: starting it and waiting for it can take a scheduling delay of
/// milliseconds on a busy machine.
const READ_ON_TWO_THREADS: usize = 16;

/// Reads every page of `image` not read yet, on two threads when many.
fn read_pages(image: &MemoryImage) -> Result<()> {
    let unread: Vec<&Page> = image.pages.iter().filter(|p| !p.data.is_loaded()).collect();
    let half = match unread.len() >= READ_ON_TWO_THREADS {
        true => unread.len() / 2,
        false => unread.len(),
    };
    let (mine, theirs) = unread.split_at(half);
    std::thread::scope(|scope| {
        if !theirs.is_empty() {
            scope.spawn(|| theirs.iter().for_each(|p| drop(p.data.bytes())));
        }
        mine.iter().for_each(|p| drop(p.data.bytes()));
    });
    // Errors were kept by the pages: the first one is reported.
    image
        .pages
        .iter()
        .try_for_each(|p| p.data.bytes().map(drop))
}

/// Places every page of `image` into the memory at `base`, registered with
/// `uffd` and holding nothing yet.
fn place_pages(uffd: &Userfaultfd, base: usize, image: &MemoryImage) -> Result<()> {
    read_pages(image)?;
    for page in &image.pages {
        // SAFETY: the page lies inside the registered memory (checked),
        // which nothing refers to while it is restored.
        unsafe { uffd.place(base + page.index as usize * PAGE_SIZE, page.data.bytes()?) }?;
    }
    Ok(())
}

/// Writes the pages of `image` into a memory whose first `initialised`
/// bytes hold what instantiation put there: data segments may have
/// written pages the snapshot has as zeros.
fn copy_pages(
    store: &mut Store<HostState>,
    memory: &Memory,
    index: usize,
    image: &MemoryImage,
    initialised: usize,
) -> Result<()> {
    read_pages(image)?;
    let data = memory.data_mut(&mut *store);
    let mut next_image_page = image.pages.iter().peekable();
    for (page_index, page) in data[..initialised].chunks_exact_mut(PAGE_SIZE).enumerate() {
        let in_image = next_image_page
            .next_if(|p| p.index as usize == page_index)
            .is_some();
        if !in_image && !is_zero(page) {
            page.fill(0);
        }
    }
    for page in &image.pages {
        let start = page.index as usize * PAGE_SIZE;
        data.get_mut(start..start + PAGE_SIZE)
            .with_context(|| format!("page {} is outside memory {index}", page.index))?
            .copy_from_slice(page.data.bytes()?);
    }
    Ok(())
}

fn global(store: &mut Store<HostState>, instance: &Instance, index: u32) -> wasmtime::Global {
    instance
        .get_global(&mut *store, &format!("{GLOBAL_EXPORT_PREFIX}{index}"))
        .expect("the instrumenter exports every global")
}

/// Every global, as raw bits.
pub(crate) fn capture_globals(
    store: &mut Store<HostState>,
    instance: &Instance,
    metadata: &Metadata,
) -> Result<Vec<GlobalValue>> {
    (0..metadata.global_count)
        .map(|index| {
            let value = global(store, instance, index).get(&mut *store);
            match GlobalValue::of(&value) {
                Some(value) => Ok(value),
                None => {
                    bail!("global {index} holds a non-null reference, which cannot be snapshotted")
                }
            }
        })
        .collect()
}

impl GlobalValue {
    /// A global's value as a snapshot keeps it; `None` for a non-null
    /// reference, which bytes cannot carry.
    fn of(value: &Val) -> Option<GlobalValue> {
        Some(match *value {
            Val::I32(v) => GlobalValue::I32(v as u32),
            Val::I64(v) => GlobalValue::I64(v as u64),
            Val::F32(bits) => GlobalValue::F32(bits),
            Val::F64(bits) => GlobalValue::F64(bits),
            Val::V128(v) => GlobalValue::V128(v.as_u128()),
            Val::FuncRef(None) | Val::ExternRef(None) | Val::AnyRef(None) => GlobalValue::NullRef,
            _ => return None,
        })
    }
}

/// Sets every mutable global. Immutable ones are already what the module
/// initialised them to, and a snapshot that says otherwise is not one of
/// this module's.
pub(crate) fn restore_globals(
    store: &mut Store<HostState>,
    instance: &Instance,
    values: &[GlobalValue],
) -> Result<()> {
    for (index, value) in values.iter().enumerate() {
        let global = global(store, instance, index as u32);
        let ty = global.ty(&*store);
        let value = match *value {
            GlobalValue::I32(v) => Val::I32(v as i32),
            GlobalValue::I64(v) => Val::I64(v as i64),
            GlobalValue::F32(bits) => Val::F32(bits),
            GlobalValue::F64(bits) => Val::F64(bits),
            GlobalValue::V128(v) => Val::V128(V128::from(v)),
            GlobalValue::NullRef => match ty.content() {
                wasmtime::ValType::Ref(r) => Val::null_ref(r.heap_type()),
                other => bail!("global {index} is of type {other}, not a reference"),
            },
            GlobalValue::FuncRef(_) => {
                bail!("global {index}: function references cannot be restored")
            }
        };
        if ty.mutability() != wasmtime::Mutability::Var {
            let initial = GlobalValue::of(&global.get(&mut *store));
            if initial.as_ref() != Some(&values[index]) {
                bail!(
                    "the snapshot is not valid: global {index} is immutable and holds {initial:?}, not {:?}",
                    values[index]
                );
            }
            continue;
        }
        global
            .set(&mut *store, value)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("restoring global {index}"))?;
    }
    Ok(())
}

/// Tables: a module that never writes its tables at run time has them
/// exactly as instantiation made them, so nothing needs to be kept.
pub(crate) fn capture_tables(metadata: &Metadata) -> Result<Vec<TableImage>> {
    if metadata.writes_tables {
        bail!(
            "the module writes its tables at run time (table.set, table.grow, ...), which wasnap cannot snapshot yet"
        );
    }
    Ok((0..metadata.table_count)
        .map(|_| TableImage {
            elements: Vec::new(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::runtime::{ChangeTracking, Settings, Step, support};
    use crate::snapshot::Snapshot;

    /// Writes every one of its 80 pages and yields; writes page 40 and
    /// yields; grows by 40 pages, writes page 100 and yields.
    const WRITER: &str = r#"
    (module
      (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
      (memory (export "memory") 80)
      (func (export "run") (local $page i32)
        (loop $every
          (i32.store (i32.mul (local.get $page) (i32.const 65536)) (i32.const 1))
          (local.set $page (i32.add (local.get $page) (i32.const 1)))
          (br_if $every (i32.lt_u (local.get $page) (i32.const 80))))
        (drop (call $yield (i32.const 0) (i32.const 0)))
        (i32.store (i32.const 2621444) (i32.const 2))
        (drop (call $yield (i32.const 0) (i32.const 0)))
        (drop (memory.grow (i32.const 40)))
        (i32.store (i32.const 6553600) (i32.const 3))
        (drop (call $yield (i32.const 0) (i32.const 0)))))
    "#;

    /// For each run of `b`'s memory 0: whether it is the very run `a` has.
    fn shared(a: &Snapshot, b: &Snapshot) -> Vec<bool> {
        let runs = a.memories[0].pages.runs();
        let run_pointers = |run| runs.iter().any(|r| Arc::ptr_eq(r, run));
        b.memories[0]
            .pages
            .runs()
            .iter()
            .map(run_pointers)
            .collect()
    }

    #[test]
    fn a_snapshot_shares_every_run_not_written_since_the_last() {
        let engine = crate::Engine::new().unwrap();
        let module = engine.load(&wat::parse_str(WRITER).unwrap()).unwrap();
        let mut trackings = vec![ChangeTracking::Compare, ChangeTracking::Auto];
        if support().write_protect {
            trackings.push(ChangeTracking::WriteProtect);
        }
        for tracking in trackings {
            let settings = Settings::default().change_tracking(tracking);
            let mut workflow = engine.start(&module, settings).unwrap();
            let mut next = || {
                assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
                let snapshot = workflow.snapshot().unwrap();
                // Nothing written in between: every run is shared.
                let again = workflow.snapshot().unwrap();
                assert!(shared(&snapshot, &again).iter().all(|&s| s));
                snapshot
            };
            let first = next();
            assert_eq!(first.memories[0].pages.len(), 80);
            // Places 0-31, 32-63 (page 40 written), 64-79.
            let second = next();
            assert_eq!(shared(&first, &second), [true, false, true], "{tracking:?}");
            // Places 64-95 now reach past the old end: looked at again,
            // found the same, and kept as the very same run.
            let third = next();
            assert_eq!(
                shared(&second, &third),
                [true, true, true, false],
                "{tracking:?}"
            );
            assert_eq!(third.memories[0].pages.len(), 81);
        }
    }

    #[test]
    fn a_snapshot_whose_pages_are_out_of_order_is_refused_in_one_line() {
        let engine = crate::Engine::new().unwrap();
        let module = engine.load(&wat::parse_str(WRITER).unwrap()).unwrap();
        let mut workflow = engine.start(&module, Settings::default()).unwrap();
        assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
        let good = workflow.snapshot().unwrap();
        for edit in [
            |pages: &mut Vec<crate::snapshot::Page>| pages.swap(3, 40),
            |pages: &mut Vec<crate::snapshot::Page>| pages[5] = pages[4].clone(),
        ] {
            let mut bad = good.clone();
            bad.memories[0].pages.edit(edit);
            let Err(error) = engine.restore(&module, &bad) else {
                panic!("restored pages out of order");
            };
            // Checked with the rest of the snapshot, before the memory is
            // grouped into runs.
            let error = error.to_string();
            assert!(
                error.contains("memory 0: page 4 is out of order"),
                "{error}"
            );
            assert!(!error.contains('\n'), "{error}");
        }
        assert!(engine.restore(&module, &good).is_ok());
    }
}
