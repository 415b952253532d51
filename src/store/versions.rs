//! Versions: committing one in a single transaction, loading one back, and
//! listing an instance's tree.

use std::sync::Arc;

use anyhow::{Result, bail};
use rusqlite::{Connection, OptionalExtension, params};

use super::history::{Origin, Provenance};
use super::pages::ListShape;
use super::{Database, InstanceId, Lease, Shared, lease, now_ms, pages, values};
use crate::runtime::Timer;
use crate::snapshot::{ModuleHash, PAGE_SIZE, Snapshot, file};

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
    /// How it came to be: a run, a restored file, an update, an upgrade.
    pub origin: Origin,
    /// The update handler that made it, for an update.
    pub handler: Option<String>,
    /// The module it runs (an upgrade's differs from its parent's).
    pub module_hash: ModuleHash,
    /// A suspension's timer: when a sleep wakes, or a question's deadline.
    pub timer: Option<Timer>,
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
    /// first run) and `reply` what it was resumed with. Its inputs are not
    /// recorded; see [`Database::commit_version_from`].
    pub fn commit_version(
        &self,
        lease: &Lease,
        parent: Option<u32>,
        outcome: &Outcome,
        reply: &[u8],
    ) -> Result<u32> {
        self.commit_version_from(lease, parent, outcome, reply, &Provenance::UNRECORDED_RUN)
    }

    /// [`Database::commit_version`], saying how the version came to be and
    /// keeping what a replay of it needs. The version runs the module of
    /// its snapshot; a finished or failed one, its parent's. Only an
    /// upgrade may change module; the instance's module becomes the new
    /// head's.
    pub fn commit_version_from(
        &self,
        lease: &Lease,
        parent: Option<u32>,
        outcome: &Outcome,
        reply: &[u8],
        provenance: &Provenance,
    ) -> Result<u32> {
        let version = NewVersion {
            parent,
            outcome,
            reply,
            provenance,
            timer: None,
        };
        self.commit_new(lease, &version)
    }

    /// Prepares the outcome of a run of the leased instance as a version
    /// to commit later, alone ([`Database::commit_prepared`]) or with
    /// others in one transaction ([`Database::commit_batch`],
    /// [`Database::write_batch`]): `parent` is the version the run was
    /// resumed from (`None` only for an instance's first run), `reply` what
    /// it was resumed with, and `inputs` what it took from outside
    /// (encoded), if recorded.
    pub fn prepare_version(
        &self,
        lease: &Lease,
        parent: Option<u32>,
        outcome: &Outcome,
        reply: &[u8],
        inputs: Option<Vec<u8>>,
    ) -> Result<Prepared> {
        let outcome = match *outcome {
            Outcome::Suspended(s) => Owned::Suspended(Box::new(s.clone())),
            Outcome::Finished {
                exit_status,
                result,
            } => Owned::Finished {
                exit_status,
                result: result.to_vec(),
            },
            Outcome::Failed { message } => Owned::Failed {
                message: message.to_string(),
            },
        };
        Ok(Prepared {
            instance: lease.instance,
            parent,
            outcome,
            reply: reply.to_vec(),
            inputs,
            timer: None,
        })
    }

    /// Commits one prepared version under `lease`, which stays held.
    pub fn commit_prepared(&self, lease: &Lease, prepared: Prepared) -> Result<u32> {
        if prepared.instance != lease.instance {
            bail!(
                "a version of instance {} cannot be committed under the lease on instance {}",
                prepared.instance,
                lease.instance
            );
        }
        let outcome = prepared.outcome();
        let provenance = prepared.provenance();
        let version = prepared.as_new(&outcome, &provenance);
        self.commit_new(lease, &version)
    }

    /// Group commit: many prepared versions, of different instances, in one
    /// transaction (one write of the log, one lock), each under its lease.
    /// Each version succeeds or fails on its own, with the result
    /// [`Database::commit_version`] would give; a version that is
    /// committed also ends its instance's pending request, if any, and
    /// releases its lease, in the same transaction. See
    /// [`Database::write_batch`], which can also record requests and claim
    /// work in that transaction.
    pub fn commit_batch(&self, batch: Vec<Commit>) -> Vec<Result<u32>> {
        let count = batch.len();
        match self.write_batch(super::Batch {
            commits: batch,
            ..Default::default()
        }) {
            Ok(done) => done.commits,
            Err(e) => {
                let message = format!("{e:#}");
                (0..count)
                    .map(|_| Err(anyhow::anyhow!("{message}")))
                    .collect()
            }
        }
    }

    /// Commits `version` of the leased instance alone, in one transaction.
    fn commit_new(&self, lease: &Lease, version: &NewVersion) -> Result<u32> {
        let outcome = version.outcome;
        self.with(|shared| {
            let Shared {
                conn,
                commit_hook,
                compressor,
                page_cache,
                ..
            } = shared;
            let instance = lease.instance;
            // The parent's list is read (or found cached) before the
            // transaction begins, so that the write lock is held briefly.
            let plan = plan_against_parent(conn, page_cache, instance, version.parent, outcome)?;
            let hook = hook_of(*commit_hook);
            let tx = super::writing(conn)?;
            hook("begin");
            let written =
                insert_planned(&tx, compressor, page_cache, lease, version, &plan, &hook)?;
            hook("before-commit");
            tx.commit()?;
            page_cache.commit(
                instance,
                written.number,
                written.shape,
                &plan,
                &written.page_ids,
            );
            Ok(written.number)
        })
    }

    /// The snapshot of a suspension version, every page read and checked
    /// against its name.
    pub fn load_version(&self, instance: InstanceId, version: u32) -> Result<Snapshot> {
        self.load(instance, version, false)
    }

    /// The snapshot of a suspension version of the leased instance, whose
    /// pages are read from the database only when first used (their
    /// contents are checked then): restoring it into a workflow that
    /// touches ten pages of a large memory reads ten pages. The pages stay
    /// readable while the version exists, which the lease guarantees for
    /// as long as it is held. A version of a few non-zero pages is read at
    /// once, like [`Database::load_version`].
    pub fn load_version_lazily(&self, lease: &Lease, version: u32) -> Result<Snapshot> {
        self.load(lease.instance, version, true)
    }

    fn load(&self, instance: InstanceId, version: u32, lazily: bool) -> Result<Snapshot> {
        let path = self.path.clone();
        self.with(|s| {
            // One read transaction: a concurrent `rm` or `gc` cannot pull
            // pages out from under the load.
            let tx = s.conn.transaction()?;
            let Found { kind, state, value } = find_version(&tx, instance, version)?;
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
            let (list, shape) = pages::read_list(&tx, instance, version).map_err(corrupt)?;
            // Reading pages later takes a connection of their own, which
            // costs about what reading a few dozen pages now does.
            if lazily && list.len() > pages::READ_AT_ONCE {
                let source = Arc::new(pages::LazyPages::new(path, instance, version, &list));
                pages::load_lazily(&list, &source, &mut snapshot.memories).map_err(corrupt)?;
            } else {
                pages::load(&tx, &list, &mut snapshot.memories).map_err(corrupt)?;
            }
            for m in &snapshot.memories {
                file::check_memory(m).map_err(corrupt)?;
            }
            // A commit resumed from this version will find most of these
            // pages unchanged, shared with the restored workflow.
            let loaded = pages::loaded_pages(&snapshot.memories);
            s.page_cache
                .settle(instance, version, shape, &list, Some(loaded));
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
                created, memory_bytes, stored_bytes, exit_status, message, origin, handler,
                module_hash, wake_at, timer
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
    let origin: String = r.get(14)?;
    let handler = r.get(15)?;
    let module_hash = r.get(16)?;
    let wake_at: Option<u64> = r.get(17)?;
    let timer_kind: Option<String> = r.get(18)?;
    let (number, parent) = (r.get(0)?, r.get(1)?);
    Ok((|| {
        let timer = match (wake_at, timer_kind.as_deref()) {
            (Some(wake_at), Some("sleep")) => Some(Timer::Sleep { wake_at }),
            (Some(wake_at), Some("deadline")) => Some(Timer::Deadline { wake_at }),
            (None, None) => None,
            (_, other) => bail!("version {number} has an unknown timer {other:?}"),
        };
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
            origin: Origin::parse(&origin)?,
            handler,
            module_hash,
            timer,
        })
    })())
}

