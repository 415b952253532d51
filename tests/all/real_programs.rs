//! Real programs nobody here wrote, suspended everywhere.
//!
//! SQLite 3.50.2 (its amalgamation, about a megabyte of Wasm) runs an
//! analytics job on an in-memory database; its progress handler calls
//! `wasnap.yield` every 2,000 virtual-machine steps, from deep inside
//! `sqlite3VdbeExec`, the B-tree code and the sorter. Through the engine,
//! every one of those calls really unwinds the stack and rewinds it, and
//! every 25th goes through a snapshot file into a fresh instance. What the
//! program prints must equal a plain run of the original module in
//! wasmtime, where `wasnap.yield` returns at once.
//!
//! The module comes from `scripts/build-bench-guests --tests` (run
//! by `.ci/run`); a missing module fails the test with that hint.

use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasnap::instrument::Options;
use wasnap::runtime::Captured;
use wasnap::snapshot::file;
use wasnap::{Engine, Output, Settings, Step};

/// How often a suspension goes through a snapshot file into a new instance
/// (the others resume in place, still unwinding and rewinding for real).
const SNAPSHOT_EVERY: usize = 25;

pub fn bench_guest(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/target/bench-guests/{name}.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|_| {
        panic!("{path} is missing: build it with scripts/build-bench-guests --tests")
    })
}

/// The original module in plain wasmtime, `wasnap.yield` answering 0 at
/// once: what the program prints when nothing suspends.
fn plain_run(wasm: &[u8]) -> Vec<u8> {
    let engine = wasmtime::Engine::default();
    let mut linker: wasmtime::Linker<WasiP1Ctx> = wasmtime::Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |ctx| ctx).unwrap();
    linker
        .func_wrap("wasnap", "yield", |_ptr: i32, _len: i32| -> i32 { 0 })
        .unwrap();
    let module = wasmtime::Module::new(&engine, wasm).unwrap();
    let stdout = MemoryOutputPipe::new(usize::MAX);
    let wasi = wasmtime_wasi::WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .build_p1();
    let mut store = wasmtime::Store::new(&engine, wasi);
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .unwrap();
    if let Err(e) = start.call(&mut store, ()) {
        let exit = e.downcast_ref::<wasmtime_wasi::I32Exit>();
        assert!(matches!(exit, Some(wasmtime_wasi::I32Exit(0))), "{e:?}");
    }
    stdout.contents().to_vec()
}

#[test]
fn sqlite_suspended_at_every_progress_call_prints_what_a_plain_run_prints() {
    sqlite_suspends_everywhere(Engine::new().unwrap());
}

/// The same, with the instrumentation narrowed to the functions that are on
/// the stack when SQLite's progress handler runs: the rest of SQLite is left
/// as it was, and a suspension must still resume exactly.
#[test]
fn sqlite_instrumented_only_on_its_suspension_path_prints_the_same() {
    let path = [
        "_start*",
        "__original_main",
        "exec",
        "query",
        "checkpoint",
        "sqlite3_exec",
        "sqlite3_step",
        "sqlite3VdbeExec",
    ];
    let options = path
        .into_iter()
        .fold(Options::default(), Options::only_functions);
    sqlite_suspends_everywhere(Engine::with_options(options).unwrap());
}

fn sqlite_suspends_everywhere(engine: Engine) {
    let wasm = bench_guest("sqlite");
    let expected = plain_run(&wasm);
    assert!(
        expected.ends_with(b"\n") && expected.len() > 500,
        "the plain run printed too little: {}",
        String::from_utf8_lossy(&expected)
    );

    let module = engine.load(&wasm).unwrap();
    let captured = Captured::default();
    let settings = || Settings::default().stdout(Output::Capture(captured.clone()));
    let mut workflow = engine.start(&module, settings()).unwrap();
    let mut suspensions = 0;
    let status = loop {
        match workflow.run().unwrap_or_else(|e| panic!("{e:?}")) {
            Step::Yielded(_) => suspensions += 1,
            Step::Finished(status) => break status,
        }
        if suspensions % SNAPSHOT_EVERY == 0 {
            let bytes = file::encode(&workflow.snapshot().unwrap(), None).unwrap();
            drop(workflow);
            let (snapshot, _) = file::decode(&bytes).unwrap();
            workflow = engine.restore_with(&module, &snapshot, settings()).unwrap();
        }
    };

    assert_eq!(status, 0);
    let printed = captured.contents();
    assert_eq!(
        String::from_utf8_lossy(&printed),
        String::from_utf8_lossy(&expected)
    );
    // The program reports how often its progress handler ran: each of
    // those was a suspension here.
    let reported = format!("progress calls {suspensions}\n");
    assert!(
        printed.ends_with(reported.as_bytes()),
        "{suspensions} suspensions, but the program says otherwise"
    );
    assert!(suspensions > 100, "only {suspensions} suspensions");
    eprintln!(
        "sqlite: {suspensions} suspensions, {} through a snapshot file",
        suspensions / SNAPSHOT_EVERY
    );
}
