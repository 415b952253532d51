//! The PostgreSQL backend: one database shared by many workers, on as many
//! machines.
//!
//! It uses the synchronous client of rust-postgres, which drives its
//! connection on a small runtime of its own: it must not be called from
//! inside an async runtime (a service calls the store from blocking tasks,
//! as it must for SQLite anyway).

use std::collections::HashMap;

use anyhow::{Result, bail};
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::sql::{Begin, Connection, Dialect, Param, Row, Value};

/// A connection to a PostgreSQL database.
pub(super) struct Postgres {
    url: String,
    client: Client,
    /// Whether a transaction is open: a connection lost outside one is
    /// made again before the next statement; inside one, the error stands.
    in_transaction: bool,
    /// Statements prepared on this connection, by their text as the store
    /// writes it: each is parsed and planned by the server once.
    prepared: HashMap<String, Statement>,
}

impl Postgres {
    /// Connects to the database at `url` (`postgres://USER@HOST/DB`, or any
    /// form rust-postgres accepts, such as `?host=/run/dir` for a socket).
    pub(super) fn connect(url: &str) -> Result<Postgres> {
        let client = Client::connect(url, NoTls)?;
        Ok(Postgres {
            url: url.to_string(),
            client,
            in_transaction: false,
            prepared: HashMap::new(),
        })
    }

    /// Connects again if the server closed the connection (it restarted,
    /// or an administrator ended the session) while no transaction was
    /// open: a long-running worker outlives such events.
    fn reconnect_if_closed(&mut self) -> Result<()> {
        if self.client.is_closed() && !self.in_transaction {
            self.client = Client::connect(&self.url, NoTls)?;
            self.prepared.clear();
        }
        Ok(())
    }

    fn prepare(&mut self, sql: &str) -> Result<Statement> {
        self.reconnect_if_closed()?;
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(&placeholders(sql))?;
        self.prepared.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// `?1`, `?2`, ... as PostgreSQL writes them: `$1`, `$2`, ... (The store's
/// statements hold no `?` in a string literal.)
fn placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

/// `param` as the type the server inferred for its placeholder.
fn typed<'a>(param: &Param<'a>, ty: &Type) -> Result<Box<dyn ToSql + Sync + 'a>> {
    Ok(match (*param, ty) {
        (Param::Null, t) if *t == Type::BYTEA => Box::new(None::<&[u8]>),
        (Param::Null, t) if *t == Type::TEXT || *t == Type::VARCHAR => Box::new(None::<&str>),
        (Param::Null, t) if *t == Type::INT4 => Box::new(None::<i32>),
        (Param::Null, _) => Box::new(None::<i64>),
        (Param::Int(v), t) if *t == Type::INT8 => Box::new(v),
        (Param::Int(v), t) if *t == Type::INT4 => Box::new(i32::try_from(v)?),
        (Param::Int(v), t) if *t == Type::INT2 => Box::new(i16::try_from(v)?),
        (Param::Int(v), t) if *t == Type::BOOL => Box::new(v != 0),
        (Param::Bytes(v), t) if *t == Type::BYTEA => Box::new(v),
        (Param::Text(v), t) if *t == Type::TEXT || *t == Type::VARCHAR => Box::new(v),
        (p, t) => bail!("cannot bind {p:?} to a parameter of type {t}"),
    })
}

fn bind<'a>(
    statement: &Statement,
    params: &[Param<'a>],
) -> Result<Vec<Box<dyn ToSql + Sync + 'a>>> {
    let types = statement.params();
    if types.len() != params.len() {
        bail!(
            "a statement takes {} parameters, {} were given",
            types.len(),
            params.len()
        );
    }
    params.iter().zip(types).map(|(p, t)| typed(p, t)).collect()
}

fn read(row: &postgres::Row) -> Result<Row> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes)
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            bail!(
                "column {} has type {ty}, which the store does not read",
                column.name()
            );
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl Connection for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64> {
        let statement = self.prepare(sql)?;
        let bound = bind(&statement, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| &**b as _).collect();
        Ok(self.client.execute(&statement, &refs)?)
    }

    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>> {
        let statement = self.prepare(sql)?;
        let bound = bind(&statement, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| &**b as _).collect();
        self.client
            .query(&statement, &refs)?
            .iter()
            .map(read)
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.reconnect_if_closed()?;
        Ok(self.client.batch_execute(sql)?)
    }

    fn begin(&mut self, how: Begin) -> Result<()> {
        let sql = match how {
            // One snapshot for every statement: a version's row and its
            // pages are read as of one moment.
            Begin::Read => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            Begin::Write => "BEGIN",
        };
        self.reconnect_if_closed()?;
        self.client.batch_execute(sql)?;
        self.in_transaction = true;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.in_transaction = false;
        Ok(self.client.batch_execute("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<()> {
        self.in_transaction = false;
        Ok(self.client.batch_execute("ROLLBACK")?)
    }

    fn explain(&self, name: &str, e: anyhow::Error) -> anyhow::Error {
        explain(name, e)
    }
}

/// Rewrites PostgreSQL errors into one line naming the database; other
/// errors pass through.
pub(super) fn explain(name: &str, e: anyhow::Error) -> anyhow::Error {
    let Some(pg) = e.downcast_ref::<postgres::Error>() else {
        return e;
    };
    if let Some(db) = pg.as_db_error() {
        return anyhow::anyhow!("database {name}: {}", db.message());
    }
    if pg.is_closed() {
        return anyhow::anyhow!("database {name}: the connection is closed");
    }
    // Connection errors carry their cause (refused, no such host, ...).
    let cause = std::error::Error::source(pg).map_or_else(|| pg.to_string(), |s| s.to_string());
    anyhow::anyhow!("cannot reach database {name}: {cause}")
}

/// `url` without its password, to show in messages.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_names() {
        assert_eq!(
            redact("postgres://ann:secret@db.example/wasnap"),
            "postgres://ann@db.example/wasnap"
        );
        assert_eq!(
            redact("postgres://ann@/wasnap?host=/tmp"),
            "postgres://ann@/wasnap?host=/tmp"
        );
        assert_eq!(redact("postgresql://db/w"), "postgresql://db/w");
    }

    #[test]
    fn placeholders_are_numbered_the_postgres_way() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
    }
}
