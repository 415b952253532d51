//! Bad input and limits through the engine: every error is one clear line,
//! and a failed step leaves the saved snapshot usable.

use std::time::Duration;

use wasnap::instrument::{MAX_NESTING, Options, instrument};
use wasnap::{Engine, Settings, Step};

fn approval() -> Vec<u8> {
    wat::parse_file(format!(
        "{}/guest-workflows/wat/approval.wat",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn message(result: anyhow::Result<impl Sized>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(error) => format!("{error:#}"),
    }
}

fn guest(body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "run") {body}))"#
    ))
    .unwrap()
}

#[test]
fn a_snapshot_does_not_load_into_another_module() {
    let engine = Engine::new().unwrap();
    let approval = engine.load(&approval()).unwrap();
    let other = engine
        .load(&guest("(drop (call $yield (i32.const 0) (i32.const 0)))"))
        .unwrap();
    let mut workflow = engine.start(&approval, Settings::default()).unwrap();
    workflow.run().unwrap();
    let snapshot = workflow.snapshot().unwrap();
    let error = message(engine.restore(&other, &snapshot));
    assert!(
        error.starts_with("the snapshot belongs to module "),
        "{error}"
    );
}

#[test]
fn a_snapshot_of_another_instrumenter_version_is_refused() {
    let engine = Engine::new().unwrap();
    let module = engine.load(&approval()).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    workflow.run().unwrap();
    let mut snapshot = workflow.snapshot().unwrap();
    snapshot.instrumenter_version += 1;
    let error = message(engine.restore(&module, &snapshot));
    assert!(error.contains("instrumenter version"), "{error}");
}

#[test]
fn a_trap_is_an_error_and_the_saved_snapshot_still_resumes() {
    // Yields, then traps on the way to the second yield.
    let wasm = guest(
        "(drop (call $yield (i32.const 0) (i32.const 0)))
         (if (i32.eqz (call $yield (i32.const 0) (i32.const 0))) (then unreachable))
         (drop (call $yield (i32.const 0) (i32.const 1)))",
    );
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    workflow.run().unwrap();
    workflow.run().unwrap();
    let saved = workflow.snapshot().unwrap();
    let error = message(workflow.run());
    assert!(error.contains("trapped"), "{error}");
    assert!(error.contains("unreachable"), "{error}");
    let mut again = engine.restore(&module, &saved).unwrap();
    again.send(b"ok");
    assert_eq!(again.run().unwrap(), Step::Yielded(vec![0]));
}

#[test]
fn a_time_limit_interrupts_a_runaway_workflow() {
    let wasm = guest("(loop $forever (br $forever))");
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let settings = Settings::default().time_limit(Duration::from_millis(50));
    let mut workflow = engine.start(&module, settings).unwrap();
    let error = message(workflow.run());
    assert!(error.contains("time limit of 50ms"), "{error}");
}

#[test]
fn a_memory_limit_stops_growth_with_a_clear_error() {
    let wasm = guest("(drop (memory.grow (i32.const 100)))");
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let settings = Settings::default().memory_limit(1 << 20);
    let mut workflow = engine.start(&module, settings).unwrap();
    let error = message(workflow.run());
    assert!(error.contains("memory"), "{error}");
}

#[test]
fn modules_that_cannot_run_are_refused_when_loaded() {
    let engine = Engine::new().unwrap();
    let error = message(engine.load(b"not wasm at all"));
    assert_eq!(
        error,
        "not a WebAssembly module (the file does not start with \\0asm)"
    );
    let no_entry = wat::parse_str("(module (func (export \"other\")))").unwrap();
    let error = message(engine.load(&no_entry));
    assert!(error.contains("neither _start nor run"), "{error}");
    let unknown_import =
        wat::parse_str(r#"(module (import "elsewhere" "f" (func)) (func (export "run")))"#)
            .unwrap();
    let error = message(engine.load(&unknown_import));
    assert!(error.contains("elsewhere"), "{error}");
}

#[test]
fn a_suspension_through_a_function_left_uninstrumented_is_a_clear_error() {
    // `$relay` calls the suspending callback, but the options say only
    // `run` and `on_*` can be on the stack at a suspension.
    let wasm = wat::parse_str(
        r#"(module
             (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
             (type $callback (func (param i32) (result i32)))
             (memory (export "memory") 1)
             (table 1 funcref)
             (elem (i32.const 0) $on_progress)
             (func $on_progress (type $callback)
               (call $yield (local.get 0) (i32.const 0)))
             (func $relay (param i32) (result i32)
               (call_indirect (type $callback) (local.get 0) (i32.const 0)))
             (func $run (export "run") (drop (call $relay (i32.const 0)))))"#,
    )
    .unwrap();
    let options = wasnap::instrument::Options::default()
        .only_functions("run")
        .only_functions("on_*");
    let engine = Engine::with_options(options).unwrap();
    let module = engine.load(&wasm).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    let error = message(workflow.run());
    assert!(
        error.contains(
            "suspended inside function 2 (relay), which its instrumentation options say never suspends"
        ),
        "{error}"
    );
}

#[test]
fn a_trap_after_a_resume_names_the_function_it_happened_in() {
    // The resumed rest of `check_the_order` runs in the copy of it that
    // resumes: a backtrace names it all the same.
    let wasm = wat::parse_str(
        r#"(module
             (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func $check_the_order (param $refuse i32)
               (drop (call $yield (i32.const 0) (i32.const 0)))
               (if (local.get $refuse) (then unreachable)))
             (func (export "run") (call $check_the_order (i32.const 1))))"#,
    )
    .unwrap();
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(vec![]));
    let snapshot = workflow.snapshot().unwrap();
    let mut resumed = engine.restore(&module, &snapshot).unwrap();
    let error = format!("{:?}", resumed.run().unwrap_err());
    assert!(error.contains("check_the_order"), "{error}");
}

/// A guest whose `run` nests `depth` blocks, loops and `if`s in turn
/// around a suspending call.
fn nested(depth: usize) -> Vec<u8> {
    let opening = ["block\n", "loop\n", "i32.const 1\nif\n"];
    let nesting: String = (0..depth).map(|level| opening[level % 3]).collect();
    guest(&format!(
        "{nesting}(drop (call $yield (i32.const 0) (i32.const 0))){}",
        "end\n".repeat(depth)
    ))
}

/// The instrumenter recurses once per level of nesting: it runs on a
/// stack of its own, so that a caller's thread as small as an async
/// runtime's blocking pool gives (2 MiB, where the service instrumented the
/// Python runtime and overflowed) holds the deepest nesting accepted.
#[test]
fn the_deepest_nesting_accepted_is_instrumented_on_a_small_thread() {
    let deepest = nested(MAX_NESTING);
    let small_thread = std::thread::Builder::new().stack_size(2 << 20);
    let instrumented = small_thread
        .spawn(move || instrument(&deepest, &Options::default()).map(|_| ()))
        .unwrap()
        .join()
        .unwrap();
    instrumented.expect("the deepest nesting accepted");
}

#[test]
fn deeper_nesting_is_refused_in_one_line() {
    assert_eq!(
        message(instrument(&nested(MAX_NESTING + 1), &Options::default())),
        format!(
            "function 1 nests blocks more than {MAX_NESTING} deep: wasnap instruments functions nested at most that deep"
        )
    );
}
