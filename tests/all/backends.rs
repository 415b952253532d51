//! Both backends for the tests: a fresh database of either kind per test,
//! and the throwaway PostgreSQL server they share.
//!
//! The server is started once per test run, on first use, from Debian's
//! PostgreSQL 15 binaries (`/usr/lib/postgresql/15/bin`, or the directory
//! in `WASNAP_TEST_PG_BIN`): `initdb` into a temporary directory and
//! `postgres` listening only on a Unix socket there. PostgreSQL refuses to
//! run as root, so under root both run as `nobody`. A small shell
//! supervisor holds the server; its standard input is a pipe from the test
//! process, and when that closes (the tests ended, however they ended) it
//! stops the server and deletes the directory. Each test gets a database
//! of its own, dropped when the test ends.
//!
//! `WASNAP_TEST_PG_URL` names a server to use instead (a URL whose
//! database may create others, e.g. `postgres://me@/postgres?host=/tmp`).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
                    let sql = format!("SELECT * FROM {table} ORDER BY 1, 2");
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

/// The PostgreSQL server of this test run.
pub struct Server {
    /// The URL of its administrative database, with `{db}` for a name.
    url: String,
    /// Held open for as long as the tests run: its closing stops the
    /// server (see the module's documentation).
    _supervisor: Option<Mutex<Child>>,
    next: AtomicU32,
}

/// The server, started on first use.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("WASNAP_TEST_PG_URL") {
        Ok(url) => Server {
            url: with_database(&url, "{db}"),
            _supervisor: None,
            next: AtomicU32::new(0),
        },
        Err(_) => start(),
    })
}

impl Server {
    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        self.url.replace("{db}", name)
    }

    /// A new empty database: its name and URL.
    pub fn create_database(&self) -> (String, String) {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            self.next.fetch_add(1, Ordering::SeqCst)
        );
        self.admin()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = self.url(&name);
        (name, url)
    }

    pub fn drop_database(&self, name: &str) {
        let _ = self
            .admin()
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }

    fn admin(&self) -> postgres::Client {
        postgres::Client::connect(&self.url("postgres"), postgres::NoTls).unwrap()
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = before_query.split('/').next().unwrap();
    format!("{scheme}://{authority}/{name}{query}")
}

/// The directory of PostgreSQL's server binaries.
fn binaries() -> PathBuf {
    let dir = std::env::var_os("WASNAP_TEST_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    assert!(
        dir.join("postgres").exists(),
        "no PostgreSQL server in {} (install postgresql-15, or set WASNAP_TEST_PG_BIN)",
        dir.display()
    );
    dir
}

/// `nobody`'s ids when running as root: PostgreSQL will not run as root.
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { geteuid() } == 0;
    root.then_some((65534, 65534))
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

fn as_server_user(command: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = unprivileged() {
        command.uid(uid).gid(gid).groups(&[]);
    }
    command
}

/// Starts the server: `initdb`, then `postgres` under a supervisor, and
/// waits until it takes connections.
fn start() -> Server {
    let started = Instant::now();
    let bin = binaries();
    let dir = PathBuf::from(format!(
        "/tmp/wasnap-pg-{}-{}",
        std::process::id(),
        started.elapsed().subsec_nanos()
    ));
    std::fs::create_dir(&dir).unwrap();
    if let Some((uid, gid)) = unprivileged() {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    let data = dir.join("data");
    let initdb = as_server_user(Command::new(bin.join("initdb")).args([
        "--auth=trust",
        "--username=wasnap",
        "--encoding=UTF8",
        "--no-sync",
        "--no-instructions",
    ]))
    .arg("-D")
    .arg(&data)
    .current_dir(&dir)
    .stdout(Stdio::null())
    .output()
    .unwrap();
    assert!(
        initdb.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    // The server as a child of a shell that stops it, and removes its
    // files, when its standard input closes. Tests kill workers, never the
    // server, so the server need not sync its files to disk.
    let script = r#"
        "$1/postgres" -D "$2/data" -k "$2" -c listen_addresses= -c fsync=off \
            -c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB \
            >"$2/server.log" 2>&1 &
        server=$!
        echo started
        cat >/dev/null
        kill -INT "$server"
        wait "$server"
        rm -rf "$2"
    "#;
    let mut supervisor = as_server_user(
        Command::new("sh")
            .args(["-c", script, "supervisor"])
            .arg(&bin)
            .arg(&dir)
            .current_dir(&dir),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(supervisor.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = format!("postgres://wasnap@/{{db}}?host={}", dir.display());
    let server = Server {
        url,
        _supervisor: Some(Mutex::new(supervisor)),
        next: AtomicU32::new(0),
    };
    // Ready when it takes a connection.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match postgres::Client::connect(&server.url("postgres"), postgres::NoTls) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                panic!("PostgreSQL did not start: {e}\n{log}");
            }
        }
    }
    eprintln!(
        "PostgreSQL 15 started in {:.1} s in {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    server
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
