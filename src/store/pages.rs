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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Context, Result, bail};

use super::sql::{Connection, Dialect, Param, params};
use super::{InstanceId, Location};
use crate::snapshot::{MemoryImage, PAGE_SIZE, Page, PageData, PageSource, WeakPage, file};

/// zstd level for pages: they are compressed on the path of a suspension,
/// where speed matters more than the last few percent of size.
pub(super) const PAGE_ZSTD_LEVEL: i32 = 1;

/// The longest chain of page-list differences a load reads before it
/// reaches a full list. A full list of a 256 MiB memory is about 4,096 rows;
/// written once every 64 versions, it adds about 64 rows per version.
pub(super) const MAX_LIST_DEPTH: u32 = 64;

/// A version with this many non-zero pages or fewer is read at once even
/// when it is loaded lazily: reading pages later opens a connection of
/// their own, which costs about what reading a few dozen pages does.
pub(super) const READ_AT_ONCE: usize = 32;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// A page's place: (memory index, page index).
pub(super) type PageKey = (u32, u32);

/// A version's page list: the row id of the page at each place that is not
/// all zeros, by place.
pub(super) type PageList = BTreeMap<PageKey, i64>;

/// A change from a parent's page list: the page now at a place, or `None`
/// where the place became all zeros.
pub(super) type ListChange = (PageKey, Option<i64>);

/// A page of a snapshot being committed that the parent's list does not
/// have as this very object: its place, its name, and the row id of the
/// parent's page at that place, if any.
pub(super) struct NamedPage<'a> {
    pub key: PageKey,
    pub page: &'a Page,
    pub name: [u8; 32],
    pub parent: Option<i64>,
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

/// A run of a committed snapshot's [`PageList`](crate::snapshot::PageList)
/// every page of which the cache lists, as that very object: a snapshot
/// that holds the same run again changes none of those places, and its
/// plan skips them in one step. The weak reference keeps the run's
/// allocation (not its pages), so its address names no other run.
struct KnownRun {
    first: PageKey,
    run: Weak<[Page]>,
}

/// One entry of a page list as the cache keeps it: the place, the row id,
/// and the page object it was committed or loaded as, if known.
struct Listed {
    key: PageKey,
    id: i64,
    page: Option<WeakPage>,
}

/// What one store handle knows of the version of one instance it last
/// committed or loaded: its page list, sorted by place, and the very page
/// objects that list was committed or loaded as.
///
/// From one suspension to the next a workflow usually changes few pages,
/// and the snapshots of one workflow share the pages that did not change
/// (see [`PageData`]). A page that is the very object listed here, at the
/// same place, is known to be stored under the listed row id: it is neither
/// hashed nor looked up, and it is not a change. Pages are held weakly, so
/// that the list of a large memory costs a few bytes a page and keeps no
/// page alive. A commit whose parent is this version updates the list in
/// place, at a cost proportional to the pages that changed. The cache is
/// filled only after a transaction succeeded: the pages of a committed
/// version are stored for as long as it exists.
#[derive(Default)]
pub(super) struct PageCache {
    instance: Option<InstanceId>,
    version: Option<u32>,
    shape: ListShape,
    pages: Vec<Listed>,
    /// Runs of the version's snapshot whose pages `pages` lists, by place.
    runs: Vec<KnownRun>,
}

impl PageCache {
    /// Whether the cache is the list of `version` of `instance`.
    pub(super) fn holds(&self, instance: InstanceId, version: u32) -> bool {
        self.instance == Some(instance) && self.version == Some(version)
    }

    /// Records that `version` of `instance`, whose list is `list` with
    /// `shape`, was just read; `pages` are the page objects it was loaded
    /// as, in the list's order, if they are known.
    pub(super) fn settle(
        &mut self,
        instance: InstanceId,
        version: u32,
        shape: ListShape,
        list: &PageList,
        pages: Option<Vec<WeakPage>>,
    ) {
        let mut pages = pages.map(Vec::into_iter);
        self.instance = Some(instance);
        self.version = Some(version);
        self.shape = shape;
        self.runs = Vec::new();
        self.pages = list
            .iter()
            .map(|(&key, &id)| Listed {
                key,
                id,
                page: pages.as_mut().and_then(Iterator::next),
            })
            .collect();
    }

    /// The shape of the cached list.
    pub(super) fn shape(&self) -> ListShape {
        self.shape
    }

