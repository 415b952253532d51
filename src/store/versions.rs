//! Versions: committing one in a single transaction, loading one back, and
//! listing an instance's tree.

use anyhow::{Result, bail};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Database, InstanceId, Lease, Shared, lease, now_ms, pages, values};
use crate::snapshot::{PAGE_SIZE, Snapshot, file};

/// How a run from a version (or from the start) ended.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// It suspended; the snapshot's `host.yielded` is the version's value.
    Suspended(&'a Snapshot),
    /// It finished, with the WASI exit status if it called `proc_exit`, and
    /// what it returned or printed as its result (may be empty).
    Finished {
        /// The exit status, if any.
        exit_status: Option<i32>,
        /// The result, stored as the version's value.
        result: &'a [u8],
    },
    /// It failed (a trap or a host error) with this one-line cause.
    Failed {
        /// The cause.
        message: &'a str,
    },
}

/// What a version is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VersionKind {
    /// A suspension: it has a snapshot and can be resumed.
    Suspended,
    /// The end of a run that finished.
    Finished,
    /// The end of a run that failed.
    Failed,
}

impl VersionKind {
    /// The name used in the database and in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Suspended => "suspended",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "suspended" => Self::Suspended,
            "finished" => Self::Finished,
            "failed" => Self::Failed,
            other => bail!("unknown version kind {other:?} in the database"),
        })
    }
}

/// One version of an instance, as listed (without its snapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// Its number: 1, 2, ... within its instance, in order of commit.
    pub number: u32,
    /// The version it was resumed from; `None` for the first run.
    pub parent: Option<u32>,
    /// A suspension or an end.
    pub kind: VersionKind,
    /// The value yielded (suspension) or the result (finished); only its
    /// start when listed with [`Database::versions_shortened`].
    pub value: Vec<u8>,
    /// The whole value's length in bytes.
    pub value_len: u64,
    /// The reply it was resumed from its parent with; only its start when
    /// listed with [`Database::versions_shortened`].
    pub reply: Vec<u8>,
    /// The whole reply's length in bytes.
    pub reply_len: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Total size of its memories in bytes (zeros included).
    pub memory_bytes: u64,
    /// Bytes the database grew by to store it (new pages, compressed, and
    /// its own row): what it cost given the versions before it.
    pub stored_bytes: u64,
    /// The exit status of a finished run, if it gave one.
    pub exit_status: Option<i32>,
    /// The cause of a failed run.
    pub message: Option<String>,
}

/// The columns of a version row that [`Outcome`] determines.
struct Row<'a> {
    kind: VersionKind,
    value: &'a [u8],
    state: Option<Vec<u8>>,
    memory_bytes: u64,
    exit_status: Option<i32>,
    message: Option<&'a str>,
}

impl<'a> Row<'a> {
    fn of(outcome: &Outcome<'a>) -> Result<Self> {
        Ok(match *outcome {
            Outcome::Suspended(s) => Self {
                kind: VersionKind::Suspended,
                value: &s.host.yielded,
                state: Some(file::encode_state(s)?),
                memory_bytes: s
                    .memories
                    .iter()
                    .map(|m| m.page_count.saturating_mul(PAGE_SIZE as u64))
                    .fold(0, u64::saturating_add),
                exit_status: None,
                message: None,
            },
            Outcome::Finished {
                exit_status,
                result,
            } => Self {
                kind: VersionKind::Finished,
                value: result,
                state: None,
                memory_bytes: 0,
                exit_status,
                message: None,
            },
            Outcome::Failed { message } => Self {
                kind: VersionKind::Failed,
                value: &[],
                state: None,
                memory_bytes: 0,
                exit_status: None,
                message: Some(message),
            },
        })
    }

    /// The bytes of its own row, with its value and reply as stored.
    fn own_bytes(&self, value: &[u8], reply: &[u8]) -> u64 {
        let state = self.state.as_ref().map_or(0, Vec::len);
        let message = self.message.map_or(0, str::len);
        (state + value.len() + reply.len() + message) as u64
    }
}

