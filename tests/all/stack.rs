//! Native stack: what instrumentation costs a deeply recursive program, and
//! what happens when a workflow runs out.
//!
//! The guests (`benches/guests/recursion.c`, an interpreter whose bytecode
//! calls recurse through its dispatch loop and reach the host through a
//! table of function pointers, and `benches/guests/recursion.rs`, a
//! recursive evaluator over trait objects) suspend once, at the bottom of
//! a recursion as deep as their first argument. They come from
//! `scripts/build-bench-guests --tests`.

use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasnap::instrument::{Options, instrument};
use wasnap::runtime::Captured;
use wasnap::snapshot::file;
use wasnap::{Engine, Output, Settings, Step};

use crate::real_programs::bench_guest;

/// The recursion guests, by file name.
const GUESTS: [&str; 2] = ["recursion", "rust-recursion"];

/// How deep the stack measurement recurses.
const DEPTH: &str = "2000";

/// A wasmtime engine whose Wasm stack limit is `max_wasm_stack`.
fn engine_with_stack(max_wasm_stack: usize) -> wasmtime::Engine {
    let mut config = wasmtime::Config::new();
    config.wasm_multi_memory(true);
    config.wasm_branch_hinting(true);
    config.async_stack_size(max_wasm_stack + (1 << 20));
    config.max_wasm_stack(max_wasm_stack);
    wasmtime::Engine::new(&config).unwrap()
}

/// Runs a WASI command with `args` in plain wasmtime, `wasnap.yield`
/// answering 0 at once; its stdout, or the error that ended it.
fn plain_run(
    engine: &wasmtime::Engine,
    module: &wasmtime::Module,
    args: &[&str],
) -> anyhow::Result<Vec<u8>> {
    let mut linker: wasmtime::Linker<WasiP1Ctx> = wasmtime::Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |ctx| ctx)?;
    linker.func_wrap("wasnap", "yield", |_ptr: i32, _len: i32| -> i32 { 0 })?;
    let stdout = MemoryOutputPipe::new(usize::MAX);
    let wasi = wasmtime_wasi::WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .args(args)
        .build_p1();
    let mut store = wasmtime::Store::new(engine, wasi);
    let instance = linker.instantiate(&mut store, module)?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
    if let Err(e) = start.call(&mut store, ()) {
        match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(wasmtime_wasi::I32Exit(0)) => {}
            _ => return Err(e.into()),
        }
    }
    Ok(stdout.contents().to_vec())
}

/// The smallest `max_wasm_stack`, to a KiB, at which `wasm` runs to its
/// end with `args`.
fn smallest_stack(wasm: &[u8], args: &[&str]) -> usize {
    let compiled = wasmtime::Module::new(&engine_with_stack(64 << 20), wasm)
        .unwrap()
        .serialize()
        .unwrap();
    let passes = |max_wasm_stack: usize| {
        let engine = engine_with_stack(max_wasm_stack);
        // SAFETY: serialized just above by an engine of the same settings
        // but for the stack limit, which does not change compiled code.
        let module = unsafe { wasmtime::Module::deserialize(&engine, &compiled) }.unwrap();
        plain_run(&engine, &module, args).is_ok()
    };
    let (mut fails, mut passes_at) = (4 << 10, 64 << 20);
    assert!(passes(passes_at), "the guest fails even with 64 MiB");
    while passes_at - fails > 1 << 10 {
        let middle = (fails + passes_at) / 2;
        if passes(middle) {
            passes_at = middle;
        } else {
            fails = middle;
        }
    }
    passes_at
}

