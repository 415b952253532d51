//! Modules that `wasm-opt --asyncify` already instrumented run as they are:
//! the engine drives Binaryen's exported `asyncify_*` functions, and lends
//! them the top of memory 0 for their frames during each unwind and rewind.
//!
//! Real programs too: Lua 5.4, Lua 5.1, QuickJS-ng and SQLite, compiled
//! with clang for wasm32-wasi, and a Rust program, each instrumented by
//! Binaryen with and without `-O2` (`scripts/build-bench-guests --tests`
//! builds them), suspended at every yield, must print what the original
//! program prints.

use std::process::Command;

use wasmtime::Trap;
use wasnap::runtime::Captured;
use wasnap::snapshot::file;
use wasnap::{Engine, Output, Settings, Step};

use crate::interpreters::reply;
use crate::real_programs::{
    Program, Resume, bench_guest, plain_engine, plain_run_of, suspended_run,
};

/// The imports Binaryen is told may suspend: the seed demos' two.
const DEMO_IMPORTS: &str = "wasnap.yield,wasnap.switch";

/// A seed demo, instrumented by Binaryen (Debian's `binaryen` package).
fn asyncified(demo: &str) -> Vec<u8> {
    asyncified_demo(demo, DEMO_IMPORTS)
}

/// A seed demo, instrumented by Binaryen told that `imports` suspend.
fn asyncified_demo(demo: &str, imports: &str) -> Vec<u8> {
    asyncified_wat(
        &format!(
            "{}/guest-workflows/wat/{demo}.wat",
            env!("CARGO_MANIFEST_DIR")
        ),
        imports,
    )
}

/// A fixture of tests/fixtures/binaryen/, instrumented by Binaryen.
fn asyncified_fixture(name: &str) -> Vec<u8> {
    asyncified_wat(
        &format!(
            "{}/tests/fixtures/binaryen/{name}.wat",
            env!("CARGO_MANIFEST_DIR")
        ),
        DEMO_IMPORTS,
    )
}