/// A version about to be written, borrowed from its caller.
pub(super) struct NewVersion<'a> {
    pub parent: Option<u32>,
    pub outcome: &'a Outcome<'a>,
    pub reply: &'a [u8],
    pub provenance: &'a Provenance<'a>,
    pub timer: Option<Timer>,
}

/// What a run ended with, owned, in a [`Prepared`] version.
enum Owned {
    Suspended(Box<Snapshot>),
    Finished {
        exit_status: Option<i32>,
        result: Vec<u8>,
    },
    Failed {
        message: String,
    },
}

/// A version ready to be committed, alone or with others in one
/// transaction ([`Database::commit_batch`]): the outcome of a run, what it
/// was resumed with, its inputs and its timer.
pub struct Prepared {
    instance: InstanceId,
    parent: Option<u32>,
    outcome: Owned,
    reply: Vec<u8>,
    inputs: Option<Vec<u8>>,
    timer: Option<Timer>,
}

impl Prepared {
    /// Gives the version a timer: when it wakes (a sleep) or times out (a
    /// question with a deadline). Only a suspension has one.
    pub fn set_timer(&mut self, timer: Option<Timer>) {
        if matches!(self.outcome, Owned::Suspended(_)) {
            self.timer = timer;
        }
    }

    /// The instance the version belongs to.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    fn outcome(&self) -> Outcome<'_> {
        match &self.outcome {
            Owned::Suspended(s) => Outcome::Suspended(s),
            Owned::Finished {
                exit_status,
                result,
            } => Outcome::Finished {
                exit_status: *exit_status,
                result,
            },
            Owned::Failed { message } => Outcome::Failed { message },
        }
    }

    fn provenance(&self) -> Provenance<'_> {
        Provenance {
            inputs: self.inputs.as_deref(),
            ..Provenance::UNRECORDED_RUN
        }
    }

    /// The version to write, given its [`Prepared::outcome`] and
    /// [`Prepared::provenance`].
    pub(super) fn as_new<'a>(
        &'a self,
        outcome: &'a Outcome<'a>,
        provenance: &'a Provenance<'a>,
    ) -> NewVersion<'a> {
        NewVersion {
            parent: self.parent,
            outcome,
            reply: &self.reply,
            provenance,
            timer: self.timer,
        }
    }

    /// The outcome and provenance to write, for [`Prepared::as_new`].
    pub(super) fn parts(&self) -> (Outcome<'_>, Provenance<'_>) {
        (self.outcome(), self.provenance())
    }
}

