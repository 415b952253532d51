//! Versions: committing one in a single transaction, loading one back, and
//! listing an instance's tree.

use std::sync::Arc;

use anyhow::{Result, bail};

use super::history::{Origin, Provenance};
use super::pages::ListShape;
use super::sql::{Begin, Connection, Row as SqlRow, params};
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
pub(super) struct Row<'a> {
    kind: VersionKind,
    value: &'a [u8],
    state: Option<Vec<u8>>,
    memory_bytes: u64,
    exit_status: Option<i32>,
    message: Option<&'a str>,
}

impl<'a> Row<'a> {
    pub(super) fn of(outcome: &Outcome<'a>) -> Result<Self> {
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
            instance: lease.instance,
            parent,
            outcome,
            reply,
            provenance,
            timer: None,
            stamp: None,
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
            Outcome::Suspended(s) => {
                pages::precompress(&s.memories)?;
                Owned::Suspended(Box::new(s.clone()))
            }
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
            woken: false,
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
                page_caches,
                ..
            } = shared;
            let instance = lease.instance;
            let mut page_cache = page_caches.take(instance);
            // The parent's list is read (or found cached) before the
            // transaction begins, so that the write lock is held briefly.
            let plan = plan_against_parent(
                &mut **conn,
                &mut page_cache,
                instance,
                version.parent,
                outcome,
            )?;
            let hook = hook_of(*commit_hook);
            let mut tx = conn.transaction(Begin::Write)?;
            hook("begin");
            let written = insert_planned(
                &mut *tx,
                compressor,
                &page_cache,
                lease,
                version,
                &plan,
                &hook,
            )?;
            hook("before-commit");
            tx.commit()?;
            written.update_cache(&mut page_cache, instance, &plan);
            page_caches.put(page_cache);
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
        let location = (*self.location).clone();
        self.with(|s| {
            // One read transaction: a concurrent `rm` or `gc` cannot pull
            // pages out from under the load.
            let mut tx = s.conn.transaction(Begin::Read)?;
            let Found {
                kind, state, value, ..
            } = find_version(&mut *tx, instance, version)?;
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
            let (list, shape) = pages::read_list(&mut *tx, instance, version).map_err(corrupt)?;
            // Reading pages later takes a connection of their own, which
            // costs about what reading a few dozen pages now does.
            if lazily && list.len() > pages::READ_AT_ONCE {
                let source = Arc::new(pages::LazyPages::new(location, instance, version, &list));
                pages::load_lazily(&list, &source, &mut snapshot.memories).map_err(corrupt)?;
            } else {
                pages::load(&mut *tx, &list, &mut snapshot.memories).map_err(corrupt)?;
            }
            tx.commit()?;
            // Each page was checked against its name (so its size) as it was
            // read, or will be when first used: the list's layout is what is
            // left to check.
            for m in &snapshot.memories {
                file::check_layout(m).map_err(corrupt)?;
            }
            // A commit resumed from this version will find most of these
            // pages unchanged, shared with the restored workflow.
            let loaded = pages::loaded_pages(&snapshot.memories);
            let mut page_cache = s.page_caches.take(instance);
            page_cache.settle(instance, version, shape, &list, Some(loaded));
            s.page_caches.put(page_cache);
            Ok(snapshot)
        })
    }

    /// One version of an instance.
    pub fn version(&self, instance: InstanceId, version: u32) -> Result<VersionInfo> {
        self.with(|s| {
            let sql = format!(
                "{} WHERE instance = ?1 AND number = ?2",
                version_query(None)
            );
            match s.conn.query_opt(&sql, params![instance, version])? {
                Some(row) => read_info(row, None),
                None => {
                    require_instance(&mut *s.conn, instance)?;
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
            require_instance(&mut *s.conn, instance)?;
            let sql = format!(
                "{} WHERE instance = ?1 ORDER BY number",
                version_query(limit)
            );
            s.conn
                .query(&sql, params![instance])?
                .into_iter()
                .map(|row| read_info(row, limit))
                .collect()
        })
    }
}

/// A version about to be written.
pub(super) struct NewVersion<'a> {
    pub instance: InstanceId,
    pub parent: Option<u32>,
    pub outcome: &'a Outcome<'a>,
    pub reply: &'a [u8],
    /// How it came to be.
    pub provenance: &'a Provenance<'a>,
    /// A suspension's timer; `None` for an update or an upgrade inherits
    /// its parent's.
    pub timer: Option<Timer>,
    /// What the version recorded in the database it is copied from; `None`
    /// for a new version.
    pub stamp: Option<&'a VersionInfo>,
}

