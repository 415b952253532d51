//! Leases: at most one holder works on an instance at a time.
//!
//! A lease is columns of the instance's row: the holder's pid, an owner
//! string that names that very process, a random token that names the
//! lease itself, and when it expires (`lease_expires`, milliseconds since
//! the Unix epoch by the database's clock; NULL: never by itself). It is taken in a write
//! transaction that locks the row, so two takers are serialised, and every
//! commit checks, under the same lock, that its lease's token is still the
//! one recorded.
//!
//! A process killed while it holds a lease cannot release it, so a taker
//! treats a lease as free when its holder is gone. How it knows differs:
//!
//! - SQLite: the database is only ever used from one machine (its WAL
//!   needs shared memory), so the holder's pid is checked. On Linux the
//!   owner string is the boot id plus the process start time (from
//!   `/proc`), and the holder is alive only if a process with that pid
//!   exists in this boot and started at that time: a pid reused by an
//!   unrelated process does not keep the lease, and a reboot frees every
//!   lease. Elsewhere no such check exists and a lease is treated as held
//!   until released. The leases a service claims also expire unless
//!   renewed (see [`super::work`]), so that a holder that hangs loses them.
//! - PostgreSQL: the holder may run on any machine, where no pid can be
//!   checked. Its lease expires [`Database::set_lease_ttl`] after it was
//!   taken or last renewed, by the database's clock; a thread of the
//!   holder renews it every third of that while the lease lives. A holder
//!   that dies, or stops for longer than that, loses the lease to the
//!   next taker, and its commits fail from then on. The leases a service
//!   claims are renewed by the service itself, all at once.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Result, bail};

use super::sql::{Begin, Connection, Dialect, params};
use super::{Database, InstanceId, InstanceState, Shared, lock};

/// How long a lease on PostgreSQL lasts unless renewed.
pub(super) const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The right to commit versions of one instance. Released when dropped.
pub struct Lease {
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) instance: InstanceId,
    pub(super) token: i64,
    /// Keeps an expiring lease alive.
    renewer: Option<Renewer>,
    /// Set by [`Lease::release`], so that dropping does not release again.
    released: bool,
}

impl Lease {
    /// The instance this lease is on.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// Marks the lease as given up by a transaction that already cleared
    /// it (a group commit), so that dropping it does nothing.
    pub(super) fn forget(mut self) {
        self.stop_renewing();
        self.released = true;
    }

    /// Whether the lease is known to be lost: it expired, and another
    /// holder may have taken it (PostgreSQL). Commits check this for
    /// themselves; a long run can look here to stop early.
    pub fn is_lost(&self) -> bool {
        self.renewer
            .as_ref()
            .is_some_and(|r| r.lost.load(Ordering::SeqCst))
    }

    /// Gives the lease up now, reporting a failure to do so (dropping it
    /// does the same silently).
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        self.stop_renewing();
        release(&self.shared, self.instance, self.token)
    }

    fn stop_renewing(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            drop(renewer.stop);
            let _ = renewer.thread.join();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_renewing();
        // A lease that cannot be released here is freed for the next taker
        // anyway once this process exits (or its lease expires).
        if !self.released {
            let _ = release(&self.shared, self.instance, self.token);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease(instance {})", self.instance)
    }
}

/// The thread that renews an expiring lease.
struct Renewer {
    /// Dropped to stop it.
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
    /// Set when a renewal found the lease gone.
    lost: Arc<AtomicBool>,
}

impl Renewer {
    fn start(
        shared: &Arc<Mutex<Shared>>,
        instance: InstanceId,
        token: i64,
        ttl: Duration,
    ) -> Renewer {
        let (stop, stopped) = mpsc::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, lost) = (Arc::clone(shared), Arc::clone(&lost));
            std::thread::Builder::new()
                .name(format!("lease-{instance}"))
                .spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(ttl / 3) {
                        // A renewal that failed is tried again at the next
                        // tick: the database may be back by then.
                        if let Ok(false) = renew(&shared, instance, token, ttl) {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                })
                .expect("cannot start a thread to renew a lease")
        };
        Renewer { stop, thread, lost }
    }
}

/// Pushes the expiry of a lease `ttl` past now; false when it is no longer
/// held.
fn renew(shared: &Mutex<Shared>, instance: InstanceId, token: i64, ttl: Duration) -> Result<bool> {
    let mut shared = lock(shared);
    let sql = format!(
        "UPDATE instances SET lease_expires = {} + ?3 WHERE id = ?1 AND lease_token = ?2",
        shared.conn.dialect().now_ms()
    );
    let changed = shared
        .conn
        .execute(&sql, params![instance, token, ttl.as_millis() as i64])?;
    Ok(changed == 1)
}