/// One version of a group commit, with the lease it is committed under.
pub struct Commit {
    /// The lease on the version's instance; it is released in the same
    /// transaction when the commit succeeds.
    pub lease: Lease,
    /// The version.
    pub prepared: Prepared,
}

/// A version written inside a transaction, and what the page cache needs
/// once that transaction has committed.
pub(super) struct Written {
    pub number: u32,
    pub shape: ListShape,
    pub page_ids: Vec<i64>,
}

/// Calls the commit hook, if one is set, at a named point.
pub(super) fn hook_of(hook: Option<fn(&str)>) -> impl Fn(&str) {
    move |stage: &str| {
        if let Some(h) = hook {
            h(stage)
        }
    }
}

/// Compares the pages of `outcome` with the list of `parent` (cached when
/// it was the last version committed or loaded through this handle, else
/// read now and cached).
pub(super) fn plan_against_parent<'a>(
    conn: &Connection,
    page_cache: &mut pages::PageCache,
    instance: InstanceId,
    parent: Option<u32>,
    outcome: &'a Outcome<'a>,
) -> Result<pages::Plan<'a>> {
    let memories = match outcome {
        Outcome::Suspended(s) => &s.memories[..],
        _ => &[],
    };
    if let Some(parent) = parent
        && !page_cache.holds(instance, parent)
    {
        let (list, shape) = pages::read_list(conn, instance, parent)?;
        page_cache.settle(instance, parent, shape, &list, None);
    }
    pages::plan(memories, parent.map(|_| &*page_cache))
}

/// Writes `version`, planned as `plan` against the cached list of its
/// parent, inside a transaction: checks, pages, version row, page list,
/// provenance and the instance's head. The caller commits and then updates
/// the page cache with what this returns.
pub(super) fn insert_planned(
    tx: &Connection,
    compressor: &mut zstd::bulk::Compressor<'static>,
    page_cache: &pages::PageCache,
    lease: &Lease,
    version: &NewVersion,
    plan: &pages::Plan,
    hook: &dyn Fn(&str),
) -> Result<Written> {
    let instance = lease.instance;
    let parent = version.parent;
    let row = Row::of(version.outcome)?;
    lease::check_held(tx, lease)?;
    check_parent(tx, instance, parent)?;
    let module = module_of(
        tx,
        instance,
        parent,
        version.outcome,
        version.provenance.origin,
    )?;
    let (page_ids, page_bytes) = pages::store_missing(tx, compressor, &plan.named)?;
    hook("pages");
    let changes = plan.changes(&page_ids);
    let parent_shape = parent.map(|_| page_cache.shape());
    let shape = pages::choose_shape(parent_shape, plan.pages, changes.len());
    let rows = match shape.depth {
        0 => page_cache.full_rows(plan, &page_ids),
        _ => changes,
    };
    let number = next_number(tx, instance)?;
    let value = values::pack(compressor, row.value)?;
    let reply = values::pack(compressor, version.reply)?;
    let stored = page_bytes + row.own_bytes(&value.0, &reply.0);
    // An update or an upgrade leaves the workflow waiting in the call its
    // parent waits in: with the parent's timer, unless given one.
    let inherits = matches!(version.provenance.origin, Origin::Update | Origin::Upgrade);
    let timer = match (row.kind, version.timer, parent) {
        (VersionKind::Suspended, Some(timer), _) => Some(timer),
        (VersionKind::Suspended, None, Some(parent)) if inherits => timer_of(tx, instance, parent)?,
        _ => None,
    };
    let id = insert_version(
        tx,
        instance,
        number,
        parent,
        &row,
        (&value, &reply),
        stored,
        shape,
        timer,
    )?;
    record_provenance(tx, id, version.provenance, &module)?;
    pages::write_list(tx, id, &rows)?;
    hook("version");
    tx.prepare_cached(
        "UPDATE instances SET head = ?2, state = ?3, module_hash = ?4, wake_at = ?5 WHERE id = ?1",
    )?
    .execute(params![
        instance,
        number,
        row.kind.as_str(),
        module,
        timer.map(Timer::wake_at)
    ])?;
    Ok(Written {
        number,
        shape,
        page_ids,
    })
}

