//! Content-addressed memory pages, and the page list of each version.
//!
//! Each non-zero 64 KiB page is named by its BLAKE3 hash, stored once
//! zstd-compressed in `pages`, and referred to by its row id (8 bytes at
//! most where the hash takes 32). All-zero pages are not stored at all: a
//! memory's size and its page list say where they are.
//!
//! A version's page list (which page is at which place) is kept in
//! `version_pages` either in full, a row per non-zero page, or as the
//! difference from its parent's list: a row per place whose page changed,
//! with no page (`NULL`) where it became all zeros. A version that changed
//! 3 pages of a 256 MiB memory costs 3 rows, not 4,096. To keep a load
//! bounded, a version stores its full list instead when the chain of
//! differences down to the last full list would be longer than
//! [`MAX_LIST_DEPTH`] versions, or hold more rows than the full list.
//!
//! Why BLAKE3: the name of a page must be collision-resistant (two pages
//! with one name would silently corrupt a restore), and hashing is on the
//! path of every suspension. BLAKE3 is a cryptographic hash that runs at
//! several GB/s on one core thanks to SIMD over its 1 KiB chunks, which a
//! 64 KiB page fills exactly; SHA-256 is several times slower, and fast
//! non-cryptographic hashes give no guarantee against collisions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::InstanceId;
use crate::snapshot::{MemoryImage, PAGE_SIZE, Page, PageData, PageSource, WeakPage};

/// zstd level for pages: they are compressed on the path of a suspension,
/// where speed matters more than the last few percent of size.
pub(super) const PAGE_ZSTD_LEVEL: i32 = 1;

/// The longest chain of page-list differences a load reads before it
/// reaches a full list. A full list of a 256 MiB memory is about 4,096 rows;
/// written once every 64 versions, it adds about 64 rows per version.
pub(super) const MAX_LIST_DEPTH: u32 = 64;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// A page's place: (memory index, page index).
pub(super) type PageKey = (u32, u32);

/// A version's page list: the row id of the page at each place that is not
/// all zeros, by place.
pub(super) type PageList = BTreeMap<PageKey, i64>;

/// A change from a parent's page list: the page now at a place, or `None`
/// where the place became all zeros.
pub(super) type ListChange = (PageKey, Option<i64>);

/// One non-zero page of a snapshot being committed: its place, and either
/// the row id it is known to be stored under or its name.
pub(super) struct NamedPage<'a> {
    pub key: PageKey,
    pub page: &'a Page,
    pub known: Option<i64>,
    pub name: [u8; 32],
}

/// How a version's page list is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ListShape {
    /// 0: the rows are the full list; n: the rows are the changes from the
    /// parent's list, whose own shape has depth n - 1.
    pub depth: u32,
    /// The rows of every difference from the last full list down to this
    /// version's (0 for a full list): what a load reads on top of it.
    pub chain_rows: u64,
}

/// What one store handle knows of the version of one instance it last
/// committed or loaded: its page list, and the very page objects that list
/// was committed or loaded as.
///
/// From one suspension to the next a workflow usually changes few pages,
/// and the snapshots of one workflow share the pages that did not change
/// (see [`PageData`]). A page that is the very object listed here, at the
/// same place, is known to be stored under the listed row id: it is neither
/// hashed nor looked up. Pages are held weakly, so that the list of a large
/// memory costs a few bytes a page and keeps no page alive. The cache is
/// filled only after a transaction succeeded, and is only used for a
/// commit whose parent is its version (checked inside the commit's
/// transaction): that version's pages are stored for as long as it exists.
#[derive(Default)]
pub(super) struct PageCache {
    instance: Option<InstanceId>,
    version: Option<u32>,
    shape: ListShape,
    pages: BTreeMap<PageKey, (i64, WeakPage)>,
}

impl PageCache {
    /// Records that `version` of `instance`, whose list has `shape`, holds
    /// `pages`, stored under row ids `ids`.
    pub(super) fn settle(
        &mut self,
        instance: InstanceId,
        version: u32,
        shape: ListShape,
        pages: impl IntoIterator<Item = (PageKey, i64, WeakPage)>,
    ) {
        self.instance = Some(instance);
        self.version = Some(version);
        self.shape = shape;
        self.pages = pages
            .into_iter()
            .map(|(key, id, page)| (key, (id, page)))
            .collect();
    }

