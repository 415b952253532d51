//! Queries and updates: a guest's handlers run on a stored version, from
//! the command line (every step a new process) and through the library.

use std::path::Path;

use wasnap::executor::{Ended, Executor, RunOptions};
use wasnap::runtime::Captured;
use wasnap::store::InstanceId;
use wasnap::{Engine, Output, Settings, Step};

use crate::cli::{fails, ok, scratch};
use crate::guests::built;

/// The five languages' optimised builds.
const LANGUAGES: [&str; 5] = ["wat", "c", "rust", "zig", "assemblyscript"];

fn versions(db: &Path, id: &str) -> usize {
    ok(db, &["log", id, "--json"]).lines().count()
}

/// An executor on a new database, and the instance it started of the
/// module written in `text` (its first run done), named `name`.
fn started(text: &str, name: &str) -> (tempfile::TempDir, Executor, InstanceId) {
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::open(dir.path().join("wasnap.db")).unwrap();
    let module = executor.add_module(&wat::parse_str(text).unwrap()).unwrap();
    let instance = executor
        .start(&module, &[name.into()], &RunOptions::default())
        .unwrap()
        .instance;
    (dir, executor, instance)
}

#[test]
fn deploy_is_queried_and_updated_while_it_waits_in_every_language() {
    for language in LANGUAGES {
        let (_dir, db) = scratch();
        deploy_is_queried_and_updated(&db, &built(language, "deploy"), "1", language);
    }
}

/// The deploy demo, started with `wasnap run PROGRAM` as instance `id` of
/// `db`, is queried and updated while it
/// waits: a query commits nothing, an update is a new version waiting at
/// the same call, and the instance then rolls out to the machines the
/// update asked for.
pub(crate) fn deploy_is_queried_and_updated(db: &Path, program: &str, id: &str, label: &str) {
    let run = |args: &[&str]| ok(db, args);
    let at_first = format!("{id}@1");
    assert_eq!(
        run(&["run", program]),
        "building release\nwaiting for approval [yes/no]\n"
    );
    // A query changes nothing.
    assert_eq!(
        run(&["query", id, "status"]),
        "waiting for approval [yes/no] (0 of 3 machines done)\n",
        "{label}"
    );
    assert_eq!(versions(db, id), 1, "{label}: a query committed something");
    // An update is a new version, waiting at the same call.
    assert_eq!(
        run(&["update", id, "machines", "--arg", "4"]),
        "machines = 4\n",
        "{label}"
    );
    let log = ok(db, &["log", id]);
    assert!(
        log.contains("v2 yielded \"waiting for approval [yes/no]\"") && log.contains("machines"),
        "{label}: {log}"
    );
    // The old version is as it was; the head has 4 machines.
    assert_eq!(
        run(&["query", &at_first, "status"]),
        "waiting for approval [yes/no] (0 of 3 machines done)\n",
        "{label}"
    );
    assert_eq!(
        run(&["query", id, "status"]),
        "waiting for approval [yes/no] (0 of 4 machines done)\n",
        "{label}"
    );
    let refused = run(&["update", id, "machines", "--arg", "0"]);
    assert!(refused.starts_with("refused"), "{label}: {refused}");
    let mut out = run(&["resume", id, "--send", "yes"]);
    // The maintenance window's timer, woken early; it keeps the update.
    assert_eq!(
        run(&["query", id, "status"]),
        "waiting for the maintenance window (0 of 4 machines done)\n",
        "{label}"
    );
    out += &run(&["resume", id, "--now"]);
    for _ in 0..4 {
        out += &run(&["resume", id, "--send", "ok"]);
    }
    assert_eq!(
        out,
        "waiting for the maintenance window\n\
         deploying to machine-1\ndeploying to machine-2\ndeploying to machine-3\n\
         deploying to machine-4\ndeployed to 4 machines\n",
        "{label}"
    );
}

#[test]
fn approval_status_through_the_library_in_every_language() {
    for language in LANGUAGES {
        let dir = tempfile::tempdir().unwrap();
        let executor = Executor::open(dir.path().join("wasnap.db")).unwrap();
        let wasm = std::fs::read(built(language, "approval")).unwrap();
        let module = executor.add_module(&wasm).unwrap();
        let quiet = RunOptions {
            stdout: Output::Capture(Captured::default()),
            ..RunOptions::default()
        };
        let first = executor
            .start(&module, &["approval".into()], &quiet)
            .unwrap();
        let second = executor.resume(first.instance, None, b"", &quiet).unwrap();
        let status = |version| {
            executor
                .query(first.instance, version, "status", b"", &quiet)
                .unwrap()
        };
        assert_eq!(status(Some(1)), b"do something", "{language}");
        assert_eq!(status(None), b"ask boss for permission", "{language}");
        let error = executor
            .query(first.instance, None, "nothing", b"", &quiet)
            .unwrap_err();
        assert!(
            format!("{error:#}")
                .contains("no query handler \"nothing\" (no export query_nothing; it has: status)"),
            "{language}: {error:#}"
        );
        let last = executor
            .resume(first.instance, Some(second.version), b"true", &quiet)
            .unwrap();
        assert_eq!(
            last.ended,
            Ended::Suspended {
                value: b"do another after approved".to_vec()
            }
        );
    }
}

