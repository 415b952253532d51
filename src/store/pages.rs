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

use super::InstanceId;
use super::sql::{Connection, Dialect, Param, params};
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

/// A page's place: (memory index, page index).
type PageKey = (u32, u32);

/// How many pages a [`PageCache`] keeps (64 MiB): it shares them with the
/// snapshots it saw, but keeps them alive after those are gone.
const CACHE_PAGES: usize = 1024;

/// The names of the pages last committed or loaded through one store
/// handle, with their contents, by (memory, page index), for one instance
/// at a time; and which names are known to be stored.
///
/// From one suspension to the next a workflow usually changes few pages,
/// and the snapshots of one workflow share the pages that did not change
/// (see [`Page::data`]). A page that is the very one cached is named
/// without reading it; one with equal contents after a comparison, which
/// runs at memory speed, several times faster than hashing. Only pages that
/// changed are hashed. A name is a pure function of the contents, so the
/// cache can never be wrong, only miss (after a branch, or a commit that
/// was rolled back).
#[derive(Default)]
pub(super) struct PageCache {
    instance: Option<InstanceId>,
    entries: HashMap<PageKey, ([u8; 32], Arc<[u8]>)>,
    /// The version of `instance` last committed or loaded, and the names
    /// and row ids of its pages. Those pages are in the database for as
    /// long as that version is: a commit whose parent is this version
    /// (checked inside its transaction) need not look them up.
    version: Option<u32>,
    stored: HashMap<[u8; 32], i64>,
}

impl PageCache {
    /// The name of a page, or `None` if it is all zeros. A page equal to
    /// the cached one is known to be non-zero and is not scanned again.
    fn name(&mut self, memory: u32, page: &Page) -> Option<[u8; 32]> {
        let key = (memory, page.index);
        let room = self.entries.len() < CACHE_PAGES;
        let cached = self.entries.get_mut(&key);
        if let Some((hash, data)) = &cached
            && (Arc::ptr_eq(data, &page.data) || *data == page.data)
        {
            return Some(*hash);
        }
        if page.data[..] == ZERO_PAGE[..] {
            return None;
        }
        let hash = *blake3::hash(&page.data).as_bytes();
        match cached {
            Some(entry) => *entry = (hash, Arc::clone(&page.data)),
            None if room => {
                self.entries.insert(key, (hash, Arc::clone(&page.data)));
            }
            None => {}
        }
        Some(hash)
    }

    /// Starts over when the pages to name belong to another instance.
    fn switch_to(&mut self, instance: InstanceId) {
        if self.instance != Some(instance) {
            self.entries.clear();
            self.version = None;
            self.stored.clear();
            self.instance = Some(instance);
        }
    }

    /// Records that `version` of `instance`, holding `pages` stored under
    /// row ids `ids`, has just been committed or read in a transaction.
    pub(super) fn settle(
        &mut self,
        instance: InstanceId,
        version: u32,
        pages: &[HashedPage],
        ids: &[i64],
    ) {
        self.switch_to(instance);
        self.version = Some(version);
        self.stored = pages
            .iter()
            .map(|p| p.hash)
            .zip(ids.iter().copied())
            .collect();
        for p in pages {
            let key = (p.memory, p.page.index);
            if self.entries.len() < CACHE_PAGES || self.entries.contains_key(&key) {
                self.entries.insert(key, (p.hash, Arc::clone(&p.page.data)));
            }
        }
    }

    /// The pages known to be stored, by name, when a commit's parent is
    /// `parent`.
    pub(super) fn stored_under(&self, parent: Option<u32>) -> Option<&HashMap<[u8; 32], i64>> {
        (parent.is_some() && parent == self.version).then_some(&self.stored)
    }
}

/// Names every non-zero page of `memories`, a snapshot of `instance`.
pub(super) fn hash_pages<'a>(
    memories: &'a [MemoryImage],
    instance: InstanceId,
    cache: &mut PageCache,
) -> Vec<HashedPage<'a>> {
    cache.switch_to(instance);
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

/// How many rows one statement looks up or inserts: a round trip to
/// PostgreSQL per batch rather than per page.
const BATCH: usize = 128;

/// Keeps `gc` from deleting pages while a commit refers to them: a commit
/// may find a page stored, then refer to it. SQLite's write transactions
/// exclude each other already; on PostgreSQL, commits share an advisory
/// lock that `gc` takes alone ([`exclude_commits`]).
pub(super) fn exclude_gc(conn: &mut dyn Connection) -> Result<()> {
    if conn.dialect() == Dialect::Postgres {
        conn.execute("SELECT pg_advisory_xact_lock_shared(?1)", params![GC_LOCK])?;
    }
    Ok(())
}

/// What `gc` takes before it deletes pages; see [`exclude_gc`].
pub(super) fn exclude_commits(conn: &mut dyn Connection) -> Result<()> {
    if conn.dialect() == Dialect::Postgres {
        conn.execute("SELECT pg_advisory_xact_lock(?1)", params![GC_LOCK])?;
    }
    Ok(())
}

/// The advisory lock between commits and `gc` ("wasnap" and 2).
const GC_LOCK: i64 = 0x7761_736e_6170_0002;

/// `(?1, ?2), (?3, ?4), ...`: `rows` rows of `columns` placeholders.
fn placeholder_rows(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=columns)
                .map(|c| format!("?{}", r * columns + c))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The row ids of those of `names` that are stored.
