//! Both backends for the tests: a fresh database of either kind per test,
//! and the throwaway PostgreSQL server they share (see
//! `tests/support/postgres.rs`), started once per test run, on first use.
//! Each test gets a database of its own, dropped when the test ends.
//!
//! `WASNAP_TEST_PG_URL` names a server to use instead (a URL whose
//! database may create others, e.g. `postgres://me@/postgres?host=/tmp`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../support/postgres.rs"]
pub mod postgres_server;

use postgres_server::{Listen, Server, with_database};

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Defines a test once and runs it on both backends, as
/// `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_backends {
    ($(#[$meta:meta])* fn $name:ident($backend:ident: Backend) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($backend: $crate::backends::Backend) $body

            #[test]
            fn sqlite() {
                body($crate::backends::Backend::Sqlite)
            }

            #[test]
            fn postgres() {
                body($crate::backends::Backend::Postgres)
            }
        }
    };
}
pub(crate) use on_both_backends;

/// A fresh, empty database of one backend, deleted when dropped.
pub struct TestDb {
    /// The SQLite file's directory.
    dir: tempfile::TempDir,
    location: PathBuf,
    /// The PostgreSQL database's name.
    postgres: Option<String>,
}

impl TestDb {
    pub fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => TestDb {
                location: dir.path().join("wasnap.db"),
                dir,
                postgres: None,
            },
            Backend::Postgres => {
                let (name, url) = server().create_database();
                TestDb {
                    location: PathBuf::from(url),
                    dir,
                    postgres: Some(name),
                }
            }
        }
    }

    /// What `Database::open` and `--db` take: a path, or the URL.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// A directory for the test's other files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn backend(&self) -> Backend {
        match self.postgres {
            Some(_) => Backend::Postgres,
            None => Backend::Sqlite,
        }
    }

    /// Everything the database holds, table by table, as text, to compare
    /// before and after.
    pub fn dump(&self, tables: &[&str]) -> String {
        match self.backend() {
            Backend::Sqlite => TestDb::sqlite_dump(&self.location, tables),
            Backend::Postgres => {
                let mut out = String::new();
                let mut client = self.client();
                for table in tables {
                    let sql = format!("SELECT * FROM {table} t ORDER BY t");
                    for message in client.simple_query(&sql).unwrap() {
                        if let postgres::SimpleQueryMessage::Row(row) = message {
                            let values: Vec<String> = (0..row.len())
                                .map(|i| format!("{:?}", row.get(i)))
                                .collect();
                            out.push_str(&format!("{table}: {}\n", values.join(", ")));
                        }
                    }
                }
                out
            }
        }
    }

    /// What [`TestDb::dump`] gives, of any SQLite file.
    pub fn sqlite_dump(path: &Path, tables: &[&str]) -> String {
        let mut out = String::new();
        let conn = rusqlite::Connection::open(path).unwrap();
        for table in tables {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
                .unwrap();
            let columns = stmt.column_count();
            let mut rows = stmt.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                let values: Vec<String> = (0..columns)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect();
                out.push_str(&format!("{table}: {}\n", values.join(", ")));
            }
        }
        out
    }

    /// Runs SQL statements on the database directly (to break it on
    /// purpose).
    pub fn execute(&self, sql: &str) {
        match self.backend() {
            Backend::Sqlite => rusqlite::Connection::open(&self.location)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Backend::Postgres => self.client().batch_execute(sql).unwrap(),
        }
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(self.location.to_str().unwrap(), postgres::NoTls).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.postgres {
            server().drop_database(name);
        }
    }
}

/// The PostgreSQL server of this test run, started on first use (or the
/// one `WASNAP_TEST_PG_URL` names).
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("WASNAP_TEST_PG_URL") {
        Ok(url) => Server::at(&url),
        Err(_) => Server::start(Listen::Socket, false),
    })
}

#[test]
fn urls_name_other_databases() {
    assert_eq!(
        with_database("postgres://me@/postgres?host=/tmp", "t1"),
        "postgres://me@/t1?host=/tmp"
    );
    assert_eq!(
        with_database("postgresql://me:pw@db:5433/x", "t2"),
        "postgresql://me:pw@db:5433/t2"
    );
}
