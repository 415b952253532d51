//! Work for a service: requests to run an instance, timers that fall due,
//! and claiming both under leases that expire.
//!
//! The contract, which both backends keep (SQLite serialises claims with
//! its write lock; PostgreSQL claims with `SELECT ... FOR UPDATE SKIP
//! LOCKED`, so that servers claiming at once take different instances
//! without waiting for each other):
//!
//! 1. **Request.** [`Database::request`] records a run to do: an
//!    instance's first run, a reply to a version, or a wake-up of a version
//!    with a timer. An instance has at most one pending request. The
//!    transaction that records it checks that it may run: the instance is
//!    not busy (no pending request, no live lease), the version is a
//!    suspension, it has no child unless a branch is asked for, and a
//!    sleep is due unless it is woken early. A refusal is a [`Refused`].
//! 2. **Runnable.** An instance is runnable when it has a pending request,
//!    or when its head version's timer is due (`instances.wake_at <= now`:
//!    a sleep wakes, a question's deadline passes) and no request is
//!    pending; and its lease is free: none, or it expired (by the
//!    database's clock), or (SQLite) its holder died.
//! 3. **Claim.** [`Database::claim`] leases up to `limit` runnable
//!    instances in one transaction, the longest-waiting first, each lease
//!    expiring `ttl` from now, and says what to run for each ([`Claim`]).
//!    A claimed instance is not runnable for anyone else until its lease is
//!    released or lost, so nothing runs twice at once.
//! 4. **Renew.** A holder renews the leases of its runs in progress
//!    ([`Database::renew`]) well before they expire; one that stops (it
//!    hung, or its machine died) loses them, and the work is claimed again.
//! 5. **Finish.** The version a run commits ends the request and releases
//!    the lease in the same transaction ([`Database::commit_batch`]), so a
//!    crash at any point either leaves the request to be claimed again or
//!    has committed its outcome exactly once. A commit under a lease that
//!    was lost fails and changes nothing.
//! 6. **Timers.** A timer is stored with its version; it is work only
//!    while that version is the head. Timers that fell due while no server
//!    ran are all runnable at once, claimed in the order they fell due.

use anyhow::Result;

use std::time::Duration;

use super::sql::{Begin, Connection, Dialect, params};
use super::{Commit, Database, InstanceId, Lease, lease, now_ms};
use crate::runtime::Timer;

/// Why a request was refused: the instance or version does not exist, or
/// its state does not allow the run now (an HTTP service answers 404 and
/// 409).
#[derive(Debug)]
pub enum Refused {
    /// No such instance or version.
    NotFound(String),
    /// The instance is busy, the version was answered already, it is not a
    /// suspension, or it sleeps.
    Conflict(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotFound(m) | Refused::Conflict(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Refused {}

/// What [`Database::write_batch`] writes in one transaction.
#[derive(Default)]
pub struct Batch {
    /// Requests to record: instance, request, and whether a version that
    /// has a child may be resumed again (a branch).
    pub requests: Vec<(InstanceId, Request, bool)>,
    /// Prepared versions to commit, each ending its request and lease.
    pub commits: Vec<Commit>,
    /// Renew every expiring lease this process holds.
    pub renew: bool,
    /// Claim up to this many runnable instances.
    pub claim: usize,
    /// How long renewed and claimed leases last.
    pub ttl: Duration,
}

/// What [`Database::write_batch`] did, item by item.
#[derive(Default)]
pub struct BatchDone {
    /// For each request: the version it resumes, or why it was refused.
    pub requests: Vec<Result<Option<u32>>>,
    /// For each commit: the version's number, or why it failed.
    pub commits: Vec<Result<u32>>,
    /// How many leases were renewed.
    pub renewed: usize,
    /// The work claimed.
    pub claims: Vec<Claim>,
}

/// A run to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The version to resume; `None` for the instance's first run (or,
    /// given to [`Database::request`] for an instance that has run, its
    /// head, whatever it is then).
    pub version: Option<u32>,
    /// What the pending call is resumed with.
    pub reply: Vec<u8>,
    /// Continue the version as its timer firing: a sleep wakes (early, if
    /// it is not due), a question with a deadline times out.
    pub wake: bool,
}

/// A runnable instance claimed under a lease, and what to run.
#[derive(Debug)]
pub struct Claim {
    /// The lease, expiring unless renewed.
    pub lease: Lease,
    /// What to run. For a timer that fell due, its version, woken, with no
    /// reply.
    pub work: Work,
}

/// What a claim runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// A recorded request; its `version` is `None` only for a first run.
    Requested(Request),
    /// The head version's timer fell due.
    TimerDue {
        /// The version whose timer fell due.
        version: u32,
        /// The timer.
        timer: Timer,
    },
}

impl Database {
    /// Records `request` for `instance` after checking, in the same
    /// transaction, that it may run (see the module's contract); returns
    /// the version it resumes (`None` for a first run). A version that
    /// already has a child is only resumed again with `branch`.
    pub fn request(
        &self,
        instance: InstanceId,
        request: &Request,
        branch: bool,
    ) -> Result<Option<u32>> {
        self.with(|s| {
            let mut tx = s.conn.transaction(Begin::Write)?;
            let version = check_request(&mut *tx, instance, request, branch)?;
            insert_request(&mut *tx, instance, request, version)?;
            tx.commit()?;
            Ok(version)
        })
    }

