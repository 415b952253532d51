//! Snapshots edited by hand and sealed again with a correct checksum (the
//! checksum is no signature): each is refused with one line before any of
//! it runs, through the library, from a file, and from the database, and
//! nothing is stored.

use std::path::Path;

use wasnap::snapshot::{CoroutineState, Snapshot, file};
use wasnap::store::{Database, Outcome};
use wasnap::{Engine, Module, Settings, Step};

use crate::cli::{content, fails, guest, ok, scratch};

/// The greenlet demo at its first suspension: main waits in `yield`, g
/// (coroutine 1, main's child) in `switch`.
fn greenlet_v1() -> (Engine, Module, Snapshot) {
    let engine = Engine::new().unwrap();
    let module = engine
        .load(&wat::parse_file(guest("greenlet")).unwrap())
        .unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    let snapshot = workflow.snapshot().unwrap();
    (engine, module, snapshot)
}

/// The one-line error restoring `forged` gives.
fn refusal(engine: &Engine, module: &Module, forged: &Snapshot) -> String {
    match engine.restore(module, forged) {
        Ok(_) => panic!("a forged snapshot was restored"),
        Err(error) => {
            let line = format!("{error:#}");
            assert!(!line.contains('\n'), "{line}");
            line
        }
    }
}

/// Writes `forged` (module embedded) where `wasnap restore` can read it.
fn forged_file(dir: &Path, forged: &Snapshot) -> String {
    let wasm = wat::parse_file(guest("greenlet")).unwrap();
    let path = dir.join("forged.wsnap");
    std::fs::write(&path, file::encode(forged, Some(&wasm)).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

/// `wasnap restore` of `forged` fails with one line naming `cause`, and
/// the database stays as it was.
fn restore_is_refused(forged: &Snapshot, cause: &str) {
    let (dir, db) = scratch();
    ok(&db, &["run", &guest("approval")]);
    let before = content(&db);
    let error = fails(&db, &["restore", &forged_file(dir.path(), forged)]);
    assert!(error.contains(cause), "{error}");
    assert_eq!(
        content(&db),
        before,
        "a refused restore changed the database"
    );
}

#[test]
fn a_coroutine_whose_parent_does_not_exist_is_refused() {
    let (engine, module, mut forged) = greenlet_v1();
    forged.coroutines[1].parent = 7;
    let error = refusal(&engine, &module, &forged);
    assert_eq!(
        error,
        "the snapshot is not valid: coroutine 1's parent 7 does not exist"
    );
    restore_is_refused(&forged, "coroutine 1's parent 7 does not exist");
}

#[test]
fn a_coroutine_that_is_its_own_parent_is_refused_at_once() {
    let (engine, module, mut forged) = greenlet_v1();
    forged.coroutines[1].parent = 1;
    let error = refusal(&engine, &module, &forged);
    assert!(
        error.contains("coroutine 1's parent 1 was created after it"),
        "{error}"
    );
    // Finished, so that a scheduler walking up its parents would go round.
    forged.coroutines[1].state = CoroutineState::Finished;
    forged.coroutines[1].stack.clear();
    let error = refusal(&engine, &module, &forged);
    assert!(error.contains("parent 1 was created after it"), "{error}");
    restore_is_refused(&forged, "parent 1 was created after it");
}

#[test]
fn a_finished_main_coroutine_is_refused_rather_than_started_again() {
    let (engine, module, mut forged) = greenlet_v1();
    forged.coroutines[0].state = CoroutineState::Finished;
    let error = refusal(&engine, &module, &forged);
    assert!(error.contains("main has finished"), "{error}");
    forged.coroutines[0].stack.clear();
    restore_is_refused(&forged, "main has finished");
}

#[test]
fn edited_frames_are_refused() {
    let (engine, module, snapshot) = greenlet_v1();
    // main's one frame: run's, suspended in its first yield, which comes
    // right after its first switch.
    let main_stack = &snapshot.coroutines[0].stack;
    let header = main_stack.len() - 8;
    let word = |at: usize| u32::from_le_bytes(main_stack[at..at + 4].try_into().unwrap());
    let (run, call) = (word(header), word(header + 4));
    let edit = |at: usize, value: u32| {
        let mut forged = snapshot.clone();
        forged.coroutines[0].stack[at..at + 4].copy_from_slice(&value.to_le_bytes());
        refusal(&engine, &module, &forged)
    };
    let error = edit(header, 2);
    assert!(
        error.contains("names function 2, which the module does not instrument"),
        "{error}"
    );
    let error = edit(header + 4, call - 1);
    assert!(
        error.contains(&format!(
            "its innermost call (call {} of function {run} (run)) is to wasnap.switch, but it waits in wasnap.yield",
            call - 1
        )),
        "{error}"
    );
    let error = edit(header + 4, 99);
    assert!(
        error.contains(&format!(
            "call 99 of function {run}, which has no such call"
        )),
        "{error}"
    );
    let mut forged = snapshot.clone();
    forged.coroutines[0].stack.remove(0);
    let error = refusal(&engine, &module, &forged);
    assert!(error.contains("truncated"), "{error}");
    // g's frames must start in g, which table 0 names as its entry.
    let mut forged = snapshot.clone();
    forged.coroutines[1].stack = snapshot.coroutines[0].stack.clone();
    let error = refusal(&engine, &module, &forged);
    assert!(
        error.contains(&format!(
            "coroutine 1: its outermost frame is of function {run} (run), but its entry is function {} (g)",
            run - 1
        )),
        "{error}"
    );
}

#[test]
fn sizes_and_types_beyond_the_module_are_refused() {
    let (engine, module, snapshot) = greenlet_v1();
    let mut forged = snapshot.clone();
    forged.memories[0].page_count = 65537;
    let error = refusal(&engine, &module, &forged);
    assert!(
        error.contains("memory 0 has 65537 pages, the module allows 1 to 65536"),
        "{error}"
    );
    let mut forged = snapshot.clone();
    forged.globals[0] = wasnap::snapshot::GlobalValue::F64(0);
    let error = refusal(&engine, &module, &forged);
    assert!(
        error.contains("global 0 holds F64(0), but it is a mutable i32"),
        "{error}"
    );
    let mut forged = snapshot.clone();
    forged.host.current = 9;
    let error = refusal(&engine, &module, &forged);
    assert!(
        error.contains("running coroutine 9 does not exist"),
        "{error}"
    );
}

/// A version in the database is checked the same way when it is resumed:
/// the store holds what it was given, and the restore refuses it.
#[test]
fn a_forged_version_in_the_database_is_refused_when_resumed() {
    let (_dir, db) = scratch();
    ok(&db, &["run", &guest("greenlet")]);
    {
        let store = Database::open(&db).unwrap();
        let mut forged = store.load_version(1, 1).unwrap();
        forged.coroutines[1].parent = 5;
        let lease = store.lease(1).unwrap();
        let version = store
            .commit_version(&lease, Some(1), &Outcome::Suspended(&forged), b"")
            .unwrap();
        assert_eq!(version, 2);
    }
    let before = content(&db);
    let error = fails(&db, &["resume", "1@2"]);
    assert!(
        error.contains("coroutine 1's parent 5 does not exist"),
        "{error}"
    );
    assert_eq!(content(&db), before);
    assert_eq!(ok(&db, &["resume", "1@1"]), "a\nleave g\n");
}

/// The shape exactly: a few kilobytes of zstd that inflate to
/// 1.5 GB of zeros. `wasnap restore` runs with less address space than
/// that, so inflating it would abort the process instead of giving the
/// one-line answer.
#[test]
fn a_file_of_compressed_zeros_is_refused_without_inflating_it() {
    let (dir, db) = scratch();
    let path = dir.path().join("zeros.wsnap");
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    encoder.set_pledged_src_size(Some(1_500_000_000)).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = 1_500_000_000usize;
    while left > 0 {
        let n = left.min(zeros.len());
        std::io::Write::write_all(&mut encoder, &zeros[..n]).unwrap();
        left -= n;
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 100_000);
    std::fs::write(&path, &bomb).unwrap();
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 1000000 && exec {} --db {} restore {}",
            env!("CARGO_BIN_EXE_wasnap"),
            db.display(),
            path.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.ends_with("not a wasnap snapshot (bad magic)\n"),
        "{stderr}"
    );
    assert!(!db.exists());
}