fn release(shared: &Mutex<Shared>, instance: InstanceId, token: i64) -> Result<()> {
    let mut shared = lock(shared);
    shared.conn.execute(CLEAR_LEASE, params![instance, token])?;
    Ok(())
}

/// Clears the lease `?2` on instance `?1`, if it is still the one held.
pub(super) const CLEAR_LEASE: &str = "
    UPDATE instances SET lease_pid = NULL, lease_owner = NULL, lease_token = NULL,
                         lease_expires = NULL
    WHERE id = ?1 AND lease_token = ?2";

/// Takes the lease on `instance` for this process, or fails with
/// "instance N is busy" while another holder has it.
pub(super) fn acquire(db: &Database, instance: InstanceId) -> Result<Lease> {
    let token = random_token();
    let ttl = db.with(|s| {
        let ttl = s.lease_ttl;
        let dialect = s.conn.dialect();
        let mut tx = s.conn.transaction(Begin::Write)?;
        check_free(&mut *tx, instance)?;
        take(&mut *tx, instance, token, expiring(dialect, ttl))?;
        tx.commit()?;
        Ok(ttl)
    })?;
    Ok(new_lease(db, instance, token, ttl))
}

/// How many leased candidates [`acquire_any`] looks at on SQLite, where
/// whether their holders live is checked outside SQL.
const LEASED_CANDIDATES: i64 = 64;

/// Takes the lease on an instance in `state` that no one holds, the one
/// with the lowest id; `None` when there is none.
///
/// On PostgreSQL, workers that look at the same time skip the rows the
/// others have locked (`FOR UPDATE SKIP LOCKED`), so each takes a
/// different instance without waiting. On SQLite the write transaction
/// excludes the others; instances whose leases are recorded come after
/// the free ones, and of those the first whose holder died is taken.
pub(super) fn acquire_any(db: &Database, state: InstanceState) -> Result<Option<Lease>> {
    let token = random_token();
    let taken = db.with(|s| {
        let ttl = s.lease_ttl;
        let dialect = s.conn.dialect();
        let now = dialect.now_ms();
        let sql = match dialect {
            Dialect::Postgres => format!(
                "SELECT id, lease_pid, lease_owner, lease_expires, {now} FROM instances
                 WHERE state = ?1 AND (lease_token IS NULL OR lease_expires <= {now})
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ),
            Dialect::Sqlite => format!(
                "SELECT id, lease_pid, lease_owner, lease_expires, {now} FROM instances
                 WHERE state = ?1
                 ORDER BY lease_token IS NOT NULL, id LIMIT {LEASED_CANDIDATES}"
            ),
        };
        let mut tx = s.conn.transaction(Begin::Write)?;
        let mut free = None;
        for mut row in tx.query(&sql, params![state.as_str()])? {
            let holder = Holder {
                pid: row.get(1)?,
                owner: row.get(2)?,
                expires: row.get(3)?,
            };
            if holder.live_pid(row.get(4)?, dialect).is_none() {
                free = Some(row.get::<InstanceId>(0)?);
                break;
            }
        }
        let Some(instance) = free else {
            return Ok(None);
        };
        take(&mut *tx, instance, token, expiring(dialect, ttl))?;
        tx.commit()?;
        Ok(Some((instance, ttl)))
    })?;
    Ok(taken.map(|(instance, ttl)| new_lease(db, instance, token, ttl)))
}

/// How long a lease taken with [`acquire`] lasts unless renewed: `ttl` on
/// PostgreSQL, as long as its holder lives on SQLite.
fn expiring(dialect: Dialect, ttl: Duration) -> Option<Duration> {
    (dialect == Dialect::Postgres).then_some(ttl)
}

/// Records the lease `token` on `instance` (whose row the transaction has
/// locked and found free), expiring `ttl` from now by the database's clock
/// if given.
pub(super) fn take(
    conn: &mut dyn Connection,
    instance: InstanceId,
    token: i64,
    ttl: Option<Duration>,
) -> Result<()> {
    let sql = format!(
        "UPDATE instances SET lease_pid = ?2, lease_owner = ?3, lease_token = ?4,
                              lease_expires = {} + ?5
         WHERE id = ?1",
        conn.dialect().now_ms()
    );
    let ttl = ttl.map(|t| t.as_millis() as i64);
    conn.execute(
        &sql,
        params![instance, std::process::id(), own_identity(), token, ttl],
    )?;
    Ok(())
}

/// The [`Lease`] for a token just recorded by [`acquire`], renewed while it
/// lives where leases expire.
pub(super) fn new_lease(db: &Database, instance: InstanceId, token: i64, ttl: Duration) -> Lease {
    let renewer = db
        .is_postgres()
        .then(|| Renewer::start(&db.shared, instance, token, ttl));
    Lease {
        shared: Arc::clone(&db.shared),
        instance,
        token,
        renewer,
        released: false,
    }
}