/// The timer of `version` of `instance`, if it has one.
fn timer_of(conn: &Connection, instance: InstanceId, version: u32) -> Result<Option<Timer>> {
    let (wake_at, kind): (Option<u64>, Option<String>) = conn
        .prepare_cached("SELECT wake_at, timer FROM versions WHERE instance = ?1 AND number = ?2")?
        .query_row(params![instance, version], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(match (wake_at, kind.as_deref()) {
        (Some(wake_at), Some("deadline")) => Some(Timer::Deadline { wake_at }),
        (Some(wake_at), _) => Some(Timer::Sleep { wake_at }),
        _ => None,
    })
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
    kind: VersionKind,
    /// The state blob of a suspension.
    state: Option<Vec<u8>>,
    /// Its value, or why it cannot be read.
    value: Result<Vec<u8>>,
}

fn find_version(conn: &Connection, instance: InstanceId, version: u32) -> Result<Found> {
    let row = conn
        .prepare_cached(
            "SELECT kind, state, value, length(value), value_zstd FROM versions
             WHERE instance = ?1 AND number = ?2",
        )?
        .query_row(params![instance, version], |r| {
            let value = values::read(r, 2, None)?.map(|(value, _)| value);
            Ok((r.get::<_, String>(0)?, r.get(1)?, value))
        })
        .optional()?;
    match row {
        Some((kind, state, value)) => Ok(Found {
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

/// The module a new version runs: its snapshot's. A version runs its
/// parent's module (the first one, its instance's), unless it is an
/// upgrade, which moves to its snapshot's; an end of a run has no
/// snapshot and runs the module that ran.
fn module_of(
    conn: &Connection,
    instance: InstanceId,
    parent: Option<u32>,
    outcome: &Outcome,
    origin: Origin,
) -> Result<ModuleHash> {
    let ran: ModuleHash = match parent {
        Some(p) => conn
            .prepare_cached(
                "SELECT coalesce(v.module_hash, i.module_hash)
                 FROM versions v JOIN instances i ON i.id = v.instance
                 WHERE v.instance = ?1 AND v.number = ?2",
            )?
            .query_row(params![instance, p], |r| r.get(0))?,
        None => conn
            .prepare_cached("SELECT module_hash FROM instances WHERE id = ?1")?
            .query_row([instance], |r| r.get(0))?,
    };
    let Outcome::Suspended(s) = outcome else {
        return Ok(ran);
    };
    if s.module_hash != ran && origin != Origin::Upgrade {
        bail!(
            "the snapshot is of module {}, but {} of instance {instance} runs module {}",
            super::hex(&s.module_hash),
            parent.map_or("the first version".to_string(), |p| format!("version {p}")),
            super::hex(&ran)
        );
    }
    Ok(s.module_hash)
}

/// Writes how version row `id` came to be, and its module.
fn record_provenance(
    conn: &Connection,
    id: i64,
    provenance: &Provenance,
    module: &ModuleHash,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE versions SET origin = ?2, handler = ?3, result = ?4, inputs = ?5, module_hash = ?6
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        provenance.origin.as_str(),
        provenance.handler,
        provenance.result,
        provenance.inputs,
        module
    ])?;
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

#[allow(clippy::too_many_arguments)]
fn insert_version(
    conn: &Connection,
    instance: InstanceId,
    number: u32,
    parent: Option<u32>,
    row: &Row,
    (value, reply): (&values::Packed, &values::Packed),
    stored_bytes: u64,
    list: ListShape,
    timer: Option<Timer>,
) -> Result<i64> {
    let timer_kind = timer.map(|t| match t {
        Timer::Sleep { .. } => "sleep",
        Timer::Deadline { .. } => "deadline",
    });
    conn.prepare_cached(
        "INSERT INTO versions (instance, number, parent, kind, value, value_zstd, reply,
                               reply_zstd, created, memory_bytes, stored_bytes, state,
                               exit_status, message, list_depth, list_chain_rows, wake_at, timer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
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
        list.depth,
        list.chain_rows,
        timer.map(Timer::wake_at),
        timer_kind,
    ])?;
    Ok(conn.last_insert_rowid())
}