    /// Makes the cache the list of `version` of `instance` (whose shape is
    /// `shape`), committed as `plan` with the row ids `ids` of its named
    /// pages, from the list `plan` was made against.
    pub(super) fn commit(
        &mut self,
        instance: InstanceId,
        version: u32,
        shape: ListShape,
        plan: &Plan,
        ids: &[i64],
    ) {
        let changes = plan.named.len() + plan.removed.len();
        if plan.against_cache && changes <= self.pages.len() / 8 {
            for (p, &id) in plan.named.iter().zip(ids) {
                let listed = Listed {
                    key: p.key,
                    id,
                    page: Some(p.page.data.downgrade()),
                };
                match self.pages.binary_search_by_key(&p.key, |l| l.key) {
                    Ok(at) => self.pages[at] = listed,
                    Err(at) => self.pages.insert(at, listed),
                }
            }
            for key in &plan.removed {
                if let Ok(at) = self.pages.binary_search_by_key(key, |l| l.key) {
                    self.pages.remove(at);
                }
            }
        } else {
            let base = match plan.against_cache {
                true => std::mem::take(&mut self.pages),
                false => Vec::new(),
            };
            self.pages = merge(base, plan, ids);
        }
        self.instance = Some(instance);
        self.version = Some(version);
        self.shape = shape;
        self.runs = plan
            .known_runs
            .iter()
            .map(|&(first, run)| KnownRun {
                first,
                run: Arc::downgrade(run),
            })
            .collect();
    }

    /// Whether `run`, whose first page is at `first`, is a run of the
    /// cached version's snapshot all of whose pages are listed; `cursor`
    /// walks the known runs in order of place across calls.
    fn knows(&self, cursor: &mut usize, first: PageKey, run: &Arc<[Page]>) -> bool {
        while self.runs.get(*cursor).is_some_and(|k| k.first < first) {
            *cursor += 1;
        }
        self.runs.get(*cursor).is_some_and(|k| {
            k.first == first && std::ptr::addr_eq(k.run.as_ptr(), Arc::as_ptr(run))
        })
    }

    /// The full list after `plan` with `ids`, as rows.
    pub(super) fn full_rows(&self, plan: &Plan, ids: &[i64]) -> Vec<ListChange> {
        let base = match plan.against_cache {
            true => self
                .pages
                .iter()
                .map(|l| Listed {
                    key: l.key,
                    id: l.id,
                    page: None,
                })
                .collect(),
            false => Vec::new(),
        };
        merge(base, plan, ids)
            .into_iter()
            .map(|l| (l.key, Some(l.id)))
            .collect()
    }
}

/// How many instances' lists [`PageCaches`] keeps: enough for a service's
/// instances in flight, which it commits in turn (a bound below their
/// number would forget every list before its next use).
const CACHED_LISTS: usize = 1 << 16;

/// How many entries the lists of [`PageCaches`] hold together at most
/// (about 24 bytes each, and the allocation of the page object each one
/// refers to weakly; plus one weak reference per run of up to 32 pages):
/// a list of a 1 MiB memory has up to 16, one of a 256 MiB memory up to
/// 4,096.
const CACHED_ENTRIES: usize = 1 << 20;

/// The page lists of the instances a store handle committed or loaded
/// last, one [`PageCache`] each, within [`CACHED_LISTS`] and
/// [`CACHED_ENTRIES`], the least recently used forgotten first: a service
/// commits versions of many instances in turn, and each commit is then
/// planned against its parent's list without reading that back from the
/// database.
#[derive(Default)]
pub(super) struct PageCaches {
    /// The lists by instance, each with the time it was put back.
    lists: HashMap<InstanceId, (u64, PageCache)>,
    /// The instances by the time their lists were put back.
    by_use: BTreeMap<u64, InstanceId>,
    /// Counts puts: the time of the next one.
    clock: u64,
    /// The entries of every list kept.
    entries: usize,
}

impl PageCaches {
    /// Takes out the cached list of `instance`, or an empty cache. Put it
    /// back with [`PageCaches::put`] once what it holds is committed; a
    /// cache not put back is simply forgotten.
    pub(super) fn take(&mut self, instance: InstanceId) -> PageCache {
        match self.lists.remove(&instance) {
            Some((used, cache)) => {
                self.by_use.remove(&used);
                self.entries -= cache.pages.len();
                cache
            }
            None => PageCache::default(),
        }
    }

