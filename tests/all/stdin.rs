//! The stdin mode: programs written for a terminal, not for wasnap, whose
//! every read of standard input with nothing buffered suspends the
//! workflow; the reply is what the read returns, as a line.
//!
//! Through the Rust API, every step restored from snapshot bytes into a
//! new engine. `coffee.wasm` (C, `fgets`) comes from `guest-workflows/build`.

use wasnap::instrument::Options;
use wasnap::runtime::Captured;
use wasnap::snapshot::{Stdin, file};
use wasnap::{Engine, Output, Settings, Snapshot, Step};

use crate::cli::{ok, scratch};
use crate::guests::built;

fn stdin_engine() -> Engine {
    Engine::with_options(Options::default().suspend_on_stdin()).unwrap()
}

/// One step "in a new process": a new stdin-mode engine starts `wasm` or
/// restores the snapshot bytes, sends the reply, and runs to the next
/// suspension. Returns the step, the snapshot bytes after it (empty when
/// it finished) and what it printed.
fn step(wasm: &[u8], from: Option<&[u8]>, reply: &str) -> (Step, Vec<u8>, String) {
    let engine = stdin_engine();
    let module = engine.load(wasm).unwrap();
    let captured = Captured::default();
    let settings = Settings::default().stdout(Output::Capture(captured.clone()));
    let mut workflow = match from {
        Some(bytes) => {
            let snapshot = file::decode(bytes).unwrap().0;
            engine.restore_with(&module, &snapshot, settings).unwrap()
        }
        None => engine.start(&module, settings).unwrap(),
    };
    workflow.send(reply.as_bytes());
    let step = workflow.run().unwrap_or_else(|e| panic!("{e:?}"));
    let bytes = match step {
        Step::Yielded(_) => file::encode(&workflow.snapshot().unwrap(), None).unwrap(),
        Step::Finished(_) => Vec::new(),
    };
    (step, bytes, String::from_utf8(captured.contents()).unwrap())
}

fn waiting() -> Step {
    Step::Yielded(Vec::new())
}

fn coffee() -> Vec<u8> {
    std::fs::read(built("stdin", "coffee")).unwrap()
}

#[test]
fn a_c_program_using_fgets_waits_for_each_answer() {
    let wasm = coffee();
    let (step1, v1, out) = step(&wasm, None, "");
    assert_eq!((step1, out.as_str()), (waiting(), "What is your name?\n"));
    let (step2, v2, out) = step(&wasm, Some(&v1), "Ada");
    assert_eq!(
        (step2, out.as_str()),
        (waiting(), "How many cups of coffee today, Ada?\n")
    );
    // The name lives only in a local array on the C stack.
    let snapshot = zstd::decode_all(&v2[..]).unwrap();
    assert!(snapshot.windows(4).any(|w| w == b"Ada\0"));
    let (end, _, out) = step(&wasm, Some(&v2), "2");
    assert_eq!(
        (end, out.as_str()),
        (Step::Finished(0), "Ada: 2 cups, have another.\n")
    );
    // The same saved moment, another answer.
    let (end, _, out) = step(&wasm, Some(&v2), "5");
    assert_eq!(
        (end, out.as_str()),
        (Step::Finished(0), "Ada: 5 cups, that is plenty.\n")
    );
}

#[test]
fn an_empty_reply_is_the_end_of_the_input() {
    let wasm = coffee();
    let (_, v1, _) = step(&wasm, None, "");
    let (end, _, out) = step(&wasm, Some(&v1), "");
    assert_eq!(
        (end, out.as_str()),
        (Step::Finished(1), "No name, no coffee.\n")
    );
}

#[test]
fn a_reply_longer_than_the_read_is_read_on_without_suspending() {
    // fgets reads 99 bytes of the first line; the rest of that line, still
    // buffered, answers the second question: one suspension for two reads.
    let wasm = coffee();
    let (_, v1, _) = step(&wasm, None, "");
    let long = format!("{}7", "x".repeat(4999));
    let (end, _, out) = step(&wasm, Some(&v1), &long);
    assert_eq!(end, Step::Finished(0), "{out}");
    assert!(out.ends_with(": 0 cups, have another.\n"), "{out}");
}

/// Reads 4 bytes of standard input and yields them, twice; then reads
/// descriptor 7, which does not exist, and yields WASI's error number.
const READER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: 4 bytes at 16; nread at 8; error number at 12
  (data (i32.const 0) "\10\00\00\00\04\00\00\00")
  (func $read_and_yield
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $yield (i32.const 16) (i32.load (i32.const 8)))))
  (func (export "run")
    (call $read_and_yield)
    (call $read_and_yield)
    (i32.store (i32.const 12)
      (i32.add (i32.const 48) (call $read (i32.const 7) (i32.const 0) (i32.const 1) (i32.const 8))))
    (drop (call $yield (i32.const 12) (i32.const 1)))))
