//! Versions: committing one in a single transaction, loading one back, and
//! listing an instance's tree.

use anyhow::{Result, bail};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Database, InstanceId, Lease, lease, now_ms, pages};
use crate::runtime::Timer;
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
    /// The value yielded (suspension) or the result (finished).
    pub value: Vec<u8>,
    /// The reply it was resumed from its parent with.
    pub reply: Vec<u8>,
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
    /// A suspension's timer: when a sleep wakes, or a question's deadline.
    pub timer: Option<Timer>,
}

/// A version ready to be committed: everything about it that needs no
/// database (its state encoded, its pages named, new ones compressed) is
/// done, so that it can be prepared on any thread and committed with
/// others in one transaction ([`Database::commit_batch`]).
pub struct Prepared {
    instance: InstanceId,
    parent: Option<u32>,
    kind: VersionKind,
    value: Vec<u8>,
    reply: Vec<u8>,
    state: Option<Vec<u8>>,
    module_hash: Option<crate::snapshot::ModuleHash>,
    memory_bytes: u64,
    exit_status: Option<i32>,
    message: Option<String>,
    timer: Option<Timer>,
    pages: Vec<pages::PreparedPage>,
}

impl Prepared {
    /// Gives the version a timer: when it wakes (a sleep) or times out (a
    /// question with a deadline). Only a suspension has one.
    pub fn set_timer(&mut self, timer: Option<Timer>) {
        if self.kind == VersionKind::Suspended {
            self.timer = timer;
        }
    }

    /// The instance the version belongs to.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    fn own_bytes(&self) -> u64 {
        let state = self.state.as_ref().map_or(0, Vec::len);
        let message = self.message.as_ref().map_or(0, String::len);
        (state + self.value.len() + self.reply.len() + message) as u64
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

impl Database {
    /// Prepares the outcome of a run of the leased instance as a version:
    /// `parent` is the version the run was resumed from (`None` only for
    /// an instance's first run) and `reply` what it was resumed with.
    pub fn prepare_version(
        &self,
        lease: &Lease,
        parent: Option<u32>,
        outcome: &Outcome,
        reply: &[u8],
    ) -> Result<Prepared> {
        let instance = lease.instance;
        let mut prepared = Prepared {
            instance,
            parent,
            kind: VersionKind::Failed,
            value: Vec::new(),
            reply: reply.to_vec(),
            state: None,
            module_hash: None,
            memory_bytes: 0,
            exit_status: None,
            message: None,
            timer: None,
            pages: Vec::new(),
        };
        match *outcome {
            Outcome::Suspended(s) => {
                prepared.kind = VersionKind::Suspended;
                prepared.value = s.host.yielded.clone();
                prepared.state = Some(file::encode_state(s)?);
                prepared.module_hash = Some(s.module_hash);
                prepared.memory_bytes = s
                    .memories
                    .iter()
                    .map(|m| m.page_count.saturating_mul(PAGE_SIZE as u64))
                    .fold(0, u64::saturating_add);
                prepared.pages = pages::prepare(&s.memories, instance, parent, &self.page_cache)?;
            }
            Outcome::Finished {
                exit_status,
                result,
            } => {
                prepared.kind = VersionKind::Finished;
                prepared.value = result.to_vec();
                prepared.exit_status = exit_status;
            }
            Outcome::Failed { message } => prepared.message = Some(message.to_string()),
        }
        Ok(prepared)
    }

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
        let prepared = self.prepare_version(lease, parent, outcome, reply)?;
        self.commit_prepared(lease, prepared)
    }

