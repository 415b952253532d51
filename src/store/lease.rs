//! Leases: at most one process works on an instance at a time.
//!
//! A lease is three columns of the instance's row, written in an IMMEDIATE
//! transaction (so two takers are serialised by SQLite's write lock): the
//! holder's pid, an owner string that names that very process, and a
//! random token that names the lease itself.
//!
//! A process killed while it holds a lease cannot release it, so a taker
//! treats a lease as free when its holder is gone. On Linux the owner
//! string is the boot id plus the process start time (from `/proc`), and
//! the holder is alive only if a process with that pid exists in this boot
//! and started at that time: a pid reused by an unrelated process does not
//! keep the lease, and a reboot frees every lease. A database is only ever
//! used from one machine (SQLite's WAL needs shared memory), so pids are
//! comparable. Elsewhere no such check exists and a lease is treated as
//! held until released.
//!
//! A lease may also carry an expiry (`lease_expires`, milliseconds since
//! the Unix epoch): the leases a service claims expire unless renewed (see
//! [`super::work`]), so that a holder that hangs, or that runs on another
//! machine where no pid check reaches, loses them. A lease without one is
//! held for as long as its holder lives.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params};

use super::{InstanceId, Shared, lock};

/// The right to commit versions of one instance. Released when dropped.
pub struct Lease {
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) instance: InstanceId,
    pub(super) token: i64,
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
        self.released = true;
    }

    /// Gives the lease up now, reporting a failure to do so (dropping it
    /// does the same silently).
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        release(&self.shared, self.instance, self.token)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A lease that cannot be released here is freed for the next taker
        // anyway once this process exits.
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

fn release(shared: &Arc<Mutex<Shared>>, instance: InstanceId, token: i64) -> Result<()> {
    let shared = lock(shared);
    shared.conn.execute(CLEAR_LEASE, params![instance, token])?;
    Ok(())
}

/// Clears the lease `?2` on instance `?1`, if it is still the one held.
pub(super) const CLEAR_LEASE: &str = "
    UPDATE instances SET lease_pid = NULL, lease_owner = NULL, lease_token = NULL,
                         lease_expires = NULL
    WHERE id = ?1 AND lease_token = ?2";

/// Takes the lease on `instance` for this process, or fails with
/// "instance N is busy" while a live process holds it.
pub(super) fn acquire(shared: &Arc<Mutex<Shared>>, instance: InstanceId) -> Result<Lease> {
    let lease = {
        let mut guard = lock(shared);
        let tx = super::writing(&mut guard.conn)?;
        check_free(&tx, instance)?;
        let token = take(&tx, instance, None)?;
        tx.commit()?;
        token
    };
    Ok(held(shared, instance, lease))
}

/// Writes a new lease of this process on `instance` (free: checked by the
/// caller, in the same transaction), expiring at `expires` if given.
/// Returns its token.
pub(super) fn take(
    conn: &rusqlite::Connection,
    instance: InstanceId,
    expires: Option<u64>,
) -> Result<i64> {
    let token = random_token();
    conn.prepare_cached(
        "UPDATE instances SET lease_pid = ?2, lease_owner = ?3, lease_token = ?4,
                              lease_expires = ?5
         WHERE id = ?1",
    )?
    .execute(params![
        instance,
        std::process::id(),
        own_identity(),
        token,
        expires
    ])?;
    Ok(token)
}

/// The handle of a lease written by [`take`].
pub(super) fn held(shared: &Arc<Mutex<Shared>>, instance: InstanceId, token: i64) -> Lease {
    Lease {
        shared: Arc::clone(shared),
        instance,
        token,
        released: false,
    }
}

/// Fails unless `instance` exists and no live process holds its lease.
pub(super) fn check_free(conn: &rusqlite::Connection, instance: InstanceId) -> Result<()> {
    if holder(conn, instance)?.is_some() {
        bail!("instance {instance} is busy");
    }
    Ok(())
}

/// The pid of the live process holding the lease on `instance`, if any.
pub(super) fn holder(conn: &rusqlite::Connection, instance: InstanceId) -> Result<Option<u32>> {
    let row: Option<(Option<u32>, Option<String>, Option<u64>)> = conn
        .prepare_cached(
            "SELECT lease_pid, lease_owner, lease_expires FROM instances WHERE id = ?1",
        )?
        .query_row([instance], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    match row {
        None => Err(super::Refused::NotFound(format!("instance {instance} not found")).into()),
        Some((pid, owner, expires)) => Ok(live_holder(pid, owner.as_deref(), expires)),
    }
}

/// The pid holding a lease with these columns, if the lease still holds:
/// its holder lives and it has not expired.
pub(super) fn live_holder(
    pid: Option<u32>,
    owner: Option<&str>,
    expires: Option<u64>,
) -> Option<u32> {
    let (pid, owner) = (pid?, owner?);
    let expired = expires.is_some_and(|at| at <= super::now_ms());
    (!expired && alive(pid, owner)).then_some(pid)
}

/// Fails unless `lease` is still the one recorded for its instance.
pub(super) fn check_held(conn: &rusqlite::Connection, lease: &Lease) -> Result<()> {
    let token: Option<Option<i64>> = conn
        .prepare_cached("SELECT lease_token FROM instances WHERE id = ?1")?
        .query_row([lease.instance], |r| r.get(0))
        .optional()?;
    match token {
        None => bail!("instance {} not found", lease.instance),
        Some(t) if t == Some(lease.token) => Ok(()),
        Some(_) => bail!("the lease on instance {} has been lost", lease.instance),
    }
}

fn random_token() -> i64 {
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

/// What names this process among all processes that ever used the file
/// (read once: it does not change while the process lives).
pub(super) fn own_identity() -> &'static str {
    static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(|| identity(std::process::id()).unwrap_or_default())
}

fn alive(pid: u32, owner: &str) -> bool {
    if cfg!(target_os = "linux") {
        identity(pid).is_some_and(|now| now == owner)
    } else {
        true
    }
}

/// `boot-id/start-time` of process `pid`, if it exists (Linux only).
fn identity(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
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
