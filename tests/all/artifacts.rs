//! Compiled artifacts are native code: the store hands back only those it
//! can authenticate with the user's key, kept outside the database. A
//! crafted database cannot make wasnap run code it did not compile, and a
//! database taken to another user or machine compiles its modules again.

use std::path::Path;

use wasnap::Engine;
use wasnap::store::{ArtifactKey, Database};

use crate::cli::{command, guest, ok, scratch};

/// The artifact rows: module hash, fingerprint, bytes, MAC.
type Row = (Vec<u8>, String, Vec<u8>, Option<Vec<u8>>);

fn artifacts(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut query = conn
        .prepare("SELECT module_hash, fingerprint, bytes, mac FROM compiled ORDER BY rowid")
        .unwrap();
    query
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn a_crafted_artifact_is_not_run() {
    let (_dir, db) = scratch();
    ok(&db, &["run", &guest("approval")]);
    ok(&db, &["run", &guest("greenlet")]);
    let rows = artifacts(&db);
    assert_eq!(rows.len(), 2);
    let (approval, greenlet) = (&rows[0], &rows[1]);
    // The fingerprint is the same in another process of this build.
    assert_eq!(approval.1, Engine::new().unwrap().fingerprint());
    // Greenlet's code, with its genuine MAC, offered as approval's; then
    // garbage with a MAC made up.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let swap = "UPDATE compiled SET bytes = ?2, mac = ?3 WHERE module_hash = ?1";
    conn.execute(swap, rusqlite::params![approval.0, greenlet.2, greenlet.3])
        .unwrap();
    assert_eq!(ok(&db, &["resume", "1"]), "ask boss for permission\n");
    // Not used, and replaced by approval's own, compiled again.
    let replaced = artifacts(&db)
        .into_iter()
        .find(|row| row.0 == approval.0)
        .unwrap();
    assert_eq!(replaced.2, approval.2);
    conn.execute(
        swap,
        rusqlite::params![approval.0, b"\x7fELF...", [0u8; 32]],
    )
    .unwrap();
    assert_eq!(
        ok(&db, &["resume", "1", "--send", "true"]),
        "do another after approved\n"
    );
    // Nor when the module is run again: adding it finds an artifact stored
    // without reading it, and running it authenticates what it reads.
    conn.execute(swap, rusqlite::params![approval.0, greenlet.2, greenlet.3])
        .unwrap();
    assert_eq!(ok(&db, &["run", &guest("approval")]), "do something\n");
    let replaced = artifacts(&db)
        .into_iter()
        .find(|row| row.0 == approval.0)
        .unwrap();
    assert_eq!(replaced.2, approval.2);
}

/// The key is the user's, not the database's: another user (or machine)
/// has another key, and compiles again rather than trust.
#[test]
fn a_database_of_another_user_compiles_its_modules_again() {
    let (dir, db) = scratch();
    ok(&db, &["run", &guest("approval")]);
    let elsewhere = dir.path().join("elsewhere");
    let output = command()
        .env("XDG_CONFIG_HOME", &elsewhere)
        .arg("--db")
        .arg(&db)
        .args(["resume", "1"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout, b"ask boss for permission\n");
    let key_file = elsewhere.join("wasnap/artifact-key");
    let theirs = ArtifactKey::in_file(&key_file).unwrap();
    let store = Database::open(&db).unwrap();
    let engine = Engine::new().unwrap();
    let hash = wasnap::runtime::module_hash(&wat::parse_file(guest("approval")).unwrap());
    store.set_artifact_key(Some(theirs));
    assert!(
        store
            .compiled(&hash, &engine.fingerprint())
            .unwrap()
            .is_some()
    );
    store.set_artifact_key(Some(ArtifactKey::generate().unwrap()));
    assert_eq!(store.compiled(&hash, &engine.fingerprint()).unwrap(), None);
    // Stored, which the check before compiling sees without a key of its
    // own; without any key nothing is kept or used.
    assert!(store.has_compiled(&hash, &engine.fingerprint()).unwrap());
    store.set_artifact_key(None);
    assert_eq!(store.compiled(&hash, &engine.fingerprint()).unwrap(), None);
    assert!(!store.has_compiled(&hash, &engine.fingerprint()).unwrap());
}

/// Adding a module stored before with its artifact compiles nothing: a new
/// engine, as in a new process, finds the artifact instead (a script's
/// `wasnap run` starts its runtime module again each time, and Python's
/// takes a minute to compile).
#[test]
fn adding_a_stored_module_again_compiles_nothing() {
    let (_dir, db) = scratch();
    let wasm = wat::parse_file(guest("approval")).unwrap();
    let executor = || wasnap::Executor::new(Engine::new().unwrap(), Database::open(&db).unwrap());
    let first = executor();
    let hash = first.add_module(&wasm).unwrap();
    assert!(first.engine().cached(&hash).is_some());
    let second = executor();
    assert_eq!(second.add_module(&wasm).unwrap(), hash);
    assert!(
        second.engine().cached(&hash).is_none(),
        "the module was compiled again"
    );
    second.module(&hash).unwrap();
}