fn find(conn: &mut dyn Connection, names: &[[u8; 32]]) -> Result<HashMap<[u8; 32], i64>> {
    let mut found = HashMap::with_capacity(names.len());
    for chunk in names.chunks(BATCH) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "SELECT hash, id FROM pages WHERE hash IN ({})",
            list.join(", ")
        );
        let params: Vec<Param> = chunk.iter().map(Param::from).collect();
        for mut row in conn.query(&sql, &params)? {
            found.insert(row.get(0)?, row.get(1)?);
        }
    }
    Ok(found)
}

/// Stores the pages not stored yet; returns the row id of every page and
/// the bytes this added. A page already stored is neither compressed nor
/// written again; those in `known` are not even looked up.
///
/// Another writer may store the same page at the same time (PostgreSQL):
/// the insert then does nothing, and the page is looked up again.
pub(super) fn store_missing(
    conn: &mut dyn Connection,
    compressor: &mut zstd::bulk::Compressor<'static>,
    pages: &[HashedPage],
    known: Option<&HashMap<[u8; 32], i64>>,
) -> Result<(Vec<i64>, u64)> {
    let unknown: Vec<[u8; 32]> = pages
        .iter()
        .map(|p| p.hash)
        .filter(|h| !known.is_some_and(|k| k.contains_key(h)))
        .collect();
    let mut stored = find(conn, &unknown)?;
    let mut ids = Vec::with_capacity(pages.len());
    let mut added = 0;
    for p in pages {
        let id = match known.and_then(|k| k.get(&p.hash)).or(stored.get(&p.hash)) {
            Some(&id) => id,
            None => {
                let data = compressor
                    .compress(&p.page.data)
                    .map_err(|e| anyhow::anyhow!("cannot compress a page: {e}"))?;
                let inserted = conn.query_opt(
                    "INSERT INTO pages (hash, data) VALUES (?1, ?2)
                     ON CONFLICT (hash) DO NOTHING RETURNING id",
                    params![&p.hash, &data],
                )?;
                let id = match inserted {
                    Some(mut row) => {
                        added += data.len() as u64;
                        row.get(0)?
                    }
                    None => {
                        conn.query_value("SELECT id FROM pages WHERE hash = ?1", params![&p.hash])?
                    }
                };
                stored.insert(p.hash, id);
                id
            }
        };
        ids.push(id);
    }
    Ok((ids, added))
}

/// Records that version row `version` holds `pages`, stored under `ids`.
pub(super) fn reference(
    conn: &mut dyn Connection,
    version: i64,
    pages: &[HashedPage],
    ids: &[i64],
) -> Result<()> {
    let rows: Vec<(&HashedPage, &i64)> = pages.iter().zip(ids).collect();
    for chunk in rows.chunks(BATCH) {
        let sql = format!(
            "INSERT INTO version_pages (version, memory, page_index, page) VALUES {}",
            placeholder_rows(chunk.len(), 4)
        );
        let params: Vec<Param> = chunk
            .iter()
            .flat_map(|(p, id)| {
                [
                    Param::from(version),
                    Param::from(p.memory),
                    Param::from(p.page.index),
                    Param::from(**id),
                ]
            })
            .collect();
        conn.execute(&sql, &params)?;
    }
    Ok(())
}

/// Fills `memories` (sizes known, no pages yet) with the pages of version
/// row `version`, checking each page against its name. Returns the names
/// and row ids, memory by memory and page by page.
pub(super) fn load(
    conn: &mut dyn Connection,
    version: i64,
    memories: &mut [MemoryImage],
) -> Result<(Vec<[u8; 32]>, Vec<i64>)> {
    let rows = conn.query(
        "SELECT vp.memory, vp.page_index, vp.page, p.hash, p.data
         FROM version_pages vp LEFT JOIN pages p ON p.id = vp.page
         WHERE vp.version = ?1 ORDER BY vp.memory, vp.page_index",
        params![version],
    )?;
    let mut decompressor =
        zstd::bulk::Decompressor::new().map_err(|e| anyhow::anyhow!("cannot start zstd: {e}"))?;
    let (mut names, mut ids) = (Vec::new(), Vec::new());
    for mut row in rows {
        let memory: u32 = row.get(0)?;
        let index: u32 = row.get(1)?;
        let id: i64 = row.get(2)?;
        let (Some(hash), Some(stored)) = (
            row.get::<Option<[u8; 32]>>(3)?,
            row.get::<Option<Vec<u8>>>(4)?,
        ) else {
            bail!("page {index} of memory {memory} is missing");
        };
        let data = unpack(&mut decompressor, &stored, &hash)
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
                        data: vec![0; PAGE_SIZE].into(),
                    },
                    Page {
                        index: 1,
                        data: a.clone().into(),
                    },
                ],
            },
            MemoryImage {
                page_count: 1,
                pages: vec![Page {
                    index: 0,
                    data: a.into(),
                }],
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
                data: vec![1; PAGE_SIZE].into(),
            }],
        }];
        let mut cache = PageCache::default();
        let first = hash_pages(&memories, 1, &mut cache)[0].hash;
        assert_eq!(hash_pages(&memories, 1, &mut cache)[0].hash, first);
        Arc::make_mut(&mut memories[0].pages[0].data)[7] = 2;
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
    fn placeholders_are_numbered_row_by_row() {
        assert_eq!(placeholder_rows(2, 3), "(?1, ?2, ?3), (?4, ?5, ?6)");
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
