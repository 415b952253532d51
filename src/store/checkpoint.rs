//! Checkpoints of SQLite's write-ahead log on a thread of their own.
//!
//! SQLite copies the log into the database file (a checkpoint, with its
//! sync) inside the commit that makes the log pass 1,000 pages. For a
//! service whose one writer commits thousands of versions a second, that
//! is a fifth of the writer's time, in which no request is committed. A
//! [`Checkpointer`] turns those automatic checkpoints off on the writer's
//! connection and runs passive ones (which never block a writer) from
//! another connection, at a steady pace, until it is dropped.
//!
//! A passive checkpoint copies what the log held when it began; under a
//! steady stream of commits it never catches up with the log's end, and
//! the log is only started over once all of it is copied. So when the log
//! has grown past [`RESTART_FRAMES`], the thread asks for a restart
//! checkpoint, which waits for the writer's transaction in progress and
//! holds the next one back while it copies the (few) frames the passive
//! ones left: the writer then starts the log over, and the file is cut
//! back to [`LOG_LIMIT`].

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{Database, Location};

/// SQLite's default: an automatic checkpoint once the log holds this many
/// pages.
const AUTOMATIC_PAGES: u32 = 1000;

/// Log frames (4 KiB pages) past which the log is started over: 16 MiB.
const RESTART_FRAMES: i64 = 4096;

/// The size the log file is cut back to when it starts over.
const LOG_LIMIT: u64 = 64 << 20;

/// Runs the checkpoints of a SQLite database's log on a thread of its own
/// while it lives; see [`Database::checkpoint_in_background`]. Dropping it
/// stops the thread, runs a last checkpoint and gives the database its
/// automatic checkpoints back.
pub struct Checkpointer {
    database: Database,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Database {
    /// For a writer that commits many times a second (a service): moves
    /// the checkpoints of SQLite's write-ahead log off the committing
    /// thread, to a thread that runs one every `every`. `None` on
    /// PostgreSQL, whose server does its own.
    pub fn checkpoint_in_background(&self, every: Duration) -> Result<Option<Checkpointer>> {
        let Location::Sqlite(path) = self.location() else {
            return Ok(None);
        };
        let conn = rusqlite::Connection::open(path)
            .and_then(|c| c.busy_timeout(Duration::from_secs(10)).map(|()| c))
            .with_context(|| {
                format!("database {}: cannot open it to checkpoint", path.display())
            })?;
        self.with(|s| {
            s.conn.batch(&format!(
                "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {LOG_LIMIT}"
            ))
        })?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("wasnap-checkpoint".into())
            .spawn(move || checkpoint_until_stopped(&conn, &signal, every))
            .context("cannot start the checkpoint thread")?;
        Ok(Some(Checkpointer {
            database: self.clone(),
            stop,
            thread: Some(thread),
        }))
    }
}

/// Runs a passive checkpoint every `every` until `stop` is set, then one
/// last one. A checkpoint that fails (the file is busy) is tried again at
/// the next turn: the log stays correct either way, only longer.
fn checkpoint_until_stopped(
    conn: &rusqlite::Connection,
    stop: &(Mutex<bool>, Condvar),
    every: Duration,
) {
    let (stopped, wake) = stop;
    let mut guard = stopped.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let stopping = *guard;
        drop(guard);
        checkpoint(conn);
        if stopping {
            return;
        }
        guard = stopped.lock().unwrap_or_else(PoisonError::into_inner);
        if !*guard {
            guard = wake
                .wait_timeout(guard, every)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A passive checkpoint, and a restart one when the log has grown long.
fn checkpoint(conn: &rusqlite::Connection) {
    // (busy, frames in the log, frames copied)
    let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
    if passive.is_ok_and(|frames| frames > RESTART_FRAMES) {
        let _ = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let restore = format!(
            "PRAGMA wal_autocheckpoint = {AUTOMATIC_PAGES}; PRAGMA journal_size_limit = -1"
        );
        let _ = self.database.with(|s| s.conn.batch(&restore));
    }
}
