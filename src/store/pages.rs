//! Content-addressed memory pages.
//!
//! Each non-zero 64 KiB page is named by its BLAKE3 hash, stored once
//! zstd-compressed in `pages`, and referenced by every version that holds
//! it through `version_pages`. All-zero pages are not stored at all: a
//! memory's size and its list of references say where they are.
//!
//! Why BLAKE3: the name of a page must be collision-resistant (two pages
//! with one name would silently corrupt a restore), and hashing is on the
//! path of every suspension. BLAKE3 is a cryptographic hash that runs at
//! several GB/s on one core thanks to SIMD over its 1 KiB chunks, which a
//! 64 KiB page fills exactly; SHA-256 is several times slower, and fast
//! non-cryptographic hashes give no guarantee against collisions.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, params};

use super::InstanceId;
use crate::snapshot::{MemoryImage, PAGE_SIZE, Page};

/// zstd level for pages: they are compressed on the path of a suspension,
/// where speed matters more than the last few percent of size.
pub(super) const PAGE_ZSTD_LEVEL: i32 = 1;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// One non-zero page of a snapshot, with its name.
pub(super) struct HashedPage<'a> {
    pub memory: u32,
    pub page: &'a Page,
    pub hash: [u8; 32],
}

/// How many pages a [`PageCache`] keeps (64 MiB): beyond that, memory spent
/// on copies would outweigh the hashing it saves.
const CACHE_PAGES: usize = 1024;

/// The names of the pages last committed through one store handle, with
/// their contents, by (memory, page index), for one instance at a time.
///
/// From one suspension to the next a workflow usually changes few pages.
/// Comparing a page with its previous contents runs at memory speed, several
/// times faster than hashing it, so only pages that changed are hashed. A
/// name is a pure function of the contents, so the cache can never be
/// wrong, only miss (after a branch, or a commit that was rolled back).
#[derive(Default)]
pub(super) struct PageCache {
    instance: Option<InstanceId>,
    entries: HashMap<(u32, u32), ([u8; 32], Vec<u8>)>,
}

impl PageCache {
    /// The name of a page, or `None` if it is all zeros. A page equal to
    /// the cached one is known to be non-zero and is not scanned again.
    fn name(&mut self, memory: u32, page: &Page) -> Option<[u8; 32]> {
        let key = (memory, page.index);
        let room = self.entries.len() < CACHE_PAGES;
        let cached = self.entries.get_mut(&key);
        if let Some((hash, data)) = &cached
            && *data == page.data
        {
            return Some(*hash);
        }
        if page.data[..] == ZERO_PAGE[..] {
            return None;
        }
        let hash = *blake3::hash(&page.data).as_bytes();
        match cached {
            Some(entry) => {
                entry.0 = hash;
                entry.1.copy_from_slice(&page.data);
            }
            None if room => {
                self.entries.insert(key, (hash, page.data.clone()));
            }
            None => {}
        }
        Some(hash)
    }
}

/// Names every non-zero page of `memories`, a snapshot of `instance`.
pub(super) fn hash_pages<'a>(
    memories: &'a [MemoryImage],
    instance: InstanceId,
    cache: &mut PageCache,
) -> Vec<HashedPage<'a>> {
    if cache.instance != Some(instance) {
        cache.entries.clear();
        cache.instance = Some(instance);
    }
    let mut named = Vec::new();
    for (m, memory) in memories.iter().zip(0u32..) {
        for page in &m.pages {
            if let Some(hash) = cache.name(memory, page) {
                named.push(HashedPage { memory, page, hash });
            }
        }
    }
    named
}

/// Stores the pages not stored yet and returns the bytes this added. A
/// page already stored is neither compressed nor written again.
pub(super) fn store_missing(
    conn: &Connection,
    compressor: &mut zstd::bulk::Compressor<'static>,
    pages: &[HashedPage],
) -> Result<u64> {
    let mut exists = conn.prepare_cached("SELECT 1 FROM pages WHERE hash = ?1")?;
    let mut insert = conn.prepare_cached("INSERT INTO pages (hash, data) VALUES (?1, ?2)")?;
    let mut added = 0;
    for p in pages {
        if exists.exists([&p.hash])? {
            continue;
        }
        let data = compressor
            .compress(&p.page.data)
            .map_err(|e| anyhow::anyhow!("cannot compress a page: {e}"))?;
        insert.execute(params![p.hash, data])?;
        added += data.len() as u64;
    }
    Ok(added)
}

