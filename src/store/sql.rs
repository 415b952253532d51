//! What the store asks of a SQL database, so that its logic is written once
//! for both backends: SQLite ([`super::sqlite`]) and PostgreSQL
//! ([`super::postgres`]).
//!
//! Statements are written once, in the SQL both accept, with numbered
//! placeholders `?1`, `?2`, ... (PostgreSQL's backend rewrites them to
//! `$1`, `$2`, ...). Where the two really differ (table definitions, row
//! locks, the clock), [`Dialect`] says which one is in use. Values cross
//! the boundary as [`Param`]s (bound) and [`Value`]s (read): integers,
//! byte strings, text and NULL, which both store without loss.

use std::ops::{Deref, DerefMut};

use anyhow::{Result, bail};

/// Which SQL the connection speaks, where the two differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    /// SQLite: one writer at a time, serialised by `BEGIN IMMEDIATE`.
    Sqlite,
    /// PostgreSQL: concurrent writers, serialised where it matters by row
    /// locks (`FOR UPDATE`) and an advisory lock between commits and `gc`.
    Postgres,
}

impl Dialect {
    /// What ends a `SELECT` that locks the rows it reads until the
    /// transaction ends. SQLite's write transactions hold the whole
    /// database already, and it has no such clause.
    pub(super) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// The database's clock, in milliseconds since the Unix epoch, as an
    /// SQL expression: lease expiry and timers are judged by one clock,
    /// whichever machine a worker runs on.
    pub(super) fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }
}

/// A value bound to a statement's placeholder.
#[derive(Clone, Copy, Debug)]
pub(super) enum Param<'a> {
    /// SQL NULL.
    Null,
    /// An integer (64-bit signed, as both databases store them).
    Int(i64),
    /// A byte string (`BLOB`, `BYTEA`).
    Bytes(&'a [u8]),
    /// Text.
    Text(&'a str),
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl From<$t> for Param<'_> {
            fn from(v: $t) -> Self {
                Param::Int(v as i64)
            }
        }
    )*};
}
int_param!(i64, i32, u32, u16, u8, usize, u64);

impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Param::Int(i64::from(v))
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Param::Bytes(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Param<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Param::Bytes(v)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Param<'a> {
    fn from(v: &'a [u8; N]) -> Self {
        Param::Bytes(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// The parameters of a statement: `params![a, b]`.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$($crate::store::sql::Param::from($p)),*][..]
    };
}
pub(super) use params;

/// A value read from a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Value {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// Text.
    Text(String),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Bytes(_) => "bytes",
            Value::Text(_) => "text",
        }
    }
}

/// A type a column can be read as.
pub(super) trait FromValue: Sized {
    /// Converts, or fails naming what was found instead.
    fn from_value(value: Value) -> Result<Self>;
}

fn wrong(expected: &str, found: &Value) -> anyhow::Error {
    anyhow::anyhow!(
        "the database holds {} where {expected} was expected",
        found.kind()
    )
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: Value) -> Result<Self> {
                match value {
                    Value::Int(v) => <$t>::try_from(v).map_err(|_| {
                        anyhow::anyhow!("the database holds {v}, out of range for {}", stringify!($t))
                    }),
                    other => Err(wrong("an integer", &other)),
                }
            }
        }
    )*};
}
int_value!(i64, i32, u32, u64);

impl FromValue for bool {
    fn from_value(value: Value) -> Result<Self> {
        Ok(i64::from_value(value)? != 0)
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Bytes(v) => Ok(v),
            other => Err(wrong("bytes", &other)),
        }
    }
}

impl<const N: usize> FromValue for [u8; N] {
    fn from_value(value: Value) -> Result<Self> {
        let bytes = Vec::<u8>::from_value(value)?;
        let len = bytes.len();
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("the database holds {len} bytes where {N} were expected"))
    }
}

impl FromValue for String {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Text(v) => Ok(v),
            other => Err(wrong("text", &other)),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Clone, Debug, Default)]
pub(super) struct Row(pub(super) Vec<Value>);

impl Row {
    /// Column `i` as a `T`; each column can be taken once (it is moved
    /// out, so that large byte strings are not copied).
    pub(super) fn get<T: FromValue>(&mut self, i: usize) -> Result<T> {
        match self.0.get_mut(i) {
            Some(value) => T::from_value(std::mem::replace(value, Value::Null)),
            None => bail!("a query returned no column {i}"),
        }
    }
}