    /// The pending request of `instance`, if any.
    pub fn pending_request(&self, instance: InstanceId) -> Result<Option<Request>> {
        self.with(|s| {
            let row = s.conn.query_opt(
                "SELECT version, reply, wake FROM requests WHERE instance = ?1",
                params![instance],
            )?;
            row.map(|mut r| {
                Ok(Request {
                    version: r.get(0)?,
                    reply: r.get(1)?,
                    wake: r.get(2)?,
                })
            })
            .transpose()
        })
    }

    /// Claims up to `limit` runnable instances, the longest-waiting first,
    /// under leases that expire `ttl` from now unless renewed.
    pub fn claim(&self, limit: usize, ttl: Duration) -> Result<Vec<Claim>> {
        let done = self.write_batch(Batch {
            claim: limit,
            ttl,
            ..Batch::default()
        })?;
        Ok(done.claims)
    }

    /// Moves the expiry of every expiring lease this process holds (its
    /// claimed runs in progress) to `ttl` from now; returns how many.
    pub fn renew_held(&self, ttl: Duration) -> Result<usize> {
        let done = self.write_batch(Batch {
            renew: true,
            ttl,
            ..Batch::default()
        })?;
        Ok(done.renewed)
    }

    /// Everything a service writes, in one transaction: requests recorded
    /// (each checked and recorded or refused on its own), prepared versions
    /// committed (each ending its request and releasing its lease), leases
    /// renewed, and then new work claimed, possibly including the requests
    /// just recorded. One transaction costs one lock and one append to the
    /// log however much it holds: this is how a service commits thousands
    /// of versions per second.
    pub fn write_batch(&self, batch: Batch) -> Result<BatchDone> {
        let Batch {
            requests,
            commits,
            renew,
            claim,
            ttl,
        } = batch;
        let ttl_ms = ttl.as_millis() as i64;
        let (mut done, committed) = self.with(|shared| {
            let super::Shared {
                conn,
                commit_hook,
                compressor,
                page_caches,
                ..
            } = shared;
            let hook = super::versions::hook_of(*commit_hook);
            let dialect = conn.dialect();
            let mut tx = conn.transaction(Begin::Write)?;
            hook("begin");
            // One clock for the whole transaction, the database's: leases
            // and timers are judged alike whichever machine a server runs on.
            let now: i64 = tx.query_value(&format!("SELECT {}", dialect.now_ms()), &[])?;
            let mut done = BatchDone::default();
            for (instance, request, branch) in &requests {
                let result = tx.savepoint(|sp| {
                    let version = check_request(sp, *instance, request, *branch)?;
                    insert_request(sp, *instance, request, version)
                })?;
                done.requests.push(result);
            }
            let parts: Vec<_> = commits.iter().map(|c| c.prepared.parts()).collect();
            // Each commit is planned against its instance's cached list,
            // taken out here and put back updated once the transaction has
            // committed (forgotten if it does not).
            let mut written_lists = Vec::with_capacity(commits.len());
            let mut committed = Vec::with_capacity(commits.len());
            for (commit, (outcome, provenance)) in commits.iter().zip(&parts) {
                let version = commit.prepared.as_new(outcome, provenance);
                let instance = commit.lease.instance;
                let mut page_cache = page_caches.take(instance);
                let result = tx.savepoint(|sp| {
                    let plan = super::versions::plan_against_parent(
                        sp,
                        &mut page_cache,
                        instance,
                        version.parent,
                        outcome,
                    )?;
                    let written = super::versions::insert_planned(
                        sp,
                        compressor,
                        &page_cache,
                        &commit.lease,
                        &version,
                        &plan,
                        &hook,
                    )?;
                    finish_request(sp, &commit.lease)?;
                    Ok((plan, written))
                })?;
                committed.push(match result {
                    Ok((plan, written)) => {
                        let number = written.number;
                        written_lists.push((instance, page_cache, plan, written));
                        Ok(number)
                    }
                    Err(e) => Err(e),
                });
            }
            if renew {
                done.renewed = tx.execute(
                    "UPDATE instances SET lease_expires = ?3 + ?4
                     WHERE lease_pid = ?1 AND lease_owner = ?2 AND lease_expires IS NOT NULL",
                    params![std::process::id(), lease::own_identity(), now, ttl_ms],
                )? as usize;
            }
            let mut taken = Vec::new();
            if claim > 0 {
                for (instance, work) in runnable(&mut *tx, now, claim)? {
                    let token = lease::random_token();
                    lease::take(&mut *tx, instance, token, Some(ttl))?;
                    taken.push((instance, token, work));
                }
            }
            hook("before-commit");
            tx.commit()?;
            for (instance, mut page_cache, plan, written) in written_lists {
                written.update_cache(&mut page_cache, instance, &plan);
                page_caches.put(page_cache);
            }
            done.claims = taken
                .into_iter()
                .map(|(instance, token, work)| Claim {
                    lease: lease::claimed(&self.shared, instance, token),
                    work,
                })
                .collect();
            Ok((done, committed))
        })?;
        for (commit, result) in commits.into_iter().zip(committed) {
            done.commits.push(result.inspect(|_| commit.lease.forget()));
        }
        Ok(done)
    }

