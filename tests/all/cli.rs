//! The command line, as real processes, on SQLite and on PostgreSQL: the
//! seed demos with every step a new process, branching, snapshot files
//! across databases, moving a store from one backend to the other, and bad
//! input that must change nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::backends::{Backend, TestDb, on_both_backends};
use crate::guests::{LANGUAGES, built};

/// The wasnap binary, with the artifact key of a user of the tests (so
/// that they never touch the real user's configuration).
pub fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasnap"));
    command.env(
        "XDG_CONFIG_HOME",
        concat!(env!("CARGO_TARGET_TMPDIR"), "/config"),
    );
    command
}

pub fn wasnap(db: &Path, args: &[&str]) -> Output {
    command().arg("--db").arg(db).args(args).output().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(db: &Path, args: &[&str]) -> String {
    let output = wasnap(db, args);
    assert!(
        output.status.success(),
        "wasnap {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a command that must fail; returns its one-line error.
pub fn fails(db: &Path, args: &[&str]) -> String {
    let output = wasnap(db, args);
    assert!(!output.status.success(), "wasnap {args:?} succeeded");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    errors[0].to_string()
}

pub fn guest(name: &str) -> String {
    format!(
        "{}/guest-workflows/wat/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    )
}

pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wasnap.db");
    (dir, db)
}

on_both_backends! {
fn approval_demo_every_step_a_new_process(backend: Backend) {
    let test_db = TestDb::new(backend);
    let db = test_db.location();
    assert_eq!(ok(db, &["run", &guest("approval")]), "do something\n");
    assert_eq!(ok(db, &["resume", "1"]), "ask boss for permission\n");
    assert_eq!(
        ok(db, &["resume", "1", "--send", "true"]),
        "do another after approved\n"
    );
    assert_eq!(ok(db, &["resume", "1"]), "");
    let error = fails(db, &["resume", "1"]);
    assert!(error.contains("finished"), "{error}");
    // The same saved moment, another answer.
    assert_eq!(
        ok(db, &["resume", "1@2", "--send", "false"]),
        "do another after rejected\n"
    );
    let log = ok(db, &["log", "1"]);
    assert!(log.contains("v5"), "{log}");
    let ls = ok(db, &["ls", "--json"]);
    assert!(ls.contains(r#""instance":1"#), "{ls}");
}
}

on_both_backends! {
fn greenlet_demo_with_snapshot_files_and_branches(backend: Backend) {
    let test_db = TestDb::new(backend);
    let (dir, db) = (test_db.dir(), test_db.location());
    assert_eq!(ok(db, &["run", &guest("greenlet")]), "enter g\n");
    let v1 = dir.join("v1.wsnap");
    ok(db, &["snapshot", "1@1", "-o", v1.to_str().unwrap()]);
    let decompressed = zstd::decode_all(&std::fs::read(&v1).unwrap()[..]).unwrap();
    assert!(
        decompressed
            .windows(b"special-g-stack".len())
            .any(|w| w == b"special-g-stack"),
        "g's stack is in version 1"
    );
    assert_eq!(ok(db, &["resume", "1@1"]), "a\nleave g\n");
    assert_eq!(ok(db, &["resume", "1"]), "b\n");
    assert_eq!(ok(db, &["resume", "1@1"]), "a\nleave g\n");
    assert_eq!(ok(db, &["resume", "1@3"]), "c\n");
    let log = ok(db, &["log", "1", "--json"]);
    assert!(log.contains(r#""version":4,"parent":1"#), "{log}");

    // The snapshot file is self-contained: a second, empty database.
    let other = TestDb::new(backend);
    assert_eq!(
        ok(other.location(), &["restore", v1.to_str().unwrap()]),
        "a\nleave g\n"
    );
    assert_eq!(ok(other.location(), &["resume", "1"]), "b\n");
}
}

on_both_backends! {
fn inspect_shows_every_coroutine_stack(backend: Backend) {
    let test_db = TestDb::new(backend);
    let db = test_db.location();
    ok(db, &["run", &guest("greenlet")]);
    let report = ok(db, &["inspect", "1"]);
    assert!(report.contains("main"), "{report}");
    assert!(report.contains("coroutine 1"), "{report}");
    assert!(report.contains("#0 run"), "{report}");
    assert!(report.contains("#0 g"), "{report}");
    assert!(report.contains("memory 0"), "{report}");
}
}

/// What the database holds, as the listings show it: instances, and
/// every version of each (a write changes SQLite's file header even when
/// it changes no content, so bytes are not compared).
pub fn content(db: &Path) -> String {
    let mut all = ok(db, &["ls", "--json"]);
    for line in all.clone().lines() {
        let id = line
            .split(r#""instance":"#)
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        all += &ok(db, &["log", id, "--json"]);
    }
    all
}

on_both_backends! {
fn bad_input_gets_one_line_and_changes_nothing(backend: Backend) {
    let test_db = TestDb::new(backend);
    let (dir, db) = (test_db.dir(), test_db.location());
    ok(db, &["run", &guest("approval")]);
    let before = content(db);

    let not_wasm = dir.join("not.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let error = fails(db, &["run", not_wasm.to_str().unwrap()]);
    assert!(error.contains("not a WebAssembly module"), "{error}");

    let threads = dir.join("threads.wat");
    std::fs::write(
        &threads,
        "(module (memory 1 1 shared) (func (export \"run\")))",
    )
    .unwrap();
    let error = fails(db, &["run", threads.to_str().unwrap()]);
    assert!(error.contains("threads"), "{error}");

    let error = fails(db, &["resume", "7"]);
    assert!(error.contains("instance 7"), "{error}");
    let error = fails(db, &["resume", "1@9"]);
    assert!(error.contains("version 9"), "{error}");

    let corrupt = dir.join("corrupt.wsnap");
    ok(db, &["snapshot", "1", "-o", corrupt.to_str().unwrap()]);
    let mut bytes = std::fs::read(&corrupt).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&corrupt, &bytes).unwrap();
    fails(db, &["restore", corrupt.to_str().unwrap()]);
    std::fs::write(&corrupt, &bytes[..middle]).unwrap();
    fails(db, &["restore", corrupt.to_str().unwrap()]);

    assert_eq!(
        content(db),
        before,
        "a failed command changed the database"
    );
    assert_eq!(ok(db, &["resume", "1"]), "ask boss for permission\n");
}
}

#[test]
fn a_file_that_is_not_a_database_is_named() {
    let (dir, _) = scratch();
    let bogus = dir.path().join("bogus.db");
    std::fs::write(&bogus, vec![7u8; 4096]).unwrap();
    let error = fails(&bogus, &["ls"]);
    assert!(error.contains("bogus.db"), "{error}");
}

#[test]
fn instrument_writes_a_module_with_the_asyncify_abi() {
    let (dir, db) = scratch();
    let out = dir.path().join("out.wasm");
    ok(
        &db,
        &[
            "instrument",
            &guest("approval"),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let wasm = std::fs::read(&out).unwrap();
    let exports: Vec<String> = wasmparser::Parser::new(0)
        .parse_all(&wasm)
        .filter_map(|p| match p.unwrap() {
            wasmparser::Payload::ExportSection(r) => Some(
                r.into_iter()
                    .map(|e| e.unwrap().name.to_string())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    for name in [
        "asyncify_start_unwind",
        "asyncify_stop_unwind",
        "asyncify_start_rewind",
        "asyncify_stop_rewind",
        "asyncify_get_state",
    ] {
        assert!(exports.iter().any(|e| e == name), "{name} missing");
    }
    assert!(!db.exists(), "instrument does not touch the database");
}

#[test]
fn instrument_refuses_an_invalid_module_in_one_line() {
    let (dir, db) = scratch();
    // A body calling function 5 of a module with one function: the kind
    // of input that reached the rewrite unvalidated and panicked there.
    let input = dir.path().join("invalid.wasm");
    std::fs::write(&input, wat::parse_str("(module (func call 5))").unwrap()).unwrap();
    let out = dir.path().join("out.wasm");
    let args = [
        "instrument",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    assert_eq!(wasnap(&db, &args).status.code(), Some(1));
    let error = fails(&db, &args);
    assert!(error.contains("invalid.wasm"), "{error}");
    assert!(error.contains("not valid WebAssembly"), "{error}");
    assert!(error.contains("unknown function"), "{error}");
    assert!(!out.exists(), "nothing is written for an invalid module");
}

on_both_backends! {
fn seed_demos_in_every_language_one_process_per_step(backend: Backend) {
    for language in LANGUAGES {
        let test_db = TestDb::new(backend);
        let (dir, db) = (test_db.dir(), test_db.location());
        let approval = built(language, "approval");
        let mut out = ok(db, &["run", &approval]);
        out += &ok(db, &["resume", "1"]);
        out += &ok(db, &["resume", "1", "--send", "true"]);
        out += &ok(db, &["resume", "1"]);
        out += &ok(db, &["resume", "1@2", "--send", "false"]);
        assert_eq!(
            out,
            "do something\nask boss for permission\ndo another after approved\ndo another after rejected\n",
            "{language}"
        );

        let greenlet = built(language, "greenlet");
        let mut out = ok(db, &["run", &greenlet]);
        let v1 = dir.join("v1.wsnap");
        ok(db, &["snapshot", "2@1", "-o", v1.to_str().unwrap()]);
        let raw = zstd::decode_all(&std::fs::read(&v1).unwrap()[..]).unwrap();
        let pickled = raw.windows(15).any(|w| w == b"special-g-stack");
        out += &format!(
            "is greenlet g also pickled? {}\n",
            if pickled { "True" } else { "False" }
        );
        out += &ok(db, &["resume", "2@1"]);
        out += &ok(db, &["resume", "2"]);
        out += &ok(db, &["resume", "2@1"]);
        out += &ok(db, &["resume", "2@3"]);
        assert_eq!(
            out, "enter g\nis greenlet g also pickled? True\na\nleave g\nb\na\nleave g\nc\n",
            "{language}"
        );
    }
}
}

on_both_backends! {
/// A snapshot file written by an earlier build of wasnap (module included)
/// must still restore: the format and the instrumenter's frames are stable
/// across rebuilds. `WASNAP_BLESS=1` writes the file anew, which is only
/// right when the format or the instrumenter version changed on purpose.
fn a_snapshot_from_an_earlier_build_still_restores(backend: Backend) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/approval-v2.wsnap");
    if std::env::var_os("WASNAP_BLESS").is_some() {
        let (_dir, db) = scratch();
        ok(&db, &["run", &guest("approval")]);
        ok(&db, &["resume", "1"]);
        ok(&db, &["snapshot", "1@2", "-o", golden.to_str().unwrap()]);
    }
    let test_db = TestDb::new(backend);
    let db = test_db.location();
    assert_eq!(
        ok(
            db,
            &["restore", golden.to_str().unwrap(), "--send", "true"]
        ),
        "do another after approved\n"
    );
    assert_eq!(
        ok(db, &["resume", "1@1", "--send", "false"]),
        "do another after rejected\n"
    );
}
}

/// Runs `wasnap migrate --from FROM --to TO`; returns what it said.
fn migrate(from: &str, to: &str) -> String {
    let output = wasnap(
        Path::new("unused.db"),
        &["migrate", "--from", from, "--to", to],
    );
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{said}");
    said
}

/// Every suspended version of every instance resumes in `to` exactly as it
/// does in `from` (each resume is a branch, so this changes neither
/// version tree's existing versions).
fn every_version_resumes_alike(from: &Path, to: &Path) {
    for line in ok(from, &["ls", "--json"]).lines() {
        let id = line.split(r#""instance":"#).nth(1).unwrap();
        let id = id.split(',').next().unwrap();
        let log = ok(from, &["log", id, "--json"]);
        for entry in log.lines().filter(|l| l.contains(r#""kind":"suspended""#)) {
            let version = entry.split(r#""version":"#).nth(1).unwrap();
            let version = version.split(',').next().unwrap();
            let target = format!("{id}@{version}");
            let here = wasnap(from, &["resume", &target, "--send", "true"]);
            let there = wasnap(to, &["resume", &target, "--send", "true"]);
            assert_eq!(
                (here.status.success(), &here.stdout),
                (there.status.success(), &there.stdout),
                "resuming {target}"
            );
        }
    }
}

/// `wasnap migrate` moves a SQLite store to PostgreSQL and back: each time
/// the target lists the same instances and version trees, every suspended
/// version resumes there exactly as it does in the source, and new
/// instances take new ids.
#[test]
fn migrate_moves_a_store_to_postgres_and_back() {
    let sqlite = TestDb::new(Backend::Sqlite);
    let from = sqlite.location();
    ok(from, &["run", &guest("approval")]);
    ok(from, &["resume", "1"]);
    ok(from, &["resume", "1", "--send", "true"]);
    ok(from, &["resume", "1@2", "--send", "false"]);
    ok(from, &["run", &guest("greenlet")]);
    ok(from, &["resume", "2@1"]);
    ok(from, &["resume", "2@1"]);
    let postgres = TestDb::new(Backend::Postgres);
    let to = postgres.location();
    let said = migrate(&format!("sqlite:{}", from.display()), to.to_str().unwrap());
    assert!(said.contains("copied 2 instances (7 versions)"), "{said}");
    assert_eq!(content(to), content(from));
    // Run again: nothing more is copied.
    let said = migrate(&format!("sqlite:{}", from.display()), to.to_str().unwrap());
    assert!(said.contains("copied 0 instances (0 versions)"), "{said}");
    assert!(
        said.trim_end().ends_with("; 2 were there already"),
        "{said}"
    );
    let before = content(to);
    every_version_resumes_alike(from, to);
    let new = ok(to, &["run", &guest("approval")]);
    assert_eq!(new, "do something\n");
    assert!(
        ok(to, &["ls"]).contains("\n       3  "),
        "{}",
        ok(to, &["ls"])
    );
    assert_ne!(content(to), before);

    // And back, into a new SQLite file, with what was done on PostgreSQL.
    let back = sqlite.dir().join("back.db");
    let said = migrate(to.to_str().unwrap(), &format!("sqlite:{}", back.display()));
    assert!(said.contains("copied 3 instances"), "{said}");
    assert_eq!(content(&back), content(to));
    every_version_resumes_alike(to, &back);
}

/// A PostgreSQL server that cannot be reached is named in one line.
#[test]
fn an_unreachable_postgres_is_named() {
    let error = fails(
        Path::new("postgres://wasnap:secret@127.0.0.1:1/wasnap"),
        &["ls"],
    );
    assert!(
        error.contains("cannot reach database postgres://wasnap@127.0.0.1:1/wasnap"),
        "{error}"
    );
    assert!(!error.contains("secret"), "{error}");
}

/// Timers on the command line: `ls` shows when a sleep wakes, `resume`
/// before then says so and changes nothing, `--now` wakes it early; a
/// question with a deadline is answered as any other, and `--now` lets
/// its deadline pass.
#[test]
fn sleeps_and_deadlines_one_process_per_step() {
    let (_dir, db) = scratch();
    let waits = format!(
        "{}/tests/fixtures/serve/waits.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    assert_eq!(ok(&db, &["run", &waits]), "command?\n");
    let slept = wasnap(&db, &["resume", "1", "--send", "sleep 3600000"]);
    assert!(slept.status.success());
    let said = String::from_utf8_lossy(&slept.stderr);
    assert!(said.contains("sleeps at version 2 until"), "{said}");
    let listed = ok(&db, &["ls"]);
    assert!(listed.contains("sleeping"), "{listed}");
    assert!(
        listed.contains("wakes") && listed.contains("in 59m"),
        "{listed}"
    );
    let json = ok(&db, &["ls", "--json"]);
    assert!(json.contains(r#""state":"sleeping""#), "{json}");
    assert!(!json.contains(r#""wake_at":null"#), "{json}");

    let early = fails(&db, &["resume", "1"]);
    assert!(
        early.contains("sleeps until") && early.contains("(in 59m"),
        "{early}"
    );
    assert!(early.contains("wake it early"), "{early}");
    assert!(!ok(&db, &["log", "1"]).contains("v3"));
    assert_eq!(ok(&db, &["resume", "1", "--now"]), "command?\n");

    // A question with a deadline: answered before it...
    assert_eq!(
        ok(&db, &["resume", "1", "--send", "ask 3600000"]),
        "answer within a deadline?\n"
    );
    assert!(ok(&db, &["ls"]).contains("deadline"));
    assert_eq!(ok(&db, &["resume", "1", "--send", "here"]), "command?\n");
    // ...or not: --now lets the deadline pass.
    ok(&db, &["resume", "1", "--send", "ask 3600000"]);
    assert_eq!(ok(&db, &["resume", "1", "--now"]), "timed out\n");
    // A plain question has no timer to fire.
    let plain = fails(&db, &["resume", "1", "--now"]);
    assert!(plain.contains("no timer"), "{plain}");
    let log = ok(&db, &["log", "1"]);
    assert!(log.contains("sleeps until"), "{log}");
    assert!(log.contains("(deadline "), "{log}");
}

/// `--version` says how this machine finds changed pages and restores
/// memories, as the library found out.
#[test]
fn version_says_how_memory_pages_are_handled() {
    let (_dir, db) = scratch();
    let line = ok(&db, &["--version"]);
    let expected = format!(
        "wasnap {} ({})\n",
        env!("CARGO_PKG_VERSION"),
        wasnap::runtime::support()
    );
    assert_eq!(line, expected);
    assert!(line.contains("changed pages: "), "{line}");
}
