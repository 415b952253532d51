//! The SQLite backend: one file, in WAL mode; the embedded default.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use rusqlite::config::DbConfig;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ErrorCode, OpenFlags};

use super::sql::{Begin, Connection, Dialect, Param, Row, Value};

/// How long a statement waits for another process's write lock before it
/// gives up. Commits are short, so a wait this long means something is
/// stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a SQLite file.
pub(super) struct Sqlite {
    conn: rusqlite::Connection,
}

impl Sqlite {
    /// Opens the file at `path`, creating it when `writable`; a new file
    /// is set up for incremental vacuum, and every writable one switched
    /// to WAL.
    pub(super) fn open(path: &Path, writable: bool) -> Result<Sqlite> {
        let flags = if writable {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(64);
        let sqlite = Sqlite { conn };
        if writable {
            sqlite.configure()?;
        }
        Ok(sqlite)
    }

    fn configure(&self) -> Result<()> {
        let conn = &self.conn;
        // The first read of the file: where one that is not SQLite shows
        // itself.
        let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == 0 {
            // Only takes effect before the first table and the switch to
            // WAL; lets `gc` give freed space back to the file system.
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("cannot switch to WAL mode (journal mode stays {mode})");
        }
        // temp_store: each commit of a service's batch is a savepoint,
        // whose undo journal would otherwise be a temporary file created
        // and deleted per version. In one call, as every command opens a
        // connection.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY",
        )?;
        // The last connection to close would otherwise copy the WAL into
        // the database, sync both and delete the WAL, and the next process
        // would create it again: most of the time of a short command such
        // as `wasnap resume`. A committed version is in the WAL either way,
        // which is what `Durability::Process` promises; the sync at close
        // made the versions of a process that exited survive power loss
        // too, which is `Durability::Power`'s promise, kept at every
        // commit. SQLite still checkpoints (and syncs) the WAL every 1,000
        // pages.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        Ok(())
    }
}

fn bind<'a>(p: &Param<'a>) -> ToSqlOutput<'a> {
    ToSqlOutput::Borrowed(match *p {
        Param::Null => ValueRef::Null,
        Param::Int(v) => ValueRef::Integer(v),
        Param::Bytes(v) => ValueRef::Blob(v),
        Param::Text(v) => ValueRef::Text(v.as_bytes()),
    })
}

fn read(r: &rusqlite::Row, columns: usize) -> rusqlite::Result<Row> {
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            // No column of the store holds a real; one read as text says so.
            ValueRef::Real(v) => Value::Text(v.to_string()),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
        });
    }
    Ok(Row(values))
}

impl Connection for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let bound: Vec<ToSqlOutput> = params.iter().map(bind).collect();
        Ok(stmt.execute(rusqlite::params_from_iter(bound))? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let bound: Vec<ToSqlOutput> = params.iter().map(bind).collect();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(bound), |r| read(r, columns))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.conn.execute_batch(sql)?)
    }

    fn begin(&mut self, how: Begin) -> Result<()> {
        let sql = match how {
            Begin::Read => "BEGIN DEFERRED",
            Begin::Write => "BEGIN IMMEDIATE",
        };
        Ok(self.conn.execute_batch(sql)?)
    }

    fn commit(&mut self) -> Result<()> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<()> {
        Ok(self.conn.execute_batch("ROLLBACK")?)
    }

    fn explain(&self, name: &str, e: anyhow::Error) -> anyhow::Error {
        explain(name, e)
    }
}

/// Rewrites SQLite errors whose cause the user can act on into one line
/// naming the file; other errors pass through.
pub(super) fn explain(p: &str, e: anyhow::Error) -> anyhow::Error {
    let code = e
        .downcast_ref::<rusqlite::Error>()
        .and_then(|e| e.sqlite_error_code());
    match code {
        Some(ErrorCode::NotADatabase) => {
            anyhow::anyhow!("{p} is not a wasnap database (not SQLite)")
        }
        Some(ErrorCode::ReadOnly) => anyhow::anyhow!("database {p} is read-only"),
        Some(ErrorCode::CannotOpen) => anyhow::anyhow!("cannot open database {p}: {e}"),
        Some(ErrorCode::DatabaseBusy) => busy(p, &e),
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
fn busy(p: &str, e: &anyhow::Error) -> anyhow::Error {
    let extended = match e.downcast_ref::<rusqlite::Error>() {
        Some(rusqlite::Error::SqliteFailure(failure, _)) => failure.extended_code,
        _ => rusqlite::ffi::SQLITE_BUSY,
    };
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
