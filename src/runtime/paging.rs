//! How a workflow's memory costs what changed and what is touched: finding
//! the pages written since the last snapshot without reading the memory,
//! and filling a restored memory's pages when they are first touched.
//!
//! What the kernel offers is found out once per process, at run time
//! ([`support`]): a kernel without userfaultfd's asynchronous write
//! protection (before Linux 6.7, or built without it) or without soft-dirty
//! bits, or a process without the privilege to see system calls' faults,
//! falls back to what works everywhere, at a cost proportional to memory
//! size (comparing pages, filling every page at restore).

use std::io;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Result, bail};

use super::uffd::{self, Fault, KERNEL_PAGE, Userfaultfd};
use crate::snapshot::{MemoryImage, PAGE_SIZE, Page};

/// How a workflow finds the pages written since its last snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ChangeTracking {
    /// The best this machine offers (see [`support`]).
    #[default]
    Auto,
    /// userfaultfd's asynchronous write protection, read back with the
    /// page map's `PAGEMAP_SCAN` (Linux 6.7 and later): the kernel notes
    /// the first write to each page, at the cost of a minor fault.
    WriteProtect,
    /// Compare every page with its copy from the last snapshot (and skip
    /// those the kernel never mapped): works everywhere, costs a read of
    /// every non-zero page.
    Compare,
}

/// How a restored workflow's memory is filled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MemoryRestore {
    /// Lazily for memories large enough that it pays, eagerly otherwise.
    #[default]
    Auto,
    /// Every non-zero page is read and placed before the workflow runs.
    Eager,
    /// Each page is read and placed when the workflow (or the host) first
    /// touches it, by a thread that serves userfaultfd's missing-page
    /// faults; a workflow that touches few pages of a large memory reads
    /// few pages. Needs userfaultfd with the privilege to see the faults of
    /// system calls.
    Lazy,
}

/// What this machine and process offer, found out once.
///
/// The kernel's soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY`, see
/// [`soft_dirty_bits`]) are probed and reported, not used: they are
/// cleared for a whole process at once (`/proc/self/clear_refs`), so one
/// workflow's capture would lose the writes of every other workflow of the
/// process, and the clear write-protects all of the process's memory, the
/// host's included. userfaultfd's write protection does the same per range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Support {
    /// userfaultfd's asynchronous write protection and `PAGEMAP_SCAN` work.
    pub write_protect: bool,
    /// A userfaultfd can fill pages on demand, faults of system calls
    /// included.
    pub fill_on_demand: bool,
}

/// What this machine and process offer (probed on first call).
pub fn support() -> Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    *SUPPORT.get_or_init(|| Support {
        write_protect: probe_write_protect().is_ok(),
        fill_on_demand: probe_fill_on_demand().is_ok(),
    })
}

impl std::fmt::Display for Support {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let changed = if self.write_protect {
            "userfaultfd write protection + PAGEMAP_SCAN"
        } else {
            "page comparison"
        };
        let restore = if self.fill_on_demand {
            "lazy (userfaultfd missing pages) for large memories"
        } else if self.write_protect {
            "eager (userfaultfd page placement)"
        } else {
            "eager (copy)"
        };
        let soft_dirty = if soft_dirty_bits() { "" } else { "not " };
        write!(
            f,
            "changed pages: {changed}; restore: {restore}; soft-dirty bits: {soft_dirty}available"
        )
    }
}

/// An anonymous mapping for the probes, unmapped when dropped.
struct Scratch {
    base: usize,
    len: usize,
}

