//! Limits and grants on the command line: stored with an instance when it
//! starts, applied again at every resume (each step a new process),
//! overridden by a resume's own flags, and a run a limit stops is a failed
//! version that leaves the version it started from resumable.

use std::path::Path;

use crate::cli::{fails, ok, scratch, wasnap};

/// Writes `wat` beside the database and returns its path.
fn module(dir: &Path, name: &str, wat: &str) -> String {
    let path = dir.join(format!("{name}.wat"));
    std::fs::write(&path, wat).unwrap();
    path.to_string_lossy().into_owned()
}

/// Yields "ready", then runs forever once resumed.
const RUNAWAY: &str = r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "ready")
  (func (export "run")
    (drop (call $yield (i32.const 0) (i32.const 5)))
    (loop $forever (br $forever))))
"#;

/// Yields "ready", then grows its memory by 100 pages (6.25 MiB) and ends.
const GROWER: &str = r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "ready")
  (func (export "run")
    (drop (call $yield (i32.const 0) (i32.const 5)))
    (drop (memory.grow (i32.const 100)))))
"#;

/// Yields the first environment variable, then, resumed, yields it again,
/// then reads `note.txt` from the directory preopened as descriptor 3 and
/// yields its contents.
const GRANTED: &str = r#"
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "note.txt")
  (data (i32.const 16) "no access")
  ;; Yields the first variable, "KEY=VALUE" (environ_get writes it at 2048).
  (func $yield_first_variable
    (drop (call $environ_sizes_get (i32.const 32) (i32.const 36)))
    (drop (call $environ_get (i32.const 40) (i32.const 2048)))
    ;; The variable's length is the buffer size less its NUL.
    (drop (call $yield (i32.const 2048)
                (i32.sub (i32.load (i32.const 36)) (i32.const 1)))))
  (func (export "run")
    (call $yield_first_variable)
    (call $yield_first_variable)
    ;; path_open(3, 0, "note.txt", 0, fd_read right, 0, 0, &fd at 64)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 8)
                         (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0)
                         (i32.const 64))
      (then (drop (call $yield (i32.const 16) (i32.const 9))) (return)))
    ;; One iovec at 128: 512 bytes at 1024.
    (i32.store (i32.const 128) (i32.const 1024))
    (i32.store (i32.const 132) (i32.const 512))
    (drop (call $fd_read (i32.load (i32.const 64)) (i32.const 128) (i32.const 1)
                         (i32.const 136)))
    (drop (call $yield (i32.const 1024) (i32.load (i32.const 136))))))
"#;