    /// Commits one prepared version under `lease`, which stays held.
    pub fn commit_prepared(&self, lease: &Lease, prepared: Prepared) -> Result<u32> {
        let (number, ids) = self.with(|shared| {
            let hook = hook_of(shared.commit_hook);
            let tx = shared
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            hook("begin");
            let committed = insert_prepared(&tx, lease, &prepared, false, &hook)?;
            hook("before-commit");
            tx.commit()?;
            Ok(committed)
        })?;
        self.settle_committed(&prepared, number, &ids);
        Ok(number)
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

    /// After a commit: the pages of the committed version are stored, and
    /// named for the next commit of its instance.
    pub(super) fn settle_committed(&self, version: &Prepared, number: u32, ids: &[i64]) {
        if version.kind != VersionKind::Suspended {
            return;
        }
        let pages = version
            .pages
            .iter()
            .map(|p| (p.memory, p.index, p.hash, &p.data));
        self.page_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .settle(version.instance, number, pages, ids);
    }

    /// The snapshot of a suspension version.
    pub fn load_version(&self, instance: InstanceId, version: u32) -> Result<Snapshot> {
        self.with(|s| {
            // One read transaction: a concurrent `rm` or `gc` cannot pull
            // pages out from under the load.
            let tx = s.conn.transaction()?;
            let (id, kind, state) = find_version(&tx, instance, version)?;
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
            let (names, ids) = pages::load(&tx, id, &mut snapshot.memories).map_err(corrupt)?;
            for m in &snapshot.memories {
                file::check_memory(m).map_err(corrupt)?;
            }
            // A commit resumed from this version will find most of these
            // pages unchanged, shared with the restored workflow.
            let loaded = (0u32..)
                .zip(&snapshot.memories)
                .flat_map(|(memory, m)| m.pages.iter().map(move |page| (memory, page)))
                .zip(names)
                .map(|((memory, page), hash)| (memory, page.index, hash, &page.data));
            self.page_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .settle(instance, version, loaded, &ids);
            Ok(snapshot)
        })
    }

    /// One version of an instance.
    pub fn version(&self, instance: InstanceId, version: u32) -> Result<VersionInfo> {
        self.with(|s| {
            let info = s
                .conn
                .prepare_cached(&format!(
                    "{VERSION_QUERY} WHERE instance = ?1 AND number = ?2"
                ))?
                .query_row(params![instance, version], read_info)
                .optional()?;
            match info {
                Some(info) => info,
                None => {
                    require_instance(&s.conn, instance)?;
                    Err(super::Refused::NotFound(format!(
                        "version {version} of instance {instance} not found"
                    ))
                    .into())
                }
            }
        })
    }

    /// Every version of an instance, by number (parents always come before
    /// their children), to draw its tree.
    pub fn versions(&self, instance: InstanceId) -> Result<Vec<VersionInfo>> {
        self.with(|s| {
            require_instance(&s.conn, instance)?;
            s.conn
                .prepare_cached(&format!(
                    "{VERSION_QUERY} WHERE instance = ?1 ORDER BY number"
                ))?
                .query_map([instance], read_info)?
                .map(|r| r.map_err(anyhow::Error::from).and_then(|info| info))
                .collect()
        })
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

/// Writes one prepared version inside a transaction: checks, pages,
/// version row, page references, the instance's head, and, with
/// `release`, the end of its pending request and of its lease. Returns the
/// version's number and its pages' row ids.
pub(super) fn insert_prepared(
    conn: &Connection,
    lease: &Lease,
    version: &Prepared,
    release: bool,
    hook: &dyn Fn(&str),
) -> Result<(u32, Vec<i64>)> {
    lease::check_held(conn, lease)?;
    let instance = lease.instance;
    if version.instance != instance {
        bail!(
            "a version of instance {} cannot be committed under the lease on instance {instance}",
            version.instance
        );
    }
    if let Some(module) = &version.module_hash {
        check_module(conn, instance, module)?;
    }
    check_parent(conn, instance, version.parent)?;
    let (page_ids, page_bytes) = pages::store_missing(conn, &version.pages)?;
    hook("pages");
    let number = next_number(conn, instance)?;
    let stored = page_bytes + version.own_bytes();
    let id = insert_version(conn, instance, number, version, stored)?;
    pages::reference(conn, id, &version.pages, &page_ids)?;
    hook("version");
    conn.prepare_cached("UPDATE instances SET head = ?2, state = ?3, wake_at = ?4 WHERE id = ?1")?
        .execute(params![
            instance,
            number,
            version.kind.as_str(),
            version.timer.map(Timer::wake_at)
        ])?;
    if release {
        super::work::finish_request(conn, lease)?;
    }
    Ok((number, page_ids))
}

const VERSION_QUERY: &str = "
    SELECT number, parent, kind, value, reply, created, memory_bytes, stored_bytes,
           exit_status, message, wake_at, timer
    FROM versions";

fn read_info(r: &rusqlite::Row) -> rusqlite::Result<Result<VersionInfo>> {
    let kind: String = r.get(2)?;
    let info = VersionInfo {
        number: r.get(0)?,
        parent: r.get(1)?,
        kind: VersionKind::Suspended,
        value: r.get(3)?,
        reply: r.get(4)?,
        created_ms: r.get(5)?,
        memory_bytes: r.get(6)?,
        stored_bytes: r.get(7)?,
        exit_status: r.get(8)?,
        message: r.get(9)?,
        timer: None,
    };
    let wake_at: Option<u64> = r.get(10)?;
    let timer_kind: Option<String> = r.get(11)?;
    let timer = match (wake_at, timer_kind.as_deref()) {
        (Some(wake_at), Some("sleep")) => Ok(Some(Timer::Sleep { wake_at })),
        (Some(wake_at), Some("deadline")) => Ok(Some(Timer::Deadline { wake_at })),
        (None, None) => Ok(None),
        (_, other) => Err(anyhow::anyhow!(
            "version {} has an unknown timer {other:?}",
            info.number
        )),
    };
    Ok(VersionKind::parse(&kind).and_then(|kind| {
        Ok(VersionInfo {
            kind,
            timer: timer?,
            ..info
        })
    }))
}

fn require_instance(conn: &Connection, instance: InstanceId) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM instances WHERE id = ?1")?
        .exists([instance])?;
    if !found {
        return Err(super::Refused::NotFound(format!("instance {instance} not found")).into());
    }
    Ok(())
}

/// The row id, kind and state blob of a version.
fn find_version(
    conn: &Connection,
    instance: InstanceId,
    version: u32,
) -> Result<(i64, VersionKind, Option<Vec<u8>>)> {
    let row: Option<(i64, String, Option<Vec<u8>>)> = conn
        .prepare_cached("SELECT id, kind, state FROM versions WHERE instance = ?1 AND number = ?2")?
        .query_row(params![instance, version], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    match row {
        Some((id, kind, state)) => Ok((id, VersionKind::parse(&kind)?, state)),
        None => {
            require_instance(conn, instance)?;
            bail!("version {version} of instance {instance} not found")
        }
    }
}

/// A snapshot must come from the module its instance runs.
fn check_module(
    conn: &Connection,
    instance: InstanceId,
    snapshot_module: &crate::snapshot::ModuleHash,
) -> Result<()> {
    let module: [u8; 32] = conn
        .prepare_cached("SELECT module_hash FROM instances WHERE id = ?1")?
        .query_row([instance], |r| r.get(0))?;
    if module != *snapshot_module {
        bail!(
            "the snapshot is of module {}, but instance {instance} runs module {}",
            super::hex(snapshot_module),
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
            let (_, kind, _) = find_version(conn, instance, p)?;
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
    version: &Prepared,
    stored_bytes: u64,
) -> Result<i64> {
    let timer_kind = version.timer.map(|t| match t {
        Timer::Sleep { .. } => "sleep",
        Timer::Deadline { .. } => "deadline",
    });
    conn.prepare_cached(
        "INSERT INTO versions (instance, number, parent, kind, value, reply, created,
                               memory_bytes, stored_bytes, state, exit_status, message,
                               wake_at, timer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        instance,
        number,
        version.parent,
        version.kind.as_str(),
        version.value,
        version.reply,
        now_ms(),
        version.memory_bytes,
        stored_bytes,
        version.state,
        version.exit_status,
        version.message,
        version.timer.map(Timer::wake_at),
        timer_kind,
    ])?;
    Ok(conn.last_insert_rowid())
}