impl Scratch {
    fn new(len: usize) -> io::Result<Scratch> {
        // SAFETY: a new private anonymous mapping, owned by this value.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Scratch {
            base: p as usize,
            len,
        })
    }

    fn write(&self, offset: usize, value: u8) {
        // SAFETY: inside the mapping, which no Rust reference covers.
        unsafe { std::ptr::write_volatile((self.base + offset) as *mut u8, value) };
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value made.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Write-protects four pages, writes the second, and expects the scan to
/// report exactly that one, then nothing.
fn probe_write_protect() -> io::Result<()> {
    let scratch = Scratch::new(4 * KERNEL_PAGE)?;
    scratch.write(0, 1);
    let uffd = Userfaultfd::open(false)?;
    let range = scratch.base..scratch.base + scratch.len;
    uffd.register(range.clone(), false)?;
    uffd.write_protect(range.clone())?;
    scratch.write(KERNEL_PAGE + 5, 1);
    let mut seen = Vec::new();
    uffd::take_written(range.clone(), |r| seen.push(r))?;
    let expected = scratch.base + KERNEL_PAGE..scratch.base + 2 * KERNEL_PAGE;
    if seen != [expected] {
        return Err(io::Error::other("PAGEMAP_SCAN reported other pages"));
    }
    uffd::take_written(range, |r| seen.push(r))?;
    if seen.len() != 1 {
        return Err(io::Error::other("PAGEMAP_SCAN did not protect again"));
    }
    Ok(())
}

fn probe_fill_on_demand() -> io::Result<()> {
    let scratch = Scratch::new(PAGE_SIZE)?;
    let uffd = Userfaultfd::open(true)?;
    uffd.register(scratch.base..scratch.base + scratch.len, true)
}

/// Whether the kernel keeps soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY`),
/// probed on first call. wasnap does not use them, see [`Support`].
pub fn soft_dirty_bits() -> bool {
    static SOFT_DIRTY: OnceLock<bool> = OnceLock::new();
    *SOFT_DIRTY.get_or_init(|| probe_soft_dirty().unwrap_or(false))
}

/// Whether writing a page sets its soft-dirty bit (bit 55 of its page map
/// entry) after `/proc/self/clear_refs` cleared it.
fn probe_soft_dirty() -> io::Result<bool> {
    use std::os::unix::fs::FileExt as _;
    const SOFT_DIRTY: u64 = 1 << 55;
    let scratch = Scratch::new(KERNEL_PAGE)?;
    scratch.write(0, 1);
    let pagemap = std::fs::File::open("/proc/self/pagemap")?;
    let entry = || -> io::Result<u64> {
        let mut bytes = [0u8; 8];
        pagemap.read_exact_at(&mut bytes, (scratch.base / KERNEL_PAGE * 8) as u64)?;
        Ok(u64::from_le_bytes(bytes))
    };
    std::fs::write("/proc/self/clear_refs", "4")?;
    let cleared = entry()? & SOFT_DIRTY == 0;
    scratch.write(0, 2);
    Ok(cleared && entry()? & SOFT_DIRTY != 0)
}

/// Which pages of a memory were written since its tracking started or was
/// last read.
pub(crate) struct Written {
    /// How many pages from the start of the memory were tracked.
    pub tracked: usize,
    /// For each of them, whether it was written.
    pub pages: Vec<bool>,
}

/// A workflow's write tracking: the ranges of its memories that are
/// write-protected, from which [`Tracker::written`] learns what changed.
#[derive(Default)]
pub(crate) struct Tracker {
    uffd: Option<Arc<Userfaultfd>>,
    /// Per memory: the start and length of the range that is tracked.
    ranges: Vec<Option<(usize, usize)>>,
}

impl Tracker {
    /// A tracker using `choice`, or none (page comparison).
    pub(crate) fn new(choice: ChangeTracking) -> Result<Tracker> {
        let uffd = match choice {
            ChangeTracking::Compare => None,
            ChangeTracking::Auto if !support().write_protect => None,
            ChangeTracking::WriteProtect if !support().write_protect => bail!(
                "userfaultfd write protection is not available here (it needs Linux 6.7 or later built with CONFIG_USERFAULTFD and CONFIG_PTE_MARKER_UFFD_WP)"
            ),
            // Out of descriptors, say: comparing pages still works.
            ChangeTracking::Auto => Userfaultfd::open(false).ok().map(Arc::new),
            ChangeTracking::WriteProtect => Some(Arc::new(Userfaultfd::open(false)?)),
        };
        Ok(Tracker {
            uffd,
            ranges: Vec::new(),
        })
    }

    /// A tracker on `uffd`, which also fills the restored memories' pages.
    pub(crate) fn on(uffd: Arc<Userfaultfd>) -> Tracker {
        Tracker {
            uffd: Some(uffd),
            ranges: Vec::new(),
        }
    }

    /// The userfaultfd, if writes are tracked with one.
    pub(crate) fn userfaultfd(&self) -> Option<&Arc<Userfaultfd>> {
        self.uffd.as_ref()
    }

    /// The pages of memory `index` (now at `base`, `len` bytes) written
    /// since its tracking started or was last read; `None` if it is not
    /// tracked (or has moved since).
    pub(crate) fn written(&mut self, index: usize, base: usize, len: usize) -> Option<Written> {
        self.uffd.as_ref()?;
        let &(start, tracked) = self.ranges.get(index)?.as_ref()?;
        if start != base || tracked > len {
            self.ranges[index] = None;
            return None;
        }
        let mut pages = vec![false; tracked / PAGE_SIZE];
        let scan = uffd::take_written(start..start + tracked, |r| {
            let first = (r.start - start) / PAGE_SIZE;
            let last = (r.end - 1 - start) / PAGE_SIZE;
            pages[first..=last].fill(true);
        });
        match scan {
            Ok(()) => Some(Written {
                tracked: tracked / PAGE_SIZE,
                pages,
            }),
            Err(_) => {
                // Nothing can be trusted of this range any more.
                self.ranges[index] = None;
                None
            }
        }
    }

    /// Tracks writes to memory `index` (at `base`, `len` bytes) from now
    /// on; the part tracked already stays as it is.
    pub(crate) fn track(&mut self, index: usize, base: usize, len: usize) {
        let Some(uffd) = &self.uffd else {
            return;
        };
        if self.ranges.len() <= index {
            self.ranges.resize(index + 1, None);
        }
        let from = match self.ranges[index] {
            Some((start, tracked)) if start == base && tracked <= len => tracked,
            _ => 0,
        };
        if from == len {
            return;
        }
        let range = base + from..base + len;
        let protected = uffd
            .register(range.clone(), false)
            .and_then(|()| uffd.write_protect(range));
        self.ranges[index] = match protected {
            Ok(()) => Some((base, len)),
            Err(_) if from > 0 => Some((base, from)),
            Err(_) => None,
        };
    }

    /// Records that memory `index` is tracked over `base..base + len`
    /// already (it was registered and protected as it was filled).
    pub(crate) fn tracked(&mut self, index: usize, base: usize, len: usize) {
        if self.ranges.len() <= index {
            self.ranges.resize(index + 1, None);
        }
        self.ranges[index] = Some((base, len));
    }
}

/// The pages of one restored memory that are filled on demand.
struct LazyMemory {
    range: Range<usize>,
    /// The snapshot's non-zero pages, by ascending index.
    pages: Vec<Page>,
    /// Which pages (by index) were placed.
    placed: Vec<bool>,
}

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// What the filling thread shares with the workflow.
struct FillState {
    uffd: Arc<Userfaultfd>,
    /// Set when the workflow is dropped, after which its memory may be
    /// unmapped and the addresses reused: held while a page is placed, so
    /// that no page is placed once it is set.
    stopped: Mutex<bool>,
    /// The first page that could not be read: the workflow must not go on.
    error: Mutex<Option<String>>,
    /// After this many faults, the thread places every other page too,
    /// between faults: past that point a run touches enough of its memory
    /// that reading the rest ahead costs less than faulting it in.
    prefetch_after: usize,
}

/// The thread that fills a restored workflow's pages when they are first
/// touched. Stopped when dropped, without waiting for the thread to end
/// (on a busy machine that wait alone took milliseconds).
pub(crate) struct Filler {
    state: Arc<FillState>,
    wake: OwnedFd,
}

impl Filler {
    /// Starts filling `memories` (registered with `uffd` for missing pages,
    /// with nothing populated) from `images`.
    pub(crate) fn start(
        uffd: Arc<Userfaultfd>,
        memories: Vec<(Range<usize>, &MemoryImage)>,
        prefetch_after: usize,
    ) -> Result<Filler> {
        let mut memories: Vec<LazyMemory> = memories
            .into_iter()
            .map(|(range, image)| LazyMemory {
                placed: vec![false; (range.end - range.start) / PAGE_SIZE],
                range,
                pages: image.pages.to_vec(),
            })
            .collect();
        let state = Arc::new(FillState {
            uffd,
            stopped: Mutex::new(false),
            error: Mutex::new(None),
            prefetch_after,
        });
        let wake = uffd::wake_pair()?;
        {
            let state = Arc::clone(&state);
            let wake = wake.try_clone()?;
            std::thread::Builder::new()
                .name("wasnap-pages".into())
                .spawn(move || fill(&state, &mut memories, &wake))?;
        }
        Ok(Filler { state, wake })
    }

    /// Why a page could not be filled, if one could not: the workflow saw
    /// zeros there and must not go on.
    pub(crate) fn error(&self) -> Option<String> {
        self.state
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        *self.state.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        uffd::wake(&self.wake);
    }
}

/// The filling thread: serves faults as they come; once past
/// `prefetch_after` faults, places the remaining pages between them.
fn fill(state: &FillState, memories: &mut [LazyMemory], wake: &OwnedFd) {
    // Before the first fault: the store's reading connection is opened
    // while the workflow is still being set up, where a core is free.
    for memory in memories.iter() {
        if let Some(page) = memory.pages.first() {
            page.data.prepare_source();
        }
    }
    let mut next = (0usize, 0usize);
    let mut served = 0;
    let mut prefetching = state.prefetch_after == 0;
    loop {
        let timeout = if prefetching { 0 } else { -1 };
        match state.uffd.next_fault(wake, timeout) {
            Ok(Fault::Stop) | Err(_) => return,
            _ if *state.stopped.lock().unwrap_or_else(|e| e.into_inner()) => return,
            Ok(Fault::At(address)) => {
                served += 1;
                place_at(state, memories, address);
                prefetching |= served >= state.prefetch_after;
            }
            Ok(Fault::None) if prefetching => {
                prefetching = place_next(state, memories, &mut next);
            }
            Ok(Fault::None) => {}
        }
    }
}

/// Places the page holding `address`, or zeros if it cannot be read (and
/// records why).
fn place_at(state: &FillState, memories: &mut [LazyMemory], address: usize) {
    let Some(memory) = memories.iter_mut().find(|m| m.range.contains(&address)) else {
        // Not a page of ours: place zeros so that the thread can go on.
        let page = address & !(KERNEL_PAGE - 1);
        let stopped = state.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if !*stopped {
            // SAFETY: a missing page of a registered range, which the
            // faulting thread is blocked on.
            let _ = unsafe { state.uffd.place(page, &ZERO_PAGE[..KERNEL_PAGE]) };
        }
        return;
    };
    let index = (address - memory.range.start) / PAGE_SIZE;
    place_page(state, memory, index);
}

/// Places page `index` of `memory` unless it was placed already.
fn place_page(state: &FillState, memory: &mut LazyMemory, index: usize) {
    if std::mem::replace(&mut memory.placed[index], true) {
        return;
    }
    let bytes = match memory
        .pages
        .binary_search_by_key(&(index as u32), |p| p.index)
    {
        Err(_) => &ZERO_PAGE[..],
        Ok(i) => match memory.pages[i].data.bytes() {
            Ok(bytes) => bytes,
            Err(e) => {
                let mut error = state.error.lock().unwrap_or_else(|e| e.into_inner());
                error.get_or_insert_with(|| format!("{e:#}"));
                &ZERO_PAGE[..]
            }
        },
    };
    let start = memory.range.start + index * PAGE_SIZE;
    let stopped = state.stopped.lock().unwrap_or_else(|e| e.into_inner());
    if !*stopped {
        // SAFETY: a page of a range registered for missing pages, which
        // only this thread populates, of a memory still mapped (the
        // workflow is not dropped: `stopped` is held), that no Rust
        // reference covers while the workflow runs or is captured
        // (captures read it through the same faults).
        let _ = unsafe { state.uffd.place(start, bytes) };
    }
}

/// Places the next non-zero page not placed yet; false when none is left.
fn place_next(state: &FillState, memories: &mut [LazyMemory], next: &mut (usize, usize)) -> bool {
    while let Some(memory) = memories.get_mut(next.0) {
        match memory.pages.get(next.1).map(|p| p.index as usize) {
            Some(index) => {
                next.1 += 1;
                if !memory.placed[index] {
                    place_page(state, memory, index);
                    return true;
                }
            }
            None => *next = (next.0 + 1, 0),
        }
    }
    false
}