    /// Keeps `cache` as the most recently used list of its instance,
    /// forgetting the least recently used ones beyond the bounds.
    pub(super) fn put(&mut self, cache: PageCache) {
        let Some(instance) = cache.instance else {
            return;
        };
        drop(self.take(instance));
        self.clock += 1;
        self.entries += cache.pages.len();
        self.by_use.insert(self.clock, instance);
        self.lists.insert(instance, (self.clock, cache));
        while self.lists.len() > CACHED_LISTS
            || (self.entries > CACHED_ENTRIES && self.lists.len() > 1)
        {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((_, forgotten)) = self.lists.remove(&oldest) {
                self.entries -= forgotten.pages.len();
            }
        }
    }
}

/// `base` (sorted by place) with the named pages of `plan` stored under
/// `ids` and its removed places applied.
fn merge(base: Vec<Listed>, plan: &Plan, ids: &[i64]) -> Vec<Listed> {
    let mut named = plan.named.iter().zip(ids).peekable();
    let mut removed = plan.removed.iter().peekable();
    let mut out = Vec::with_capacity(base.len() + plan.named.len());
    let mut base = base.into_iter().peekable();
    loop {
        let next_named = named.peek().map(|(p, _)| p.key);
        let next_base = base.peek().map(|l| l.key);
        match (next_base, next_named) {
            (None, None) => return out,
            (Some(b), n) if n.is_none_or(|n| b < n) => {
                let listed = base.next().expect("peeked");
                if removed.next_if(|&&k| k == b).is_none() {
                    out.push(listed);
                }
            }
            (b, Some(n)) => {
                if b == Some(n) {
                    base.next();
                }
                let (p, &id) = named.next().expect("peeked");
                out.push(Listed {
                    key: n,
                    id,
                    page: Some(p.page.data.downgrade()),
                });
            }
            (Some(_), None) => unreachable!("handled by the first arm"),
        }
    }
}

/// What a commit of a snapshot changes in its parent's page list.
pub(super) struct Plan<'a> {
    /// Pages that are not the parent's very page objects at their places,
    /// by place: new, changed, or equal but copied.
    pub named: Vec<NamedPage<'a>>,
    /// Places the parent's list has and the snapshot holds as zeros.
    pub removed: Vec<PageKey>,
    /// The snapshot's non-zero pages.
    pub pages: usize,
    /// Whether it was made against the cached list (else against none).
    against_cache: bool,
    /// The snapshot's runs whose every page will be listed, as that very
    /// object, once the plan is committed, with the place of their first.
    known_runs: Vec<(PageKey, &'a Arc<[Page]>)>,
}

impl Plan<'_> {
    /// The changes from the parent's list, by place, once the named pages
    /// are stored under `ids`: a named page stored under the row id the
    /// parent has at its place is no change.
    pub(super) fn changes(&self, ids: &[i64]) -> Vec<ListChange> {
        let mut named = self
            .named
            .iter()
            .zip(ids)
            .filter(|(p, id)| p.parent != Some(**id))
            .map(|(p, &id)| (p.key, Some(id)))
            .peekable();
        let mut removed = self.removed.iter().map(|&k| (k, None)).peekable();
        let mut out = Vec::new();
        while let Some(next) = match (named.peek(), removed.peek()) {
            (Some(a), Some(b)) if b.0 < a.0 => removed.next(),
            (Some(_), _) => named.next(),
            (None, _) => removed.next(),
        } {
            out.push(next);
        }
        out
    }
}

/// Compares `memories`, a snapshot whose parent's list is in `cache` (or
/// which has no parent: `cache` is `None`), with that list, walking both in
/// order of place. Pages that are the very objects listed are not read;
/// others are named (hashed once per page object, or named by their store)
/// after a check that they are not all zeros.
pub(super) fn plan<'a>(memories: &'a [MemoryImage], cache: Option<&PageCache>) -> Result<Plan<'a>> {
    let listed: &[Listed] = cache.map_or(&[], |c| &c.pages);
    let mut listed = listed.iter().peekable();
    let mut known = 0;
    let mut plan = Plan {
        named: Vec::new(),
        removed: Vec::new(),
        pages: 0,
        against_cache: cache.is_some(),
        known_runs: Vec::new(),
    };
    for (m, memory) in memories.iter().zip(0u32..) {
        for run in m.pages.runs() {
            let first = (memory, run[0].index);
            while let Some(gone) = listed.next_if(|l| l.key < first) {
                plan.removed.push(gone.key);
            }
            if cache.is_some_and(|c| c.knows(&mut known, first, run)) {
                // The parent's very run: its places are the next listed
                // ones (a list holds no empty run).
                listed.nth(run.len() - 1);
                plan.pages += run.len();
                plan.known_runs.push((first, run));
                continue;
            }
            let mut whole = true;
            for page in run.iter() {
                whole &= plan_page(&mut plan, &mut listed, (memory, page.index), page)?;
            }
            if whole {
                plan.known_runs.push((first, run));
            }
        }
    }
    plan.removed.extend(listed.map(|l| l.key));
    Ok(plan)
}