    /// The cache, when it is that of `parent` of `instance`.
    fn of(&self, instance: InstanceId, parent: Option<u32>) -> Option<&Self> {
        (parent.is_some() && self.instance == Some(instance) && self.version == parent)
            .then_some(self)
    }

    /// The page list of `parent` of `instance` and its shape, if cached.
    pub(super) fn list_of(
        &self,
        instance: InstanceId,
        parent: u32,
    ) -> Option<(PageList, ListShape)> {
        let cached = self.of(instance, Some(parent))?;
        let list = cached
            .pages
            .iter()
            .map(|(&key, &(id, _))| (key, id))
            .collect();
        Some((list, cached.shape))
    }
}

/// Names every non-zero page of `memories`, a snapshot of `instance` whose
/// parent is `parent`. Pages that are the very ones of the cached parent
/// list keep their row id and are not read; others are hashed (once per
/// page object) after a check that they are not all zeros.
pub(super) fn name_pages<'a>(
    memories: &'a [MemoryImage],
    instance: InstanceId,
    parent: Option<u32>,
    cache: &PageCache,
) -> Result<Vec<NamedPage<'a>>> {
    let cached = cache.of(instance, parent);
    let mut named = Vec::new();
    for (m, memory) in memories.iter().zip(0u32..) {
        for page in &m.pages {
            let key = (memory, page.index);
            let known = cached
                .and_then(|c| c.pages.get(&key))
                .filter(|(_, weak)| weak.is(&page.data))
                .map(|&(id, _)| id);
            if known.is_none() && page.data.is_loaded() && page.data.bytes()? == &ZERO_PAGE[..] {
                continue;
            }
            let name = match known {
                // Not needed: the page is known by its row id.
                Some(_) => [0; 32],
                None => page.data.name()?,
            };
            named.push(NamedPage {
                key,
                page,
                known,
                name,
            });
        }
    }
    Ok(named)
}

/// Stores the pages not stored yet; returns the row id of every page and
/// the bytes this added. A page already stored is neither compressed nor
/// written again; one known by its row id is not even looked up.
pub(super) fn store_missing(
    conn: &Connection,
    compressor: &mut zstd::bulk::Compressor<'static>,
    pages: &[NamedPage],
) -> Result<(Vec<i64>, u64)> {
    let mut find = conn.prepare_cached("SELECT id FROM pages WHERE hash = ?1")?;
    let mut insert = conn.prepare_cached("INSERT INTO pages (hash, data) VALUES (?1, ?2)")?;
    let mut ids = Vec::with_capacity(pages.len());
    let mut added = 0;
    for p in pages {
        let found = match p.known {
            Some(id) => Some(id),
            None => find.query_row([&p.name], |r| r.get(0)).optional()?,
        };
        let id = match found {
            Some(id) => id,
            None => {
                let data = compressor
                    .compress(p.page.data.bytes()?)
                    .map_err(|e| anyhow::anyhow!("cannot compress a page: {e}"))?;
                insert.execute(params![p.name, data])?;
                added += data.len() as u64;
                conn.last_insert_rowid()
            }
        };
        ids.push(id);
    }
    Ok((ids, added))
}

/// The changes that turn `parent` into `list`, by place.
pub(super) fn changes(parent: &PageList, list: &PageList) -> Vec<ListChange> {
    let mut out = Vec::new();
    let mut old = parent.iter().peekable();
    let mut new = list.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => return out,
            (Some(&(&k, _)), None) => {
                out.push((k, None));
                old.next();
            }
            (None, Some(&(&k, &id))) => {
                out.push((k, Some(id)));
                new.next();
            }
            (Some(&(&ko, &io)), Some(&(&kn, &in_))) => {
                if ko < kn {
                    out.push((ko, None));
                    old.next();
                } else if kn < ko {
                    out.push((kn, Some(in_)));
                    new.next();
                } else {
                    if io != in_ {
                        out.push((kn, Some(in_)));
                    }
                    old.next();
                    new.next();
                }
            }
        }
    }
}

