//! Interpreters compiled to Wasm, suspended in interpreted code.
//!
//! Lua 5.4 (`lua.wasm`) and QuickJS-ng (`quickjs.wasm`), compiled from
//! their published C sources, run scripts that call `wasnap.yield` from
//! interpreted code: the suspending import is reached through the
//! interpreter's dispatch loop and its function pointers. Each script is
//! run with every yield suspending, and every suspension going through a
//! snapshot file into a new engine (as into a new process); its transcript
//! (output, and yielded values where they were yielded) must equal a plain
//! run of the original module in wasmtime, where yields are answered at
//! once with the same replies.
//!
//! The scripts (benches/guests/interpreters/{lua,js}/), chosen by argv[1]:
//! `hot`, a CPU-heavy loop yielding every 2,000 iterations; `deep`, a
//! recursion in the interpreter's C code that yields at the bottom; and
//! `approval`, the seed's approval workflow.
//!
//! The modules come from `scripts/build-bench-guests --tests` (run by
//! `.ci/run`); a missing module fails the test with that hint.

use std::sync::OnceLock;

use wasnap::Engine;

use crate::real_programs::{
    Program, Resume, SuspendedRun, bench_guest, plain_engine, plain_run_of, suspended_run,
};

/// The recursion depths of the `deep` tests. Each level nests the
/// interpreter's C functions, so the Wasm stack grows with it (Lua: the VM
/// calling an `__index` metamethod that runs the VM again; QuickJS: a
/// JavaScript call). Measured by `deep_recursion_needs_this_much_wasm_stack`
/// (wasmtime's default limit is 512 KiB):
///
/// - Lua, 400 levels: the original needs 216 KiB, the instrumented
///   module 412 KiB (1.9x); wasnap's default engine runs up to 460
///   levels, the original up to 957.
/// - QuickJS, 300 levels: the original needs 220 KiB; the
///   instrumented module needs 827 KiB already at 1 level and about 206 KiB
///   more per level (the original about 0.7 KiB), measured before the
///   instrumenter stopped keeping a suspending call's operands alive
///   across it; with that and the engine's 8 MiB default limit,
///   `quickjs_deep_recursion_suspends_at_its_bottom` passes at this depth.
const LUA_DEPTH: &str = "400";
const QUICKJS_DEPTH: &str = "300";

/// The host's answer to a yielded value: the approval workflow's question
/// is approved, anything else is acknowledged with a reply that repeats it
/// (so a reply that went astray shows in the transcript).
pub fn reply(value: &[u8]) -> Vec<u8> {
    if value == b"ask boss for permission" {
        b"true".to_vec()
    } else {
        [b"ack ".as_slice(), value].concat()
    }
}

/// An interpreter module, with its original compiled once for plain runs
/// and an engine that instruments and compiles it once for all the tests.
struct Interpreter {
    wasm: Vec<u8>,
    plain: wasmtime::Module,
    engine: Engine,
}

fn interpreter(name: &str) -> &'static Interpreter {
    static LUA: OnceLock<Interpreter> = OnceLock::new();
    static QUICKJS: OnceLock<Interpreter> = OnceLock::new();
    let cell = match name {
        "lua" => &LUA,
        "quickjs" => &QUICKJS,
        _ => panic!("no interpreter guest {name}"),
    };
    cell.get_or_init(|| {
        let wasm = bench_guest(name);
        let plain = wasmtime::Module::new(&plain_engine(None), &wasm).unwrap();
        Interpreter {
            wasm,
            plain,
            engine: Engine::new().unwrap(),
        }
    })
}

/// Runs `interpreter SCRIPT ARGS...` plainly and suspended at every yield,
/// each suspension through a snapshot file into a new engine; asserts the
/// two transcripts are equal and returns the suspended run.
fn suspended_prints_what_plain_prints(name: &str, script_and_args: &[&str]) -> SuspendedRun {
    let interpreter = interpreter(name);
    let args: Vec<&str> = [name].iter().chain(script_and_args).copied().collect();
    let program = Program {
        wasm: &interpreter.wasm,
        args: &args,
        reply,
    };
    let expected =
        plain_run_of(&interpreter.plain, &program).unwrap_or_else(|e| panic!("{args:?}: {e:?}"));
    let resume = Resume {
        through_file_every: 1,
        in_new_engine: true,
    };
    let run = suspended_run(&interpreter.engine, Engine::new, &program, &resume)
        .unwrap_or_else(|e| panic!("{args:?}: {e:?}"));
    assert_eq!(run.status, 0, "{args:?}");
    assert_eq!(
        String::from_utf8_lossy(&run.transcript),
        String::from_utf8_lossy(&expected),
        "{args:?}"
    );
    eprintln!("{args:?}: {} suspensions", run.suspensions);
    run
}