impl Database {
    /// Commits the outcome of a run of the leased instance as its new head
    /// version, in one transaction, and returns its number. `parent` is the
    /// version the run was resumed from (`None` only for an instance's
    /// first run) and `reply` what it was resumed with.
    pub fn commit_version(
        &self,
        lease: &Lease,
        parent: Option<u32>,
        outcome: &Outcome,
        reply: &[u8],
    ) -> Result<u32> {
        let row = Row::of(outcome)?;
        self.with(|shared| {
            let Shared {
                conn,
                commit_hook,
                compressor,
                page_cache,
                ..
            } = shared;
            let hashed = match outcome {
                Outcome::Suspended(s) => pages::hash_pages(&s.memories, lease.instance, page_cache),
                _ => Vec::new(),
            };
            let hook_fn = *commit_hook;
            let hook = |stage: &str| {
                if let Some(h) = hook_fn {
                    h(stage)
                }
            };
            let tx = super::writing(conn)?;
            hook("begin");
            lease::check_held(&tx, lease)?;
            let instance = lease.instance;
            if let Outcome::Suspended(s) = outcome {
                check_module(&tx, instance, s)?;
            }
            check_parent(&tx, instance, parent)?;
            let known = page_cache.stored_under(parent);
            let (page_ids, page_bytes) = pages::store_missing(&tx, compressor, &hashed, known)?;
            hook("pages");
            let number = next_number(&tx, instance)?;
            let value = values::pack(compressor, row.value)?;
            let reply = values::pack(compressor, reply)?;
            let stored = page_bytes + row.own_bytes(&value.0, &reply.0);
            let id = insert_version(
                &tx,
                instance,
                number,
                parent,
                &row,
                (&value, &reply),
                stored,
            )?;
            pages::reference(&tx, id, &hashed, &page_ids)?;
            hook("version");
            tx.prepare_cached("UPDATE instances SET head = ?2, state = ?3 WHERE id = ?1")?
                .execute(params![instance, number, row.kind.as_str()])?;
            hook("before-commit");
            tx.commit()?;
            page_cache.settle(instance, number, &hashed, &page_ids);
            Ok(number)
        })
    }

    /// The snapshot of a suspension version.
    pub fn load_version(&self, instance: InstanceId, version: u32) -> Result<Snapshot> {
        self.with(|s| {
            // One read transaction: a concurrent `rm` or `gc` cannot pull
            // pages out from under the load.
            let tx = s.conn.transaction()?;
            let Found {
                id,
                kind,
                state,
                value,
            } = find_version(&tx, instance, version)?;
            let Some(state) = state else {
                bail!(
                    "version {version} of instance {instance} is the end of a run ({}); it has no snapshot",
                    kind.as_str()
                );
            };
            let corrupt = |e: anyhow::Error| {
                anyhow::anyhow!("version {version} of instance {instance} is corrupt: {e:#}")
            };
            let mut snapshot = file::decode_state(&state).map_err(corrupt)?;
            snapshot.host.yielded = value.map_err(corrupt)?;
            let (names, ids) = pages::load(&tx, id, &mut snapshot.memories).map_err(corrupt)?;
            for m in &snapshot.memories {
                file::check_memory(m).map_err(corrupt)?;
            }
            // A commit resumed from this version will find most of these
            // pages unchanged, shared with the restored workflow.
            let loaded: Vec<_> = (0u32..)
                .zip(&snapshot.memories)
                .flat_map(|(memory, m)| m.pages.iter().map(move |page| (memory, page)))
                .zip(names)
                .map(|((memory, page), hash)| pages::HashedPage { memory, page, hash })
                .collect();
            s.page_cache.settle(instance, version, &loaded, &ids);
            Ok(snapshot)
        })
    }

    /// One version of an instance.
    pub fn version(&self, instance: InstanceId, version: u32) -> Result<VersionInfo> {
        self.with(|s| {
            let info = s
                .conn
                .prepare_cached(&format!(
                    "{} WHERE instance = ?1 AND number = ?2",
                    version_query(None)
                ))?
                .query_row(params![instance, version], |r| read_info(r, None))
                .optional()?;
            match info {
                Some(info) => info,
                None => {
                    require_instance(&s.conn, instance)?;
                    bail!("version {version} of instance {instance} not found")
                }
            }
        })
    }

    /// Every version of an instance, by number (parents always come before
    /// their children), to draw its tree.
    pub fn versions(&self, instance: InstanceId) -> Result<Vec<VersionInfo>> {
        self.list_versions(instance, None)
    }

    /// Like [`Database::versions`], with each value and reply cut to its
    /// first `max` bytes (64 KiB at most): a listing reads that much of
    /// each, however large it is.
    pub fn versions_shortened(&self, instance: InstanceId, max: usize) -> Result<Vec<VersionInfo>> {
        self.list_versions(instance, Some(max.min(values::MAX_PREVIEW)))
    }

    fn list_versions(
        &self,
        instance: InstanceId,
        limit: Option<usize>,
    ) -> Result<Vec<VersionInfo>> {
        self.with(|s| {
            require_instance(&s.conn, instance)?;
            s.conn
                .prepare_cached(&format!(
                    "{} WHERE instance = ?1 ORDER BY number",
                    version_query(limit)
                ))?
                .query_map([instance], |r| read_info(r, limit))?
                .map(|r| r.map_err(anyhow::Error::from).and_then(|info| info))
                .collect()
        })
    }
}