/// How to store the list of a version whose parent's list has
/// `parent_shape` (`None`: no parent), given its full list's length and the
/// number of changes from the parent's.
pub(super) fn choose_shape(parent: Option<ListShape>, full: usize, changes: usize) -> ListShape {
    match parent {
        Some(p)
            if p.depth < MAX_LIST_DEPTH
                && p.chain_rows.saturating_add(changes as u64) <= full as u64 =>
        {
            ListShape {
                depth: p.depth + 1,
                chain_rows: p.chain_rows + changes as u64,
            }
        }
        _ => ListShape::default(),
    }
}

/// Writes the rows of version row `version`'s list: `rows` are the full
/// list or the changes, as its shape says.
pub(super) fn write_list(conn: &Connection, version: i64, rows: &[ListChange]) -> Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO version_pages (version, memory, page_index, page) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for ((memory, index), page) in rows {
        insert.execute(params![version, memory, index, page])?;
    }
    Ok(())
}

/// The page list of version `number` of `instance` and its shape, read from
/// its rows and, for a difference, those of its ancestors down to the last
/// full list.
pub(super) fn read_list(
    conn: &Connection,
    instance: InstanceId,
    number: u32,
) -> Result<(PageList, ListShape)> {
    // The chain, newest first: each version of it with a depth above 0
    // keeps its list as the difference from its parent's.
    let chain: Vec<(i64, u32, Option<u32>, u32, u64)> = conn
        .prepare_cached(
            "WITH RECURSIVE chain (id, number, parent, depth, chain_rows) AS (
                 SELECT id, number, parent, list_depth, list_chain_rows
                 FROM versions WHERE instance = ?1 AND number = ?2
                 UNION ALL
                 SELECT v.id, v.number, v.parent, v.list_depth, v.list_chain_rows
                 FROM chain c JOIN versions v ON v.instance = ?1 AND v.number = c.parent
                 WHERE c.depth > 0)
             SELECT id, number, parent, depth, chain_rows FROM chain",
        )?
        .query_map(params![instance, number], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let Some(&(_, _, _, depth, chain_rows)) = chain.first() else {
        bail!("version {number} of instance {instance} not found");
    };
    // A broken chain (a missing ancestor, depths that do not count down)
    // would silently give a wrong list.
    let complete = chain.len() == depth as usize + 1
        && chain
            .iter()
            .rev()
            .zip(0u32..)
            .all(|(&(_, _, _, d, _), expected)| d == expected);
    if !complete {
        bail!("the page list of version {number} refers to versions that are missing");
    }
    let mut rows = conn
        .prepare_cached("SELECT memory, page_index, page FROM version_pages WHERE version = ?1")?;
    let mut list = PageList::new();
    for &(id, _, _, _, _) in chain.iter().rev() {
        let changes = rows.query_map([id], |r| {
            Ok((
                (r.get::<_, u32>(0)?, r.get::<_, u32>(1)?),
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        for change in changes {
            match change? {
                (key, Some(page)) => list.insert(key, page),
                (key, None) => list.remove(&key),
            };
        }
    }
    Ok((list, ListShape { depth, chain_rows }))
}

/// Fills `memories` (sizes known, no pages yet) with the pages of `list`,
/// read now and checked against their names.
pub(super) fn load(conn: &Connection, list: &PageList, memories: &mut [MemoryImage]) -> Result<()> {
    let mut query = conn.prepare_cached("SELECT hash, data FROM pages WHERE id = ?1")?;
    let mut decompressor =
        zstd::bulk::Decompressor::new().map_err(|e| anyhow::anyhow!("cannot start zstd: {e}"))?;
    for (&(memory, index), &id) in list {
        let data = query
            .query_row([id], |row| {
                let hash: [u8; 32] = row.get(0)?;
                let stored = row.get_ref(1)?.as_blob()?;
                Ok(unpack(&mut decompressor, stored, &hash).map(|bytes| (bytes, hash)))
            })
            .optional()?
            .with_context(|| format!("page {index} of memory {memory} is missing"))?
            .with_context(|| format!("page {index} of memory {memory}"))?;
        place(memories, memory, index, PageData::named(data.0, data.1))?;
    }
    Ok(())
}

/// Fills `memories` with the pages of `list` without reading them: each is
/// read from `source` when it is first used.
pub(super) fn load_lazily(
    list: &PageList,
    source: &Arc<LazyPages>,
    memories: &mut [MemoryImage],
) -> Result<()> {
    for (i, &(memory, index)) in list.keys().enumerate() {
        let source: Arc<dyn PageSource> = source.clone();
        place(memories, memory, index, PageData::stored(source, i as i64))?;
    }
    Ok(())
}

fn place(memories: &mut [MemoryImage], memory: u32, index: u32, data: PageData) -> Result<()> {
    let Some(image) = memories.get_mut(memory as usize) else {
        bail!("a page refers to memory {memory}, which the snapshot does not have");
    };
    image.pages.push(Page { index, data });
    Ok(())
}

/// Decompresses a stored page and checks it against its name.
fn unpack(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    stored: &[u8],
    hash: &[u8; 32],
) -> Result<Box<[u8]>> {
    let mut data = vec![0u8; PAGE_SIZE].into_boxed_slice();
    unpack_into(decompressor, stored, hash, &mut data)?;
    Ok(data)
}

fn unpack_into(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    stored: &[u8],
    hash: &[u8; 32],
    out: &mut [u8],
) -> Result<()> {
    let len = decompressor
        .decompress_to_buffer(stored, out)
        .map_err(|e| anyhow::anyhow!("cannot decompress it: {e}"))?;
    if len != PAGE_SIZE || blake3::hash(out).as_bytes() != hash {
        bail!("its contents do not match its hash");
    }
    Ok(())
}

/// The pages of one loaded version, read from the database when first
/// used, through a read-only connection of their own: reading them never
/// waits for the handle that loaded them, which may be committing (and
/// asking for the names of these very pages) at the time.
///
/// The rows stay readable for as long as the version exists: pages are
/// immutable and `gc` deletes only pages no version refers to.
pub(super) struct LazyPages {
    path: PathBuf,
    instance: InstanceId,
    version: u32,
    /// By key: the page's place and row id.
    pages: Vec<(PageKey, i64)>,
    reader: Mutex<Option<Reader>>,
}

struct Reader {
    conn: Connection,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl LazyPages {
    pub(super) fn new(path: PathBuf, instance: InstanceId, version: u32, list: &PageList) -> Self {
        LazyPages {
            path,
            instance,
            version,
            pages: list.iter().map(|(&key, &id)| (key, id)).collect(),
            reader: Mutex::new(None),
        }
    }

    fn with_reader<T>(&self, key: i64, f: impl FnOnce(&mut Reader, i64) -> Result<T>) -> Result<T> {
        let &((memory, index), id) = usize::try_from(key)
            .ok()
            .and_then(|k| self.pages.get(k))
            .expect("keys are positions in the list");
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let result = (|| {
            if reader.is_none() {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(super::BUSY_TIMEOUT)?;
                let decompressor = zstd::bulk::Decompressor::new()
                    .map_err(|e| anyhow::anyhow!("cannot start zstd: {e}"))?;
                *reader = Some(Reader { conn, decompressor });
            }
            f(reader.as_mut().expect("opened above"), id)
        })();
        result.with_context(|| {
            format!(
                "version {} of instance {} is corrupt: page {index} of memory {memory}",
                self.version, self.instance
            )
        })
    }
}

impl PageSource for LazyPages {
    fn fetch(&self, key: i64, out: &mut [u8]) -> Result<[u8; 32]> {
        self.with_reader(key, |reader, id| {
            let Reader { conn, decompressor } = reader;
            conn.prepare_cached("SELECT hash, data FROM pages WHERE id = ?1")?
                .query_row([id], |row| {
                    let hash: [u8; 32] = row.get(0)?;
                    let stored = row.get_ref(1)?.as_blob()?;
                    Ok(unpack_into(decompressor, stored, &hash, out).map(|()| hash))
                })
                .optional()?
                .context("it is missing")?
        })
    }

    fn name(&self, key: i64) -> Result<[u8; 32]> {
        self.with_reader(key, |reader, id| {
            reader
                .conn
                .prepare_cached("SELECT hash FROM pages WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?
                .context("it is missing")
        })
    }
}

/// The place, row id and identity of every page of `memories` stored
/// under `ids` (in the order of [`name_pages`]), for the cache.
pub(super) fn identities<'a>(
    named: &'a [NamedPage],
    ids: &'a [i64],
) -> impl Iterator<Item = (PageKey, i64, WeakPage)> + 'a {
    named
        .iter()
        .zip(ids)
        .map(|(p, &id)| (p.key, id, p.page.data.downgrade()))
}

/// The place, row id and identity of every page of a loaded snapshot.
pub(super) fn loaded_identities<'a>(
    memories: &'a [MemoryImage],
    list: &'a PageList,
) -> impl Iterator<Item = (PageKey, i64, WeakPage)> + 'a {
    (0u32..)
        .zip(memories)
        .flat_map(|(memory, m)| m.pages.iter().map(move |page| (memory, page)))
        .zip(list.values())
        .map(|((memory, page), &id)| ((memory, page.index), id, page.data.downgrade()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[((u32, u32), i64)]) -> PageList {
        entries.iter().copied().collect()
    }

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
        let named = name_pages(&memories, 1, None, &PageCache::default()).unwrap();
        assert_eq!(named.len(), 2);
        assert_eq!(named[0].key, (0, 1));
        assert_eq!(named[1].key, (1, 0));
        assert_eq!(named[0].name, named[1].name);
    }

    #[test]
    fn the_cached_parent_names_its_own_pages_only() {
        let page = PageData::new(vec![1; PAGE_SIZE]);
        let memories = vec![MemoryImage {
            page_count: 2,
            pages: vec![
                Page {
                    index: 0,
                    data: page.clone(),
                },
                Page {
                    index: 1,
                    data: PageData::new(vec![1; PAGE_SIZE]),
                },
            ],
        }];
        let mut cache = PageCache::default();
        cache.settle(1, 4, ListShape::default(), [((0, 0), 9, page.downgrade())]);
        let named = name_pages(&memories, 1, Some(4), &cache).unwrap();
        assert_eq!(named[0].known, Some(9));
        // Equal contents, another object: named by its hash.
        assert_eq!(named[1].known, None);
        assert_eq!(named[1].name, *blake3::hash(&[1; PAGE_SIZE]).as_bytes());
        // Another parent, or another instance: nothing is known.
        let named = name_pages(&memories, 1, Some(3), &cache).unwrap();
        assert_eq!(named[0].known, None);
        let named = name_pages(&memories, 2, Some(4), &cache).unwrap();
        assert_eq!(named[0].known, None);
    }

    #[test]
    fn changes_are_what_turns_one_list_into_the_other() {
        let old = list(&[((0, 0), 1), ((0, 1), 2), ((0, 3), 3), ((1, 0), 4)]);
        let new = list(&[
            ((0, 0), 1),
            ((0, 1), 5),
            ((0, 2), 6),
            ((1, 0), 4),
            ((1, 9), 7),
        ]);
        let diff = changes(&old, &new);
        assert_eq!(
            diff,
            [
                ((0, 1), Some(5)),
                ((0, 2), Some(6)),
                ((0, 3), None),
                ((1, 9), Some(7))
            ]
        );
        let mut applied = old.clone();
        for (key, page) in diff {
            match page {
                Some(id) => applied.insert(key, id),
                None => applied.remove(&key),
            };
        }
        assert_eq!(applied, new);
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn a_full_list_bounds_every_chain() {
        assert_eq!(choose_shape(None, 10, 10), ListShape::default());
        let mut shape = ListShape::default();
        for depth in 1..=MAX_LIST_DEPTH {
            shape = choose_shape(Some(shape), 1000, 3);
            assert_eq!(shape.depth, depth);
        }
        assert_eq!(choose_shape(Some(shape), 1000, 3), ListShape::default());
        // Changes that add up to more than a full list: a full list.
        let shape = choose_shape(Some(ListShape::default()), 10, 6);
        assert_eq!(shape.chain_rows, 6);
        assert_eq!(choose_shape(Some(shape), 10, 5), ListShape::default());
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