"#;

#[test]
fn input_not_read_yet_is_kept_in_the_snapshot() {
    let wasm = wat::parse_str(READER).unwrap();
    let (first, v1, _) = step(&wasm, None, "");
    assert_eq!(first, waiting());
    let (yielded, v2, _) = step(&wasm, Some(&v1), "abcdefg");
    assert_eq!(yielded, Step::Yielded(b"abcd".to_vec()));
    let snapshot: Snapshot = file::decode(&v2).unwrap().0;
    assert_eq!(
        snapshot.host.stdin,
        Stdin::Suspending {
            buffered: b"efg\n".to_vec()
        }
    );
    // In a new process, the second read finds the rest without suspending.
    let (yielded, v3, _) = step(&wasm, Some(&v2), "ignored");
    assert_eq!(yielded, Step::Yielded(b"efg\n".to_vec()));
    // Other descriptors are WASI's: 7 is a bad descriptor (errno 8).
    let (yielded, _, _) = step(&wasm, Some(&v3), "");
    assert_eq!(yielded, Step::Yielded(b"8".to_vec()));
}

#[test]
fn a_snapshot_restores_only_in_the_mode_it_was_made_in() {
    let wasm = coffee();
    let (_, v1, _) = step(&wasm, None, "");
    let snapshot = file::decode(&v1).unwrap().0;
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let error = engine
        .restore(&module, &snapshot)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("reads of standard input suspend"), "{error}");

    let quiet = Settings::default().stdout(Output::Capture(Captured::default()));
    let mut plain = engine.start(&module, quiet).unwrap();
    // Without the mode, standard input is empty: the program ends at once.
    assert_eq!(plain.run().unwrap(), Step::Finished(1));
    let wat = wat::parse_str(READER).unwrap();
    let module = engine.load(&wat).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    let snapshot = workflow.snapshot().unwrap();
    let stdin_engine = stdin_engine();
    let module = stdin_engine.load(&wat).unwrap();
    let error = stdin_engine
        .restore(&module, &snapshot)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("do not suspend"), "{error}");
}

#[test]
fn the_mode_is_part_of_the_engine_fingerprint() {
    assert_ne!(
        Engine::new().unwrap().fingerprint(),
        stdin_engine().fingerprint()
    );
}

/// `wasnap run --stdin suspend`, then resume after resume, each a new
/// process; the mode is kept with the instance, and with its snapshot
/// files.
#[test]
fn the_stdin_mode_through_the_command_line() {
    let (dir, db) = scratch();
    let coffee = built("stdin", "coffee");
    assert_eq!(
        ok(&db, &["run", "--stdin", "suspend", &coffee]),
        "What is your name?\n"
    );
    assert_eq!(
        ok(&db, &["resume", "1", "--send", "Ada"]),
        "How many cups of coffee today, Ada?\n"
    );
    assert_eq!(
        ok(&db, &["resume", "1", "--send", "2"]),
        "Ada: 2 cups, have another.\n"
    );
    // The branch from version 2, and the same moment in another database.
    assert_eq!(
        ok(&db, &["resume", "1@2", "--send", "5"]),
        "Ada: 5 cups, that is plenty.\n"
    );
    let file = dir.path().join("v2.wsnap");
    ok(&db, &["snapshot", "1@2", "-o", file.to_str().unwrap()]);
    let other = dir.path().join("other.db");
    assert_eq!(
        ok(&other, &["restore", file.to_str().unwrap(), "--send", "4"]),
        "Ada: 4 cups, that is plenty.\n"
    );
    // Without the mode, the program finds no input and ends at once.
    assert_eq!(
        ok(&db, &["run", &coffee]),
        "What is your name?\nNo name, no coffee.\n"
    );
}

/// The same program in Python, `input()` in the Python runtime, each step
/// a new process: the reply is what `input()` returns.
#[test]
fn a_python_script_using_input_waits_for_each_answer() {
    let (_dir, db) = scratch();
    let script = format!(
        "{}/guest-workflows/stdin/coffee.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = |args: &[&str]| ok(&db, args);
    assert_eq!(
        run(&["run", "--stdin", "suspend", &script]),
        "What is your name?\n"
    );
    assert_eq!(
        run(&["resume", "1", "--send", "Ada"]),
        "How many cups of coffee today, Ada?\n"
    );
    assert_eq!(
        run(&["resume", "1", "--send", "2"]),
        "Ada: 2 cups, have another.\n"
    );
    assert_eq!(
        run(&["resume", "1@2", "--send", "5"]),
        "Ada: 5 cups, that is plenty.\n"
    );
    // An empty reply is the end of the input: EOFError, as in a terminal.
    assert_eq!(run(&["resume", "1@2"]), "No answer, no coffee.\n");
}