/// Plans the snapshot's `page` at `key` against the listed pages ahead of
/// it; false if the page is all zeros (so it will not be listed).
fn plan_page<'a>(
    plan: &mut Plan<'a>,
    listed: &mut std::iter::Peekable<std::slice::Iter<'_, Listed>>,
    key: PageKey,
    page: &'a Page,
) -> Result<bool> {
    while let Some(gone) = listed.next_if(|l| l.key < key) {
        plan.removed.push(gone.key);
    }
    let parent = listed.next_if(|l| l.key == key);
    if parent.is_some_and(|l| l.page.as_ref().is_some_and(|w| w.is(&page.data))) {
        plan.pages += 1;
        return Ok(true);
    }
    if page.data.is_loaded() && page.data.bytes()? == &ZERO_PAGE[..] {
        if let Some(l) = parent {
            plan.removed.push(l.key);
        }
        return Ok(false);
    }
    // A stored page has its size; a new one is checked before it is named.
    file::check_page_size(page)
        .map_err(|e| anyhow::anyhow!("memory {} cannot be saved: {e}", key.0))?;
    plan.pages += 1;
    plan.named.push(NamedPage {
        key,
        page,
        name: page.data.name()?,
        parent: parent.map(|l| l.id),
    });
    Ok(true)
}

/// Names and compresses, ahead of a commit, the pages of `memories` that
/// no earlier snapshot or store named (new or changed pages), so that the
/// commit finds them ready ([`store_missing`]). Runs on the caller's
/// thread: a service's run threads do this work in parallel, outside the
/// writer's transaction. A page found stored at the commit was compressed
/// for nothing; that is rare (a page written back to earlier contents).
pub(super) fn precompress(memories: &[MemoryImage]) -> Result<()> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with_borrow_mut(|slot| {
        for page in memories.iter().flat_map(|m| &m.pages) {
            let data = &page.data;
            if data.is_named() || !data.is_loaded() || data.bytes()? == &ZERO_PAGE[..] {
                continue;
            }
            data.name()?;
            let compressor = match slot {
                Some(compressor) => compressor,
                None => slot.insert(
                    zstd::bulk::Compressor::new(PAGE_ZSTD_LEVEL)
                        .map_err(|e| anyhow::anyhow!("cannot start zstd: {e}"))?,
                ),
            };
            let compressed = compressor
                .compress(data.bytes()?)
                .map_err(|e| anyhow::anyhow!("cannot compress a page: {e}"))?;
            data.set_compressed(compressed.into_boxed_slice());
        }
        Ok(())
    })
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

