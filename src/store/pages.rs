//! Content-addressed memory pages.
//!
//! Each non-zero 64 KiB page is named by its BLAKE3 hash, stored once
//! zstd-compressed in `pages`, and referenced by every version that holds
//! it through `version_pages`, by the page's row id (8 bytes at most where
//! the hash takes 32: a version lists every page it holds). All-zero pages
//! are not stored at all: a memory's size and its list of references say
//! where they are.
//!
//! Why BLAKE3: the name of a page must be collision-resistant (two pages
//! with one name would silently corrupt a restore), and hashing is on the
//! path of every suspension. BLAKE3 is a cryptographic hash that runs at
//! several GB/s on one core thanks to SIMD over its 1 KiB chunks, which a
//! 64 KiB page fills exactly; SHA-256 is several times slower, and fast
//! non-cryptographic hashes give no guarantee against collisions.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};

use super::InstanceId;
use crate::snapshot::{MemoryImage, PAGE_SIZE, Page};

/// zstd level for pages: they are compressed on the path of a suspension,
/// where speed matters more than the last few percent of size.
pub(super) const PAGE_ZSTD_LEVEL: i32 = 1;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// One non-zero page of a version about to be committed: its name, and
/// either the row id it is known to be stored under or its compressed
/// contents, in case it is new.
pub(super) struct PreparedPage {
    pub memory: u32,
    pub index: u32,
    pub hash: [u8; 32],
    pub data: Arc<[u8]>,
    pub known: Option<i64>,
    pub compressed: Option<Vec<u8>>,
}

/// A page's place: (memory index, page index).
type PageKey = (u32, u32);

/// How many pages a [`PageCache`] keeps over all instances (256 MiB): it
/// shares them with the snapshots and workflows it saw, but keeps them
/// alive after those are gone.
const CACHE_PAGES: usize = 4096;

/// The names of the pages last committed or loaded through one store
/// handle, with their contents, by instance and (memory, page index); and,
/// per instance, which names are known to be stored.
///
/// From one suspension to the next a workflow usually changes few pages,
/// and the snapshots of one workflow share the pages that did not change
/// (see [`Page::data`]). A page that is the very one cached is named
/// without reading it; one with equal contents after a comparison, which
/// runs at memory speed, several times faster than hashing. Only pages that
/// changed are hashed. A name is a pure function of the contents, so the
/// cache can never be wrong, only miss (after a branch, or a commit that
/// was rolled back). A service commits many instances in turn, so each
/// keeps its own entries, up to [`CACHE_PAGES`] in all.
#[derive(Default)]
pub(super) struct PageCache {
    instances: HashMap<InstanceId, InstancePages>,
    pages: usize,
}

/// What a [`PageCache`] knows of one instance.
#[derive(Default)]
struct InstancePages {
    entries: HashMap<PageKey, ([u8; 32], Arc<[u8]>)>,
    /// The version last committed or loaded, and the names and row ids of
    /// its pages. Those pages are in the database for as long as that
    /// version is: a commit whose parent is this version (checked inside
    /// its transaction) need not look them up.
    version: Option<u32>,
    stored: HashMap<[u8; 32], i64>,
}

impl PageCache {
    /// The cached name of a page whose contents are unchanged.
    fn cached_name(&self, instance: InstanceId, memory: u32, page: &Page) -> Option<[u8; 32]> {
        let (hash, data) = self
            .instances
            .get(&instance)?
            .entries
            .get(&(memory, page.index))?;
        (Arc::ptr_eq(data, &page.data) || *data == page.data).then_some(*hash)
    }

    /// The row id of a page known to be stored under `parent`.
    fn known_id(&self, instance: InstanceId, parent: Option<u32>, hash: &[u8; 32]) -> Option<i64> {
        let cached = self.instances.get(&instance)?;
        if parent.is_none() || cached.version != parent {
            return None;
        }
        cached.stored.get(hash).copied()
    }

    /// Records that `version` of `instance`, holding `pages` (memory, page
    /// index, name, contents) stored under row ids `ids`, has just been
    /// committed or read in a transaction: the instance's entries become
    /// that version's pages.
    pub(super) fn settle<'a>(
        &mut self,
        instance: InstanceId,
        version: u32,
        pages: impl Iterator<Item = (u32, u32, [u8; 32], &'a Arc<[u8]>)>,
        ids: &[i64],
    ) {
        let pages: Vec<_> = pages.collect();
        if let Some(old) = self.instances.remove(&instance) {
            self.pages -= old.entries.len().min(self.pages);
        }
        self.make_room(pages.len());
        let room = CACHE_PAGES.saturating_sub(self.pages);
        let entries: HashMap<_, _> = pages
            .iter()
            .take(room)
            .map(|&(memory, index, hash, data)| ((memory, index), (hash, Arc::clone(data))))
            .collect();
        let stored = pages.iter().map(|p| p.2).zip(ids.iter().copied()).collect();
        self.pages += entries.len();
        let cached = InstancePages {
            entries,
            version: Some(version),
            stored,
        };
        self.instances.insert(instance, cached);
    }