/// The columns [`read_info`] reads; with a limit, only the start of each
/// value and reply.
fn version_query(limit: Option<usize>) -> String {
    format!(
        "SELECT number, parent, kind, {}, length(value), value_zstd, {}, length(reply), reply_zstd,
                created, memory_bytes, stored_bytes, exit_status, message
         FROM versions",
        values::column("value", limit),
        values::column("reply", limit)
    )
}

fn read_info(r: &rusqlite::Row, limit: Option<usize>) -> rusqlite::Result<Result<VersionInfo>> {
    let kind: String = r.get(2)?;
    let value = values::read(r, 3, limit)?;
    let reply = values::read(r, 6, limit)?;
    let created_ms = r.get(9)?;
    let memory_bytes = r.get(10)?;
    let stored_bytes = r.get(11)?;
    let exit_status = r.get(12)?;
    let message = r.get(13)?;
    let (number, parent) = (r.get(0)?, r.get(1)?);
    Ok((|| {
        let (value, value_len) = value?;
        let (reply, reply_len) = reply?;
        Ok(VersionInfo {
            number,
            parent,
            kind: VersionKind::parse(&kind)?,
            value,
            value_len,
            reply,
            reply_len,
            created_ms,
            memory_bytes,
            stored_bytes,
            exit_status,
            message,
        })
    })())
}

fn require_instance(conn: &Connection, instance: InstanceId) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM instances WHERE id = ?1")?
        .exists([instance])?;
    if !found {
        bail!("instance {instance} not found");
    }
    Ok(())
}

/// A version's row, as [`find_version`] reads it.
struct Found {
    id: i64,
    kind: VersionKind,
    /// The state blob of a suspension.
    state: Option<Vec<u8>>,
    /// Its value, or why it cannot be read.
    value: Result<Vec<u8>>,
}

fn find_version(conn: &Connection, instance: InstanceId, version: u32) -> Result<Found> {
    let row = conn
        .prepare_cached(
            "SELECT id, kind, state, value, length(value), value_zstd FROM versions
             WHERE instance = ?1 AND number = ?2",
        )?
        .query_row(params![instance, version], |r| {
            let value = values::read(r, 3, None)?.map(|(value, _)| value);
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                value,
            ))
        })
        .optional()?;
    match row {
        Some((id, kind, state, value)) => Ok(Found {
            id,
            kind: VersionKind::parse(&kind)?,
            state,
            value,
        }),
        None => {
            require_instance(conn, instance)?;
            bail!("version {version} of instance {instance} not found")
        }
    }
}

/// A snapshot must come from the module its instance runs.
fn check_module(conn: &Connection, instance: InstanceId, s: &Snapshot) -> Result<()> {
    let module: [u8; 32] = conn
        .prepare_cached("SELECT module_hash FROM instances WHERE id = ?1")?
        .query_row([instance], |r| r.get(0))?;
    if module != s.module_hash {
        bail!(
            "the snapshot is of module {}, but instance {instance} runs module {}",
            super::hex(&s.module_hash),
            super::hex(&module)
        );
    }
    Ok(())
}

/// A run resumes a suspension of the same instance; only the first run of
/// an instance has no parent.
fn check_parent(conn: &Connection, instance: InstanceId, parent: Option<u32>) -> Result<()> {
    match parent {
        Some(p) => {
            let kind = find_version(conn, instance, p)?.kind;
            if kind != VersionKind::Suspended {
                bail!(
                    "version {p} of instance {instance} is the end of a run ({}); it cannot be resumed",
                    kind.as_str()
                );
            }
        }
        None => {
            let has_versions = conn
                .prepare_cached("SELECT 1 FROM versions WHERE instance = ?1")?
                .exists([instance])?;
            if has_versions {
                bail!("instance {instance} has versions already: a new one needs a parent");
            }
        }
    }
    Ok(())
}

fn next_number(conn: &Connection, instance: InstanceId) -> Result<u32> {
    let last: Option<u32> = conn
        .prepare_cached("SELECT max(number) FROM versions WHERE instance = ?1")?
        .query_row([instance], |r| r.get(0))?;
    match last.unwrap_or(0).checked_add(1) {
        Some(n) => Ok(n),
        None => bail!("instance {instance} has run out of version numbers"),
    }
}

fn insert_version(
    conn: &Connection,
    instance: InstanceId,
    number: u32,
    parent: Option<u32>,
    row: &Row,
    (value, reply): (&values::Packed, &values::Packed),
    stored_bytes: u64,
) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO versions (instance, number, parent, kind, value, value_zstd, reply,
                               reply_zstd, created, memory_bytes, stored_bytes, state,
                               exit_status, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        instance,
        number,
        parent,
        row.kind.as_str(),
        value.0,
        value.1,
        reply.0,
        reply.1,
        now_ms(),
        row.memory_bytes,
        stored_bytes,
        row.state,
        row.exit_status,
        row.message,
    ])?;
    Ok(conn.last_insert_rowid())
}