/// Writes a version, its pages, its page list and the instance's new head,
/// inside the caller's transaction; `plan` is the snapshot's pages against
/// the parent's list, which `cache` holds. Returns the version's number, the
/// row ids of the plan's named pages, and the shape its list was stored in.
pub(super) fn write(
    tx: &mut dyn Connection,
    compressor: &mut zstd::bulk::Compressor<'static>,
    cache: &pages::PageCache,
    plan: &pages::Plan,
    new: &NewVersion,
    hook: &dyn Fn(&str),
) -> Result<Written> {
    let instance = new.instance;
    let row = Row::of(new.outcome)?;
    check_parent(tx, instance, new.parent)?;
    let origin = new.provenance.origin;
    let module = module_of(tx, instance, new.parent, new.outcome, origin)?;
    let (page_ids, page_bytes) = pages::store_missing(tx, compressor, &plan.named)?;
    hook("pages");
    let changes = plan.changes(&page_ids);
    let parent_shape = new.parent.map(|_| cache.shape());
    let shape = pages::choose_shape(parent_shape, plan.pages, changes.len());
    let rows = match shape.depth {
        0 => cache.full_rows(plan, &page_ids),
        _ => changes,
    };
    let number = next_number(tx, instance)?;
    let value = values::pack(compressor, row.value)?;
    let reply = values::pack(compressor, new.reply)?;
    let (created, stored) = match new.stamp {
        Some(info) if info.number != number => bail!(
            "version {} of instance {instance} would be version {number} here",
            info.number
        ),
        Some(info) => (info.created_ms, info.stored_bytes),
        None => (now_ms(), page_bytes + row.own_bytes(&value.0, &reply.0)),
    };
    // An update or an upgrade leaves the workflow waiting in the call its
    // parent waits in: with the parent's timer, unless given one. A copy
    // keeps the timer it had.
    let inherits = matches!(origin, Origin::Update | Origin::Upgrade);
    let timer = match (new.stamp, row.kind, new.timer, new.parent) {
        (Some(info), ..) => info.timer,
        (None, VersionKind::Suspended, Some(timer), _) => Some(timer),
        (None, VersionKind::Suspended, None, Some(parent)) if inherits => {
            timer_of(tx, instance, parent)?
        }
        _ => None,
    };
    let timer_kind = timer.map(|t| match t {
        Timer::Sleep { .. } => "sleep",
        Timer::Deadline { .. } => "deadline",
    });
    let id = tx.query_value::<i64>(
        "INSERT INTO versions (instance, number, parent, kind, value, value_zstd, reply,
                               reply_zstd, created, memory_bytes, stored_bytes, state,
                               exit_status, message, list_depth, list_chain_rows, origin,
                               handler, result, inputs, module_hash, wake_at, timer, woken)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20, ?21, ?22, ?23, ?24)
         RETURNING id",
        params![
            instance,
            number,
            new.parent,
            row.kind.as_str(),
            &*value.0,
            value.1,
            &*reply.0,
            reply.1,
            created,
            row.memory_bytes,
            stored,
            row.state.as_ref(),
            row.exit_status,
            row.message,
            shape.depth,
            shape.chain_rows,
            origin.stored().0,
            new.provenance.handler,
            new.provenance.result,
            new.provenance.inputs,
            &module,
            timer.map(Timer::wake_at),
            timer_kind,
            i64::from(origin.stored().1),
        ],
    )?;
    pages::write_list(tx, id, &rows)?;
    hook("version");
    tx.execute(
        "UPDATE instances SET head = ?2, state = ?3, module_hash = ?4, wake_at = ?5 WHERE id = ?1",
        params![
            instance,
            number,
            row.kind.as_str(),
            &module,
            timer.map(Timer::wake_at)
        ],
    )?;
    Ok(Written {
        number,
        shape,
        page_ids,
    })
}

/// The columns [`read_info`] reads; with a limit, only the start of each
/// value and reply.
fn version_query(limit: Option<usize>) -> String {
    format!(
        "SELECT number, parent, kind, {}, length(value), value_zstd, {}, length(reply), reply_zstd,
                created, memory_bytes, stored_bytes, exit_status, message, origin, handler,
                module_hash, wake_at, timer, woken
         FROM versions",
        values::column("value", limit),
        values::column("reply", limit)
    )
}

fn read_info(mut r: SqlRow, limit: Option<usize>) -> Result<VersionInfo> {
    let (value, value_len) = values::read(&mut r, 3, limit)?;
    let (reply, reply_len) = values::read(&mut r, 6, limit)?;
    Ok(VersionInfo {
        number: r.get(0)?,
        parent: r.get(1)?,
        kind: VersionKind::parse(&r.get::<String>(2)?)?,
        value,
        value_len,
        reply,
        reply_len,
        created_ms: r.get(9)?,
        memory_bytes: r.get(10)?,
        stored_bytes: r.get(11)?,
        exit_status: r.get(12)?,
        message: r.get(13)?,
        origin: Origin::from_stored(&r.get::<String>(14)?, r.get(19)?)?,
        handler: r.get(15)?,
        module_hash: r.get(16)?,
        timer: read_timer(&mut r, 17)?,
    })
}

