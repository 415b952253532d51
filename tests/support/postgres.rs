//! A throwaway PostgreSQL server for the tests and the load test, which
//! include this file as a module of their own.
//!
//! It is Debian's PostgreSQL 15 (`/usr/lib/postgresql/15/bin`, or the
//! server binaries in `WASNAP_TEST_PG_BIN`, which `.ci/run` sets to the
//! newest installed): `initdb` into a new directory under
//! `/tmp`, then `postgres` listening on a Unix socket in that directory
//! and, if asked, on a TCP port of 127.0.0.1 (never another address).
//! PostgreSQL refuses to run as root, so under root both run as `nobody`.
//! A small shell supervisor holds the server; its standard input is a pipe
//! from this process, and when that closes (this process ended, however it
//! ended) it stops the server and deletes the directory.

// Each includer uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where a server listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// Only on a Unix socket in its directory.
    Socket,
    /// Also on a free TCP port of 127.0.0.1 (URLs then use it).
    Loopback,
}

/// A PostgreSQL server: started here, or one named by a URL.
pub struct Server {
    /// The URL of its databases, with `{db}` for a name.
    url: String,
    /// Held open for as long as the server should run: its closing stops
    /// it (see the module's documentation).
    _supervisor: Option<Mutex<Child>>,
    next: AtomicU32,
}

impl Server {
    /// The server whose administrative database is at `url` (a URL whose
    /// database may create others, e.g. `postgres://me@/postgres?host=/tmp`).
    pub fn at(url: &str) -> Server {
        Server {
            url: with_database(url, "{db}"),
            _supervisor: None,
            next: AtomicU32::new(0),
        }
    }

    /// Starts a server: `initdb`, then `postgres` under a supervisor; waits
    /// until it takes connections. `sync`: whether it flushes its log to
    /// disk at every commit, as a real server does (the tests kill workers,
    /// never the server, so they do without).
    pub fn start(listen: Listen, sync: bool) -> Server {
        let started = Instant::now();
        let bin = binaries();
        let dir = PathBuf::from(format!(
            "/tmp/wasnap-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir(&dir).unwrap();
        if let Some((uid, gid)) = unprivileged() {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let initdb = as_server_user(Command::new(bin.join("initdb")).args([
            "--auth=trust",
            "--username=wasnap",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        ]))
        .arg("-D")
        .arg(dir.join("data"))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .output()
        .unwrap();
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let (address, port) = match listen {
            Listen::Socket => (String::new(), 5432),
            Listen::Loopback => ("127.0.0.1".to_string(), free_port()),
        };
        // The server as a child of a shell that stops it, and removes its
        // files, when its standard input closes.
        let script = r#"
            "$1/postgres" -D "$2/data" -k "$2" -c listen_addresses="$3" -p "$4" \
                -c fsync="$5" -c full_page_writes="$5" -c max_connections=200 \
                -c shared_buffers=64MB >"$2/server.log" 2>&1 &
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
                .arg(&address)
                .arg(port.to_string())
                .arg(if sync { "on" } else { "off" })
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
        let url = match listen {
            Listen::Socket => format!("postgres://wasnap@/{{db}}?host={}", dir.display()),
            Listen::Loopback => format!("postgres://wasnap@127.0.0.1:{port}/{{db}}"),
        };
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
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
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

    /// Drops database `name`, ending its sessions.
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
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = before_query.split('/').next().unwrap();
    format!("{scheme}://{authority}/{name}{query}")
}

/// A TCP port of 127.0.0.1 that is free now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The directory of PostgreSQL's server binaries.
fn binaries() -> PathBuf {
    let dir = std::env::var_os("WASNAP_TEST_PG_BIN")
        .filter(|d| !d.is_empty())
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
        command.uid(uid).gid(gid);
    }
    command
}
