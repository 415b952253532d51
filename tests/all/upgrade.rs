//! Upgrades: suspended instances moved to new code by replaying their
//! recorded history, refused at the first divergence.

use wasnap::executor::{Executor, RunOptions, Upgrade, UpgradeOptions};

use crate::cli::{fails, ok, scratch};
use crate::guests::built;

fn module_of(db: &std::path::Path, instance: &str) -> String {
    let ls = ok(db, &["ls", "--json"]);
    let line = ls
        .lines()
        .find(|l| l.contains(&format!(r#""instance":{instance},"#)))
        .unwrap_or_else(|| panic!("no instance {instance} in {ls}"));
    let start = line.find(r#""module":""#).unwrap() + 10;
    line[start..start + 64].to_string()
}

#[test]
fn a_compatible_upgrade_continues_with_the_new_behaviour() {
    for language in ["c", "rust"] {
        let (_dir, db) = scratch();
        ok(&db, &["run", &built(language, "approval")]);
        assert_eq!(ok(&db, &["resume", "1"]), "ask boss for permission\n");
        let old = module_of(&db, "1");
        let moved = ok(&db, &["upgrade", "1", &built(language, "approval-v2")]);
        assert!(
            moved.contains("instance 1: moved to module")
                && moved.contains("at version 3 (2 steps replayed)"),
            "{language}: {moved}"
        );
        assert_ne!(
            module_of(&db, "1"),
            old,
            "{language}: ls shows the new module"
        );
        let log = ok(&db, &["log", "1"]);
        assert!(
            log.contains("v3 yielded \"ask boss for permission\" (upgraded to module"),
            "{language}: {log}"
        );
        // The new code decides what happens after the pending call.
        assert_eq!(
            ok(&db, &["resume", "1", "--send", "true"]),
            "do another after approved, and tell the team\n",
            "{language}"
        );
        // The old versions stay on the old code.
        assert_eq!(
            ok(&db, &["resume", "1@2", "--send", "true"]),
            "do another after approved\n",
            "{language}"
        );
        assert_eq!(
            module_of(&db, "1"),
            old,
            "{language}: the head is on the old module again"
        );
        // A snapshot file of the upgraded version carries the new module.
        let file = db.with_extension("wsnap");
        ok(&db, &["snapshot", "1@3", "-o", file.to_str().unwrap()]);
        assert_eq!(
            ok(&db, &["restore", file.to_str().unwrap(), "--send", "false"]),
            "do another after rejected, and tell the team\n"
        );
    }
}

#[test]
fn an_incompatible_upgrade_is_refused_with_its_first_divergence_and_changes_nothing() {
    for language in ["c", "rust"] {
        let (_dir, db) = scratch();
        ok(&db, &["run", &built(language, "approval")]);
        ok(&db, &["resume", "1"]);
        let before = (ok(&db, &["ls", "--json"]), ok(&db, &["log", "1", "--json"]));
        let error = fails(
            &db,
            &["upgrade", "1", &built(language, "approval-reworded")],
        );
        assert!(
            error.contains(
                "step 2 (version 2, a resume without a reply): the old code yielded \"ask boss for permission\"; \
                 the new code yields \"ask the boss for permission, please\""
            ),
            "{language}: {error}"
        );
        let dry = fails(
            &db,
            &[
                "upgrade",
                "1",
                &built(language, "approval-reworded"),
                "--dry-run",
            ],
        );
        assert_eq!(dry, error, "{language}");
        let after = (ok(&db, &["ls", "--json"]), ok(&db, &["log", "1", "--json"]));
        assert_eq!(
            before, after,
            "{language}: a refused upgrade changed the database"
        );
        assert_eq!(
            ok(&db, &["resume", "1", "--send", "true"]),
            "do another after approved\n"
        );
    }
}

#[test]
fn a_dry_run_over_several_instances_says_which_can_move() {
    let (_dir, db) = scratch();
    let approval = built("c", "approval");
    // 1 waits at "do something", 2 for the boss, 3 after the boss said yes,
    // 4 has finished.
    for _ in 0..4 {
        ok(&db, &["run", &approval]);
    }
    ok(&db, &["resume", "2"]);
    ok(&db, &["resume", "3"]);
    ok(&db, &["resume", "3", "--send", "true"]);
    ok(&db, &["resume", "4"]);
    ok(&db, &["resume", "4", "--send", "true"]);
    ok(&db, &["resume", "4"]);
    let old = module_of(&db, "1");
    let before = ok(&db, &["ls", "--json"]);

    let table = crate::cli::wasnap(
        &db,
        &[
            "upgrade",
            "--all",
            &old[..12],
            &built("c", "approval-v2"),
            "--dry-run",
        ],
    );
    assert!(!table.status.success(), "one instance cannot move");
    let table = String::from_utf8(table.stdout).unwrap();
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[0].contains("1     1      1  can move (1 step replayed)"),
        "{table}"
    );
    assert!(
        rows[1].contains("2     2      2  can move (2 steps replayed)"),
        "{table}"
    );
    assert!(
        rows[2].contains(
            "3     3      3  diverges at step 3 (version 3, the resume with reply \"true\")"
        ),
        "{table}"
    );
    assert_eq!(
        ok(&db, &["ls", "--json"]),
        before,
        "a dry run changed the database"
    );

    // The patched code fits all three histories: they move.
    let moved = ok(
        &db,
        &["upgrade", "--all", &approval, &built("c", "approval-v3")],
    );
    assert_eq!(moved.matches("moved to module").count(), 3, "{moved}");
    // Instance 1 had not reached the patched step: it takes it now.
    assert_eq!(ok(&db, &["resume", "1"]), "audit: approval requested\n");
    assert_eq!(ok(&db, &["resume", "1"]), "ask boss for permission\n");
    // Instance 2 had: it goes on without it.
    assert_eq!(
        ok(&db, &["resume", "2", "--send", "false"]),
        "do another after rejected\n"
    );
    // Instance 1's history now holds the patch: code without it diverges.
    let error = fails(&db, &["upgrade", "1", &built("c", "approval-v2")]);
    assert!(
        error.contains("the old code yielded \"audit: approval requested\"; the new code yields \"ask boss for permission\""),
        "{error}"
    );
    let error = fails(&db, &["upgrade", "4", &built("c", "approval-v2")]);
    assert!(error.contains("instance 4 is finished"), "{error}");
}

/// A workflow that takes inputs from outside (random bytes, the clock) and
/// yields them; `TAIL` is what it yields last.
fn inputs_workflow(first_read: &str, tail: &str) -> Vec<u8> {
    let read_random = "(drop (call $random_get (i32.const 64) (i32.const 8)))";
    let read_clock = "(drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 64)))";
    let (first, second) = match first_read {
        "random" => (read_random, read_clock),
        _ => (read_clock, read_random),
    };
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
          (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
          (import "wasnap" "reply" (func $reply (param i32 i32) (result i32)))
          (import "wasnap" "respond" (func $respond (param i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 128) "{tail}")
          (global $count (mut i32) (i32.const 0))
          (func (export "update_add")
            (drop (call $reply (i32.const 200) (i32.const 1)))
            (global.set $count (i32.add (global.get $count) (i32.load8_u (i32.const 200))))
            (i32.store (i32.const 204) (global.get $count))
            (call $respond (i32.const 204) (i32.const 4)))
          (func (export "run")
            {first}
            (drop (call $yield (i32.const 64) (i32.const 8)))
            {second}
            (drop (call $yield (i32.const 64) (i32.const 8)))
            (drop (call $yield (i32.const 128) (i32.const {len})))))"#,
        len = tail.len()
    ))
    .unwrap()
}

#[test]
fn clocks_random_bytes_and_updates_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::open(dir.path().join("wasnap.db")).unwrap();
    let options = RunOptions::default();
    let original = executor
        .add_module(&inputs_workflow("random", "end"))
        .unwrap();
    let first = executor.start(&original, &["w".into()], &options).unwrap();
    let instance = first.instance;
    executor.update(instance, "add", b"\x05", &options).unwrap();
    executor.resume(instance, None, b"", &options).unwrap();

    // Same reads, another ending: it moves, having seen the same bytes.
    let compatible = inputs_workflow("random", "the new end");
    let dry = executor
        .upgrade(instance, &compatible, UpgradeOptions { dry_run: true })
        .unwrap();
    assert_eq!(dry.outcome, Upgrade::Possible);
    assert_eq!(dry.steps, 3);

    // The clock read first: the first step diverges, naming both reads.
    let swapped = inputs_workflow("clock", "end");
    let report = executor
        .upgrade(instance, &swapped, UpgradeOptions::default())
        .unwrap();
    let Upgrade::Diverged(divergence) = report.outcome else {
        panic!("{report:?}")
    };
    assert_eq!((divergence.step, divergence.version), (1, 1));
    assert_eq!(divergence.new, "reads the wall clock");
    assert_eq!(divergence.old, "draws random bytes (input 1)");
    assert!(
        divergence.to_string().contains(
            "the old code draws random bytes (input 1); the new code reads the wall clock"
        ),
        "{divergence}"
    );

    let report = executor
        .upgrade(instance, &compatible, UpgradeOptions::default())
        .unwrap();
    assert_eq!(report.outcome, Upgrade::Moved { version: 4 });
    let end = executor.resume(instance, None, b"", &options).unwrap();
    assert_eq!(
        end.ended,
        wasnap::executor::Ended::Suspended {
            value: b"the new end".to_vec()
        }
    );
    // The update's effect came through the replay.
    let count = executor.update(instance, "add", b"\x01", &options).unwrap();
    assert_eq!(count.result, 6u32.to_le_bytes());
}

/// A question with a deadline ("approve?") and then a yield of "timed
/// out" or of `answered`, depending on what `yield_timeout` returned.
fn deadline_workflow(answered: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
          (import "wasnap" "yield_timeout" (func $ask (param i32 i32 i64) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "timed out")
          (data (i32.const 16) "approve?")
          (data (i32.const 32) "{answered}")
          (func (export "run")
            (if (i32.lt_s (call $ask (i32.const 16) (i32.const 8) (i64.const 3600000)) (i32.const 0))
              (then (drop (call $yield (i32.const 0) (i32.const 9))))
              (else (drop (call $yield (i32.const 32) (i32.const {len})))))))"#,
        len = answered.len()
    ))
    .unwrap()
}

/// A deadline that passed is replayed as the timer firing, not as an
/// empty reply: the upgraded instance stays on the timed-out path.
#[test]
fn a_timed_out_deadline_is_replayed_as_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::open(dir.path().join("wasnap.db")).unwrap();
    let original = executor.add_module(&deadline_workflow("answered")).unwrap();
    let first = executor
        .start(&original, &["w".into()], &RunOptions::default())
        .unwrap();
    let woken = RunOptions {
        wake: true,
        ..RunOptions::default()
    };
    let timed_out = executor.resume(first.instance, None, b"", &woken).unwrap();
    let timed_out_value = wasnap::executor::Ended::Suspended {
        value: b"timed out".to_vec(),
    };
    assert_eq!(timed_out.ended, timed_out_value);
    let history = executor.database().versions(first.instance).unwrap();
    assert_eq!(history[1].origin, wasnap::store::Origin::Wake);

    let report = executor
        .upgrade(
            first.instance,
            &deadline_workflow("answered in time"),
            UpgradeOptions::default(),
        )
        .unwrap();
    assert_eq!(report.outcome, Upgrade::Moved { version: 3 });
    let versions = executor.database().versions(first.instance).unwrap();
    assert_eq!(versions[2].value, b"timed out");
}
