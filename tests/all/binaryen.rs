//! Binaryen's Asyncify as an oracle: the same module, instrumented by
//! wasnap and by `wasm-opt --asyncify`, must behave the same when every
//! suspending import really unwinds and rewinds: same results or traps,
//! same import calls, same number of suspensions.
//!
//! Needs `wasm-opt` on PATH (Debian: `apt-get install -y binaryen`); the
//! tests fail, not skip, without it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use wasmtime::{Caller, ExternType, Linker, Memory, Module, Store, Val};
use wasnap::instrument::{Options, instrument};

use crate::harness::{
    Trace, answer, bits, call_outcome, engine, exported_functions, suspend_everywhere, zero_of,
};
use crate::smith;

/// Export name under which the oracle's copy of the module exposes memory
/// 0: Binaryen keeps its unwind buffer there, and does not export it.
const ORACLE_MEMORY: &str = "__oracle_memory_0";

/// Binaryen's Asyncify numbers its states as wasnap does.
const UNWINDING: i32 = 1;
const REWINDING: i32 = 2;

/// What Binaryen 108 accepts besides the MVP: everything the fixtures and
/// the generated modules use except multi-memory, which it predates.
const FEATURES: &[&str] = &[
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-simd",
    "--enable-bulk-memory",
    "--enable-reference-types",
    "--enable-multivalue",
    "--enable-extended-const",
];

/// Runs `wasm-opt --asyncify` on `wasm`, with the imports matching
/// `imports` (Binaryen's `module.name` wildcard syntax) as the ones that
/// unwind. `Ok(Err(message))` when wasm-opt refuses the module.
fn binaryen_asyncify(wasm: &[u8], imports: &str) -> Result<Result<Vec<u8>, String>> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.wasm");
    let output = dir.path().join("out.wasm");
    std::fs::write(&input, wasm)?;
    // Binaryen 108 reads the text format of its own era only: give it the
    // binary.
    let result = Command::new("wasm-opt")
        .arg(&input)
        .args(FEATURES)
        .arg("--asyncify")
        .arg(format!("--pass-arg=asyncify-imports@{imports}"))
        .arg("-o")
        .arg(&output)
        .output();
    let result = match result {
        Ok(result) => result,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "wasm-opt is not on PATH: these tests compare wasnap with Binaryen's Asyncify; \
             install Binaryen (Debian/Ubuntu: `apt-get install -y binaryen`)"
        ),
        Err(e) => return Err(e).context("running wasm-opt"),
    };
    if !result.status.success() {
        return Ok(Err(String::from_utf8_lossy(&result.stderr).into_owned()));
    }
    Ok(Ok(std::fs::read(&output)?))
}

/// Memory 0 of `wasm`: `None` if it has none, else whether it can grow by
/// a page.
fn memory_0(wasm: &[u8]) -> Result<Option<bool>> {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::MemorySection(reader) = payload?
            && let Some(memory) = reader.into_iter().next()
        {
            let memory = memory?;
            return Ok(Some(
                memory.maximum.is_none_or(|max| max > memory.initial) && !memory.memory64,
            ));
        }
    }
    Ok(None)
}

/// `wasm` with memory 0 exported as [`ORACLE_MEMORY`] (a one-page memory
/// is added when it has none), so that the host can reach Binaryen's
/// unwind buffer. Neither changes what the module's own code can observe.
fn expose_memory_0(wasm: &[u8]) -> Result<Vec<u8>> {
    let text = wasmprinter::print_bytes(wasm)?;
    let body = text
        .trim_end()
        .strip_suffix(')')
        .context("a printed module ends with `)`")?;
    let memory = if memory_0(wasm)?.is_some() {
        ""
    } else {
        "(memory 1)"
    };
    Ok(wat::parse_str(format!(
        "{body} {memory} (export \"{ORACLE_MEMORY}\" (memory 0)))"
    ))?)
}

/// The Binaryen run's host: the same answers as the harness's.
struct Host {
    calls: Vec<(String, Vec<u128>)>,
    suspensions: usize,
    /// Address of the `{pos, end}` header in memory 0.
    data: u32,
}

fn call_export(
    caller: &mut Caller<'_, Host>,
    name: &str,
    args: &[Val],
) -> wasmtime::Result<Vec<Val>> {
    let func = caller
        .get_export(name)
        .and_then(|e| e.into_func())
        .unwrap_or_else(|| panic!("Binaryen's output exports {name}"));
    let mut results: Vec<Val> = func.ty(&*caller).results().map(|t| zero_of(&t)).collect();
    func.call(&mut *caller, args, &mut results)?;
    Ok(results)
}

