//! Modules that `wasm-opt --asyncify` already instrumented run as they are:
//! the engine drives Binaryen's exported `asyncify_*` functions, and lends
//! them the top of memory 0 for their frames during each unwind and rewind.
//!
//! Real programs too: Lua 5.4 and SQLite, compiled with clang for
//! wasm32-wasi and instrumented by Binaryen with and without `-O2`
//! (`scripts/build-bench-guests --tests` builds them), suspended at every
//! yield, must print what the original program prints.

use std::process::Command;

use wasmtime::Trap;
use wasnap::runtime::Captured;
use wasnap::snapshot::file;
use wasnap::{Engine, Output, Settings, Step};

use crate::interpreters::reply;
use crate::real_programs::{
    Program, Resume, bench_guest, plain_engine, plain_run_of, suspended_run,
};

/// A seed demo, instrumented by Binaryen (Debian's `binaryen` package).
fn asyncified(demo: &str) -> Vec<u8> {
    asyncified_wat(&format!(
        "{}/guest-workflows/wat/{demo}.wat",
        env!("CARGO_MANIFEST_DIR")
    ))
}

/// A fixture of tests/fixtures/binaryen/, instrumented by Binaryen.
fn asyncified_fixture(name: &str) -> Vec<u8> {
    asyncified_wat(&format!(
        "{}/tests/fixtures/binaryen/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn asyncified_wat(wat: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wasm");
    let output = dir.path().join("out.wasm");
    std::fs::write(&input, wat::parse_file(wat).unwrap()).unwrap();
    let status = Command::new("wasm-opt")
        .arg(&input)
        .args([
            "--asyncify",
            "--pass-arg=asyncify-imports@wasnap.yield,wasnap.switch",
            "-g",
            "-o",
        ])
        .arg(&output)
        .status()
        .expect("wasm-opt not found: install Debian's binaryen package (.ci/run does)");
    assert!(status.success());
    std::fs::read(output).unwrap()
}

/// Runs one step in a fresh engine from snapshot bytes; returns the step,
/// the next snapshot's bytes and what the guest printed.
fn step(wasm: &[u8], from: Option<&[u8]>, reply: &str) -> (Step, Vec<u8>, String) {
    let engine = Engine::new().unwrap();
    let module = engine.load(wasm).unwrap();
    assert!(module.metadata().binaryen);
    let captured = Captured::default();
    let settings = Settings::default().stdout(Output::Capture(captured.clone()));
    let mut workflow = match from {
        Some(bytes) => {
            let (snapshot, _) = file::decode(bytes).unwrap();
            engine.restore_with(&module, &snapshot, settings).unwrap()
        }
        None => engine.start(&module, settings).unwrap(),
    };
    workflow.send(reply.as_bytes());
    let step = workflow.run().unwrap();
    let bytes = match step {
        Step::Yielded(_) => file::encode(&workflow.snapshot().unwrap(), None).unwrap(),
        Step::Finished(_) => Vec::new(),
    };
    (step, bytes, String::from_utf8(captured.contents()).unwrap())
}

fn yielded(text: &str) -> Step {
    Step::Yielded(text.as_bytes().to_vec())
}

#[test]
fn binaryen_approval_runs_as_it_is() {
    let wasm = asyncified("approval");
    let (s, v1, _) = step(&wasm, None, "");
    assert_eq!(s, yielded("do something"));
    let (s, v2, _) = step(&wasm, Some(&v1), "");
    assert_eq!(s, yielded("ask boss for permission"));
    let (s, _, _) = step(&wasm, Some(&v2), "true");
    assert_eq!(s, yielded("do another after approved"));
    let (s, _, _) = step(&wasm, Some(&v2), "false");
    assert_eq!(s, yielded("do another after rejected"));
}

#[test]
fn binaryen_greenlet_keeps_the_coroutine_stack() {
    let wasm = asyncified("greenlet");
    let (_, v1, mut out) = step(&wasm, None, "");
    let raw = zstd::decode_all(&v1[..]).unwrap();
    assert!(raw.windows(15).any(|w| w == b"special-g-stack"));
    let (_, v2, text) = step(&wasm, Some(&v1), "");
    out += &text;
    let (_, v3, text) = step(&wasm, Some(&v2), "");
    out += &text;
    let (_, _, text) = step(&wasm, Some(&v1), "");
    out += &text;
    let (end, _, text) = step(&wasm, Some(&v3), "");
    out += &text;
    assert_eq!(end, Step::Finished(0));
    assert_eq!(out, "enter g\na\nleave g\nb\na\nleave g\nc\n");
}

/// wasi-libc's allocator takes all of memory 0 up to its size at its first
/// `malloc`, pages grown before the program ran included: the frames of an
/// unwind may go nowhere in memory 0 for good. The fixture fills all of
/// memory 0 before each yield and checks it after.
#[test]
fn binaryen_guest_owning_all_of_memory_0_finds_its_data_after_each_restore() {
    let wasm = asyncified_fixture("heap_to_memory_end");
    let mut yields = Vec::new();
    let mut snapshot: Option<Vec<u8>> = None;
    loop {
        match step(&wasm, snapshot.as_deref(), "") {
            (Step::Yielded(value), bytes, _) => {
                yields.push(String::from_utf8(value).unwrap());
                snapshot = Some(bytes);
            }
            (end, _, _) => {
                assert_eq!(end, Step::Finished(0));
                break;
            }
        }
    }
    assert_eq!(yields, ["filled", "intact"].repeat(3));
}

/// An unwound stack larger than memory 0 runs into the end of the memory
/// (never into the guest's data): the run fails, saying why and what to do.
#[test]
fn binaryen_stack_larger_than_memory_0_fails_saying_why() {
    let wasm = asyncified_fixture("stack_deeper_than_memory");
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    let error = workflow.run().unwrap_err();
    assert_eq!(
        error.downcast_ref::<Trap>(),
        Some(&Trap::MemoryOutOfBounds),
        "{error:?}"
    );
    let message = format!("{error:#}");
    for needed in ["could not suspend", "memory 0", "wasnap instrument"] {
        assert!(message.contains(needed), "{message}");
    }
}

/// `name` as Binaryen's Asyncify left it (`{name}.{variant}.wasm`), run with
/// `args` and every yield suspending, each suspension (or every
/// `through_file_every`-th) through a snapshot file into a new engine: what
/// it prints and yields must be what the original module prints and yields
/// in plain wasmtime. Returns how many times it suspended.
fn binaryen_program_prints_what_the_original_prints(
    name: &str,
    variant: &str,
    args: &[&str],
    through_file_every: usize,
) -> usize {
    let original = bench_guest(name);
    let asyncified = bench_guest(&format!("{name}.{variant}"));
    let plain = wasmtime::Module::new(&plain_engine(None), &original).unwrap();
    // SQLite's progress handler wants no reply; the interpreters' scripts do.
    let reply = if name == "sqlite" {
        |_: &[u8]| Vec::new()
    } else {
        reply
    };
    let program = |wasm| Program { wasm, args, reply };
    let expected = plain_run_of(&plain, &program(&original)).unwrap();
    let resume = Resume {
        through_file_every,
        in_new_engine: true,
    };
    let engine = Engine::new().unwrap();
    let run = suspended_run(&engine, Engine::new, &program(&asyncified), &resume)
        .unwrap_or_else(|e| panic!("{name}.{variant} {args:?}: {e:?}"));
    assert_eq!(run.status, 0, "{name}.{variant} {args:?}");
    assert_eq!(
        String::from_utf8_lossy(&run.transcript),
        String::from_utf8_lossy(&expected),
        "{name}.{variant} {args:?}"
    );
    assert!(
        run.suspensions > 0,
        "{name}.{variant} {args:?} never suspended"
    );
    eprintln!("{name}.{variant} {args:?}: {} suspensions", run.suspensions);
    run.suspensions
}

/// Without -O2, Binaryen's frames overflow wasmtime's default 512 KiB of
/// Wasm stack in `deep 100`, so the unoptimised variant runs the others.
fn binaryen_lua_runs_its_scripts(variant: &str, deep: bool) {
    let mut scripts = vec![&["lua", "hot"][..], &["lua", "approval"]];
    if deep {
        scripts.push(&["lua", "deep", "100"]);
    }
    for script in scripts {
        binaryen_program_prints_what_the_original_prints("lua", variant, script, 1);
    }
}

#[test]
fn binaryen_lua_prints_what_the_original_prints() {
    binaryen_lua_runs_its_scripts("asyncified", false);
}

#[test]
fn binaryen_lua_optimised_prints_what_the_original_prints() {
    binaryen_lua_runs_its_scripts("asyncified-O2", true);
}

/// Binaryen's Asyncify without -O makes SQLite's frames too large for
/// wasmtime's default 512 KiB of Wasm stack: the run ends at once with
/// "overflowed its call stack" (a limit wasnap does not raise yet).
#[test]
#[ignore = "call stack exhausted: Binaryen's unoptimised frames need more than 512 KiB"]
fn binaryen_sqlite_prints_what_the_original_prints() {
    binaryen_program_prints_what_the_original_prints("sqlite", "asyncified", &[], 10);
}

#[test]
#[ignore = "not yet seen to pass: its plain run needed the reply fixed"]
fn binaryen_sqlite_optimised_prints_what_the_original_prints() {
    binaryen_program_prints_what_the_original_prints("sqlite", "asyncified-O2", &[], 10);
}
