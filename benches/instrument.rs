//! Instrumentation: how long it takes, how much code it adds, how long
//! wasmtime takes to compile the result, and what it costs at run time
//! when no suspension is taken, next to the original module and to
//! Binaryen's `wasm-opt --asyncify -O2` on the same inputs.
//!
//! The guests are built by `scripts/build-bench-guests` into
//! `target/bench-guests/`: a compute kernel that calls `wasnap.yield` from
//! its hot loop, in C (`compute`) and in Rust (`rust-compute`); SQLite
//! running an analytics job whose progress handler calls it (`sqlite`);
//! Lua 5.4 and QuickJS-ng running their `hot` scripts, whose interpreted
//! loops reach `wasnap.yield` through the interpreter's native-function
//! pointers every 2,000 iterations (`lua`, `quickjs`); and a Rust workflow
//! parsing JSON records with serde_json and matching them with regex
//! (`json`). Without them this bench says so and measures nothing.
//!
//! `WASNAP_BENCH_GUESTS=lua,quickjs` measures only those guests;
//! `WASNAP_BENCH_ROUNDS` sets the number of paired rounds (15);
//! `WASNAP_BENCH_PERF_MAP=1` writes a map of the compiled guest code for
//! `perf record` (`/tmp/perf-PID.map`).
//!
//! Every variant runs in plain wasmtime, on the same engine, with a host
//! whose `wasnap.yield` returns 0 at once: nothing ever unwinds, so the run
//! time differences are the instrumentation's cost on the normal path. The
//! variants must print the same output, which is checked before timing.
//! The engine compiles as wasnap's does where that shapes the machine
//! code: branch hints are honoured (wasnap marks its unwind and rewind
//! paths cold with them; the other variants carry none). wasnap's epoch
//! checks for time limits are left out, as they cost every variant alike.
//!
//! - `original`: the module as clang made it;
//! - `wasnap`: `wasnap::instrument::instrument` of it;
//! - `wasnap-only`: the same with [`Options::only_functions`] naming the
//!   functions that are on the stack when the guest suspends (what a user
//!   who knows the program can declare, as with Binaryen's
//!   `asyncify-onlylist`); only for guests that have such a list;
//! - `wasnap-resumed`: the `wasnap` module, unwound at its first
//!   `wasnap.yield` and rewound at once in the same instance, so that the
//!   functions on the stack then run the rest of their activations in
//!   their whole copies, as after any resume (the rest of the guests' work,
//!   for the interpreters' `hot` loops);
//! - `asyncify`: `wasm-opt --asyncify -O2` of it;
//! - `wasm-opt-O2`: `wasm-opt -O2` of it, to tell Binaryen's optimiser apart
//!   from Asyncify's cost.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wasmtime::{Caller, Engine, Extern, Linker, Module, Store, Val};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasnap::instrument::{
    DATA_GLOBAL_EXPORT, Options, STACK_MEMORY_EXPORT, STATE_GLOBAL_EXPORT, STATE_NORMAL,
    STATE_REWINDING, STATE_UNWINDING, instrument,
};

/// Each guest, by file name, with the arguments it runs with.
const GUESTS: &[(&str, &[&str])] = &[
    ("compute", &[]),
    ("sqlite", &[]),
    ("lua", &["hot"]),
    ("quickjs", &["hot"]),
    ("rust-compute", &[]),
    ("json", &[]),
];

/// The guests `WASNAP_BENCH_GUESTS` (comma-separated names) selects; all
/// when it is not set.
fn selected_guests() -> Vec<(&'static str, &'static [&'static str])> {
    let wanted = std::env::var("WASNAP_BENCH_GUESTS").ok();
    GUESTS
        .iter()
        .filter(|(name, _)| {
            wanted
                .as_deref()
                .is_none_or(|list| list.split(',').any(|w| w.trim() == *name))
        })
        .copied()
        .collect()
}

/// For each guest, the functions that can be on its stack when it suspends:
/// SQLite's progress handler is called from the virtual machine's loop,
/// which `sqlite3_step` runs for a query or `sqlite3_exec` for a statement.
fn only_functions(guest: &str) -> Option<Options> {
    let names: &[&str] = match guest {
        "sqlite" => &[
            "_start*",
            "__original_main",
            "main",
            "exec",
            "query",
            "checkpoint",
            "sqlite3_exec",
            "sqlite3_step",
            "sqlite3Step",
            "sqlite3VdbeExec",
        ],
        // As `wasnap inspect` lists the stack of `quickjs.wasm hot` in
        // `wasnap.yield`: a JavaScript call of a native function.
        "quickjs" => &[
            "_start*",
            "__original_main",
            "__main_void",
            "main",
            "wasnap_js_run",
            "JS_Eval",
            "JS_EvalThis2",
            "__JS_EvalInternal",
            "JS_EvalFunctionInternal",
            "JS_CallInternal",
            "js_call_c_function",
            "js_wasnap_yield",
        ],
        _ => return None,
    };
    Some(
        names
            .iter()
            .fold(Options::default(), |o, n| o.only_functions(*n)),
    )
}

fn guest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-guests")
}

