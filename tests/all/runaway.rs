//! Guests that run away (loop for ever, grow their memory, recurse without
//! end) or suspend where they cannot (in their start function). Each run
//! ends with one line naming what stopped it; a stopped run is recorded as
//! a failed version, and the version it started from resumes as before.

use std::time::Duration;

use wasnap::runtime::LimitReached;
use wasnap::runtime::Policy;
use wasnap::store::{Database, InstanceState, Outcome, VersionKind};
use wasnap::{Engine, Settings, Step};

use crate::cli::{fails, ok, scratch};

/// Yields once; then the reply's length says what it does: 1 loops for
/// ever, 2 grows its memory by 1,000 pages, 3 recurses without end, 0
/// finishes.
const RUNAWAY: &str = r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $recurse (param i32) (result i32)
    (i32.add (i32.const 1) (call $recurse (local.get 0))))
  (func (export "run")
    (local $what i32)
    (local.set $what (call $yield (i32.const 0) (i32.const 0)))
    (if (i32.eq (local.get $what) (i32.const 1))
      (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $what) (i32.const 2))
      (then (drop (memory.grow (i32.const 1000)))))
    (if (i32.eq (local.get $what) (i32.const 3))
      (then (drop (call $recurse (i32.const 0)))))))
"#;

/// Runs RUNAWAY to its yield (version 1), then from version 1 with
/// `reply` under `settings`: the run must stop with `cause`, be recorded
/// as failed version 2, and version 1 must still finish when resumed.
fn stopped_and_recorded(reply: &str, settings: Settings, cause: &str) {
    let (_dir, path) = scratch();
    let store = Database::open(&path).unwrap();
    let wasm = wat::parse_str(RUNAWAY).unwrap();
    let hash = store.put_module(&wasm).unwrap();
    let instance = store
        .create_instance(&hash, &[], &Policy::default())
        .unwrap();
    let lease = store.lease(instance).unwrap();
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();

    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    let v1 = workflow.snapshot().unwrap();
    store
        .commit_version(&lease, None, &Outcome::Suspended(&v1), b"")
        .unwrap();

    let from_v1 = store.load_version(instance, 1).unwrap();
    let mut workflow = engine.restore_with(&module, &from_v1, settings).unwrap();
    workflow.send(reply.as_bytes());
    let error = workflow.run().unwrap_err();
    assert!(error.is::<LimitReached>(), "{error:#}");
    let message = format!("{error:#}");
    assert!(message.contains(cause), "{message}");
    assert!(!message.contains('\n'), "{message}");
    let failed = Outcome::Failed { message: &message };
    let v2 = store
        .commit_version(&lease, Some(1), &failed, reply.as_bytes())
        .unwrap();
    assert_eq!(v2, 2);
    assert_eq!(
        store.instance(instance).unwrap().state,
        InstanceState::Failed
    );

    let mut again = engine
        .restore(&module, &store.load_version(instance, 1).unwrap())
        .unwrap();
    assert_eq!(again.run().unwrap(), Step::Finished(0));
    let finished = Outcome::Finished {
        exit_status: Some(0),
        result: b"",
    };
    assert_eq!(
        store
            .commit_version(&lease, Some(1), &finished, b"")
            .unwrap(),
        3
    );
    let versions = store.versions(instance).unwrap();
    let shape: Vec<_> = versions
        .iter()
        .map(|v| (v.number, v.parent, v.kind))
        .collect();
    assert_eq!(
        shape,
        [
            (1, None, VersionKind::Suspended),
            (2, Some(1), VersionKind::Failed),
            (3, Some(1), VersionKind::Finished)
        ]
    );
    assert_eq!(versions[1].message.as_deref(), Some(message.as_str()));
}

#[test]
fn a_time_limit_stops_an_endless_loop_and_the_version_before_stays_resumable() {
    let settings = Settings::default().time_limit(Duration::from_millis(100));
    stopped_and_recorded("l", settings, "ran past its time limit of 100ms");
}

#[test]
fn a_memory_limit_stops_growth_and_the_version_before_stays_resumable() {
    let settings = Settings::default().memory_limit(4 << 20);
    stopped_and_recorded(
        "gg",
        settings,
        "ran past its memory limit of 4194304 bytes (a memory of 65536 bytes was to grow to 65601536)",
    );
}

#[test]
fn a_stack_overflow_stops_the_run_and_the_version_before_stays_resumable() {
    stopped_and_recorded(
        "rrr",
        Settings::default(),
        "overflowed its call stack in function 1 (recurse)",
    );
}

/// The command line records the failed run too (no limit needs setting
/// for this one) and resumes the version before it.
#[test]
fn a_stack_overflow_through_the_command_line_is_one_line_and_a_failed_version() {
    let (dir, db) = scratch();
    let module = dir.path().join("runaway.wat");
    std::fs::write(&module, RUNAWAY).unwrap();
    ok(&db, &["run", module.to_str().unwrap()]);
    let error = fails(&db, &["resume", "1", "--send", "rrr"]);
    assert!(error.contains("overflowed its call stack"), "{error}");
    let log = ok(&db, &["log", "1", "--json"]);
    assert!(
        log.contains(r#""version":2,"parent":1,"kind":"failed""#),
        "{log}"
    );
    ok(&db, &["resume", "1@1"]);
    let log = ok(&db, &["log", "1", "--json"]);
    assert!(
        log.contains(r#""version":3,"parent":1,"kind":"finished""#),
        "{log}"
    );
}

/// A start function that suspends: nothing could ever call into it again
/// to rewind it. Refused with one line before anything is stored.
#[test]
fn a_start_function_that_yields_is_refused_and_nothing_is_stored() {
    let wat = r#"
        (module
          (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func $init (drop (call $yield (i32.const 0) (i32.const 0))))
          (start $init)
          (func (export "run")))"#;
    let engine = Engine::new().unwrap();
    let module = engine.load(&wat::parse_str(wat).unwrap()).unwrap();
    let error = match engine.start(&module, Settings::default()) {
        Ok(_) => panic!("a start function suspended"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("the module's start function called wasnap.yield"),
        "{error}"
    );

    let (dir, db) = scratch();
    let path = dir.path().join("start.wat");
    std::fs::write(&path, wat).unwrap();
    let error = fails(&db, &["run", path.to_str().unwrap()]);
    assert!(
        error.contains("start.wat: instantiating the module: the module's start function called wasnap.yield, but wasnap's imports can only be used once the workflow runs"),
        "{error}"
    );
    assert_eq!(ok(&db, &["ls", "--json"]), "");
}

/// A start function that loops runs under the time limit too.
#[test]
fn a_start_function_that_loops_is_stopped_by_the_time_limit() {
    let wat = r#"
        (module
          (func $init (loop $forever (br $forever)))
          (start $init)
          (func (export "run")))"#;
    let engine = Engine::new().unwrap();
    let module = engine.load(&wat::parse_str(wat).unwrap()).unwrap();
    let settings = Settings::default().time_limit(Duration::from_millis(50));
    let error = match engine.start(&module, settings) {
        Ok(_) => panic!("an endless start function returned"),
        Err(error) => format!("{error:#}"),
    };
    assert_eq!(
        error,
        "the module's start function ran past the time limit of 50ms"
    );
}