/// The timer in columns `wake_at` (at `first`) and `timer` (after it).
fn read_timer(r: &mut SqlRow, first: usize) -> Result<Option<Timer>> {
    let wake_at: Option<u64> = r.get(first)?;
    let kind: Option<String> = r.get(first + 1)?;
    Ok(match (wake_at, kind.as_deref()) {
        (Some(wake_at), Some("sleep")) => Some(Timer::Sleep { wake_at }),
        (Some(wake_at), Some("deadline")) => Some(Timer::Deadline { wake_at }),
        (None, None) => None,
        (_, other) => bail!("a version has an unknown timer {other:?}"),
    })
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
    woken: bool,
}

impl Prepared {
    /// Records that the run was continued by the parent's timer firing
    /// rather than by a reply ([`Origin::Wake`]): a replay must fire it
    /// again, since a timed-out question and an empty reply differ.
    pub fn set_woken(&mut self, woken: bool) {
        self.woken = woken;
    }

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
            origin: if self.woken {
                Origin::Wake
            } else {
                Origin::Run
            },
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
            instance: self.instance,
            parent: self.parent,
            outcome,
            reply: &self.reply,
            provenance,
            timer: self.timer,
            stamp: None,
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

impl Written {
    /// Makes `cache` the list of this version of `instance`, written as
    /// `plan`. Called only once the transaction that wrote the version has
    /// committed, so that the cache never holds a list that was rolled back.
    pub(super) fn update_cache(
        &self,
        cache: &mut pages::PageCache,
        instance: InstanceId,
        plan: &pages::Plan,
    ) {
        cache.commit(instance, self.number, self.shape, plan, &self.page_ids);
    }
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
    conn: &mut dyn Connection,
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
/// parent, inside a transaction, under `lease` (checked, and its row locked
/// until the transaction ends). The caller commits and then updates the
/// page cache with [`Written::update_cache`].
pub(super) fn insert_planned(
    tx: &mut dyn Connection,
    compressor: &mut zstd::bulk::Compressor<'static>,
    page_cache: &pages::PageCache,
    lease: &Lease,
    version: &NewVersion,
    plan: &pages::Plan,
    hook: &dyn Fn(&str),
) -> Result<Written> {
    if version.instance != lease.instance {
        bail!(
            "a version of instance {} cannot be committed under the lease on instance {}",
            version.instance,
            lease.instance
        );
    }
    lease::check_held(tx, lease)?;
    pages::exclude_gc(tx)?;
    write(tx, compressor, page_cache, plan, version, hook)
}

/// The timer of `version` of `instance`, if it has one.
fn timer_of(
    conn: &mut dyn Connection,
    instance: InstanceId,
    version: u32,
) -> Result<Option<Timer>> {
    let mut row = conn.query_one(
        "SELECT wake_at, timer FROM versions WHERE instance = ?1 AND number = ?2",
        params![instance, version],
    )?;
    read_timer(&mut row, 0)
}

fn require_instance(conn: &mut dyn Connection, instance: InstanceId) -> Result<()> {
    if !conn.exists("SELECT 1 FROM instances WHERE id = ?1", params![instance])? {
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

fn find_version(conn: &mut dyn Connection, instance: InstanceId, version: u32) -> Result<Found> {
    let row = conn.query_opt(
        "SELECT kind, state, value, length(value), value_zstd FROM versions
         WHERE instance = ?1 AND number = ?2",
        params![instance, version],
    )?;
    match row {
        Some(mut r) => Ok(Found {
            value: values::read(&mut r, 2, None).map(|(value, _)| value),
            kind: VersionKind::parse(&r.get::<String>(0)?)?,
            state: r.get(1)?,
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
    conn: &mut dyn Connection,
    instance: InstanceId,
    parent: Option<u32>,
    outcome: &Outcome,
    origin: Origin,
) -> Result<ModuleHash> {
    let ran: ModuleHash = match parent {
        Some(p) => conn.query_value(
            "SELECT coalesce(v.module_hash, i.module_hash)
             FROM versions v JOIN instances i ON i.id = v.instance
             WHERE v.instance = ?1 AND v.number = ?2",
            params![instance, p],
        )?,
        None => conn.query_value(
            "SELECT module_hash FROM instances WHERE id = ?1",
            params![instance],
        )?,
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

/// A run resumes a suspension of the same instance; only the first run of
/// an instance has no parent.
fn check_parent(
    conn: &mut dyn Connection,
    instance: InstanceId,
    parent: Option<u32>,
) -> Result<()> {
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
            let has_versions = conn.exists(
                "SELECT 1 FROM versions WHERE instance = ?1 LIMIT 1",
                params![instance],
            )?;
            if has_versions {
                bail!("instance {instance} has versions already: a new one needs a parent");
            }
        }
    }
    Ok(())
}

fn next_number(conn: &mut dyn Connection, instance: InstanceId) -> Result<u32> {
    let last: Option<u32> = conn.query_value(
        "SELECT max(number) FROM versions WHERE instance = ?1",
        params![instance],
    )?;
    match last.unwrap_or(0).checked_add(1) {
        Some(n) => Ok(n),
        None => bail!("instance {instance} has run out of version numbers"),
    }
}