/// Runs Binaryen's output suspending at every call of a suspending
/// import, with Binaryen's own protocol (the unwind buffer in memory 0,
/// `asyncify_start_unwind` from the import, `asyncify_stop_unwind` and
/// `asyncify_start_rewind` when the export returns, then the export called
/// again). Binaryen's module keeps its state globals and memories to
/// itself, so its state cannot be copied to a fresh instance as the
/// harness does for wasnap: the unwind and rewind are real, but happen in
/// the same instance.
fn run_binaryen(wasm: &[u8], suspending: &Options) -> Result<(Trace, usize)> {
    let engine = engine();
    let module = Module::new(&engine, wasm).map_err(anyhow::Error::from)?;
    let mut linker = Linker::<Host>::new(&engine);
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            bail!("the oracle hosts function imports only");
        };
        let name = format!("{}.{}", import.module(), import.name());
        let suspends = suspending.is_suspending(import.module(), import.name());
        let ty2 = ty.clone();
        linker.func_new(
            import.module(),
            import.name(),
            ty,
            move |mut caller, args, results| {
                // While the instance is being made (a start function), its
                // exports are out of reach and it cannot suspend.
                let instantiating = caller.get_export("asyncify_get_state").is_none();
                if instantiating {
                    caller
                        .data_mut()
                        .calls
                        .push((name.clone(), args.iter().map(bits).collect()));
                    answer(args, results, &ty2);
                    return Ok(());
                }
                let state = call_export(&mut caller, "asyncify_get_state", &[])?[0].unwrap_i32();
                if suspends && state == REWINDING {
                    call_export(&mut caller, "asyncify_stop_rewind", &[])?;
                    answer(args, results, &ty2);
                    return Ok(());
                }
                caller
                    .data_mut()
                    .calls
                    .push((name.clone(), args.iter().map(bits).collect()));
                if !suspends {
                    answer(args, results, &ty2);
                    return Ok(());
                }
                caller.data_mut().suspensions += 1;
                let data = caller.data().data;
                let memory = caller
                    .get_export(ORACLE_MEMORY)
                    .and_then(|e| e.into_memory())
                    .expect("exported before instrumenting");
                let header = &mut memory.data_mut(&mut caller)[data as usize..data as usize + 8];
                header[..4].copy_from_slice(&(data + 8).to_le_bytes());
                header[4..].copy_from_slice(&(data + 65536).to_le_bytes());
                call_export(
                    &mut caller,
                    "asyncify_start_unwind",
                    &[Val::I32(data as i32)],
                )?;
                for (slot, ty) in results.iter_mut().zip(ty2.results()) {
                    *slot = zero_of(&ty);
                }
                Ok(())
            },
        )?;
    }
    let mut store = Store::new(
        &engine,
        Host {
            calls: Vec::new(),
            suspensions: 0,
            data: 0,
        },
    );
    let instance = linker.instantiate(&mut store, &module)?;
    // The buffer is a page of its own past the module's memory, as the
    // wasnap run grows its memory 0 by a page too.
    let memory: Memory = instance
        .get_memory(&mut store, ORACLE_MEMORY)
        .context("memory 0 is exported")?;
    store.data_mut().data = memory.grow(&mut store, 1)? as u32 * 65536;
    let data = store.data().data as i32;

    let mut outcomes = Vec::new();
    let state = instance.get_typed_func::<(), i32>(&mut store, "asyncify_get_state")?;
    let stop_unwind = instance.get_typed_func::<(), ()>(&mut store, "asyncify_stop_unwind")?;
    let start_rewind = instance.get_typed_func::<i32, ()>(&mut store, "asyncify_start_rewind")?;
    'exports: for (name, ty) in exported_functions(&module) {
        let func = instance.get_func(&mut store, &name).unwrap();
        let args: Vec<Val> = ty.params().map(|t| zero_of(&t)).collect();
        let mut results: Vec<Val> = ty.results().map(|t| zero_of(&t)).collect();
        loop {
            let result = func.call(&mut store, &args, &mut results);
            if result.is_err() {
                outcomes.push(call_outcome(result, &results));
                break 'exports;
            }
            if state.call(&mut store, ())? != UNWINDING {
                outcomes.push(call_outcome(result, &results));
                break;
            }
            stop_unwind.call(&mut store, ())?;
            start_rewind.call(&mut store, data)?;
        }
    }
    let host = store.into_data();
    Ok((
        Trace {
            outcomes,
            calls: host.calls,
            memories: Vec::new(),
        },
        host.suspensions,
    ))
}