/// Records that version row `version` holds `pages`.
pub(super) fn reference(conn: &Connection, version: i64, pages: &[HashedPage]) -> Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO version_pages (version, memory, page_index, hash) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for p in pages {
        insert.execute(params![version, p.memory, p.page.index, p.hash])?;
    }
    Ok(())
}

/// Fills `memories` (sizes known, no pages yet) with the pages of version
/// row `version`, checking each page against its name.
pub(super) fn load(conn: &Connection, version: i64, memories: &mut [MemoryImage]) -> Result<()> {
    let mut query = conn.prepare_cached(
        "SELECT vp.memory, vp.page_index, vp.hash, p.data
         FROM version_pages vp LEFT JOIN pages p ON p.hash = vp.hash
         WHERE vp.version = ?1 ORDER BY vp.memory, vp.page_index",
    )?;
    let mut rows = query.query([version])?;
    let mut decompressor =
        zstd::bulk::Decompressor::new().map_err(|e| anyhow::anyhow!("cannot start zstd: {e}"))?;
    while let Some(row) = rows.next()? {
        let memory: u32 = row.get(0)?;
        let index: u32 = row.get(1)?;
        let hash: [u8; 32] = row.get(2)?;
        let Some(stored) = row.get_ref(3)?.as_blob_or_null()? else {
            bail!("page {index} of memory {memory} is missing");
        };
        let data = unpack(&mut decompressor, stored, &hash)
            .with_context(|| format!("page {index} of memory {memory}"))?;
        let Some(image) = memories.get_mut(memory as usize) else {
            bail!("a page refers to memory {memory}, which the snapshot does not have");
        };
        image.pages.push(Page { index, data });
    }
    Ok(())
}

fn unpack(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    stored: &[u8],
    hash: &[u8; 32],
) -> Result<Vec<u8>> {
    let data = decompressor
        .decompress(stored, PAGE_SIZE)
        .map_err(|e| anyhow::anyhow!("cannot decompress it: {e}"))?;
    if data.len() != PAGE_SIZE || blake3::hash(&data).as_bytes() != hash {
        bail!("its contents do not match its hash");
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_skipped_and_others_named_by_content() {
        let mut a = vec![0u8; PAGE_SIZE];
        a[PAGE_SIZE - 1] = 1;
        let memories = vec![
            MemoryImage {
                page_count: 2,
                pages: vec![
                    Page {
                        index: 0,
                        data: vec![0; PAGE_SIZE],
                    },
                    Page {
                        index: 1,
                        data: a.clone(),
                    },
                ],
            },
            MemoryImage {
                page_count: 1,
                pages: vec![Page { index: 0, data: a }],
            },
        ];
        let mut cache = PageCache::default();
        let hashed = hash_pages(&memories, 1, &mut cache);
        assert_eq!(hashed.len(), 2);
        assert_eq!((hashed[0].memory, hashed[0].page.index), (0, 1));
        assert_eq!((hashed[1].memory, hashed[1].page.index), (1, 0));
        assert_eq!(hashed[0].hash, hashed[1].hash);
    }

    #[test]
    fn the_cache_names_changed_pages_anew() {
        let mut memories = vec![MemoryImage {
            page_count: 1,
            pages: vec![Page {
                index: 0,
                data: vec![1; PAGE_SIZE],
            }],
        }];
        let mut cache = PageCache::default();
        let first = hash_pages(&memories, 1, &mut cache)[0].hash;
        assert_eq!(hash_pages(&memories, 1, &mut cache)[0].hash, first);
        memories[0].pages[0].data[7] = 2;
        let changed = hash_pages(&memories, 1, &mut cache)[0].hash;
        assert_eq!(
            changed,
            *blake3::hash(&memories[0].pages[0].data).as_bytes()
        );
        assert_ne!(changed, first);
        // Another instance starts from an empty cache.
        assert_eq!(hash_pages(&memories, 2, &mut cache)[0].hash, changed);
        assert_eq!(cache.instance, Some(2));
    }

    #[test]
    fn unpack_checks_the_name() {
        let page = vec![3u8; PAGE_SIZE];
        let packed = zstd::bulk::compress(&page, 1).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let hash = *blake3::hash(&page).as_bytes();
        assert_eq!(unpack(&mut d, &packed, &hash).unwrap(), page);
        assert!(unpack(&mut d, &packed, &[0; 32]).is_err());
        assert!(unpack(&mut d, &packed[..packed.len() - 1], &hash).is_err());
    }
}