    /// Forgets other instances until `more` pages fit (or none is left).
    fn make_room(&mut self, more: usize) {
        while self.pages + more > CACHE_PAGES {
            let Some(&victim) = self.instances.keys().next() else {
                return;
            };
            let removed = self
                .instances
                .remove(&victim)
                .map_or(0, |c| c.entries.len());
            self.pages -= removed.min(self.pages);
        }
    }
}

/// Names every non-zero page of `memories`, a snapshot of `instance`
/// resumed from `parent`, and compresses those not known to be stored.
/// The cache is locked only to look names up; hashing and compression run
/// without it, so that several threads prepare versions at once.
pub(super) fn prepare(
    memories: &[MemoryImage],
    instance: InstanceId,
    parent: Option<u32>,
    cache: &std::sync::Mutex<PageCache>,
) -> Result<Vec<PreparedPage>> {
    let looked_up: Vec<_> = {
        let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        memories
            .iter()
            .zip(0u32..)
            .flat_map(|(m, memory)| m.pages.iter().map(move |page| (memory, page)))
            .map(|(memory, page)| {
                let hash = cache.cached_name(instance, memory, page);
                let known = hash.and_then(|h| cache.known_id(instance, parent, &h));
                (memory, page, hash, known)
            })
            .collect()
    };
    let mut prepared = Vec::with_capacity(looked_up.len());
    for (memory, page, hash, known) in looked_up {
        let hash = match hash {
            Some(hash) => hash,
            None if page.data[..] == ZERO_PAGE[..] => continue,
            None => *blake3::hash(&page.data).as_bytes(),
        };
        let compressed = match known {
            Some(_) => None,
            None => Some(compress(&page.data)?),
        };
        prepared.push(PreparedPage {
            memory,
            index: page.index,
            hash,
            data: Arc::clone(&page.data),
            known,
            compressed,
        });
    }
    Ok(prepared)
}

/// zstd level [`PAGE_ZSTD_LEVEL`] of one page, with a compression context
/// kept per thread.
fn compress(data: &[u8]) -> Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(
                zstd::bulk::Compressor::new(PAGE_ZSTD_LEVEL)
                    .map_err(|e| anyhow::anyhow!("cannot start zstd compression: {e}"))?,
            );
        }
        let compressor = cell.as_mut().expect("set above");
        compressor
            .compress(data)
            .map_err(|e| anyhow::anyhow!("cannot compress a page: {e}"))
    })
}

/// Stores the pages not stored yet; returns the row id of every page and
/// the bytes this added. A page already stored is not written again; those
/// known to be stored are not even looked up.
pub(super) fn store_missing(conn: &Connection, pages: &[PreparedPage]) -> Result<(Vec<i64>, u64)> {
    let mut find = conn.prepare_cached("SELECT id FROM pages WHERE hash = ?1")?;
    let mut insert = conn.prepare_cached("INSERT INTO pages (hash, data) VALUES (?1, ?2)")?;
    let mut ids = Vec::with_capacity(pages.len());
    let mut added = 0;
    for p in pages {
        let found = match p.known {
            Some(id) => Some(id),
            None => find.query_row([&p.hash], |r| r.get(0)).optional()?,
        };
        let id = match (found, &p.compressed) {
            (Some(id), _) => id,
            (None, Some(data)) => {
                insert.execute(params![p.hash, data])?;
                added += data.len() as u64;
                conn.last_insert_rowid()
            }
            (None, None) => bail!("page {} of memory {} was not prepared", p.index, p.memory),
        };
        ids.push(id);
    }
    Ok((ids, added))
}

/// Records that version row `version` holds `pages`, stored under `ids`.
pub(super) fn reference(
    conn: &Connection,
    version: i64,
    pages: &[PreparedPage],
    ids: &[i64],
) -> Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO version_pages (version, memory, page_index, page) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (p, id) in pages.iter().zip(ids) {
        insert.execute(params![version, p.memory, p.index, id])?;
    }
    Ok(())
}

/// Fills `memories` (sizes known, no pages yet) with the pages of version
/// row `version`, checking each page against its name. Returns the names
/// and row ids, memory by memory and page by page.
pub(super) fn load(
    conn: &Connection,
    version: i64,
    memories: &mut [MemoryImage],
) -> Result<(Vec<[u8; 32]>, Vec<i64>)> {
    let mut query = conn.prepare_cached(
        "SELECT vp.memory, vp.page_index, vp.page, p.hash, p.data
         FROM version_pages vp LEFT JOIN pages p ON p.id = vp.page
         WHERE vp.version = ?1 ORDER BY vp.memory, vp.page_index",
    )?;
    let mut rows = query.query([version])?;
    let mut decompressor =
        zstd::bulk::Decompressor::new().map_err(|e| anyhow::anyhow!("cannot start zstd: {e}"))?;
    let (mut names, mut ids) = (Vec::new(), Vec::new());
    while let Some(row) = rows.next()? {
        let memory: u32 = row.get(0)?;
        let index: u32 = row.get(1)?;
        let id: i64 = row.get(2)?;
        let (Some(hash), Some(stored)) = (
            row.get::<_, Option<[u8; 32]>>(3)?,
            row.get_ref(4)?.as_blob_or_null()?,
        ) else {
            bail!("page {index} of memory {memory} is missing");
        };
        let data = unpack(&mut decompressor, stored, &hash)
            .with_context(|| format!("page {index} of memory {memory}"))?;
        let Some(image) = memories.get_mut(memory as usize) else {
            bail!("a page refers to memory {memory}, which the snapshot does not have");
        };
        image.pages.push(Page { index, data });
        names.push(hash);
        ids.push(id);
    }
    Ok((names, ids))
}

