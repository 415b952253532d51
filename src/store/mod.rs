//! The store: modules, instances and their version trees, in one SQLite
//! file or in a PostgreSQL database shared by many workers.
//!
//! Every suspension of an instance becomes a version whose parent is the
//! version it was resumed from; each version is written in one transaction
//! ([`Database::commit_version`]), so a crash loses no committed version and
//! leaves no half-written one. Memory is kept as content-addressed pages
//! (named by their BLAKE3 hash, stored once, compressed): a version costs
//! what changed since the versions before it, not a whole memory.
//!
//! # Two backends, one store
//!
//! [`Database::open`] takes a SQLite path or a PostgreSQL URL
//! (`postgres://USER@HOST/DB`). The store's logic is written once, over
//! `sql::Connection`; the backends differ only in how they connect, in
//! their table definitions, and in how concurrent writers are kept apart:
//! SQLite serialises every write transaction (`BEGIN IMMEDIATE`), while
//! PostgreSQL lets commits of different instances run at once and
//! serialises what must be by row locks (`FOR UPDATE`, `SKIP LOCKED` when
//! workers claim work) and by an advisory lock between commits and `gc`.
//! Leases differ as their holders do: see [`Lease`].
//!
//! The store's calls block. From async code (a service on tokio), call
//! them from blocking tasks; the PostgreSQL client in particular runs a
//! small runtime of its own and must not be called inside another.
//!
//! # Durability
//!
//! SQLite runs in WAL mode with `synchronous = NORMAL` by default
//! ([`Durability::Process`]): a committed version survives the crash or kill
//! of any process, because it is in the WAL (in the operating system's
//! cache) when the commit returns; after a power loss or kernel crash the
//! last versions may be gone but the database is consistent. That is the
//! failure the store is built for, and it keeps a commit free of `fsync`,
//! which thousands of suspensions per second need. [`Durability::Power`]
//! (`synchronous = FULL`) syncs the WAL at every commit for those who want
//! versions to outlive power loss too. PostgreSQL keeps both promises
//! with its defaults: a commit returns once the server has flushed it.

mod artifacts;
mod checkpoint;
mod copy;
mod history;
mod lease;
mod pages;
mod policy;
mod postgres;
mod schema;
mod sql;
mod sqlite;
mod values;
mod versions;
mod work;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use sql::{Begin, Connection, Dialect, Row, params};

pub use artifacts::ArtifactKey;
pub use checkpoint::Checkpointer;
pub use copy::CopyReport;
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

/// A wasnap database, SQLite or PostgreSQL. Cheap to share between
/// threads; each call takes the connection for its duration.
#[derive(Clone)]
pub struct Database {
    shared: Arc<Mutex<Shared>>,
    location: Arc<Location>,
}

/// Where a database is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its URL.
    Postgres(String),
}