    /// When the next timer falls due, over all instances whose head has one
    /// and no pending request: how long a service may wait before it
    /// claims again.
    pub fn next_wake_at(&self) -> Result<Option<u64>> {
        self.with(|s| {
            s.conn.query_value(
                "SELECT min(wake_at) FROM instances
                 WHERE wake_at IS NOT NULL
                   AND id NOT IN (SELECT instance FROM requests)",
                &[],
            )
        })
    }
}

/// Records a checked request; returns the version it resumes.
pub(super) fn insert_request(
    conn: &mut dyn Connection,
    instance: InstanceId,
    request: &Request,
    version: Option<u32>,
) -> Result<Option<u32>> {
    let sql = format!(
        "INSERT INTO requests (instance, version, reply, wake, created)
         VALUES (?1, ?2, ?3, ?4, {})",
        conn.dialect().now_ms()
    );
    conn.execute(
        &sql,
        params![instance, version, &request.reply, request.wake],
    )?;
    Ok(version)
}

/// The number of the first version that continued version `?2` of
/// instance `?1`, read from the `versions_by_parent` index.
const FIRST_CHILD: &str = "SELECT min(number) FROM versions WHERE instance = ?1 AND parent = ?2";

/// The checks of [`Database::request`]; returns the version resumed.
fn check_request(
    conn: &mut dyn Connection,
    instance: InstanceId,
    request: &Request,
    branch: bool,
) -> Result<Option<u32>> {
    let conflict = |m: String| -> anyhow::Error { Refused::Conflict(m).into() };
    // First, as it locks the instance's row (PostgreSQL) until the request
    // is recorded: two requests for one instance are serialised.
    let held = lease::holder(conn, instance)?.is_some();
    let head: Option<u32> = conn.query_value(
        "SELECT head FROM instances WHERE id = ?1",
        params![instance],
    )?;
    let pending = conn.exists(
        "SELECT 1 FROM requests WHERE instance = ?1",
        params![instance],
    )?;
    if pending || held {
        return Err(conflict(format!("instance {instance} is busy")));
    }
    let version = match (request.version, head) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(conflict(format!(
                "instance {instance} has not run yet: it has no version to resume"
            )));
        }
        (Some(version), Some(_)) => version,
        (None, Some(head)) => head,
    };
    let row = conn.query_opt(
        "SELECT kind, wake_at, timer FROM versions WHERE instance = ?1 AND number = ?2",
        params![instance, version],
    )?;
    let Some(mut row) = row else {
        return Err(Refused::NotFound(format!(
            "version {version} of instance {instance} not found"
        ))
        .into());
    };
    let (kind, wake_at, timer): (String, Option<u64>, Option<String>) =
        (row.get(0)?, row.get(1)?, row.get(2)?);
    if kind != "suspended" {
        return Err(conflict(format!(
            "version {version} of instance {instance} is {kind}: there is nothing to resume"
        )));
    }
    let child: Option<u32> = conn.query_value(FIRST_CHILD, params![instance, version])?;
    if let (Some(child), false) = (child, branch) {
        return Err(conflict(format!(
            "version {version} of instance {instance} was answered already (version {child} continues it); ask for a branch to answer it again"
        )));
    }
    match (timer.as_deref(), wake_at) {
        (Some("sleep"), Some(wake_at)) if !request.wake && wake_at > now_ms() => {
            Err(conflict(sleeping_message(instance, version, wake_at)))
        }
        (None, _) if request.wake => Err(conflict(format!(
            "version {version} of instance {instance} waits for a reply: it has no timer to wake"
        ))),
        _ => Ok(Some(version)),
    }
}