/// Decompresses a stored page straight into the buffer it will be shared
/// from, and checks it against its name.
fn unpack(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    stored: &[u8],
    hash: &[u8; 32],
) -> Result<Arc<[u8]>> {
    let mut data: Arc<[u8]> = Arc::from(&ZERO_PAGE[..]);
    let buffer = Arc::get_mut(&mut data).expect("a new Arc is not shared");
    let len = decompressor
        .decompress_to_buffer(stored, buffer)
        .map_err(|e| anyhow::anyhow!("cannot decompress it: {e}"))?;
    if len != PAGE_SIZE || blake3::hash(&data).as_bytes() != hash {
        bail!("its contents do not match its hash");
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn image(pages: Vec<(u32, Vec<u8>)>) -> MemoryImage {
        MemoryImage {
            page_count: pages.iter().map(|p| p.0 as u64 + 1).max().unwrap_or(0),
            pages: pages
                .into_iter()
                .map(|(index, data)| Page {
                    index,
                    data: data.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn zero_pages_are_skipped_and_others_named_by_content() {
        let mut a = vec![0u8; PAGE_SIZE];
        a[PAGE_SIZE - 1] = 1;
        let memories = vec![
            image(vec![(0, vec![0; PAGE_SIZE]), (1, a.clone())]),
            image(vec![(0, a)]),
        ];
        let cache = Mutex::new(PageCache::default());
        let prepared = prepare(&memories, 1, None, &cache).unwrap();
        assert_eq!(prepared.len(), 2);
        assert_eq!((prepared[0].memory, prepared[0].index), (0, 1));
        assert_eq!((prepared[1].memory, prepared[1].index), (1, 0));
        assert_eq!(prepared[0].hash, prepared[1].hash);
        assert!(prepared.iter().all(|p| p.compressed.is_some()));
    }

    #[test]
    fn the_cache_names_unchanged_pages_and_knows_they_are_stored() {
        let mut memories = vec![image(vec![
            (0, vec![1; PAGE_SIZE]),
            (1, vec![2; PAGE_SIZE]),
        ])];
        let cache = Mutex::new(PageCache::default());
        let first = prepare(&memories, 1, None, &cache).unwrap();
        let settled = |cache: &Mutex<PageCache>, pages: &[PreparedPage], version| {
            let ids: Vec<i64> = (10..).take(pages.len()).collect();
            let entries = pages.iter().map(|p| (p.memory, p.index, p.hash, &p.data));
            cache.lock().unwrap().settle(1, version, entries, &ids);
        };
        settled(&cache, &first, 1);
        Arc::make_mut(&mut memories[0].pages[0].data)[7] = 9;
        let second = prepare(&memories, 1, Some(1), &cache).unwrap();
        assert_eq!(
            second[0].hash,
            *blake3::hash(&memories[0].pages[0].data).as_bytes()
        );
        assert_ne!(second[0].hash, first[0].hash);
        assert!(second[0].compressed.is_some() && second[0].known.is_none());
        // The unchanged page is named from the cache and known stored.
        assert_eq!(second[1].hash, first[1].hash);
        assert_eq!(
            (second[1].known, second[1].compressed.is_none()),
            (Some(11), true)
        );
        // Not under another parent, nor for another instance.
        assert!(
            prepare(&memories, 1, Some(7), &cache).unwrap()[1]
                .known
                .is_none()
        );
        assert!(
            prepare(&memories, 2, Some(1), &cache).unwrap()[1]
                .known
                .is_none()
        );
    }

    #[test]
    fn the_cache_stays_within_its_budget() {
        let mut cache = PageCache::default();
        let page: Arc<[u8]> = vec![1u8; PAGE_SIZE].into();
        let per_instance = CACHE_PAGES / 2 + 1;
        for instance in 1..=3 {
            let entries = (0..per_instance as u32).map(|i| (0, i, [i as u8; 32], &page));
            let ids = vec![0; per_instance];
            cache.settle(instance, 1, entries, &ids);
            assert!(cache.pages <= CACHE_PAGES, "{}", cache.pages);
            assert!(cache.instances.contains_key(&instance));
        }
    }

    #[test]
    fn unpack_checks_the_name() {
        let page = vec![3u8; PAGE_SIZE];
        let packed = zstd::bulk::compress(&page, 1).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let hash = *blake3::hash(&page).as_bytes();
        assert_eq!(*unpack(&mut d, &packed, &hash).unwrap(), *page);
        assert!(unpack(&mut d, &packed, &[0; 32]).is_err());
        assert!(unpack(&mut d, &packed[..packed.len() - 1], &hash).is_err());
    }
}
