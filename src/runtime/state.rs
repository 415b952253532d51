//! Copying an instance's memories, globals and tables to and from the
//! engine-neutral snapshot form.

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use wasmtime::{Instance, Memory, Store, V128, Val};

use super::abi::HostState;
use crate::instrument::{GLOBAL_EXPORT_PREFIX, MEMORY_EXPORT_PREFIX, Metadata};
use crate::snapshot::{GlobalValue, MemoryImage, PAGE_SIZE, Page, TableImage};

pub(crate) fn memory(store: &mut Store<HostState>, instance: &Instance, index: u32) -> Memory {
    instance
        .get_memory(&mut *store, &format!("{MEMORY_EXPORT_PREFIX}{index}"))
        .expect("the instrumenter exports every memory")
}

/// The pages of a workflow's memories as of its last capture or restore,
/// by memory and page index (`None`: all zeros then).
///
/// How a capture finds the pages that changed: it compares each page with
/// the one kept here, and shares the kept copy when they are equal. A
/// comparison reads the page once and stops at its first difference; it
/// is several times faster than hashing the page, and, unlike the
/// kernel's soft-dirty bits (cleared for a whole process at a time, and
/// absent from many kernels) or write-protecting the memory (a fault per
/// first write, in signal handlers that wasmtime owns), it needs nothing
/// from the platform. The kept copies are the very buffers of the last
/// snapshot, not copies of it: what a workflow pays is holding one copy of
/// its non-zero pages besides its memory, for as long as it lives.
///
/// A page that was all zeros then is read again only if the kernel has
/// mapped it since (see [`touched_pages`]): a sparse memory costs what its
/// guest touched, not its size.
#[derive(Default)]
pub(crate) struct PageHistory {
    memories: Vec<Vec<Option<Arc<[u8]>>>>,
    /// Whether `memories` describes every page (after a capture or a
    /// restore), so that a page it has as zeros and nobody touched since is
    /// still zeros.
    complete: bool,
}

impl PageHistory {
    /// The history of a workflow whose memories were just made equal to
    /// `images`.
    pub(crate) fn of(images: &[MemoryImage]) -> PageHistory {
        let memories = images
            .iter()
            .map(|image| {
                let mut pages = vec![None; image.page_count as usize];
                for page in &image.pages {
                    pages[page.index as usize] = Some(Arc::clone(&page.data));
                }
                pages
            })
            .collect();
        PageHistory {
            memories,
            complete: true,
        }
    }
}

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
/// capture.
pub(crate) fn capture_memories(
    store: &mut Store<HostState>,
    instance: &Instance,
    metadata: &Metadata,
    history: &mut PageHistory,
) -> Vec<MemoryImage> {
    history
        .memories
        .resize_with(metadata.memory_count as usize, Vec::new);
    let memories = (0..metadata.memory_count)
        .map(|index| {
            let memory = memory(store, instance, index);
            let data = memory.data(&*store);
            // Pages beyond the module's minimum size were added by growing
            // the memory: they start as zeros, so they need no history.
            let grown_from = memory.ty(&*store).minimum() as usize;
            let complete = history.complete;
            let touched = touched_pages(data);
            let untouched = |page: usize| {
                (complete || page >= grown_from) && touched.as_ref().is_some_and(|t| !t[page])
            };
            let kept = &mut history.memories[index as usize];
            kept.resize(data.len() / PAGE_SIZE, None);
            let mut pages = Vec::new();
            for ((page_index, page), kept) in data.chunks_exact(PAGE_SIZE).enumerate().zip(kept) {
                let data = match kept {
                    Some(old) if **old == *page => Arc::clone(old),
                    None if untouched(page_index) => continue,
                    _ if is_zero(page) => {
                        *kept = None;
                        continue;
                    }
                    _ => Arc::clone(kept.insert(Arc::from(page))),
                };
                pages.push(Page {
                    index: page_index as u32,
                    data,
                });
            }
            MemoryImage {
                page_count: (data.len() / PAGE_SIZE) as u64,
                pages,
            }
        })
        .collect();
    history.complete = true;
    memories
}

/// Whether a page is all zeros, a machine word at a time.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let (prefix, words, suffix) = unsafe { bytes.align_to::<u128>() };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

/// Makes each memory of a fresh instance equal to its image. Only pages
/// that are non-zero on either side are written: growing a memory gives
/// zero pages for free.
pub(crate) fn restore_memories(
    store: &mut Store<HostState>,
    instance: &Instance,
    images: &[MemoryImage],
) -> Result<()> {
    for (index, image) in images.iter().enumerate() {
        let memory = memory(store, instance, index as u32);
        let current = memory.size(&*store);
        if image.page_count < current {
            bail!(
                "memory {index} of the snapshot has {} pages, fewer than the module's minimum of {current}",
                image.page_count
            );
        }
        // Data segments may have written pages the snapshot has as zeros.
        let initialised = current as usize * PAGE_SIZE;
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
        memory
            .grow(&mut *store, image.page_count - current)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("growing memory {index} to {} pages", image.page_count))?;
        let data = memory.data_mut(&mut *store);
        for page in &image.pages {
            let start = page.index as usize * PAGE_SIZE;
            data.get_mut(start..start + PAGE_SIZE)
                .with_context(|| format!("page {} is outside memory {index}", page.index))?
                .copy_from_slice(&page.data);
        }
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