/// What a resume of a sleep before its time is told.
pub(crate) fn sleeping_message(instance: InstanceId, version: u32, wake_at: u64) -> String {
    let left = wake_at.saturating_sub(now_ms());
    format!(
        "version {version} of instance {instance} sleeps until {} (in {}); wake it early to resume it now (wasnap resume --now, or \"wake\": true)",
        crate::runtime::utc_text(wake_at),
        crate::runtime::duration_text(left)
    )
}

/// Up to `limit` runnable instances whose lease is free, with their work,
/// the longest-waiting first; `now` is the database's clock.
fn runnable(conn: &mut dyn Connection, now: i64, limit: usize) -> Result<Vec<(InstanceId, Work)>> {
    let dialect = conn.dialect();
    // Candidates: requests, then due timers without a request (`IS NOT
    // NULL` spelled out so that SQLite uses the partial index on
    // `wake_at` without looking at `now`, whose value would otherwise make
    // it prepare the statement again every round). On SQLite,
    // leases this very process holds (alive by definition) are skipped
    // unless they expired, and other holders are checked one by one below,
    // so a few more than `limit` are read so that leases of others do not
    // hide work. On PostgreSQL, where every lease expires, only free or
    // expired leases are candidates, and rows another server is claiming
    // at this moment are skipped rather than waited for.
    let (free, limit_at, lock) = match dialect {
        Dialect::Sqlite => (
            "i.lease_token IS NULL
             OR i.lease_pid IS DISTINCT FROM ?3 OR i.lease_owner IS DISTINCT FROM ?4
             OR i.lease_expires <= ?1",
            limit + 16,
            "",
        ),
        Dialect::Postgres => (
            "i.lease_token IS NULL OR i.lease_expires <= ?1",
            limit,
            " FOR UPDATE OF i SKIP LOCKED",
        ),
    };
    let sql = format!(
        "SELECT i.id, c.due, c.requested, c.version, c.reply, c.wake, v.wake_at, v.timer,
                i.lease_pid, i.lease_owner, i.lease_expires
         FROM (SELECT instance, created AS due, 1 AS requested, version, reply, wake
               FROM requests
               UNION ALL
               SELECT id, wake_at, 0, head, NULL, 1
               FROM instances
               WHERE wake_at IS NOT NULL AND wake_at <= ?1
                     AND id NOT IN (SELECT instance FROM requests)) c
         JOIN instances i ON i.id = c.instance
         LEFT JOIN versions v ON v.instance = i.id AND v.number = c.version
         WHERE {free}
         ORDER BY c.due, i.id
         LIMIT ?2{lock}"
    );
    let rows = match dialect {
        Dialect::Sqlite => {
            let (me, identity) = (std::process::id(), lease::own_identity());
            conn.query(&sql, params![now, limit_at, me, identity])?
        }
        Dialect::Postgres => conn.query(&sql, params![now, limit_at])?,
    };
    let mut found = Vec::new();
    for mut r in rows {
        if found.len() == limit {
            break;
        }
        let holder = lease::Holder {
            pid: r.get(8)?,
            owner: r.get(9)?,
            expires: r.get(10)?,
        };
        if holder.live_pid(now, dialect).is_some() {
            continue;
        }
        let instance: InstanceId = r.get(0)?;
        let version: Option<u32> = r.get(3)?;
        let work = if r.get::<bool>(2)? {
            Work::Requested(Request {
                version,
                reply: r.get(4)?,
                wake: r.get(5)?,
            })
        } else {
            let wake_at: u64 = r.get::<Option<u64>>(6)?.unwrap_or(0);
            let timer = match r.get::<Option<String>>(7)?.as_deref() {
                Some("deadline") => Timer::Deadline { wake_at },
                _ => Timer::Sleep { wake_at },
            };
            Work::TimerDue {
                version: version.unwrap_or(0),
                timer,
            }
        };
        found.push((instance, work));
    }
    Ok(found)
}

/// Ends the pending request of the lease's instance and releases the
/// lease: the last step of the transaction that commits a run's outcome.
pub(super) fn finish_request(conn: &mut dyn Connection, lease: &Lease) -> Result<()> {
    conn.execute(
        "DELETE FROM requests WHERE instance = ?1",
        params![lease.instance],
    )?;
    conn.execute(lease::CLEAR_LEASE, params![lease.instance, lease.token])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answering a version checks that no child answered it first; that
    /// check must not read every version of the instance, or answering
    /// slows down as the instance's history grows.
    #[test]
    fn the_answered_check_reads_the_index_of_children() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("wasnap.db")).unwrap();
        let plan = db
            .with(|s| {
                let sql = format!("EXPLAIN QUERY PLAN {FIRST_CHILD}");
                let rows = s.conn.query(&sql, params![1u32, 1u32])?;
                rows.into_iter()
                    .map(|mut r| r.get::<String>(3))
                    .collect::<Result<Vec<_>>>()
            })
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("versions_by_parent")),
            "{plan:?}"
        );
    }
}