/// A workflow whose handlers misbehave: one suspends, one traps after
/// writing memory, one reports the shadow-stack pointer it runs with.
const MISBEHAVING: &str = r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (import "wasnap" "reply" (func $reply (param i32 i32) (result i32)))
  (import "wasnap" "respond" (func $respond (param i32 i32)))
  (import "wasnap" "spawn" (func $spawn (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "switch" (func $switch (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $__stack_pointer (mut i32) (i32.const 4096))
  (table 1 funcref)
  (elem (i32.const 0) $g)
  (data (i32.const 16) "waiting")
  ;; g runs on [8192, 8192+256) and suspends the workflow from there.
  (func $g (param i32)
    (global.set $__stack_pointer (i32.sub (global.get $__stack_pointer) (i32.const 32)))
    (drop (call $yield (i32.const 16) (i32.const 7))))
  (func (export "run")
    (global.set $__stack_pointer (i32.sub (global.get $__stack_pointer) (i32.const 64)))
    (drop (call $switch (call $spawn (i32.const 0) (i32.const 0) (i32.const 8192) (i32.const 256))
                        (i32.const 0))))
  (func (export "query_suspends")
    (drop (call $yield (i32.const 16) (i32.const 7))))
  (func (export "update_traps")
    (i32.store (i32.const 100) (i32.const 7))
    unreachable)
  (func (export "query_stack")
    ;; The pointer as 4 little-endian bytes.
    (i32.store (i32.const 200) (global.get $__stack_pointer))
    (call $respond (i32.const 200) (i32.const 4))))
"#;

#[test]
fn a_handler_cannot_suspend_and_a_failed_update_commits_nothing() {
    let (_dir, executor, instance) = started(MISBEHAVING, "m");
    let options = RunOptions::default();
    let error = executor
        .query(instance, None, "suspends", b"", &options)
        .unwrap_err();
    assert!(
        format!("{error:#}").contains(
            "handler query_suspends called wasnap.yield: a query or update handler must not suspend"
        ),
        "{error:#}"
    );
    let error = executor
        .update(instance, "traps", b"", &options)
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("handler update_traps failed"),
        "{error:#}"
    );
    let error = executor
        .update(instance, "suspends", b"", &options)
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("no update handler"),
        "{error:#}"
    );
    assert_eq!(executor.database().versions(instance).unwrap().len(), 1);
    assert_eq!(
        executor.database().instance(instance).unwrap().head,
        Some(1)
    );
}

/// A module whose `query_*` answers any name with that name, except
/// `refuse`, which it fails with a message of its own; `query_exact` is
/// exported under its own name too.
const ANY_NAME: &str = r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (import "wasnap" "respond" (func $respond (param i32 i32)))
  (import "wasnap" "handler_name" (func $handler_name (param i32 i32) (result i32)))
  (import "wasnap" "handler_fail" (func $handler_fail (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "waiting")
  (data (i32.const 16) "not answered here")
  (func (export "run") (drop (call $yield (i32.const 0) (i32.const 7))))
  (func (export "query_*") (local $len i32)
    ;; Room for 2 bytes: the whole length comes back, to ask again.
    (local.set $len (call $handler_name (i32.const 100) (i32.const 2)))
    (drop (call $handler_name (i32.const 100) (local.get $len)))
    (if (i32.eq (i32.load8_u (i32.const 100)) (i32.const 114)) ;; 'r'
      (then (call $handler_fail (i32.const 16) (i32.const 17)) unreachable))
    (call $respond (i32.const 100) (local.get $len)))
  (func (export "query_exact") (call $respond (i32.const 0) (i32.const 4))))
"#;

#[test]
fn a_handler_for_any_name_reads_the_name_and_can_fail_with_a_message() {
    let (_dir, executor, instance) = started(ANY_NAME, "any");
    let options = RunOptions::default();
    let query = |name: &str| executor.query(instance, None, name, b"", &options);
    assert_eq!(query("status").unwrap(), b"status");
    assert_eq!(query("a-much-longer-name").unwrap(), b"a-much-longer-name");
    // A handler exported under its own name goes first.
    assert_eq!(query("exact").unwrap(), b"wait");
    let error = format!("{:#}", query("refuse").unwrap_err());
    assert!(
        error.contains("handler query_refuse failed: not answered here"),
        "{error}"
    );
    // Only queries answer any name here.
    let error = format!(
        "{:#}",
        executor
            .update(instance, "status", b"", &options)
            .unwrap_err()
    );
    assert!(error.contains("no update handler \"status\""), "{error}");
    assert_eq!(executor.database().versions(instance).unwrap().len(), 1);
}

#[test]
fn handler_imports_outside_a_handler_fail_the_run() {
    let calls = [
        (
            "handler_name",
            r#"(import "wasnap" "handler_name" (func $f (param i32 i32) (result i32)))
               (func (export "run") (drop (call $f (i32.const 0) (i32.const 0))))"#,
        ),
        (
            "handler_fail",
            r#"(import "wasnap" "handler_fail" (func $f (param i32 i32)))
               (func (export "run") (call $f (i32.const 0) (i32.const 0)))"#,
        ),
    ];
    for (import, body) in calls {
        let text = format!("(module {body} (memory (export \"memory\") 1))");
        let dir = tempfile::tempdir().unwrap();
        let executor = Executor::open(dir.path().join("wasnap.db")).unwrap();
        let module = executor
            .add_module(&wat::parse_str(&text).unwrap())
            .unwrap();
        let ran = executor
            .start(&module, &["outside".into()], &RunOptions::default())
            .unwrap();
        match ran.ended {
            Ended::Failed { message } => assert!(
                message.contains(&format!(
                    "wasnap.{import} called outside a query or update handler"
                )),
                "{message}"
            ),
            other => panic!("{import}: {other:?}"),
        }
    }
}

#[test]
fn a_handler_runs_below_the_suspended_main_and_leaves_the_stack_pointer_as_it_was() {
    let engine = Engine::new().unwrap();
    let module = engine.load(&wat::parse_str(MISBEHAVING).unwrap()).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(b"waiting".to_vec()));
    let before = workflow.snapshot().unwrap();
    // Coroutine g suspended the workflow: the global holds g's pointer, in
    // g's own small stack; main left its own at 4096 - 64.
    let main = &before.coroutines[0];
    assert_eq!(main.stack_pointer, 4096 - 64);
    let at = workflow.update("stack", b"").unwrap_err();
    assert!(format!("{at:#}").contains("no update handler"), "{at:#}");

    let mut workflow = engine.restore(&module, &before).unwrap();
    let pointer = workflow.query("stack", b"").unwrap();
    assert_eq!(u32::from_le_bytes(pointer.try_into().unwrap()), 4096 - 64);
    let after = workflow.snapshot().unwrap();
    assert_eq!(
        after.globals, before.globals,
        "the stack pointer is put back"
    );
    assert_eq!(after.coroutines, before.coroutines);
    // The workflow goes on as if nothing had happened.
    assert_eq!(workflow.run().unwrap(), Step::Finished(0));
}

#[test]
fn handler_errors_on_the_command_line_are_one_line() {
    let (_dir, db) = scratch();
    ok(&db, &["run", &built("c", "approval")]);
    let error = fails(&db, &["query", "1", "nothing"]);
    assert!(error.contains("no query handler \"nothing\""), "{error}");
    let error = fails(&db, &["update", "1", "status"]);
    assert!(error.contains("no update handler \"status\""), "{error}");
    assert_eq!(versions(&db, "1"), 1);
}

/// A workflow whose query handler recurses `depth` calls deep, each frame
/// holding a few locals, and responds with the depth it reached.
const DEEP_QUERY: &str = r#"(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (import "wasnap" "respond" (func $respond (param i32 i32)))
  (memory (export "memory") 1)
  (func $down (param $n i32) (result i32)
    (local f64 f64 f64 f64 f64 f64 f64 f64)
    (if (result i32) (i32.eqz (local.get $n))
      (then (i32.const 0))
      (else (i32.add (i32.const 1) (call $down (i32.sub (local.get $n) (i32.const 1)))))))
  (func (export "query_deep")
    (i32.store (i32.const 0) (call $down (i32.const 20000)))
    (call $respond (i32.const 0) (i32.const 4)))
  (func (export "run") (drop (call $yield (i32.const 0) (i32.const 0)))))"#;

/// A handler runs on a native stack sized for the engine's Wasm stack
/// limit, as a run does, whatever thread calls it: here one with 256 KiB,
/// far less than the handler's 20,000 frames need.
#[test]
fn a_deep_handler_runs_whatever_the_calling_threads_stack() {
    let (_dir, executor, instance) = started(DEEP_QUERY, "deep");
    let options = RunOptions::default();
    let result = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || executor.query(instance, None, "deep", b"", &options))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(result, 20000u32.to_le_bytes());
}