/// The [`Lease`] for a token a service claimed: it renews its claims
/// itself ([`Database::write_batch`]), all at once.
pub(super) fn claimed(shared: &Arc<Mutex<Shared>>, instance: InstanceId, token: i64) -> Lease {
    Lease {
        shared: Arc::clone(shared),
        instance,
        token,
        renewer: None,
        released: false,
    }
}

/// Who holds a lease, as recorded.
pub(super) struct Holder {
    pub pid: Option<u32>,
    pub owner: Option<String>,
    /// When an expiring lease expires, by the database's clock.
    pub expires: Option<i64>,
}

impl Holder {
    /// The holder's pid while the lease is held, judged at `now` (the
    /// database's clock): it has not expired and, on SQLite, where every
    /// holder runs on this machine, its process lives.
    pub(super) fn live_pid(&self, now: i64, dialect: Dialect) -> Option<u32> {
        let (Some(pid), Some(owner)) = (self.pid, &self.owner) else {
            return None;
        };
        let expired = self.expires.is_some_and(|expires| expires <= now);
        let gone = dialect == Dialect::Sqlite && !alive(pid, owner);
        (!expired && !gone).then_some(pid)
    }
}

/// Fails unless `instance` exists and no one holds its lease; locks its
/// row until the transaction ends.
pub(super) fn check_free(conn: &mut dyn Connection, instance: InstanceId) -> Result<()> {
    if holder(conn, instance)?.is_some() {
        return Err(super::Refused::Conflict(format!("instance {instance} is busy")).into());
    }
    Ok(())
}

/// The pid of the holder of the lease on `instance` while it is held;
/// locks its row until the transaction ends.
pub(super) fn holder(conn: &mut dyn Connection, instance: InstanceId) -> Result<Option<u32>> {
    let dialect = conn.dialect();
    let sql = format!(
        "SELECT lease_pid, lease_owner, lease_expires, {} FROM instances WHERE id = ?1{}",
        dialect.now_ms(),
        dialect.for_update()
    );
    let Some(mut row) = conn.query_opt(&sql, params![instance])? else {
        return Err(super::Refused::NotFound(format!("instance {instance} not found")).into());
    };
    let holder = Holder {
        pid: row.get(0)?,
        owner: row.get(1)?,
        expires: row.get(2)?,
    };
    Ok(holder.live_pid(row.get(3)?, dialect))
}

/// Fails unless `lease` is still the one recorded for its instance; locks
/// its row until the transaction ends, so that no one takes the lease
/// over before the transaction commits.
pub(super) fn check_held(conn: &mut dyn Connection, lease: &Lease) -> Result<()> {
    let sql = format!(
        "SELECT lease_token FROM instances WHERE id = ?1{}",
        conn.dialect().for_update()
    );
    let token: Option<Option<i64>> = match conn.query_opt(&sql, params![lease.instance])? {
        Some(mut row) => Some(row.get(0)?),
        None => None,
    };
    match token {
        None => bail!("instance {} not found", lease.instance),
        Some(t) if t == Some(lease.token) => Ok(()),
        Some(_) => bail!("the lease on instance {} has been lost", lease.instance),
    }
}

pub(super) fn random_token() -> i64 {
    // RandomState is seeded from the OS per process and per call; mixing in
    // the time makes tokens of one process differ too.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as i64
}

/// What names this process among all processes that ever used the
/// database (read once: it does not change while the process lives).
pub(super) fn own_identity() -> &'static str {
    static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(|| identity(std::process::id()).unwrap_or_default())
}

fn alive(pid: u32, owner: &str) -> bool {
    if pid == std::process::id() {
        // This process's identity is read once; only a holder of the same
        // pid from another boot or an earlier process differs from it.
        owner == own_identity()
    } else if cfg!(target_os = "linux") {
        identity(pid).is_some_and(|now| now == owner)
    } else {
        true
    }
}

/// `boot-id/start-time` of process `pid`, if it exists (Linux only).
fn identity(pid: u32) -> Option<String> {
    // The boot's id does not change while this process lives.
    static BOOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let boot = BOOT
        .get_or_init(|| std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok())
        .as_deref()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces;
    // fields are counted after its closing parenthesis. Start time is
    // field 22, so the 20th after the name.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let start = after_name.split_whitespace().nth(19)?;
    Some(format!("{}/{start}", boot.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_reused_pid_is_not() {
        let me = std::process::id();
        let owner = own_identity();
        assert!(!owner.is_empty());
        assert!(alive(me, owner));
        assert!(!alive(me, "another-boot/1"));
        // Pids above the kernel's maximum (2^22) never exist.
        assert!(!alive(u32::MAX - 1, owner));
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(random_token(), random_token());
    }
}