/// Runs `f` on a thread with room for 64 MiB of Wasm stack.
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(80 << 20)
            .spawn_scoped(scope, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

/// The most Wasm stack an instrumented guest may need, as a multiple of
/// the original's.
const MOST_STACK_RATIO: f64 = 1.5;

#[test]
fn instrumented_recursion_needs_little_more_stack_than_the_original() {
    let mut ratios = Vec::new();
    for guest in GUESTS {
        let original = bench_guest(guest);
        let instrumented = instrument(&original, &Options::default()).unwrap().wasm;
        let args = [guest, DEPTH];
        let (before, after) = on_big_stack(|| {
            (
                smallest_stack(&original, &args),
                smallest_stack(&instrumented, &args),
            )
        });
        let ratio = after as f64 / before as f64;
        eprintln!(
            "{guest}, depth {DEPTH}: the original needs {} KiB of Wasm stack, instrumented {} KiB ({ratio:.2}x)",
            before >> 10,
            after >> 10
        );
        ratios.push((guest, ratio));
    }
    for (guest, ratio) in ratios {
        assert!(
            ratio <= MOST_STACK_RATIO,
            "{guest}: {ratio:.2}x the original's stack"
        );
    }
}

/// Runs a recursion guest through wasnap: it suspends at the bottom, goes
/// through a snapshot file into a new engine, and finishes there.
fn suspend_at_the_bottom(guest: &str, depth: &str) -> Vec<u8> {
    let wasm = bench_guest(guest);
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let captured = Captured::default();
    let settings = || Settings::default().stdout(Output::Capture(captured.clone()));
    let mut workflow = engine
        .start(&module, settings().args([guest, depth]))
        .unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    let bytes = file::encode(&workflow.snapshot().unwrap(), None).unwrap();
    drop(workflow);

    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let (snapshot, _) = file::decode(&bytes).unwrap();
    let mut workflow = engine.restore_with(&module, &snapshot, settings()).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Finished(0));
    captured.contents()
}

#[test]
fn deep_recursion_suspends_at_the_bottom_within_the_default_stack() {
    // 20,000 frames: far past wasmtime's own 512 KiB default for either
    // guest, instrumented or not.
    let depth = "20000";
    for guest in GUESTS {
        let engine = engine_with_stack(64 << 20);
        let module = wasmtime::Module::new(&engine, bench_guest(guest)).unwrap();
        let expected = on_big_stack(|| plain_run(&engine, &module, &[guest, depth]).unwrap());
        let printed = suspend_at_the_bottom(guest, depth);
        assert_eq!(
            String::from_utf8_lossy(&printed),
            String::from_utf8_lossy(&expected)
        );
        assert!(printed.starts_with(format!("depth {depth}:").as_bytes()));
    }
}

#[test]
fn running_out_of_stack_names_the_limit_and_how_to_raise_it() {
    let engine = Engine::builder().max_wasm_stack(256 << 10).build().unwrap();
    let module = engine.load(&bench_guest("recursion")).unwrap();
    let mut workflow = engine
        .start(&module, Settings::default().args(["recursion", "20000"]))
        .unwrap();
    let message = format!("{:#}", workflow.run().unwrap_err());
    assert!(message.contains("ran out of Wasm stack"), "{message}");
    assert!(message.contains("256 KiB"), "{message}");
    assert!(message.contains("--max-wasm-stack"), "{message}");
}

#[test]
fn a_stack_limit_too_small_to_run_anything_is_refused() {
    let error = Engine::builder()
        .max_wasm_stack(1024)
        .build()
        .err()
        .unwrap();
    assert!(format!("{error}").contains("too small"), "{error}");
}

#[test]
fn a_stack_too_deep_to_resume_in_a_smaller_limit_says_so() {
    let wasm = bench_guest("recursion");
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let settings = || Settings::default().stdout(Output::Capture(Captured::default()));
    let mut workflow = engine
        .start(&module, settings().args(["recursion", "20000"]))
        .unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    let snapshot = workflow.snapshot().unwrap();

    let small = Engine::builder().max_wasm_stack(256 << 10).build().unwrap();
    let module = small.load(&wasm).unwrap();
    let mut resumed = small.restore_with(&module, &snapshot, settings()).unwrap();
    let message = format!("{:#}", resumed.run().unwrap_err());
    assert!(message.contains("too deep to resume"), "{message}");
    assert!(message.contains("256 KiB"), "{message}");
    assert!(message.contains("--max-wasm-stack"), "{message}");
}