/// How a transaction begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Begin {
    /// It only reads, from one consistent view of the database.
    Read,
    /// It writes. SQLite takes its write lock at once (`BEGIN IMMEDIATE`:
    /// a deferred transaction that read first could not wait for the lock
    /// later); PostgreSQL locks rows as the statements reach them.
    Write,
}

/// A connection to one database, of either backend.
pub(super) trait Connection: Send {
    /// Which SQL it speaks.
    fn dialect(&self) -> Dialect;

    /// Runs a statement; returns how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64>;

    /// Runs a query; returns its rows.
    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>>;

    /// Runs statements separated by `;`, without parameters (schema
    /// changes).
    fn batch(&mut self, sql: &str) -> Result<()>;

    /// Begins a transaction.
    fn begin(&mut self, how: Begin) -> Result<()>;

    /// Commits the transaction begun.
    fn commit(&mut self) -> Result<()>;

    /// Rolls back the transaction begun.
    fn rollback(&mut self) -> Result<()>;

    /// Rewrites an error of this backend whose cause the user can act on
    /// into one line naming the database `name`.
    fn explain(&self, name: &str, error: anyhow::Error) -> anyhow::Error;
}

impl<'c> dyn Connection + 'c {
    /// The only row of a query, or `None`.
    pub(super) fn query_opt(&mut self, sql: &str, params: &[Param]) -> Result<Option<Row>> {
        let mut rows = self.query(sql, params)?;
        if rows.len() > 1 {
            bail!("a query expected to return one row returned {}", rows.len());
        }
        Ok(rows.pop())
    }

    /// The only row of a query, which must return one.
    pub(super) fn query_one(&mut self, sql: &str, params: &[Param]) -> Result<Row> {
        match self.query_opt(sql, params)? {
            Some(row) => Ok(row),
            None => bail!("a query expected to return one row returned none"),
        }
    }

    /// The first column of the only row of a query, which must return one.
    pub(super) fn query_value<T: FromValue>(&mut self, sql: &str, params: &[Param]) -> Result<T> {
        self.query_one(sql, params)?.get(0)
    }

    /// Whether a query returns any row.
    pub(super) fn exists(&mut self, sql: &str, params: &[Param]) -> Result<bool> {
        Ok(!self.query(sql, params)?.is_empty())
    }

    /// Runs `f` inside a savepoint of the transaction in progress: what it
    /// did is kept when it succeeds and undone when it fails. Its error is
    /// returned as the inner result, so that the transaction goes on; an
    /// error of the savepoint itself is the outer one.
    pub(super) fn savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Result<T>> {
        self.batch("SAVEPOINT item")?;
        match f(self) {
            Ok(value) => {
                self.batch("RELEASE SAVEPOINT item")?;
                Ok(Ok(value))
            }
            Err(e) => {
                self.batch("ROLLBACK TO SAVEPOINT item; RELEASE SAVEPOINT item")?;
                Ok(Err(e))
            }
        }
    }

    /// Begins a transaction, rolled back unless [`Tx::commit`] is called.
    pub(super) fn transaction(&mut self, how: Begin) -> Result<Tx<'_>> {
        self.begin(how)?;
        Ok(Tx {
            conn: self,
            open: true,
        })
    }
}

/// A transaction in progress; rolled back when dropped uncommitted.
pub(super) struct Tx<'a> {
    conn: &'a mut (dyn Connection + 'a),
    open: bool,
}

impl Tx<'_> {
    /// Commits it.
    pub(super) fn commit(mut self) -> Result<()> {
        self.open = false;
        self.conn.commit()
    }
}

impl<'a> Deref for Tx<'a> {
    type Target = dyn Connection + 'a;

    fn deref(&self) -> &Self::Target {
        self.conn
    }
}

impl DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback leaves nothing committed either: the
            // connection is closed or the server ends the transaction.
            let _ = self.conn.rollback();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_convert_and_name_what_they_hold() {
        let mut row = Row(vec![
            Value::Int(7),
            Value::Null,
            Value::Bytes(vec![1; 32]),
            Value::Text("x".into()),
            Value::Int(-1),
        ]);
        assert_eq!(row.get::<u32>(0).unwrap(), 7);
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert_eq!(row.get::<[u8; 32]>(2).unwrap(), [1; 32]);
        assert_eq!(row.get::<String>(3).unwrap(), "x");
        assert_eq!(
            row.get::<u64>(4).unwrap_err().to_string(),
            "the database holds -1, out of range for u64"
        );
        assert_eq!(
            Row(vec![Value::Text("a".into())])
                .get::<i64>(0)
                .unwrap_err()
                .to_string(),
            "the database holds text where an integer was expected"
        );
    }
}