impl Location {
    /// Reads `text` as a database location: a `postgres://` or
    /// `postgresql://` URL is PostgreSQL, `sqlite:PATH` or any other text a
    /// SQLite path.
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres(text.to_string())
        } else {
            let path = text.strip_prefix("sqlite:").unwrap_or(text);
            Location::Sqlite(PathBuf::from(path))
        }
    }

    /// The location a path names: a path that reads as a PostgreSQL URL is
    /// one.
    pub fn of_path(path: &Path) -> Location {
        match path.to_str() {
            Some(text) => Location::parse(text),
            None => Location::Sqlite(path.to_path_buf()),
        }
    }

    /// How messages name it: the path, or the URL without its password.
    pub fn name(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => postgres::redact(url),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// What the store's handles and leases share.
struct Shared {
    conn: Box<dyn Connection>,
    /// The database's name in messages.
    name: String,
    /// How long a lease lasts unless renewed, where leases expire.
    lease_ttl: Duration,
    /// Called at named points inside a commit; see [`Database::set_commit_hook`].
    commit_hook: Option<fn(&str)>,
    /// Kept between commits so that its context is allocated once.
    compressor: zstd::bulk::Compressor<'static>,
    /// The page lists last committed or loaded, so that unchanged pages are
    /// not hashed again and a parent's list is not read back.
    page_caches: pages::PageCaches,
    /// The key authenticating compiled artifacts, once looked up.
    artifact_key: Option<Option<ArtifactKey>>,
}

/// Locks the shared connection; a panic in another thread while it held
/// the lock leaves no transaction open (an unfinished one rolls back when
/// dropped: see `sql::Tx`), so the connection is still good to use.
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
    /// The pid of the process holding its lease, if one does (on
    /// PostgreSQL, a process on whichever machine its worker runs).
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
    /// Opens (creating it if needed) the database at `location` for reading
    /// and writing, and brings its schema up to date. `location` is a
    /// SQLite path or a PostgreSQL URL (`postgres://USER@HOST/DB`); see
    /// [`Location::parse`].
    pub fn open(location: impl AsRef<Path>) -> Result<Self> {
        Self::open_at(Location::of_path(location.as_ref()))
    }

    /// Opens the database at `location`, as [`Database::open`] does.
    pub fn open_at(location: Location) -> Result<Self> {
        let name = location.name();
        let mut conn = connect(&location, true)?;
        let found = schema::version(&mut *conn).map_err(|e| conn.explain(&name, e))?;
        schema::check_not_newer(found)?;
        // A current schema needs no write lock to find out again.
        if found < SCHEMA_VERSION {
            schema::migrate(&mut *conn).map_err(|e| conn.explain(&name, e))?;
        }
        Self::wrap(conn, location)
    }

    /// Opens an existing SQLite database for reading only; every write
    /// fails with "database PATH is read-only".
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let location = Location::of_path(path.as_ref());
        if let Location::Postgres(_) = location {
            bail!(
                "a PostgreSQL database is opened read-only by connecting as a user that may only read"
            );
        }
        let name = location.name();
        let mut conn = connect(&location, false)?;
        let found = schema::version(&mut *conn).map_err(|e| conn.explain(&name, e))?;
        schema::check_not_newer(found)?;
        if found < SCHEMA_VERSION {
            bail!(
                "database {name} has schema version {found}; open it writable once to upgrade it"
            );
        }
        Self::wrap(conn, location)
    }

    fn wrap(conn: Box<dyn Connection>, location: Location) -> Result<Self> {
        let compressor = zstd::bulk::Compressor::new(pages::PAGE_ZSTD_LEVEL)
            .map_err(|e| anyhow::anyhow!("cannot start zstd compression: {e}"))?;
        let shared = Shared {
            conn,
            name: location.name(),
            lease_ttl: lease::DEFAULT_TTL,
            commit_hook: None,
            compressor,
            page_caches: pages::PageCaches::default(),
            artifact_key: None,
        };
        Ok(Self {
            shared: Arc::new(Mutex::new(shared)),
            location: Arc::new(location),
        })
    }

    /// Where this store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The file this store lives in; for PostgreSQL, its URL as a path.
    pub fn path(&self) -> &Path {
        match &*self.location {
            Location::Sqlite(path) => path,
            Location::Postgres(url) => Path::new(url.as_str()),
        }
    }

    /// Which backend this is.
    fn dialect(&self) -> Dialect {
        match *self.location {
            Location::Sqlite(_) => Dialect::Sqlite,
            Location::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        self.dialect() == Dialect::Postgres
    }

    /// Chooses how far committed versions survive; see [`Durability`].
    /// PostgreSQL keeps both promises already.
    pub fn set_durability(&self, durability: Durability) -> Result<()> {
        let level = match durability {
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        };
        self.with(|s| match s.conn.dialect() {
            Dialect::Sqlite => s.conn.batch(&format!("PRAGMA synchronous = {level}")),
            Dialect::Postgres => Ok(()),
        })
    }

    /// Runs `f` on the connection, turning the backend's errors into
    /// one-line errors that name the database.
    fn with<T>(&self, f: impl FnOnce(&mut Shared) -> Result<T>) -> Result<T> {
        let mut guard = lock(&self.shared);
        let shared = &mut *guard;
        f(shared).map_err(|e| shared.conn.explain(&shared.name, e))
    }

    /// Stores `bytes` as a module (once: storing it again is free) and
    /// returns its content hash.
    pub fn put_module(&self, bytes: &[u8]) -> Result<ModuleHash> {
        let hash = *blake3::hash(bytes).as_bytes();
        self.with(|s| {
            s.conn.execute(
                "INSERT INTO modules (hash, bytes, created) VALUES (?1, ?2, ?3)
                 ON CONFLICT (hash) DO NOTHING",
                params![&hash, bytes, now_ms()],
            )?;
            Ok(hash)
        })?;
        Ok(hash)
    }

    /// Every stored module, oldest first.
    pub fn modules(&self) -> Result<Vec<ModuleInfo>> {
        self.with(|s| {
            s.conn
                .query(
                    "SELECT hash, length(bytes), created FROM modules ORDER BY created, hash",
                    &[],
                )?
                .into_iter()
                .map(|mut r| {
                    Ok(ModuleInfo {
                        hash: r.get(0)?,
                        bytes: r.get(1)?,
                        created_ms: r.get(2)?,
                    })
                })
                .collect()
        })
    }

    /// The original bytes of the module with content hash `hash`.
    pub fn module(&self, hash: &ModuleHash) -> Result<Vec<u8>> {
        self.with(|s| {
            let bytes: Option<Vec<u8>> = match s
                .conn
                .query_opt("SELECT bytes FROM modules WHERE hash = ?1", params![hash])?
            {
                Some(mut row) => Some(row.get(0)?),
                None => None,
            };
            bytes.with_context(|| format!("module {} not found", hex(hash)))
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
            let mut tx = s.conn.transaction(Begin::Write)?;
            require_module(&mut *tx, module_hash)?;
            let id: InstanceId = tx.query_value(
                "INSERT INTO instances (module_hash, state, created, args, policy)
                 VALUES (?1, 'created', ?2, ?3, ?4) RETURNING id",
                params![module_hash, now_ms(), &w.buf, &policy],
            )?;
            tx.commit()?;
            Ok(id)
        })
    }

    /// Takes the lease on `instance`: only its holder can commit versions.
    /// Fails with "instance N is busy" while another holder (another
    /// process, another lease in this one, or on PostgreSQL a worker whose
    /// lease has not expired) has it; a lease whose holder died is taken
    /// over (see [`Lease`]).
    pub fn lease(&self, instance: InstanceId) -> Result<Lease> {
        lease::acquire(self, instance)
    }

    /// Takes the lease on an instance in `state` that no one holds, the
    /// one with the lowest id; `None` when every such instance is held (or
    /// there is none). This is how workers sharing a database share out
    /// instances to run: on PostgreSQL, workers asking at the same time
    /// skip each other's locked rows and get different instances without
    /// waiting for each other.
    pub fn lease_any(&self, state: InstanceState) -> Result<Option<Lease>> {
        lease::acquire_any(self, state)
    }

    /// How long a lease on PostgreSQL lasts unless its holder renews it
    /// (which it does while it lives, every third of that): how long a
    /// worker that died holds on to its instances. 30 s by default.
    pub fn set_lease_ttl(&self, ttl: Duration) {
        lock(&self.shared).lease_ttl = ttl.max(Duration::from_millis(30));
    }

    /// One instance.
    pub fn instance(&self, id: InstanceId) -> Result<InstanceInfo> {
        self.with(|s| {
            let sql = format!("{} WHERE i.id = ?1", instance_query(s.conn.dialect(), None));
            match s.conn.query_opt(&sql, params![id])? {
                Some(row) => read_instance(row, None, s.conn.dialect()),
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
            let dialect = s.conn.dialect();
            let sql = format!("{} ORDER BY i.id", instance_query(dialect, limit));
            s.conn
                .query(&sql, &[])?
                .into_iter()
                .map(|row| read_instance(row, limit, dialect))
                .collect()
        })
    }

    /// Deletes an instance and all its versions. Fails with "instance N is
    /// busy" while a lease on it is held.
    pub fn remove_instance(&self, id: InstanceId) -> Result<RemoveReport> {
        self.with(|s| {
            let mut tx = s.conn.transaction(Begin::Write)?;
            lease::check_free(&mut *tx, id)?;
            let mut row = tx.query_one(
                "SELECT count(*),
                        CAST(coalesce(sum(coalesce(length(state), 0) + length(value)
                                          + length(reply) + coalesce(length(message), 0)), 0)
                             AS BIGINT),
                        (SELECT count(*) FROM version_pages
                          WHERE version IN (SELECT id FROM versions WHERE instance = ?1))
                 FROM versions WHERE instance = ?1",
                params![id],
            )?;
            let report = RemoveReport {
                versions: row.get(0)?,
                bytes: row.get(1)?,
                page_refs: row.get(2)?,
            };
            tx.execute(
                "DELETE FROM version_pages
                 WHERE version IN (SELECT id FROM versions WHERE instance = ?1)",
                params![id],
            )?;
            tx.execute("DELETE FROM versions WHERE instance = ?1", params![id])?;
            tx.execute("DELETE FROM instances WHERE id = ?1", params![id])?;
            tx.commit()?;
            Ok(report)
        })
    }

    /// Deletes the pages no version refers to, and returns the space to the
    /// file system (SQLite; PostgreSQL's autovacuum reuses it).
    pub fn gc(&self) -> Result<GcReport> {
        self.with(|s| {
            let mut tx = s.conn.transaction(Begin::Write)?;
            pages::exclude_commits(&mut *tx)?;
            // Every page a version holds is in its own rows or in those of
            // an ancestor down to a full list, so the pages named in no
            // row are held by no version. (`NULL`, a page that became
            // zeros, must not reach NOT IN, which it would make unknown.)
            let unused = "FROM pages
                          WHERE id NOT IN (SELECT page FROM version_pages WHERE page IS NOT NULL)";
            let mut row = tx.query_one(
                &format!(
                    "SELECT count(*), CAST(coalesce(sum(length(data)), 0) AS BIGINT) {unused}"
                ),
                &[],
            )?;
            let report = GcReport {
                pages: row.get(0)?,
                bytes: row.get(1)?,
            };
            tx.execute(&format!("DELETE {unused}"), &[])?;
            tx.commit()?;
            if s.conn.dialect() == Dialect::Sqlite {
                s.conn.batch("PRAGMA incremental_vacuum")?;
            }
            Ok(report)
        })
    }

    /// Counts of what the database holds.
    pub fn stats(&self) -> Result<Stats> {
        self.with(|s| {
            let mut row = s.conn.query_one(
                "SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM versions),
                        (SELECT count(*) FROM pages),
                        (SELECT CAST(coalesce(sum(length(data)), 0) AS BIGINT) FROM pages),
                        (SELECT count(*) FROM version_pages)",
                &[],
            )?;
            Ok(Stats {
                instances: row.get(0)?,
                versions: row.get(1)?,
                pages: row.get(2)?,
                page_bytes: row.get(3)?,
                page_refs: row.get(4)?,
            })
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

/// A connection to the database at `location`: for SQLite, writable (and
/// created if need be) or read-only; errors name the database.
fn connect(location: &Location, writable: bool) -> Result<Box<dyn Connection>> {
    let name = location.name();
    Ok(match location {
        Location::Sqlite(path) => {
            Box::new(sqlite::Sqlite::open(path, writable).map_err(|e| sqlite::explain(&name, e))?)
        }
        Location::Postgres(url) => {
            Box::new(postgres::Postgres::connect(url).map_err(|e| postgres::explain(&name, e))?)
        }
    })
}

/// The instances with the values of their heads (only their start, with a
/// limit), whether their leases are held (by the database's clock), their
/// timers and whether a request is pending.
fn instance_query(dialect: Dialect, limit: Option<usize>) -> String {
    format!(
        "SELECT i.id, i.module_hash, i.state, i.head, i.created, i.args, i.policy,
                i.lease_pid, i.lease_owner, i.lease_expires, {now},
                v.id, {value}, length(v.value), v.value_zstd, v.wake_at, v.timer,
                CASE WHEN EXISTS (SELECT 1 FROM requests r WHERE r.instance = i.id)
                     THEN 1 ELSE 0 END
         FROM instances i LEFT JOIN versions v ON v.instance = i.id AND v.number = i.head",
        now = dialect.now_ms(),
        value = values::column("v.value", limit)
    )
}

fn read_instance(mut row: Row, limit: Option<usize>, dialect: Dialect) -> Result<InstanceInfo> {
    let id: InstanceId = row.get(0)?;
    let args: Vec<u8> = row.get(5)?;
    let head_row: Option<i64> = row.get(11)?;
    let (last_value, last_value_len) = match head_row {
        Some(_) => {
            let (value, len) = values::read(&mut row, 12, limit).map_err(|e| {
                anyhow::anyhow!("the value of instance {id}'s head is corrupt: {e}")
            })?;
            (Some(value), Some(len))
        }
        None => (None, None),
    };
    let wake_at: Option<u64> = row.get(15)?;
    let timer: Option<String> = row.get(16)?;
    let pending: bool = row.get(17)?;
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
    let policy = policy::decode(&row.get::<Vec<u8>>(6)?)
        .map_err(|e| anyhow::anyhow!("the policy of instance {id} is corrupt: {e}"))?;
    let holder = lease::Holder {
        pid: row.get(7)?,
        owner: row.get(8)?,
        expires: row.get(9)?,
    };
    let now: i64 = row.get(10)?;
    Ok(InstanceInfo {
        id,
        module_hash: row.get(1)?,
        state: InstanceState::parse(&row.get::<String>(2)?)?,
        head: row.get(3)?,
        last_value,
        last_value_len,
        created_ms: row.get(4)?,
        args,
        policy,
        leased_by: holder.live_pid(now, dialect),
        timer,
        pending,
    })
}

fn require_module(conn: &mut dyn Connection, hash: &ModuleHash) -> Result<()> {
    if !conn.exists("SELECT 1 FROM modules WHERE hash = ?1", params![hash])? {
        bail!("module {} not found", hex(hash));
    }
    Ok(())
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
