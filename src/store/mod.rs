//! The store: modules, instances and their version trees in one SQLite file.
//!
//! Every suspension of an instance becomes a version whose parent is the
//! version it was resumed from; each version is written in one transaction
//! ([`Database::commit_version`]), so a crash loses no committed version and
//! leaves no half-written one. Memory is kept as content-addressed pages
//! (named by their BLAKE3 hash, stored once, compressed): a version costs what changed since the versions before
//! it, not a whole memory.
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous = NORMAL` by default
//! ([`Durability::Process`]): a committed version survives the crash or kill
//! of any process, because it is in the WAL (in the operating system's
//! cache) when the commit returns; after a power loss or kernel crash the
//! last versions may be gone but the database is consistent. That is the
//! failure the store is built for, and it keeps a commit free of `fsync`,
//! which thousands of suspensions per second need. [`Durability::Power`]
//! (`synchronous = FULL`) syncs the WAL at every commit for those who want
//! versions to outlive power loss too.

mod artifacts;
mod history;
mod lease;
mod pages;
mod policy;
mod schema;
mod values;
mod versions;
mod work;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

pub use artifacts::ArtifactKey;
pub use history::{Origin, Provenance, Step};
pub use lease::Lease;
pub use schema::SCHEMA_VERSION;
pub use versions::{Commit, Outcome, Prepared, VersionInfo, VersionKind};
pub(crate) use work::sleeping_message;
pub use work::{Batch, BatchDone, Claim, Refused, Request, Work};

use crate::runtime::{Policy, Timer};
use crate::snapshot::ModuleHash;
use crate::snapshot::codec::{Reader, Writer};

/// The id of an instance: 1, 2, ... in order of creation, never reused.
pub type InstanceId = u64;

/// How long a statement waits for another process's write lock before it
/// gives up. Commits are short, so a wait this long means something is
/// stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A wasnap database. Cheap to share between threads; each call takes the
/// connection for its duration.
#[derive(Clone)]
pub struct Database {
    shared: Arc<Mutex<Shared>>,
    path: PathBuf,
}

/// What the store's handles and leases share.
struct Shared {
    conn: Connection,
    /// Called at named points inside a commit; see [`Database::set_commit_hook`].
    commit_hook: Option<fn(&str)>,
    /// Kept between commits so that its context is allocated once.
    compressor: zstd::bulk::Compressor<'static>,
    /// The pages last committed, so that unchanged ones are not hashed again.
    page_cache: pages::PageCache,
    /// The key authenticating compiled artifacts, once looked up.
    artifact_key: Option<Option<ArtifactKey>>,
}

/// Locks the shared connection; a panic in another thread while it held
/// the lock leaves no transaction open (rusqlite rolls back on drop), so
/// the connection is still good to use.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// How far a committed version is guaranteed to survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Survives any process crash; the default (`synchronous = NORMAL`).
    Process,
    /// Also survives power loss, at the cost of an `fsync` per commit
    /// (`synchronous = FULL`).
    Power,
}

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Created; no version yet (its first run has not reached a suspension
    /// or an end).
    Created,
    /// Its head version is a suspension: it can be resumed.
    Suspended,
    /// Its head version is the end of a run that finished.
    Finished,
    /// Its head version is the end of a run that failed (a trap or error).
    Failed,
}

impl InstanceState {
    /// The name used in the database and in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Suspended => "suspended",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "created" => Self::Created,
            "suspended" => Self::Suspended,
            "finished" => Self::Finished,
            "failed" => Self::Failed,
            other => bail!("unknown instance state {other:?} in the database"),
        })
    }
}

/// One instance, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Its id.
    pub id: InstanceId,
    /// The module its head version runs (an upgrade moves it; older
    /// versions may run older modules, see [`VersionInfo::module_hash`]).
    pub module_hash: ModuleHash,
    /// Where it is in its life.
    pub state: InstanceState,
    /// Its head (latest committed) version, if any.
    pub head: Option<u32>,
    /// The value of its head version (yielded value or result); only its
    /// start when listed with [`Database::instances_shortened`].
    pub last_value: Option<Vec<u8>>,
    /// The whole length of that value in bytes.
    pub last_value_len: Option<u64>,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Its WASI arguments, program name first.
    pub args: Vec<String>,
    /// The limits and grants it was started with.
    pub policy: Policy,
    /// The pid of the live process holding its lease, if one does.
    pub leased_by: Option<u32>,
    /// The head version's timer, when it has one: when a sleep wakes, or
    /// a question's deadline.
    pub timer: Option<Timer>,
    /// Whether a run of it is requested and not yet committed (see
    /// [`Database::request`]).
    pub pending: bool,
}

/// One stored module, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Its content hash.
    pub hash: ModuleHash,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was first stored, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// Counts of what a database holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Instances.
    pub instances: u64,
    /// Versions of all instances.
    pub versions: u64,
    /// Distinct stored pages.
    pub pages: u64,
    /// Their stored (compressed) size in bytes.
    pub page_bytes: u64,
    /// Rows of the versions' page lists: a row per non-zero page in a full
    /// list, a row per changed page in a list kept as the difference from
    /// its parent's.
    pub page_refs: u64,
}

/// What [`Database::gc`] freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Pages deleted.
    pub pages: u64,
    /// Their stored (compressed) size in bytes.
    pub bytes: u64,
}

/// What [`Database::remove_instance`] freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// Versions deleted.
    pub versions: u64,
    /// Page-list rows deleted (see [`Stats::page_refs`]); pages no other
    /// version uses are freed by the next [`Database::gc`].
    pub page_refs: u64,
    /// Bytes of the deleted versions' own rows (state, value, reply).
    pub bytes: u64,
}

impl Database {
    /// Opens (creating it if needed) the database at `path` for reading and
    /// writing, and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = connect(&path, flags)?;
        let found = schema::version(&conn).map_err(|e| explain(&path, e.into()))?;
        schema::check_not_newer(found)?;
        if found == 0 {
            // Only takes effect before the first table and the switch to
            // WAL; lets `gc` give freed space back to the file system.
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
                .map_err(|e| explain(&path, e.into()))?;
        }
        configure(&conn).map_err(|e| explain(&path, e))?;
        schema::migrate(&mut conn).map_err(|e| explain(&path, e))?;
        Self::wrap(conn, path)
    }

    /// Opens an existing database for reading only; every write fails with
    /// "database PATH is read-only".
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = connect(&path, flags)?;
        let found = schema::version(&conn).map_err(|e| explain(&path, e.into()))?;
        schema::check_not_newer(found)?;
        if found < SCHEMA_VERSION {
            bail!(
                "database {} has schema version {found}; open it writable once to upgrade it",
                path.display()
            );
        }
        Self::wrap(conn, path)
    }

    fn wrap(conn: Connection, path: PathBuf) -> Result<Self> {
        let compressor = zstd::bulk::Compressor::new(pages::PAGE_ZSTD_LEVEL)
            .map_err(|e| anyhow::anyhow!("cannot start zstd compression: {e}"))?;
        let shared = Shared {
            conn,
            commit_hook: None,
            compressor,
            page_cache: pages::PageCache::default(),
            artifact_key: None,
        };
        Ok(Self {
            shared: Arc::new(Mutex::new(shared)),
            path,
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chooses how far committed versions survive; see [`Durability`].
    pub fn set_durability(&self, durability: Durability) -> Result<()> {
        let level = match durability {
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        };
        self.with(|s| Ok(s.conn.pragma_update(None, "synchronous", level)?))
    }

    /// Runs `f` on the connection, turning SQLite's error codes into
    /// one-line errors that name the file.
    fn with<T>(&self, f: impl FnOnce(&mut Shared) -> Result<T>) -> Result<T> {
        let mut guard = lock(&self.shared);
        f(&mut guard).map_err(|e| explain(&self.path, e))
    }

    /// Stores `bytes` as a module (once: storing it again is free) and
    /// returns its content hash.
    pub fn put_module(&self, bytes: &[u8]) -> Result<ModuleHash> {
        let hash = *blake3::hash(bytes).as_bytes();
        self.with(|s| {
            s.conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO modules (hash, bytes, created) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![hash, bytes, now_ms()])?;
            Ok(hash)
        })?;
        Ok(hash)
    }

    /// Every stored module, oldest first.
    pub fn modules(&self) -> Result<Vec<ModuleInfo>> {
        self.with(|s| {
            s.conn
                .prepare_cached(
                    "SELECT hash, length(bytes), created FROM modules ORDER BY created, hash",
                )?
                .query_map([], |r| {
                    Ok(ModuleInfo {
                        hash: r.get(0)?,
                        bytes: r.get(1)?,
                        created_ms: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Into::into)
        })
    }

    /// The original bytes of the module with content hash `hash`.
    pub fn module(&self, hash: &ModuleHash) -> Result<Vec<u8>> {
        self.with(|s| {
            s.conn
                .prepare_cached("SELECT bytes FROM modules WHERE hash = ?1")?
                .query_row([hash], |r| r.get(0))
                .optional()?
                .with_context(|| format!("module {} not found", hex(hash)))
        })
    }

    /// Creates an instance of the stored module `module_hash` with its WASI
    /// arguments (program name first) and the policy every run of it gets.
    /// It has no version until its first run is committed.
    pub fn create_instance(
        &self,
        module_hash: &ModuleHash,
        args: &[String],
        policy: &Policy,
    ) -> Result<InstanceId> {
        let mut w = Writer::default();
        w.strings(args)?;
        let policy = policy::encode(policy)?;
        self.with(|s| {
            let tx = writing(&mut s.conn)?;
            require_module(&tx, module_hash)?;
            tx.prepare_cached(
                "INSERT INTO instances (module_hash, state, created, args, policy)
                 VALUES (?1, 'created', ?2, ?3, ?4)",
            )?
            .execute(params![module_hash, now_ms(), w.buf, policy])?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(id as InstanceId)
        })
    }

    /// Takes the lease on `instance`: only its holder can commit versions.
    /// Fails with "instance N is busy" while another live process (or
    /// another lease in this one) holds it; a lease whose holder died is
    /// taken over.
    pub fn lease(&self, instance: InstanceId) -> Result<Lease> {
        lease::acquire(&self.shared, instance).map_err(|e| explain(&self.path, e))
    }

    /// One instance.
    pub fn instance(&self, id: InstanceId) -> Result<InstanceInfo> {
        self.with(|s| {
            let row = s
                .conn
                .prepare_cached(&format!("{} WHERE i.id = ?1", instance_query(None)))?
                .query_row([id], |r| read_instance_row(r, None))
                .optional()?;
            match row {
                Some(row) => finish_instance(&s.conn, row),
                None => Err(Refused::NotFound(format!("instance {id} not found")).into()),
            }
        })
    }

    /// Every instance, by id.
    pub fn instances(&self) -> Result<Vec<InstanceInfo>> {
        self.list_instances(None)
    }

    /// Like [`Database::instances`], with each last value cut to its first
    /// `max` bytes (64 KiB at most): a listing reads that much of each,
    /// however large it is.
    pub fn instances_shortened(&self, max: usize) -> Result<Vec<InstanceInfo>> {
        self.list_instances(Some(max.min(values::MAX_PREVIEW)))
    }

    fn list_instances(&self, limit: Option<usize>) -> Result<Vec<InstanceInfo>> {
        self.with(|s| {
            let rows = s
                .conn
                .prepare_cached(&format!("{} ORDER BY i.id", instance_query(limit)))?
                .query_map([], |r| read_instance_row(r, limit))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|row| finish_instance(&s.conn, row))
                .collect()
        })
    }

    /// Deletes an instance and all its versions. Fails with "instance N is
    /// busy" while a live process holds its lease.
    pub fn remove_instance(&self, id: InstanceId) -> Result<RemoveReport> {
        self.with(|s| {
            let tx = writing(&mut s.conn)?;
            lease::check_free(&tx, id)?;
            let report = tx.query_row(
                "SELECT count(*),
                        coalesce(sum(coalesce(length(state), 0) + length(value) + length(reply)
                                 + coalesce(length(message), 0)), 0),
                        (SELECT count(*) FROM version_pages
                          WHERE version IN (SELECT id FROM versions WHERE instance = ?1))
                 FROM versions WHERE instance = ?1",
                [id],
                |r| {
                    Ok(RemoveReport {
                        versions: r.get(0)?,
                        bytes: r.get::<_, Option<u64>>(1)?.unwrap_or(0),
                        page_refs: r.get(2)?,
                    })
                },
            )?;
            tx.execute(
                "DELETE FROM version_pages
                 WHERE version IN (SELECT id FROM versions WHERE instance = ?1)",
                [id],
            )?;
            tx.execute("DELETE FROM versions WHERE instance = ?1", [id])?;
            tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
            tx.commit()?;
            Ok(report)
        })
    }

    /// Deletes the pages no version refers to, and returns the space to the
    /// file system.
    pub fn gc(&self) -> Result<GcReport> {
        self.with(|s| {
            let tx = writing(&mut s.conn)?;
            // Every page a version holds is in its own rows or in those of
            // an ancestor down to a full list, so the pages named in no
            // row are held by no version. (`NULL`, a page that became
            // zeros, must not reach NOT IN, which it would make unknown.)
            let unused = "FROM pages
                          WHERE id NOT IN (SELECT page FROM version_pages WHERE page IS NOT NULL)";
            let report = tx.query_row(
                &format!("SELECT count(*), coalesce(sum(length(data)), 0) {unused}"),
                [],
                |r| {
                    Ok(GcReport {
                        pages: r.get(0)?,
                        bytes: r.get(1)?,
                    })
                },
            )?;
            tx.execute(&format!("DELETE {unused}"), [])?;
            tx.commit()?;
            s.conn.execute_batch("PRAGMA incremental_vacuum")?;
            Ok(report)
        })
    }

    /// Counts of what the database holds.
    pub fn stats(&self) -> Result<Stats> {
        self.with(|s| {
            Ok(s.conn.query_row(
                "SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM versions),
                        (SELECT count(*) FROM pages),
                        (SELECT coalesce(sum(length(data)), 0) FROM pages),
                        (SELECT count(*) FROM version_pages)",
                [],
                |r| {
                    Ok(Stats {
                        instances: r.get(0)?,
                        versions: r.get(1)?,
                        pages: r.get(2)?,
                        page_bytes: r.get(3)?,
                        page_refs: r.get(4)?,
                    })
                },
            )?)
        })
    }

    /// Sets a function called at named points inside every commit (after
    /// `"begin"`, `"pages"`, `"version"`, and at `"before-commit"`). Crash
    /// tests use it to kill the process in the middle of a commit.
    #[doc(hidden)]
    pub fn set_commit_hook(&self, hook: Option<fn(&str)>) {
        lock(&self.shared).commit_hook = hook;
    }
}

/// The instances, the values of their heads (only their start, with a
/// limit), their timers and whether a request is pending.
fn instance_query(limit: Option<usize>) -> String {
    format!(
        "SELECT i.id, i.module_hash, i.state, i.head, i.created, i.args, i.policy,
                v.id, {}, length(v.value), v.value_zstd, v.wake_at, v.timer,
                EXISTS (SELECT 1 FROM requests r WHERE r.instance = i.id)
         FROM instances i LEFT JOIN versions v ON v.instance = i.id AND v.number = i.head",
        values::column("v.value", limit)
    )
}

/// The columns of [`instance_query`], before the parts that can fail.
type InstanceRow = (
    (InstanceId, ModuleHash, String, Option<u32>, u64, Vec<u8>),
    (Vec<u8>, Option<Result<(Vec<u8>, u64)>>),
    (Option<u64>, Option<String>, bool),
);

fn read_instance_row(r: &rusqlite::Row, limit: Option<usize>) -> rusqlite::Result<InstanceRow> {
    let head_row: Option<i64> = r.get(7)?;
    let last_value = match head_row {
        Some(_) => Some(values::read(r, 8, limit)?),
        None => None,
    };
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ),
        (r.get(6)?, last_value),
        (r.get(11)?, r.get(12)?, r.get(13)?),
    ))
}

fn finish_instance(conn: &Connection, row: InstanceRow) -> Result<InstanceInfo> {
    let (
        (id, module_hash, state, head, created_ms, args),
        (policy, last_value),
        (wake_at, timer, pending),
    ) = row;
    let (last_value, last_value_len) = match last_value
        .transpose()
        .map_err(|e| anyhow::anyhow!("the value of instance {id}'s head is corrupt: {e}"))?
    {
        Some((value, len)) => (Some(value), Some(len)),
        None => (None, None),
    };
    let timer = match (wake_at, timer.as_deref()) {
        (Some(wake_at), Some("deadline")) => Some(Timer::Deadline { wake_at }),
        (Some(wake_at), _) => Some(Timer::Sleep { wake_at }),
        _ => None,
    };
    let mut r = Reader::new(&args);
    let args = r
        .strings()
        .and_then(|a| r.finish().map(|()| a))
        .map_err(|e| anyhow::anyhow!("the arguments of instance {id} are corrupt: {e}"))?;
    let policy = policy::decode(&policy)
        .map_err(|e| anyhow::anyhow!("the policy of instance {id} is corrupt: {e}"))?;
    Ok(InstanceInfo {
        id,
        module_hash,
        state: InstanceState::parse(&state)?,
        head,
        last_value,
        last_value_len,
        created_ms,
        args,
        policy,
        leased_by: lease::holder(conn, id)?,
        timer,
        pending,
    })
}

/// A transaction that writes: it takes the write lock when it begins
/// (`BEGIN IMMEDIATE`), waiting for another writer up to the busy timeout.
///
/// A deferred transaction takes the lock only at its first write, and in
/// WAL mode one that has read first cannot wait for it: if another
/// process committed since its read began, SQLite fails it at once with
/// `SQLITE_BUSY` (its snapshot is stale), busy timeout or not. Every
/// transaction of the store that writes starts here; those that only read
/// stay deferred, and never block a writer.
pub(crate) fn writing(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

fn require_module(conn: &Connection, hash: &ModuleHash) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM modules WHERE hash = ?1")?
        .exists([hash])?;
    if !found {
        bail!("module {} not found", hex(hash));
    }
    Ok(())
}

fn connect(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| explain(path, e.into()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("cannot switch to WAL mode (journal mode stays {mode})");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // The last connection to close would otherwise copy the WAL into the
    // database, sync both and delete the WAL, and the next process would
    // create it again: most of the time of a short command such as
    // `wasnap resume`. A committed version is in the WAL either way, which
    // is what `Durability::Process` promises; the sync at close made the
    // versions of a process that exited survive power loss too, which is
    // `Durability::Power`'s promise, kept at every commit. SQLite still
    // checkpoints (and syncs) the WAL every 1,000 pages.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(())
}

/// Rewrites SQLite errors whose cause the user can act on into one line
/// naming the file; other errors pass through.
fn explain(path: &Path, e: anyhow::Error) -> anyhow::Error {
    let code = e
        .downcast_ref::<rusqlite::Error>()
        .and_then(|e| e.sqlite_error_code());
    let p = path.display();
    match code {
        Some(ErrorCode::NotADatabase) => {
            anyhow::anyhow!("{p} is not a wasnap database (not SQLite)")
        }
        Some(ErrorCode::ReadOnly) => anyhow::anyhow!("database {p} is read-only"),
        Some(ErrorCode::CannotOpen) => anyhow::anyhow!("cannot open database {p}: {e}"),
        Some(ErrorCode::DatabaseBusy) => busy(path, &e),
        Some(ErrorCode::DatabaseLocked) => {
            anyhow::anyhow!("database {p} is locked by another connection of this process: {e}")
        }
        Some(ErrorCode::DatabaseCorrupt) => anyhow::anyhow!("database {p} is corrupt: {e}"),
        Some(ErrorCode::DiskFull) => anyhow::anyhow!("database {p}: the disk is full"),
        Some(_) => anyhow::anyhow!("database {p}: {e}"),
        None => e,
    }
}

/// What `SQLITE_BUSY` meant, by its extended code. Every write begins as a
/// writer and waits [`BUSY_TIMEOUT`] for the lock, so a plain one means
/// another process held the lock all that time.
fn busy(path: &Path, e: &anyhow::Error) -> anyhow::Error {
    let extended = match e.downcast_ref::<rusqlite::Error>() {
        Some(rusqlite::Error::SqliteFailure(failure, _)) => failure.extended_code,
        _ => rusqlite::ffi::SQLITE_BUSY,
    };
    let p = path.display();
    match extended {
        rusqlite::ffi::SQLITE_BUSY_RECOVERY => {
            anyhow::anyhow!("database {p} is being recovered by another process; try again")
        }
        rusqlite::ffi::SQLITE_BUSY_SNAPSHOT => anyhow::anyhow!(
            "database {p} changed under a transaction that read it before writing: {e}"
        ),
        _ => anyhow::anyhow!(
            "database {p} stayed locked by another process for {} s",
            BUSY_TIMEOUT.as_secs()
        ),
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A hash as lowercase hex.
pub fn hex(hash: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}