#[test]
fn a_stored_time_limit_stops_a_later_resume_and_the_start_version_stays() {
    let (dir, db) = scratch();
    let runaway = module(dir.path(), "runaway", RUNAWAY);
    assert_eq!(
        ok(&db, &["run", &runaway, "--time-limit", "300ms"]),
        "ready\n"
    );
    // No flag: the limit stored with the instance applies.
    let error = fails(&db, &["resume", "1"]);
    assert!(error.contains("time limit of 300ms"), "{error}");
    // A resume's own flag overrides it for that run.
    let error = fails(&db, &["resume", "1@1", "--time-limit", "200ms"]);
    assert!(error.contains("time limit of 200ms"), "{error}");
    let log = ok(&db, &["log", "1", "--json"]);
    let kinds: Vec<&str> = log
        .lines()
        .map(|line| {
            if line.contains(r#""kind":"failed""#) {
                "failed"
            } else {
                "suspended"
            }
        })
        .collect();
    assert_eq!(kinds, ["suspended", "failed", "failed"], "{log}");
    assert!(log.contains(r#""parent":1"#), "{log}");
    // Version 1 is intact: it can still be written out and resumed.
    let file = dir.path().join("v1.wsnap");
    ok(&db, &["snapshot", "1@1", "-o", file.to_str().unwrap()]);
    let error = fails(&db, &["resume", "1@1", "--time-limit", "100ms"]);
    assert!(error.contains("time limit of 100ms"), "{error}");
}

#[test]
fn a_stored_memory_limit_applies_at_resume_and_can_be_raised() {
    let (dir, db) = scratch();
    let grower = module(dir.path(), "grower", GROWER);
    assert_eq!(
        ok(&db, &["run", &grower, "--memory-limit", "1MiB"]),
        "ready\n"
    );
    let error = fails(&db, &["resume", "1"]);
    assert!(error.contains("memory"), "{error}");
    // The same version, with a larger limit for this run: it finishes.
    let output = wasnap(&db, &["resume", "1@1", "--memory-limit", "64MiB"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("finished at version 3"), "{stderr}");
}

#[test]
fn granted_directories_and_environment_come_back_at_every_resume() {
    let (dir, db) = scratch();
    let granted = module(dir.path(), "granted", GRANTED);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("note.txt"), "hello from the host").unwrap();
    let grant = format!("{}:/data", data.display());
    assert_eq!(
        ok(
            &db,
            &["run", &granted, "--dir", &grant, "--env", "MODE=test"]
        ),
        "MODE=test\n"
    );
    // A resume's --env replaces the environment for that run.
    assert_eq!(
        ok(&db, &["resume", "1", "--env", "MODE=other"]),
        "MODE=other\n"
    );
    // The directory granted at the start is there again, as descriptor 3,
    // in a new process that was given no flags.
    assert_eq!(ok(&db, &["resume", "1"]), "hello from the host\n");

    // Without the grant the same module reaches nothing.
    assert_eq!(
        ok(&db, &["run", &granted, "--env", "MODE=test"]),
        "MODE=test\n"
    );
    ok(&db, &["resume", "2"]);
    assert_eq!(ok(&db, &["resume", "2"]), "no access\n");
}

#[test]
fn bad_limit_and_grant_flags_are_refused_before_anything_is_stored() {
    let (dir, db) = scratch();
    let runaway = module(dir.path(), "runaway", RUNAWAY);
    for (flag, value, cause) in [
        ("--time-limit", "5", "no unit"),
        ("--memory-limit", "1GB", "unknown unit"),
        ("--dir", "/no/such/directory", "not a directory"),
        ("--env", "NOEQUALS", "not KEY=VALUE"),
    ] {
        let error = fails(&db, &["run", &runaway, flag, value]);
        assert!(error.contains(cause), "{flag} {value}: {error}");
    }
    assert!(!db.exists(), "a refused command created the database");
}

/// A run takes place on the command's main thread when the Wasm stack
/// limit fits the stack the command lets that thread grow to, else on a
/// thread of its own: on both, recursion without end stops at the limit
/// with the engine's one-line error, never with a crash of the process.
#[test]
fn recursion_without_end_stops_at_the_limit_on_either_thread() {
    let (dir, db) = scratch();
    // Two billion calls: deeper than any stack.
    let bottomless = DEEP.replace("(i32.const 50000)", "(i32.const 2000000000)");
    let bottomless = module(dir.path(), "bottomless", &bottomless);
    assert_eq!(ok(&db, &["run", &bottomless]), "ready\n");
    for (flags, limit) in [
        (&[][..], "8 MiB"),
        (&["--max-wasm-stack", "64MiB"][..], "64 MiB"),
    ] {
        let mut args = vec!["resume", "1@1"];
        args.extend_from_slice(flags);
        let error = fails(&db, &args);
        assert!(error.contains("ran out of Wasm stack"), "{error}");
        assert!(error.contains(limit), "{error}");
    }
}

/// Yields "ready", then, resumed, recurses 50,000 calls deep: well past
/// 256 KiB of Wasm stack, well within the default 8 MiB.
const DEEP: &str = r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "ready")
  (func $down (param $n i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n))
      (then (i32.const 0))
      (else (i32.add (i32.const 1) (call $down (i32.sub (local.get $n) (i32.const 1)))))))
  (func (export "run")
    (drop (call $yield (i32.const 0) (i32.const 5)))
    (drop (call $down (i32.const 50000)))))
"#;

#[test]
fn running_out_of_wasm_stack_names_the_limit_and_the_start_version_stays() {
    let (dir, db) = scratch();
    let deep = module(dir.path(), "deep", DEEP);
    assert_eq!(ok(&db, &["run", &deep]), "ready\n");
    let error = fails(&db, &["resume", "1", "--max-wasm-stack", "256KiB"]);
    assert!(error.contains("ran out of Wasm stack"), "{error}");
    assert!(error.contains("256 KiB"), "{error}");
    assert!(error.contains("--max-wasm-stack"), "{error}");
    // The limit is not stored: the same version resumes under the default.
    let output = wasnap(&db, &["resume", "1@1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("finished at version 3"), "{stderr}");
    for (value, cause) in [("1KiB", "too small"), ("8MB", "unknown unit")] {
        let error = fails(&db, &["resume", "1@1", "--max-wasm-stack", value]);
        assert!(error.contains(cause), "{value}: {error}");
    }
}