fn asyncified_wat(wat: &str, imports: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wasm");
    let output = dir.path().join("out.wasm");
    std::fs::write(&input, wat::parse_file(wat).unwrap()).unwrap();
    let status = Command::new("wasm-opt")
        .arg(&input)
        .arg("--asyncify")
        .arg(format!("--pass-arg=asyncify-imports@{imports}"))
        .args(["-g", "-o"])
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

/// Told that only some other import suspends, Binaryen leaves the callers
/// of `wasnap.yield` as they were: after the import started an unwind they
/// would run on (the approval demo printed its last question as its first
/// and stored a version with nothing to resume). Such a module cannot be
/// snapshotted: it is refused at load, saying where and what to do.
#[test]
fn binaryen_module_whose_yield_callers_are_uninstrumented_is_refused_at_load() {
    let wasm = asyncified_demo("approval", "env.other");
    let Err(error) = Engine::new().unwrap().load(&wasm) else {
        panic!("loaded");
    };
    let message = format!("{error:#}");
    assert!(!message.contains('\n'), "{message}");
    for needed in [
        "calls wasnap.yield",
        "left it uninstrumented",
        "asyncify-imports",
        "wasnap instrument",
    ] {
        assert!(message.contains(needed), "{message}");
    }
}

/// Binaryen's unoptimised frames need more Wasm stack than the engine's
/// default 8 MiB for a recursion 100,000 levels deep: the run ends with one
/// line naming the limit and `--max-wasm-stack`; an engine with a larger
/// limit (which also lends Binaryen's frames more of memory 0) suspends it
/// at the bottom, and a new one restores it from snapshot bytes, every
/// level returning. An engine with the default limit refuses the snapshot,
/// saying why.
#[test]
fn binaryen_stack_deeper_than_the_default_limit_runs_with_a_larger_max_wasm_stack() {
    let wasm = asyncified_fixture("deep_recursion");
    let engine = Engine::new().unwrap();
    let error = engine
        .start(&engine.load(&wasm).unwrap(), Settings::default())
        .unwrap()
        .run()
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(!message.contains('\n'), "{message}");
    for needed in ["call stack exhausted", "8 MiB", "--max-wasm-stack"] {
        assert!(message.contains(needed), "{message}");
    }

    let larger = || Engine::builder().max_wasm_stack(64 << 20).build().unwrap();
    let engine = larger();
    let mut workflow = engine
        .start(&engine.load(&wasm).unwrap(), Settings::default())
        .unwrap();
    assert_eq!(workflow.run().unwrap(), yielded("bottom"));
    let bytes = file::encode(&workflow.snapshot().unwrap(), None).unwrap();
    let (snapshot, _) = file::decode(&bytes).unwrap();

    let engine = larger();
    let mut restored = engine
        .restore_with(&engine.load(&wasm).unwrap(), &snapshot, Settings::default())
        .unwrap();
    assert_eq!(restored.run().unwrap(), yielded("rewound"));

    let engine = Engine::new().unwrap();
    let Err(refused) =
        engine.restore_with(&engine.load(&wasm).unwrap(), &snapshot, Settings::default())
    else {
        panic!("a default engine restored an unwound stack larger than it lends");
    };
    let message = format!("{refused:#}");
    assert!(message.contains("--max-wasm-stack"), "{message}");
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

/// A real program of target/bench-guests, compiled with clang or rustc for
/// wasm32-wasi, and the runs it is tested with.
struct RealProgram {
    /// Its file name: `{name}.wasm` is the original, and
    /// `{name}.{variant}.wasm` what Binaryen's Asyncify made of it.
    name: &'static str,
    /// The WASI arguments of each run, the program's name first.
    runs: &'static [&'static [&'static str]],
    /// Every how many suspensions goes through snapshot bytes into a new
    /// engine (the others rewind in place, still unwinding for real).
    through_file_every: usize,
    /// The host's answer to each value it yields.
    reply: fn(&[u8]) -> Vec<u8>,
}

/// SQLite's progress handler interrupts the query when answered anything.
fn no_reply(_: &[u8]) -> Vec<u8> {
    Vec::new()
}

/// The programs: interpreters running their scripts (a hot loop yielding
/// every 2,000 iterations, the approval workflow, and a recursion through
/// the interpreter's C code that yields at its bottom), SQLite running an
/// analytics job that yields from its progress handler, and a Rust
/// recursive evaluator over trait objects that yields 1,000 calls deep.
const PROGRAMS: &[RealProgram] = &[
    RealProgram {
        name: "lua",
        runs: &[
            &["lua", "hot"],
            &["lua", "approval"],
            &["lua", "deep", "100"],
        ],
        through_file_every: 1,
        reply,
    },
    RealProgram {
        name: "lua51",
        runs: &[
            &["lua51", "hot"],
            &["lua51", "approval"],
            &["lua51", "deep", "100"],
        ],
        through_file_every: 1,
        reply,
    },
    RealProgram {
        name: "quickjs",
        runs: &[
            &["quickjs", "hot"],
            &["quickjs", "approval"],
            &["quickjs", "deep", "20"],
        ],
        through_file_every: 1,
        reply,
    },
    RealProgram {
        name: "sqlite",
        runs: &[&["sqlite"]],
        through_file_every: 10,
        reply: no_reply,
    },
    RealProgram {
        name: "rust-recursion",
        runs: &[&["rust-recursion", "1000"]],
        through_file_every: 1,
        reply,
    },
];

/// Binaryen's two ways, as its documentation shows them and
/// `scripts/build-bench-guests --tests` builds them: `wasm-opt --asyncify`
/// alone, and with `-O2`.
const UNOPTIMISED: &str = "asyncified";
const OPTIMISED: &str = "asyncified-O2";

/// Every run of the program `name` as Binaryen's Asyncify left it
/// (`variant`), every yield suspending, through snapshot bytes into a new
/// engine as the program says: what it prints and yields must be what the
/// original module prints and yields in plain wasmtime.
fn binaryen_program_prints_what_the_original_prints(name: &str, variant: &str) {
    let program = PROGRAMS
        .iter()
        .find(|program| program.name == name)
        .unwrap_or_else(|| panic!("no real program {name}"));
    let original = bench_guest(name);
    let asyncified = bench_guest(&format!("{name}.{variant}"));
    let plain = wasmtime::Module::new(&plain_engine(None), &original).unwrap();
    let engine = Engine::new().unwrap();
    let module = engine.load(&asyncified).unwrap();
    assert!(module.metadata().binaryen, "{name}.{variant}");
    let resume = Resume {
        through_file_every: program.through_file_every,
        in_new_engine: true,
    };
    for &args in program.runs {
        let run = |wasm| Program {
            wasm,
            args,
            reply: program.reply,
        };
        let expected = plain_run_of(&plain, &run(&original))
            .unwrap_or_else(|e| panic!("{name} {args:?} in plain wasmtime: {e:?}"));
        let suspended = suspended_run(&engine, Engine::new, &run(&asyncified), &resume)
            .unwrap_or_else(|e| panic!("{name}.{variant} {args:?}: {e:?}"));
        assert_eq!(suspended.status, 0, "{name}.{variant} {args:?}");
        assert_eq!(
            String::from_utf8_lossy(&suspended.transcript),
            String::from_utf8_lossy(&expected),
            "{name}.{variant} {args:?}"
        );
        assert!(
            suspended.suspensions > 0,
            "{name}.{variant} {args:?} never suspended"
        );
        eprintln!(
            "{name}.{variant} {args:?}: {} suspensions",
            suspended.suspensions
        );
    }
}

/// A test of each program in each of Binaryen's two ways; attributes after
/// `unoptimised` go to the test of Binaryen's output without -O2.
macro_rules! binaryen_programs {
    ($($module:ident: $name:literal $(unoptimised #[$attribute:meta])?,)*) => {$(
        mod $module {
            use super::*;

            #[test]
            $(#[$attribute])?
            fn unoptimised_prints_what_the_original_prints() {
                binaryen_program_prints_what_the_original_prints($name, UNOPTIMISED);
            }

            #[test]
            fn optimised_prints_what_the_original_prints() {
                binaryen_program_prints_what_the_original_prints($name, OPTIMISED);
            }
        }
    )*};
}

binaryen_programs! {
    lua: "lua",
    lua51: "lua51",
    quickjs: "quickjs" unoptimised #[ignore = "slow: Cranelift takes minutes and 6 GB on Binaryen's unoptimised QuickJS, which scripts/build-bench-guests builds without --tests"],
    sqlite: "sqlite",
    rust_recursion: "rust-recursion",
}
