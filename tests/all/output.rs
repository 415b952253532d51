//! What the command line prints, and how a large value is kept: a closed
//! pipe ends a listing quietly, listings shorten long values (`--full`
//! shows them whole), a value is stored once and compressed, databases of
//! the earlier schema still open, and an error is one line.

use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;

use crate::cli::{command, fails, ok, scratch, wasnap};

/// Yields a megabyte of "a", then "done".
const BIG_VALUE: &str = r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory (export "memory") 17)
  (data (i32.const 1048576) "done")
  (func (export "run")
    (memory.fill (i32.const 0) (i32.const 97) (i32.const 1048576))
    (drop (call $yield (i32.const 0) (i32.const 1048576)))
    (drop (call $yield (i32.const 1048576) (i32.const 4)))))
"#;

const MEGABYTE: usize = 1 << 20;

/// A database whose instance 1 has yielded the megabyte (version 1).
fn big_value_db() -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, db) = scratch();
    let module = dir.path().join("big.wat");
    std::fs::write(&module, BIG_VALUE).unwrap();
    let out = ok(&db, &["run", module.to_str().unwrap()]);
    assert_eq!(out.len(), MEGABYTE + 1);
    (dir, db)
}

/// Reads the first 10 bytes a command prints, then closes the pipe.
fn head_of(db: &Path, args: &[&str]) -> (Vec<u8>, std::process::Output) {
    let mut child = command()
        .arg("--db")
        .arg(db)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = vec![0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    (head, child.wait_with_output().unwrap())
}

#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    let (_dir, db) = big_value_db();
    for args in [
        &["log", "1", "--full"][..],
        &["ls", "--full"],
        &["inspect", "1", "--full"],
    ] {
        let (head, output) = head_of(&db, args);
        assert_eq!(head.len(), 10);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn listings_shorten_long_values_unless_asked_for_all() {
    let (_dir, db) = big_value_db();
    let shortened = format!("{}… (1048576 bytes)", "a".repeat(64));
    let ls = ok(&db, &["ls"]);
    assert!(ls.contains(&shortened), "{ls}");
    assert!(ls.len() < 1000, "{}", ls.len());
    let log = ok(&db, &["log", "1"]);
    assert!(
        log.contains(&format!(
            "v1 yielded \"{}\"… (1048576 bytes)",
            "a".repeat(64)
        )),
        "{log}"
    );
    let json = ok(&db, &["log", "1", "--json"]);
    assert!(
        json.contains(r#""value_bytes":1048576,"value_shortened":true"#),
        "{json}"
    );
    let inspect = ok(&db, &["inspect", "1"]);
    assert!(inspect.contains("… (1048576 bytes)"), "{inspect}");
    assert!(inspect.len() < 2000, "{}", inspect.len());

    let whole = "a".repeat(MEGABYTE);
    assert!(ok(&db, &["ls", "--full"]).contains(&whole));
    assert!(ok(&db, &["log", "1", "--full"]).contains(&whole));
    let json = ok(&db, &["ls", "--json", "--full"]);
    assert!(json.contains(&format!(
        r#""last_value":"{whole}","last_value_bytes":1048576,"last_value_shortened":false"#
    )));
    assert!(ok(&db, &["inspect", "1", "--full"]).contains(&whole));
    // A short value is shown as it is.
    ok(&db, &["resume", "1"]);
    let ls = ok(&db, &["ls"]);
    assert!(ls.trim_end().ends_with("  done"), "{ls}");
}

#[test]
fn a_yielded_value_is_stored_once_and_compressed() {
    let (_dir, db) = big_value_db();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (value, state, zstd): (usize, usize, bool) = conn
        .query_row(
            "SELECT length(value), length(state), value_zstd FROM versions WHERE number = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(zstd);
    assert!(value < 1000, "the value takes {value} bytes");
    assert!(state < 1000, "the state takes {state} bytes");
    drop(conn);
    // And it comes back whole, for the snapshot as for the listing.
    let snapshot = wasnap::store::Database::open(&db)
        .unwrap()
        .load_version(1, 1)
        .unwrap();
    assert_eq!(snapshot.host.yielded, "a".repeat(MEGABYTE).into_bytes());
}

/// A database written before values were compressed (schema 3) opens,
/// lists and resumes as before, and is upgraded.
#[test]
fn a_database_of_schema_3_still_opens() {
    let (dir, db) = scratch();
    let approval = crate::cli::guest("approval");
    ok(&db, &["run", &approval]);
    ok(&db, &["resume", "1"]);
    // Back to schema 3: no compression flags, full page lists.
    crate::store::downgrade_to_schema_3(&db, 1, 2);
    let before = ok(&db, &["log", "1"]);
    assert!(
        before.contains(r#"v2 yielded "ask boss for permission""#),
        "{before}"
    );
    assert_eq!(
        ok(&db, &["resume", "1", "--send", "true"]),
        "do another after approved\n"
    );
    let version: u32 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, wasnap::store::SCHEMA_VERSION);
    drop(dir);
}

#[test]
fn a_trap_is_one_line_without_the_backtrace() {
    let (dir, db) = scratch();
    let module = dir.path().join("trap.wat");
    std::fs::write(
        &module,
        r#"(module (memory (export "memory") 1) (func (export "run") unreachable))"#,
    )
    .unwrap();
    let error = fails(&db, &["run", module.to_str().unwrap()]);
    assert_eq!(
        error,
        "wasnap: error: the workflow trapped in coroutine 0: wasm trap: wasm `unreachable` instruction executed"
    );
    let output = wasnap(&db, &["log", "1", "--json"]);
    let log = String::from_utf8(output.stdout).unwrap();
    assert!(log.contains(r#""message":"the workflow trapped in coroutine 0: wasm trap: wasm `unreachable` instruction executed""#), "{log}");
}