/// An engine that compiles modules as wasnap's engine does (see the
/// module's documentation).
fn bench_engine() -> Engine {
    let mut config = wasmtime::Config::new();
    config.wasm_branch_hinting(true);
    if std::env::var_os("WASNAP_BENCH_PERF_MAP").is_some() {
        // For `perf record`: names the guests' compiled functions in
        // /tmp/perf-PID.map.
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&config).unwrap()
}

/// Size in bytes of the code section's contents.
fn code_size(wasm: &[u8]) -> usize {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Ok(wasmparser::Payload::CodeSectionStart { size, .. }) = payload {
            return size as usize;
        }
    }
    0
}

/// A guest module and the arguments it runs with (after its name).
struct Guest<'a> {
    name: &'a str,
    args: &'a [&'a str],
}

/// What a guest's store holds.
struct Host {
    wasi: WasiP1Ctx,
    /// Whether the first `wasnap.yield` is to unwind the stack (a module
    /// instrumented by wasnap); once it has, every yield returns at once.
    suspend_once: bool,
}

/// A variant to run: its name and compiled module, and whether it
/// suspends once ([`Host::suspend_once`]).
struct Variant<'a> {
    name: &'a str,
    module: Module,
    suspend_once: bool,
}

/// Runs a WASI command to its end and returns what it printed. Its
/// `wasnap.yield` returns 0 at once, except that a variant that suspends
/// once is unwound at its first yield and rewound at once.
fn run(engine: &Engine, linker: &Linker<Host>, guest: &Guest, variant: &Variant) -> Vec<u8> {
    let stdout = MemoryOutputPipe::new(usize::MAX);
    let wasi = wasmtime_wasi::WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .arg(guest.name)
        .args(guest.args)
        .build_p1();
    let host = Host {
        wasi,
        suspend_once: variant.suspend_once,
    };
    let mut store = Store::new(engine, host);
    let instance = linker.instantiate(&mut store, &variant.module).unwrap();
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .unwrap();
    let mut outcome = start.call(&mut store, ());
    if outcome.is_ok()
        && let Some(state) = instance.get_global(&mut store, STATE_GLOBAL_EXPORT)
        && state.get(&mut store).unwrap_i32() == STATE_UNWINDING
    {
        // Rewind from the frames just written: they are in place, with
        // the header's `pos` after the last one.
        state.set(&mut store, Val::I32(STATE_REWINDING)).unwrap();
        outcome = start.call(&mut store, ());
    }
    match outcome {
        Ok(()) => {}
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(0)) => {}
            _ => panic!("the guest failed: {e:?}"),
        },
    }
    stdout.contents().to_vec()
}

/// `wasnap.yield`: returns 0, after starting an unwind the first time if
/// the run suspends once, and ending the rewind when it comes back.
fn yield_to_host(mut caller: Caller<'_, Host>) -> i32 {
    if !caller.data().suspend_once {
        return 0;
    }
    let Some(Extern::Global(state)) = caller.get_export(STATE_GLOBAL_EXPORT) else {
        panic!("a variant that suspends once lacks wasnap's state global");
    };
    if state.get(&mut caller).unwrap_i32() == STATE_REWINDING {
        state.set(&mut caller, Val::I32(STATE_NORMAL)).unwrap();
        caller.data_mut().suspend_once = false;
        return 0;
    }
    let Some(Extern::Global(data)) = caller.get_export(DATA_GLOBAL_EXPORT) else {
        panic!("no data global");
    };
    let Some(Extern::Memory(stack)) = caller.get_export(STACK_MEMORY_EXPORT) else {
        panic!("no stack memory");
    };
    // The `{pos, end}` header at address 0, the frames after it (the
    // runtime's `reserve` grows the memory for them).
    if stack.data_size(&caller) < 8 {
        stack.grow(&mut caller, 1).unwrap();
    }
    let end = stack.data_size(&caller) as u32;
    let header = [8u32.to_le_bytes(), end.to_le_bytes()].concat();
    stack.write(&mut caller, 0, &header).unwrap();
    data.set(&mut caller, Val::I32(0)).unwrap();
    state.set(&mut caller, Val::I32(STATE_UNWINDING)).unwrap();
    0
}