fn transcript(run: &SuspendedRun) -> String {
    String::from_utf8_lossy(&run.transcript).into_owned()
}

fn hot_loop_suspends_every_2000_iterations(name: &str) {
    let run = suspended_prints_what_plain_prints(name, &["hot"]);
    assert_eq!(run.suspensions, 50);
    let text = transcript(&run);
    // Computed in the interpreter, the same in both languages.
    assert!(
        text.contains("checksum 584393040 over 707 keys: alpha-0=854 "),
        "{text}"
    );
    // "ack progress 2000" ... "ack progress 100000": every reply arrived.
    assert!(
        text.ends_with("50 replies, 897 bytes, last \"ack progress 100000\"\n"),
        "{text}"
    );
}

fn deep_recursion_suspends_at_its_bottom(name: &str, depth: &str) {
    let run = suspended_prints_what_plain_prints(name, &["deep", depth]);
    assert_eq!(run.suspensions, 1);
    let sum: u64 = (1..=depth.parse().unwrap()).sum();
    assert_eq!(
        transcript(&run),
        format!(
            "> bottom of {depth} levels\nsum of 1..{depth} = {sum}\nreply \"ack bottom of {depth} levels\"\n"
        )
    );
}

fn approval_is_approved(name: &str) {
    let run = suspended_prints_what_plain_prints(name, &["approval"]);
    assert_eq!(
        transcript(&run),
        "> do something\n> ask boss for permission\n> do another after approved\n"
    );
}

#[test]
fn lua_hot_loop_suspends_every_2000_iterations() {
    hot_loop_suspends_every_2000_iterations("lua");
}

#[test]
fn quickjs_hot_loop_suspends_every_2000_iterations() {
    hot_loop_suspends_every_2000_iterations("quickjs");
}

#[test]
fn lua_deep_recursion_suspends_at_its_bottom() {
    deep_recursion_suspends_at_its_bottom("lua", LUA_DEPTH);
}

/// Within the engine's default Wasm stack limit (8 MiB); under wasmtime's
/// own 512 KiB the instrumented QuickJS ran out (see [`QUICKJS_DEPTH`]).
#[test]
fn quickjs_deep_recursion_suspends_at_its_bottom() {
    deep_recursion_suspends_at_its_bottom("quickjs", QUICKJS_DEPTH);
}

#[test]
fn lua_approval_is_approved() {
    approval_is_approved("lua");
}

#[test]
fn quickjs_approval_is_approved() {
    approval_is_approved("quickjs");
}

/// Whether a run ended because the Wasm stack ran out.
fn stack_exhausted(error: &anyhow::Error) -> bool {
    format!("{error:?}").contains("call stack exhausted")
}

/// The largest `n` in `1..=high` for which `passes(n)` holds, given that it
/// holds for every smaller `n` and not for larger ones; 0 when none does.
fn largest_passing(high: usize, mut passes: impl FnMut(usize) -> bool) -> usize {
    let (mut good, mut bad) = (0, high + 1);
    while bad - good > 1 {
        let middle = (good + bad) / 2;
        if passes(middle) {
            good = middle;
        } else {
            bad = middle;
        }
    }
    good
}

/// `deep DEPTH` of `wasm` (compiled as `compiled` by an engine without a
/// stack limit of its own) in plain wasmtime limited to `max_wasm_stack`:
/// whether it finished, or ran out of stack (anything else fails).
fn deep_fits(
    name: &str,
    compiled: &[u8],
    wasm: &[u8],
    depth: usize,
    max_wasm_stack: usize,
) -> bool {
    let engine = plain_engine(Some(max_wasm_stack));
    // SAFETY: the artifact was serialized just before, by this process.
    let module = unsafe { wasmtime::Module::deserialize(&engine, compiled) }.unwrap();
    let depth = depth.to_string();
    let program = Program {
        wasm,
        args: &[name, "deep", &depth],
        reply,
    };
    match plain_run_of(&module, &program) {
        Ok(_) => true,
        Err(e) if stack_exhausted(&e) => false,
        Err(e) => panic!("{name} deep {depth}: {e:?}"),
    }
}