/// `?1, ?2, ...`: `n` placeholders.
fn placeholder_list(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The row ids of those of `names` that are stored.
fn find(conn: &mut dyn Connection, names: &[[u8; 32]]) -> Result<HashMap<[u8; 32], i64>> {
    let mut found = HashMap::with_capacity(names.len());
    for chunk in names.chunks(BATCH) {
        let sql = format!(
            "SELECT hash, id FROM pages WHERE hash IN ({})",
            placeholder_list(chunk.len())
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
/// written again.
///
/// Another writer may store the same page at the same time (PostgreSQL):
/// the insert then does nothing, and the page is looked up again.
pub(super) fn store_missing(
    conn: &mut dyn Connection,
    compressor: &mut zstd::bulk::Compressor<'static>,
    pages: &[NamedPage],
) -> Result<(Vec<i64>, u64)> {
    let names: Vec<[u8; 32]> = pages.iter().map(|p| p.name).collect();
    let mut stored = find(conn, &names)?;
    let mut ids = Vec::with_capacity(pages.len());
    let mut added = 0;
    for p in pages {
        let id = match stored.get(&p.name) {
            Some(&id) => id,
            None => {
                let data = match p.page.data.take_compressed() {
                    Some(data) => data.into_vec(),
                    None => compressor
                        .compress(p.page.data.bytes()?)
                        .map_err(|e| anyhow::anyhow!("cannot compress a page: {e}"))?,
                };
                let inserted = conn.query_opt(
                    "INSERT INTO pages (hash, data) VALUES (?1, ?2)
                     ON CONFLICT (hash) DO NOTHING RETURNING id",
                    params![&p.name, &data],
                )?;
                let id = match inserted {
                    Some(mut row) => {
                        added += data.len() as u64;
                        row.get(0)?
                    }
                    None => {
                        conn.query_value("SELECT id FROM pages WHERE hash = ?1", params![&p.name])?
                    }
                };
                stored.insert(p.name, id);
                id
            }
        };
        ids.push(id);
    }
    Ok((ids, added))
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
pub(super) fn write_list(
    conn: &mut dyn Connection,
    version: i64,
    rows: &[ListChange],
) -> Result<()> {
    for chunk in rows.chunks(BATCH) {
        let sql = format!(
            "INSERT INTO version_pages (version, memory, page_index, page) VALUES {}",
            placeholder_rows(chunk.len(), 4)
        );
        let params: Vec<Param> = chunk
            .iter()
            .flat_map(|&((memory, index), page)| {
                [
                    Param::from(version),
                    Param::from(memory),
                    Param::from(index),
                    Param::from(page),
                ]
            })
            .collect();
        conn.execute(&sql, &params)?;
    }
    Ok(())
}

/// The page list of version `number` of `instance` and its shape, read from
/// its rows and, for a difference, those of its ancestors down to the last
/// full list.
pub(super) fn read_list(
    conn: &mut dyn Connection,
    instance: InstanceId,
    number: u32,
) -> Result<(PageList, ListShape)> {
    // The chain, newest first: each version of it with a depth above 0
    // keeps its list as the difference from its parent's.
    let mut chain = Vec::new();
    for mut r in conn.query(
        "WITH RECURSIVE chain (id, number, parent, depth, chain_rows) AS (
             SELECT id, number, parent, list_depth, list_chain_rows
             FROM versions WHERE instance = ?1 AND number = ?2
             UNION ALL
             SELECT v.id, v.number, v.parent, v.list_depth, v.list_chain_rows
             FROM chain c JOIN versions v ON v.instance = ?1 AND v.number = c.parent
             WHERE c.depth > 0)
         SELECT id, depth, chain_rows FROM chain",
        params![instance, number],
    )? {
        chain.push((r.get::<i64>(0)?, r.get::<u32>(1)?, r.get::<u64>(2)?));
    }
    let Some(&(_, depth, chain_rows)) = chain.first() else {
        bail!("version {number} of instance {instance} not found");
    };
    // A broken chain (a missing ancestor, depths that do not count down)
    // would silently give a wrong list.
    let complete = chain.len() == depth as usize + 1
        && chain
            .iter()
            .rev()
            .zip(0u32..)
            .all(|(&(_, d, _), expected)| d == expected);
    if !complete {
        bail!("the page list of version {number} refers to versions that are missing");
    }
    // Every row of the chain in one query; applied oldest first.
    let ids: Vec<Param> = chain.iter().map(|&(id, _, _)| Param::from(id)).collect();
    let sql = format!(
        "SELECT version, memory, page_index, page FROM version_pages WHERE version IN ({})",
        placeholder_list(ids.len())
    );
    let mut by_version: HashMap<i64, Vec<ListChange>> = HashMap::new();
    for mut r in conn.query(&sql, &ids)? {
        let change = ((r.get(1)?, r.get(2)?), r.get(3)?);
        by_version.entry(r.get(0)?).or_default().push(change);
    }
    let mut list = PageList::new();
    for (id, _, _) in chain.iter().rev() {
        for &(key, page) in by_version.get(id).into_iter().flatten() {
            match page {
                Some(page) => list.insert(key, page),
                None => list.remove(&key),
            };
        }
    }
    Ok((list, ListShape { depth, chain_rows }))
}

/// Fills `memories` (sizes known, no pages yet) with the pages of `list`,
/// read now and checked against their names.
pub(super) fn load(
    conn: &mut dyn Connection,
    list: &PageList,
    memories: &mut [MemoryImage],
) -> Result<()> {
    let mut decompressor =
        zstd::bulk::Decompressor::new().map_err(|e| anyhow::anyhow!("cannot start zstd: {e}"))?;
    let mut placed = vec![Vec::new(); memories.len()];
    let entries: Vec<(PageKey, i64)> = list.iter().map(|(&k, &id)| (k, id)).collect();
    for chunk in entries.chunks(BATCH) {
        let sql = format!(
            "SELECT id, hash, data FROM pages WHERE id IN ({})",
            placeholder_list(chunk.len())
        );
        let params: Vec<Param> = chunk.iter().map(|&(_, id)| Param::from(id)).collect();
        let mut stored: HashMap<i64, ([u8; 32], Vec<u8>)> = HashMap::with_capacity(chunk.len());
        for mut row in conn.query(&sql, &params)? {
            stored.insert(row.get(0)?, (row.get(1)?, row.get(2)?));
        }
        for &((memory, index), id) in chunk {
            let (hash, data) = stored
                .get(&id)
                .with_context(|| format!("page {index} of memory {memory} is missing"))?;
            let bytes = unpack(&mut decompressor, data, hash)
                .with_context(|| format!("page {index} of memory {memory}"))?;
            place(&mut placed, memory, index, PageData::named(bytes, *hash))?;
        }
    }
    set_lists(memories, placed);
    Ok(())
}

/// Fills `memories` with the pages of `list` without reading them: each is
/// read from `source` when it is first used.
pub(super) fn load_lazily(
    list: &PageList,
    source: &Arc<LazyPages>,
    memories: &mut [MemoryImage],
) -> Result<()> {
    let mut placed = vec![Vec::new(); memories.len()];
    for (i, &(memory, index)) in list.keys().enumerate() {
        let source: Arc<dyn PageSource> = source.clone();
        place(
            &mut placed,
            memory,
            index,
            PageData::stored(source, i as i64),
        )?;
    }
    set_lists(memories, placed);
    Ok(())
}

/// Adds the page at `index` of `memory` to that memory's pages.
fn place(placed: &mut [Vec<Page>], memory: u32, index: u32, data: PageData) -> Result<()> {
    let Some(pages) = placed.get_mut(memory as usize) else {
        bail!("a page refers to memory {memory}, which the snapshot does not have");
    };
    pages.push(Page { index, data });
    Ok(())
}

/// Gives each memory the pages placed in it.
fn set_lists(memories: &mut [MemoryImage], placed: Vec<Vec<Page>>) {
    for (memory, pages) in memories.iter_mut().zip(placed) {
        memory.pages = pages.into();
    }
}

/// Decompresses a stored page and checks it against its name.
fn unpack(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    stored: &[u8],
    hash: &[u8; 32],
) -> Result<Box<[u8]>> {
    // Decompressed into fresh capacity: zeroing the page first would
    // touch its 64 KiB once more for nothing.
    let data = decompressor
        .decompress(stored, PAGE_SIZE)
        .map_err(|e| anyhow::anyhow!("cannot decompress it: {e}"))?;
    check_page(&data, hash)?;
    Ok(data.into_boxed_slice())
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
    check_page(&out[..len], hash)
}

/// Fails unless `data` is a whole page named `hash`.
fn check_page(data: &[u8], hash: &[u8; 32]) -> Result<()> {
    if data.len() != PAGE_SIZE || blake3::hash(data).as_bytes() != hash {
        bail!("its contents do not match its hash");
    }
    Ok(())
}

/// The pages of one loaded version, read from the database when first
/// used, through a connection of their own (read-only on SQLite): reading
/// them never waits for the handle that loaded them, which may be
/// committing (and asking for the names of these very pages) at the time.
///
/// The rows stay readable for as long as the version exists: pages are
/// immutable and `gc` deletes only pages no version refers to.
pub(super) struct LazyPages {
    location: Location,
    instance: InstanceId,
    version: u32,
    /// By key: the page's place and row id.
    pages: Vec<(PageKey, i64)>,
    reader: Mutex<Option<Reader>>,
}

struct Reader {
    conn: Box<dyn Connection>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl LazyPages {
    pub(super) fn new(
        location: Location,
        instance: InstanceId,
        version: u32,
        list: &PageList,
    ) -> Self {
        LazyPages {
            location,
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
            self.open_reader(&mut reader)?;
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

impl LazyPages {
    /// Opens the connection pages are read through, unless it is open.
    fn open_reader(&self, reader: &mut Option<Reader>) -> Result<()> {
        if reader.is_none() {
            let conn = super::connect(&self.location, false)?;
            let decompressor = zstd::bulk::Decompressor::new()
                .map_err(|e| anyhow::anyhow!("cannot start zstd: {e}"))?;
            *reader = Some(Reader { conn, decompressor });
        }
        Ok(())
    }
}

impl PageSource for LazyPages {
    /// Opens the reading connection: about half a millisecond (the schema
    /// is read and parsed again) that the first fault no longer waits for.
    fn prepare(&self) {
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.open_reader(&mut reader);
    }

    fn fetch(&self, key: i64, out: &mut [u8]) -> Result<[u8; 32]> {
        self.with_reader(key, |reader, id| {
            let Reader { conn, decompressor } = reader;
            let mut row = conn
                .query_opt("SELECT hash, data FROM pages WHERE id = ?1", params![id])?
                .context("it is missing")?;
            let hash: [u8; 32] = row.get(0)?;
            unpack_into(decompressor, &row.get::<Vec<u8>>(1)?, &hash, out)?;
            Ok(hash)
        })
    }

    fn name(&self, key: i64) -> Result<[u8; 32]> {
        self.with_reader(key, |reader, id| {
            reader
                .conn
                .query_opt("SELECT hash FROM pages WHERE id = ?1", params![id])?
                .context("it is missing")?
                .get(0)
        })
    }
}

/// The identities of the pages of a loaded snapshot, in the order of its
/// page list.
pub(super) fn loaded_pages(memories: &[MemoryImage]) -> Vec<WeakPage> {
    memories
        .iter()
        .flat_map(|m| m.pages.iter().map(|p| p.data.downgrade()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(index: u32, data: &PageData) -> Page {
        Page {
            index,
            data: data.clone(),
        }
    }

    fn memory(pages: Vec<Page>) -> Vec<MemoryImage> {
        vec![MemoryImage {
            page_count: 16,
            pages: pages.into(),
        }]
    }

    fn cached(instance: InstanceId, version: u32, entries: usize) -> PageCache {
        let mut cache = PageCache::default();
        let list: PageList = (0..entries as u32)
            .map(|i| ((0, i), i64::from(i)))
            .collect();
        cache.settle(instance, version, ListShape::default(), &list, None);
        cache
    }

    /// The lists of several instances are kept, one each, the most recently
    /// used longest, within the bounds.
    #[test]
    fn page_caches_keep_one_list_per_instance_within_bounds() {
        let mut caches = PageCaches::default();
        caches.put(cached(1, 1, 4));
        caches.put(cached(2, 7, 4));
        caches.put(cached(1, 2, 4));
        assert!(caches.take(1).holds(1, 2));
        assert!(caches.take(2).holds(2, 7));
        // Taken out: gone until put back.
        assert!(!caches.take(1).holds(1, 2));
        for instance in 0..CACHED_LISTS as u64 + 1 {
            caches.put(cached(instance, 1, 1));
        }
        assert!(
            !caches.take(0).holds(0, 1),
            "the least recently used is forgotten"
        );
        assert!(
            caches
                .take(CACHED_LISTS as u64)
                .holds(CACHED_LISTS as u64, 1)
        );
        caches.put(cached(9, 1, CACHED_ENTRIES));
        caches.put(cached(10, 1, 1));
        assert!(!caches.take(9).holds(9, 1), "too many entries in all");
        assert!(caches.take(10).holds(10, 1));
        // A cache that holds no list is not kept.
        caches.put(PageCache::default());
        assert!(caches.lists.values().all(|(_, c)| c.instance.is_some()));
        assert_eq!(caches.lists.len(), caches.by_use.len());
    }

    #[test]
    fn zero_pages_are_skipped_and_others_named_by_content() {
        let mut a = vec![0u8; PAGE_SIZE];
        a[PAGE_SIZE - 1] = 1;
        let a = PageData::new(a);
        let zero = PageData::new(vec![0; PAGE_SIZE]);
        let mut memories = memory(vec![page(0, &zero), page(1, &a)]);
        memories.push(MemoryImage {
            page_count: 1,
            pages: vec![page(0, &a)].into(),
        });
        let plan = plan(&memories, None).unwrap();
        assert_eq!(plan.pages, 2);
        assert_eq!(plan.named[0].key, (0, 1));
        assert_eq!(plan.named[1].key, (1, 0));
        assert_eq!(plan.named[0].name, plan.named[1].name);
        assert!(plan.removed.is_empty());
    }

    /// The parent's very page objects are no change and are not named;
    /// equal contents in another object are named, and are no change once
    /// stored under the same row id; places gone are removed.
    #[test]
    fn a_plan_changes_what_is_not_the_parents_very_page() {
        let kept = PageData::new(vec![1; PAGE_SIZE]);
        let copy = PageData::new(vec![2; PAGE_SIZE]);
        let new = PageData::new(vec![3; PAGE_SIZE]);
        let parent = memory(vec![
            page(0, &kept),
            page(1, &copy),
            page(2, &kept),
            page(5, &kept),
        ]);
        let mut cache = PageCache::default();
        let list: PageList = [((0, 0), 10), ((0, 1), 11), ((0, 2), 10), ((0, 5), 10)]
            .into_iter()
            .collect();
        cache.settle(
            1,
            4,
            ListShape::default(),
            &list,
            Some(loaded_pages(&parent)),
        );
        assert!(cache.holds(1, 4) && !cache.holds(1, 3) && !cache.holds(2, 4));
        let same_contents = PageData::new(vec![2; PAGE_SIZE]);
        let now = memory(vec![
            page(0, &kept),
            page(1, &same_contents),
            page(3, &new),
            page(5, &kept),
        ]);
        let plan = plan(&now, Some(&cache)).unwrap();
        assert_eq!(plan.pages, 4);
        let named: Vec<_> = plan.named.iter().map(|p| (p.key, p.parent)).collect();
        assert_eq!(named, [((0, 1), Some(11)), ((0, 3), None)]);
        assert_eq!(plan.removed, [(0, 2)]);
        // Page 1 is found stored under its old row id: no change.
        let ids = [11, 12];
        assert_eq!(plan.changes(&ids), [((0, 2), None), ((0, 3), Some(12))]);
        let full = cache.full_rows(&plan, &ids);
        assert_eq!(
            full,
            [
                ((0, 0), Some(10)),
                ((0, 1), Some(11)),
                ((0, 3), Some(12)),
                ((0, 5), Some(10))
            ]
        );
        cache.commit(1, 5, ListShape::default(), &plan, &ids);
        assert!(cache.holds(1, 5));
        // The next commit of the same snapshot changes nothing and names
        // nothing: every page is now the very one listed.
        let again = super::plan(&now, Some(&cache)).unwrap();
        assert!(again.named.is_empty() && again.removed.is_empty());
        assert_eq!(again.pages, 4);
        assert_eq!(cache.full_rows(&again, &[]), full);
    }

    #[test]
    fn runs_of_the_parents_snapshot_are_planned_in_one_step() {
        let data = |n: u8| PageData::new(vec![n; PAGE_SIZE]);
        let parent: Vec<Page> = (0..40).map(|i| page(i, &data(i as u8 + 1))).collect();
        let parent = vec![MemoryImage {
            page_count: 64,
            pages: parent.into(),
        }];
        let runs = parent[0].pages.runs().to_vec();
        assert_eq!(runs.len(), 2, "places 0-31 and 32-39");
        let mut cache = PageCache::default();
        let first = plan(&parent, Some(&cache)).unwrap();
        assert_eq!((first.named.len(), first.known_runs.len()), (40, 2));
        let ids: Vec<i64> = (100..140).collect();
        cache.commit(1, 1, ListShape::default(), &first, &ids);
        assert_eq!(cache.runs.len(), 2);

        // The first run again, the second rebuilt: page 33 changed, page
        // 39 became zeros.
        let mut second_run: Vec<Page> = runs[1].to_vec();
        second_run[1] = page(33, &data(200));
        second_run.pop();
        let now = vec![
            MemoryImage {
                page_count: 64,
                pages: crate::snapshot::PageList::from_runs([runs[0].clone(), second_run.into()]),
            },
            MemoryImage {
                page_count: 64,
                pages: crate::snapshot::PageList::from_runs([runs[0].clone()]),
            },
        ];
        let plan = plan(&now, Some(&cache)).unwrap();
        let named: Vec<_> = plan.named.iter().map(|p| (p.key, p.parent)).collect();
        assert_eq!(named[0], ((0, 33), Some(133)));
        assert_eq!(named.len(), 33, "page 33, and memory 1's pages: new places");
        assert!(
            named[1..]
                .iter()
                .all(|(key, parent)| key.0 == 1 && parent.is_none())
        );
        assert_eq!(plan.removed, [(0, 39)]);
        assert_eq!(plan.pages, 39 + 32);
        let ids: Vec<i64> = (200..233).collect();
        let full = cache.full_rows(&plan, &ids);
        assert_eq!(full.len(), 39 + 32);
        assert_eq!(full[0], ((0, 0), Some(100)));
        assert_eq!(full[33], ((0, 33), Some(200)));
        cache.commit(1, 2, ListShape::default(), &plan, &ids);
        assert_eq!(cache.runs.len(), 3);
        let again = super::plan(&now, Some(&cache)).unwrap();
        assert!(again.named.is_empty() && again.removed.is_empty());
        assert_eq!(cache.full_rows(&again, &[]), full);
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
    fn placeholders_are_numbered_row_by_row() {
        assert_eq!(placeholder_rows(2, 3), "(?1, ?2, ?3), (?4, ?5, ?6)");
        assert_eq!(placeholder_list(3), "?1, ?2, ?3");
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