fn instrumentation(c: &mut Criterion) {
    let dir = guest_dir();
    if !dir.join("compute.wasm").exists() {
        eprintln!(
            "no guests in {}: run scripts/build-bench-guests first; nothing measured",
            dir.display()
        );
        return;
    }
    let engine = bench_engine();
    let mut linker: Linker<Host> = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |host| &mut host.wasi).unwrap();
    linker
        .func_wrap(
            "wasnap",
            "yield",
            |caller: Caller<'_, Host>, _ptr: i32, _len: i32| yield_to_host(caller),
        )
        .unwrap();
    // Never called: every reply is empty. The interpreters import it.
    linker
        .func_wrap("wasnap", "reply", |_ptr: i32, _cap: i32| -> i32 { 0 })
        .unwrap();
    // Never called either: QuickJS's runtime imports the timers.
    linker.func_wrap("wasnap", "sleep", |_ms: i64| {}).unwrap();
    linker
        .func_wrap(
            "wasnap",
            "yield_timeout",
            |_ptr: i32, _len: i32, _ms: i64| -> i32 { 0 },
        )
        .unwrap();
    let options = Options::default();

    for (guest, args) in selected_guests() {
        let read = |suffix: &str| std::fs::read(dir.join(format!("{guest}{suffix}.wasm"))).unwrap();
        let target = Guest { name: guest, args };
        let original = read("");
        let instrumented = instrument(&original, &options).unwrap().wasm;
        let mut variants = vec![
            ("original", original.clone()),
            ("wasnap", instrumented.clone()),
            ("wasnap-resumed", instrumented),
            ("asyncify", read(".asyncify")),
            ("wasm-opt-O2", read(".opt")),
        ];
        if let Some(only) = only_functions(guest) {
            variants.insert(
                2,
                ("wasnap-only", instrument(&original, &only).unwrap().wasm),
            );
        }

        eprintln!("{guest}: module and code-section sizes in bytes");
        for (name, wasm) in &variants {
            eprintln!(
                "  {name:>10}: module {:>9}, code {:>9}",
                wasm.len(),
                code_size(wasm)
            );
        }

        let mut group = c.benchmark_group(format!("instrument_time/{guest}"));
        group.bench_function("wasnap", |b| {
            b.iter(|| black_box(instrument(&original, &options).unwrap()))
        });
        group.finish();

        // Compiling each variant with wasmtime: what loading costs once
        // the module is instrumented.
        let mut group = c.benchmark_group(format!("instrument_compile/{guest}"));
        for (name, wasm) in &variants {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| black_box(Module::new(&engine, wasm).unwrap()))
            });
        }
        group.finish();

        let compiled: Vec<Variant> = variants
            .iter()
            .map(|(name, wasm)| Variant {
                name,
                module: Module::new(&engine, wasm).unwrap(),
                suspend_once: *name == "wasnap-resumed",
            })
            .collect();
        let expected = run(&engine, &linker, &target, &compiled[0]);
        eprint!("{}", String::from_utf8_lossy(&expected));
        for variant in &compiled[1..] {
            assert_eq!(
                run(&engine, &linker, &target, variant),
                expected,
                "{guest}: the {} variant prints something else",
                variant.name
            );
        }

        let mut group = c.benchmark_group(format!("instrument_run/{guest}"));
        for variant in &compiled {
            group.bench_function(BenchmarkId::from_parameter(variant.name), |b| {
                b.iter(|| black_box(run(&engine, &linker, &target, variant)))
            });
        }
        group.finish();
        paired_runs(&target, &engine, &linker, &compiled);
    }
}

/// Rounds of paired runs: in each round every variant runs once, in turn,
/// and its time is divided by the original's from the same round. On a
/// shared machine whose speed drifts by more than the effect measured, the
/// median of these per-round ratios is steadier than a ratio of medians
/// taken minutes apart. Written to `target/bench-instrument/paired.tsv`
/// (guest, variant, median ratio, rounds) for `scripts/bench-ratios`.
fn paired_runs(target: &Guest, engine: &Engine, linker: &Linker<Host>, compiled: &[Variant]) {
    let guest = target.name;
    let rounds: usize = std::env::var("WASNAP_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); compiled.len()];
    for _ in 0..rounds {
        let times: Vec<f64> = compiled
            .iter()
            .map(|variant| {
                let start = Instant::now();
                black_box(run(engine, linker, target, variant));
                start.elapsed().as_secs_f64()
            })
            .collect();
        for (k, time) in times.iter().enumerate() {
            ratios[k].push(time / times[0]);
        }
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-instrument");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("paired.tsv");
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.starts_with(&format!("{guest}\t")))
        .map(str::to_string)
        .collect();
    for (Variant { name, .. }, mut samples) in compiled.iter().zip(ratios) {
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        eprintln!("{guest}: {name} / original, median of {rounds} paired rounds: {median:.3}x");
        lines.push(format!("{guest}\t{name}\t{median:.4}\t{rounds}"));
    }
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

fn config() -> Criterion {
    // Runs last a few hundred milliseconds: ten of each, compared as ratios.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = instrumentation
}
criterion_main!(benches);