/// Figures for the documentation, printed: for each interpreter, its size
/// before and after instrumentation, the deepest `deep` recursion that fits wasmtime's default 512 KiB Wasm stack
/// in the original module and under wasnap's default engine, and the Wasm
/// stack the original and the instrumented module (run without suspending)
/// need for a few depths. `cargo test --test all interpreters::deep_recursion_needs -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: prints figures, takes minutes"]
fn deep_recursion_needs_this_much_wasm_stack() {
    // The limits tried go up to 32 MiB: a thread whose native stack holds that.
    std::thread::Builder::new()
        .stack_size(128 << 20)
        .spawn(measure_deep_recursion)
        .unwrap()
        .join()
        .unwrap();
}

fn measure_deep_recursion() {
    const KIB: usize = 1024;
    for name in ["lua", "quickjs"] {
        let interpreter = interpreter(name);
        let instrumented = wasnap::instrument::instrument(&interpreter.wasm, &Default::default())
            .unwrap()
            .wasm;
        println!(
            "{name}: module size: original {} B, instrumented {} B ({:.2}x)",
            interpreter.wasm.len(),
            instrumented.len(),
            instrumented.len() as f64 / interpreter.wasm.len() as f64
        );
        let unlimited = plain_engine(Some(32 * 1024 * KIB));
        let compile = |wasm: &[u8]| {
            wasmtime::Module::new(&unlimited, wasm)
                .unwrap()
                .serialize()
                .unwrap()
        };
        let (original_artifact, instrumented_artifact) =
            (compile(&interpreter.wasm), compile(&instrumented));

        let original_depth = largest_passing(100_000, |depth| {
            deep_fits(
                name,
                &original_artifact,
                &interpreter.wasm,
                depth,
                512 * KIB,
            )
        });
        let wasnap_depth = largest_passing(original_depth, |depth| {
            let depth = depth.to_string();
            let program = Program {
                wasm: &interpreter.wasm,
                args: &[name, "deep", &depth],
                reply,
            };
            let resume = Resume {
                through_file_every: 1,
                in_new_engine: false,
            };
            match suspended_run(&interpreter.engine, Engine::new, &program, &resume) {
                Ok(_) => true,
                Err(e) if stack_exhausted(&e) => false,
                Err(e) => panic!("{name} deep {depth} in wasnap: {e:?}"),
            }
        });
        println!(
            "{name}: deepest `deep` within 512 KiB of Wasm stack: original {original_depth}, \
             wasnap's default engine {wasnap_depth}"
        );
        let tested = if name == "lua" {
            LUA_DEPTH
        } else {
            QUICKJS_DEPTH
        };
        let mut depths = vec![
            1,
            100,
            tested.parse().unwrap(),
            wasnap_depth,
            original_depth,
        ];
        depths.retain(|&depth| depth > 0);
        depths.sort();
        depths.dedup();
        const LIMIT_KIB: usize = 32 * 1024;
        for depth in depths {
            // The smallest limit, in KiB, at which the recursion fits.
            let need = |artifact: &[u8], wasm: &[u8]| {
                let fits = |kib: usize| deep_fits(name, artifact, wasm, depth, kib * KIB);
                1 + largest_passing(LIMIT_KIB, |kib| !fits(kib))
            };
            let original = need(&original_artifact, &interpreter.wasm);
            let instrumented = match need(&instrumented_artifact, &instrumented) {
                kib if kib > LIMIT_KIB => format!("more than {} MiB", LIMIT_KIB / 1024),
                kib => format!("{kib} KiB ({:.1}x)", kib as f64 / original as f64),
            };
            println!(
                "{name} deep {depth}: Wasm stack needed: original {original} KiB, \
                 instrumented {instrumented}"
            );
        }
    }
}