/// How one module compared.
enum Comparison {
    Agreed {
        suspensions: usize,
    },
    /// One side cannot take the module; the reason.
    NotComparable(String),
}

/// Compares wasnap and Binaryen on `wasm`, `imports` naming the
/// suspending imports in the syntax both share (`module.name`, `*`).
fn compare(wasm: &[u8], imports: &str) -> Result<Comparison> {
    let options = Options::default().suspending(imports);
    if let Err(e) = instrument(wasm, &options) {
        return Ok(Comparison::NotComparable(format!("wasnap refuses: {e:#}")));
    }
    let grow = match memory_0(wasm)? {
        Some(false) => {
            return Ok(Comparison::NotComparable(
                "memory 0 cannot grow a page for Binaryen's buffer".into(),
            ));
        }
        Some(true) => true,
        None => false,
    };
    let exposed = expose_memory_0(wasm)?;
    let asyncified = match binaryen_asyncify(&exposed, imports)? {
        Ok(asyncified) => asyncified,
        Err(message) => {
            return Ok(Comparison::NotComparable(format!(
                "wasm-opt refuses: {}",
                message.trim()
            )));
        }
    };
    let (wasnap, wasnap_suspensions) =
        suspend_everywhere(wasm, &options, grow)?.context("the module imports functions only")?;
    let (binaryen, binaryen_suspensions) = run_binaryen(&asyncified, &options)?;
    if wasnap.outcomes != binaryen.outcomes || wasnap.calls != binaryen.calls {
        bail!(
            "wasnap and Binaryen disagree:\nwasnap:   {:?} {:?}\nbinaryen: {:?} {:?}",
            wasnap.outcomes,
            wasnap.calls,
            binaryen.outcomes,
            binaryen.calls
        );
    }
    if wasnap_suspensions != binaryen_suspensions {
        bail!("wasnap suspended {wasnap_suspensions} times, Binaryen {binaryen_suspensions}");
    }
    Ok(Comparison::Agreed {
        suspensions: wasnap_suspensions,
    })
}

fn has_several_memories(wasm: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(wasm).any(|payload| {
        matches!(payload, Ok(wasmparser::Payload::MemorySection(reader)) if reader.count() > 1)
    })
}

#[test]
fn fixtures_behave_as_under_binaryen_asyncify() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wat"))
        .collect();
    paths.sort();
    let mut agreed = 0;
    for path in &paths {
        let name = path.file_stem().unwrap().to_string_lossy();
        let wasm = wat::parse_file(path).unwrap();
        match compare(&wasm, "env.sleep").unwrap_or_else(|e| panic!("{name}: {e:?}")) {
            Comparison::Agreed { suspensions } => {
                assert!(suspensions > 0, "{name} never suspended");
                agreed += 1;
            }
            // Binaryen 108 predates multi-memory, and its IR has no block
            // parameters; every other fixture must go through both.
            Comparison::NotComparable(reason)
                if has_several_memories(&wasm)
                    || reason.contains("block cannot pop from outside") =>
            {
                eprintln!("{name}: not compared (beyond Binaryen 108): {reason}");
            }
            Comparison::NotComparable(reason) => panic!("{name}: {reason}"),
        }
    }
    eprintln!(
        "Binaryen oracle: {agreed} of {} fixtures agree",
        paths.len()
    );
    assert!(agreed > 0);
}

/// Generated modules with one memory (Binaryen 108 has no multi-memory).
const SMITH_SEEDS: u64 = 40;

#[test]
fn generated_modules_behave_as_under_binaryen_asyncify() {
    let mut agreed = 0;
    let mut suspensions = 0;
    let mut not_compared = std::collections::BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for seed in 0..SMITH_SEEDS {
        let wasm = smith::module_for_seed(seed, 1);
        match compare(&wasm, "env.*") {
            Ok(Comparison::Agreed { suspensions: n }) => {
                agreed += 1;
                suspensions += n;
            }
            Ok(Comparison::NotComparable(reason)) => {
                // Group by kind, without offsets and names.
                let cause = reason
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .split(" (at ")
                    .next()
                    .unwrap_or_default()
                    .split(" in function")
                    .next()
                    .unwrap_or_default()
                    .to_string();
                *not_compared.entry(cause).or_default() += 1;
            }
            Err(e) => failures.push(format!("seed {seed}: {e:#}")),
        }
    }
    eprintln!(
        "Binaryen oracle: {SMITH_SEEDS} generated modules: {agreed} agree ({suspensions} suspensions), not compared: {not_compared:?}, {} disagree",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        agreed >= SMITH_SEEDS as usize / 4,
        "too few modules compared"
    );
}
