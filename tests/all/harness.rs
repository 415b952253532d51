//! The differential "suspend everywhere" harness for the instrumenter.
//!
//! A module is run three ways, and each must behave like the others:
//!
//! 1. the original module, as it is;
//! 2. the instrumented module, never suspending (normal mode must be
//!    transparent);
//! 3. the instrumented module where *every* call of a suspending import
//!    really unwinds: the whole state (every memory, every global, the
//!    stack memory) is copied to bytes, a fresh Store and Instance is made
//!    from those bytes, and the stack is rewound there, where the import
//!    returns its answer.
//!
//! Modules whose state holds references that bytes cannot carry (a table
//! written at run time, a mutable reference-typed global) are rewound in
//! the same instance instead: the unwind and rewind are still real, only
//! the copy is left out.
//!
//! The observable behaviour compared is: the results or trap of each
//! exported function called, the sequence of import calls with their
//! arguments, and (for 2 and 3) the final contents of every memory.
//!
//! Imports are answered by a deterministic host: an import's `k`-th result
//! is `3 * (sum of its arguments) + 1 + k`, converted to the result type.

use anyhow::{Context, Result, bail};
use wasmtime::{
    Caller, Engine, Extern, ExternType, FuncType, Instance, Linker, Module, Store, Val, ValType,
};
use wasnap::instrument::{
    self, DATA_GLOBAL_EXPORT, GLOBAL_EXPORT_PREFIX, MEMORY_EXPORT_PREFIX, Options,
    STACK_MEMORY_EXPORT, STATE_GLOBAL_EXPORT, STATE_NORMAL, STATE_REWINDING, STATE_UNWINDING,
};

/// What a run did, in a form that can be compared.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Trace {
    /// For each export called: its results as raw bits, or "trap".
    pub outcomes: Vec<Result<Vec<u128>, String>>,
    /// Every import call: name and arguments as raw bits.
    pub calls: Vec<(String, Vec<u128>)>,
    /// The final bytes of every memory (runs of the instrumented module only).
    pub memories: Vec<Vec<u8>>,
}

/// How a differential run went.
pub struct Report {
    pub original: Trace,
    pub suspended: Trace,
    /// How many times the module really suspended.
    pub suspensions: usize,
    /// Whether it was rewound in the same instance, its state not being
    /// copyable as bytes.
    pub rewound_in_place: bool,
    /// If the suspending run trapped: the index of each function on the
    /// stack at the trap, innermost first, in the instrumented module.
    pub trapped_in: Vec<u32>,
}

pub fn engine() -> Engine {
    let mut config = wasmtime::Config::new();
    config.wasm_multi_memory(true);
    Engine::new(&config).unwrap()
}

pub fn bits(value: &Val) -> u128 {
    match value {
        Val::I32(v) => *v as u32 as u128,
        Val::I64(v) => *v as u64 as u128,
        Val::F32(b) => *b as u128,
        Val::F64(b) => *b as u128,
        Val::V128(v) => v.as_u128(),
        Val::FuncRef(f) => f.is_some() as u128,
        Val::ExternRef(r) => r.is_some() as u128,
        _ => 0,
    }
}

pub fn zero_of(ty: &ValType) -> Val {
    Val::default_for_ty(ty).unwrap_or(Val::I32(0))
}

/// The deterministic answer of an import.
pub fn answer(args: &[Val], results: &mut [Val], ty: &FuncType) {
    let sum = args
        .iter()
        .fold(0u64, |acc, a| acc.wrapping_add(bits(a) as u64));
    for (k, (slot, result_ty)) in results.iter_mut().zip(ty.results()).enumerate() {
        let n = sum.wrapping_mul(3).wrapping_add(1 + k as u64);
        *slot = match result_ty {
            ValType::I32 => Val::I32(n as i32),
            ValType::I64 => Val::I64(n as i64),
            ValType::F32 => Val::F32((n as u32 as f32).to_bits()),
            ValType::F64 => Val::F64((n as f64).to_bits()),
            ValType::V128 => Val::V128((n as u128).into()),
            other => zero_of(&other),
        };
    }
}

/// Host state of the instrumented runs.
#[derive(Default)]
struct Host {
    calls: Vec<(String, Vec<u128>)>,
    suspensions: usize,
    /// Whether suspending imports really suspend.
    suspend: bool,
    /// Whether a fresh instance is being made to restore a snapshot into.
    restoring: bool,
}

fn imports_are_functions_only(module: &Module) -> bool {
    module
        .imports()
        .all(|import| matches!(import.ty(), ExternType::Func(_)))
}

/// Runs `wasm` all three ways and checks that they agree. `None` when the
/// module imports something other than functions (not supported here).
pub fn differential(wasm: &[u8], options: &Options) -> Result<Option<Report>> {
    let engine = engine();
    let original = Module::new(&engine, wasm)
        .map_err(anyhow::Error::from)
        .context("compiling the original")?;
    if !imports_are_functions_only(&original) {
        return Ok(None);
    }
    let instrumented = instrument::instrument(wasm, options)?;
    let compiled = Module::new(&engine, &instrumented.wasm)
        .map_err(anyhow::Error::from)
        .context("compiling the output")?;
    let suspending: Vec<bool> = original
        .imports()
        .map(|i| options.is_suspending(i.module(), i.name()))
        .collect();

    let plain = run_original(&engine, &original)?;
    let normal = run_instrumented(
        &engine,
        &compiled,
        &suspending,
        Run::default(),
        &instrumented.metadata,
    )?;
    let (suspended, suspensions, rewound_in_place, trapped_in) = run_instrumented(
        &engine,
        &compiled,
        &suspending,
        Run {
            suspend: true,
            ..Run::default()
        },
        &instrumented.metadata,
    )?;

    if plain.outcomes != normal.0.outcomes || plain.calls != normal.0.calls {
        bail!(
            "the instrumented module, never suspending, behaves differently:\noriginal: {:?}\ninstrumented: {:?}",
            plain,
            normal.0
        );
    }
    if normal.0 != suspended {
        bail!(
            "suspending everywhere changed the behaviour after {suspensions} suspensions:\nnormal:    {:?} {:?}\nsuspended: {:?} {:?}",
            normal.0.outcomes,
            normal.0.calls,
            suspended.outcomes,
            suspended.calls
        );
    }
    Ok(Some(Report {
        original: plain,
        suspended,
        suspensions,
        rewound_in_place,
        trapped_in,
    }))
}

/// Instruments `wasm` and runs it suspending at every call of a suspending
/// import (run 3 of [`differential`]), with memory 0 grown by one page
/// before anything runs when `grow_memory_0` (to match a run that needs a
/// page of memory 0 for itself, as Binaryen's output does). Returns the
/// trace and the number of suspensions, or `None` as [`differential`] does.
pub fn suspend_everywhere(
    wasm: &[u8],
    options: &Options,
    grow_memory_0: bool,
) -> Result<Option<(Trace, usize)>> {
    let engine = engine();
    let original = Module::new(&engine, wasm).map_err(anyhow::Error::from)?;
    if !imports_are_functions_only(&original) {
        return Ok(None);
    }
    let instrumented = instrument::instrument(wasm, options)?;
    let compiled = Module::new(&engine, &instrumented.wasm).map_err(anyhow::Error::from)?;
    let suspending: Vec<bool> = original
        .imports()
        .map(|i| options.is_suspending(i.module(), i.name()))
        .collect();
    let run = Run {
        suspend: true,
        grow_memory_0,
    };
    let (trace, suspensions, _, _) =
        run_instrumented(&engine, &compiled, &suspending, run, &instrumented.metadata)?;
    Ok(Some((trace, suspensions)))
}

pub fn exported_functions(module: &Module) -> Vec<(String, FuncType)> {
    module
        .exports()
        .filter_map(|e| match e.ty() {
            ExternType::Func(f) if !e.name().starts_with("asyncify_") => {
                Some((e.name().to_string(), f))
            }
            _ => None,
        })
        .collect()
}

pub fn call_outcome(result: wasmtime::Result<()>, results: &[Val]) -> Result<Vec<u128>, String> {
    match result {
        Ok(()) => Ok(results.iter().map(bits).collect()),
        Err(e) => Err(match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => format!("trap: {trap}"),
            None => format!("error: {e:#}"),
        }),
    }
}

fn run_original(engine: &Engine, module: &Module) -> Result<Trace> {
    let mut store = Store::new(engine, Vec::<(String, Vec<u128>)>::new());
    let mut linker = Linker::<Vec<(String, Vec<u128>)>>::new(engine);
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            unreachable!()
        };
        let name = format!("{}.{}", import.module(), import.name());
        let ty2 = ty.clone();
        linker.func_new(
            import.module(),
            import.name(),
            ty,
            move |mut caller, args, results| {
                caller
                    .data_mut()
                    .push((name.clone(), args.iter().map(bits).collect()));
                answer(args, results, &ty2);
                Ok(())
            },
        )?;
    }
    let instance = linker.instantiate(&mut store, module)?;
    let mut outcomes = Vec::new();
    for (name, ty) in exported_functions(module) {
        let func = instance.get_func(&mut store, &name).unwrap();
        let args: Vec<Val> = ty.params().map(|t| zero_of(&t)).collect();
        let mut results: Vec<Val> = ty.results().map(|t| zero_of(&t)).collect();
        let result = func.call(&mut store, &args, &mut results);
        let trapped = result.is_err();
        outcomes.push(call_outcome(result, &results));
        if trapped {
            break;
        }
    }
    Ok(Trace {
        outcomes,
        calls: std::mem::take(store.data_mut()),
        memories: Vec::new(),
    })
}

/// The instrumentation state, or `None` while the instance is being made
/// (a start function calling an import), when its exports are not yet
/// reachable and it cannot suspend.
fn state_of(caller: &mut Caller<'_, Host>) -> Option<i32> {
    let Some(Extern::Global(g)) = caller.get_export(STATE_GLOBAL_EXPORT) else {
        return None;
    };
    Some(g.get(&mut *caller).unwrap_i32())
}

fn set_state(caller: &mut Caller<'_, Host>, state: i32) {
    let Some(Extern::Global(g)) = caller.get_export(STATE_GLOBAL_EXPORT) else {
        unreachable!()
    };
    g.set(&mut *caller, Val::I32(state)).unwrap();
}

fn linker_for(engine: &Engine, module: &Module, suspending: &[bool]) -> Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    for (import, &suspends) in module.imports().zip(suspending) {
        let ExternType::Func(ty) = import.ty() else {
            unreachable!()
        };
        let name = format!("{}.{}", import.module(), import.name());
        let ty2 = ty.clone();
        linker.func_new(
            import.module(),
            import.name(),
            ty,
            move |mut caller, args, results| {
                let Some(state) = state_of(&mut caller) else {
                    // The start function. Restoring a snapshot runs it
                    // again, into state that is then overwritten: only its
                    // first run is the program's.
                    if !caller.data().restoring {
                        caller
                            .data_mut()
                            .calls
                            .push((name.clone(), args.iter().map(bits).collect()));
                    }
                    answer(args, results, &ty2);
                    return Ok(());
                };
                if suspends && state == STATE_REWINDING {
                    // The second call of a suspension: same arguments as the
                    // first (checked by the trace), now answer for real.
                    set_state(&mut caller, STATE_NORMAL);
                    answer(args, results, &ty2);
                    return Ok(());
                }
                caller
                    .data_mut()
                    .calls
                    .push((name.clone(), args.iter().map(bits).collect()));
                if suspends && caller.data().suspend {
                    caller.data_mut().suspensions += 1;
                    let Some(Extern::Global(data)) = caller.get_export(DATA_GLOBAL_EXPORT) else {
                        unreachable!()
                    };
                    data.set(&mut caller, Val::I32(0))?;
                    set_state(&mut caller, STATE_UNWINDING);
                    for (slot, ty) in results.iter_mut().zip(ty2.results()) {
                        *slot = zero_of(&ty);
                    }
                    return Ok(());
                }
                answer(args, results, &ty2);
                Ok(())
            },
        )?;
    }
    Ok(linker)
}

/// Sets the `{pos, end}` header of a fresh stack memory.
fn reset_stack(store: &mut Store<Host>, instance: &Instance) {
    let stack = instance
        .get_memory(&mut *store, STACK_MEMORY_EXPORT)
        .unwrap();
    let end = stack.data_size(&*store) as u32;
    let data = stack.data_mut(&mut *store);
    data[0..4].copy_from_slice(&8u32.to_le_bytes());
    data[4..8].copy_from_slice(&end.to_le_bytes());
}

/// How [`run_instrumented`] runs.
#[derive(Clone, Copy, Default)]
struct Run {
    /// Whether suspending imports really suspend.
    suspend: bool,
    /// Whether memory 0, if any, grows by a page before anything runs.
    grow_memory_0: bool,
}

fn run_instrumented(
    engine: &Engine,
    module: &Module,
    suspending: &[bool],
    run: Run,
    metadata: &instrument::Metadata,
) -> Result<(Trace, usize, bool, Vec<u32>)> {
    let linker = linker_for(engine, module, suspending)?;
    let host = Host {
        suspend: run.suspend,
        ..Host::default()
    };
    let mut store = Store::new(engine, host);
    let mut instance = linker.instantiate(&mut store, module)?;
    reset_stack(&mut store, &instance);
    if run.grow_memory_0 && metadata.memory_count > 0 {
        let memory = instance
            .get_memory(&mut store, &format!("{MEMORY_EXPORT_PREFIX}0"))
            .unwrap();
        memory.grow(&mut store, 1)?;
    }
    let copyable =
        !metadata.writes_tables && !has_mutable_reference_global(&mut store, &instance, metadata);
    let mut outcomes = Vec::new();
    let mut trapped_in = Vec::new();
    let functions: Vec<_> = exported_functions(module)
        .into_iter()
        .filter(|(name, _)| !name.starts_with("__wasnap_"))
        .collect();
    'exports: for (name, ty) in functions {
        let args: Vec<Val> = ty.params().map(|t| zero_of(&t)).collect();
        let mut results: Vec<Val> = ty.results().map(|t| zero_of(&t)).collect();
        loop {
            let func = instance.get_func(&mut store, &name).unwrap();
            let result = func.call(&mut store, &args, &mut results);
            if let Err(error) = &result {
                if let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
                    trapped_in = backtrace.frames().iter().map(|f| f.func_index()).collect();
                }
                outcomes.push(call_outcome(result, &results));
                break 'exports;
            }
            let state = instance
                .get_global(&mut store, STATE_GLOBAL_EXPORT)
                .unwrap()
                .get(&mut store)
                .unwrap_i32();
            if state != STATE_UNWINDING {
                outcomes.push(call_outcome(result, &results));
                break;
            }
            if !copyable {
                instance
                    .get_global(&mut store, STATE_GLOBAL_EXPORT)
                    .unwrap()
                    .set(&mut store, Val::I32(STATE_REWINDING))?;
                continue;
            }
            // Suspended: copy everything to bytes, throw the instance away,
            // and rewind in a fresh one made from those bytes.
            instance
                .get_global(&mut store, STATE_GLOBAL_EXPORT)
                .unwrap()
                .set(&mut store, Val::I32(STATE_NORMAL))?;
            let bytes = save(&mut store, &instance, metadata);
            let host = std::mem::take(store.data_mut());
            store = Store::new(engine, host);
            store.data_mut().restoring = true;
            instance = linker.instantiate(&mut store, module)?;
            store.data_mut().restoring = false;
            load(&mut store, &instance, metadata, &bytes)?;
            let state = instance
                .get_global(&mut store, STATE_GLOBAL_EXPORT)
                .unwrap();
            state.set(&mut store, Val::I32(STATE_REWINDING))?;
        }
    }
    let memories = (0..metadata.memory_count)
        .map(|i| {
            let memory = instance
                .get_memory(&mut store, &format!("{MEMORY_EXPORT_PREFIX}{i}"))
                .unwrap();
            memory.data(&store).to_vec()
        })
        .collect();
    let suspensions = store.data().suspensions;
    Ok((
        Trace {
            outcomes,
            calls: std::mem::take(&mut store.data_mut().calls),
            memories,
        },
        suspensions,
        !copyable,
        trapped_in,
    ))
}

/// Whether a global can hold a reference the program chose at run time,
/// which a fresh instance cannot be given from bytes.
fn has_mutable_reference_global(
    store: &mut Store<Host>,
    instance: &Instance,
    metadata: &instrument::Metadata,
) -> bool {
    (0..metadata.global_count).any(|i| {
        let ty = instance
            .get_global(&mut *store, &format!("{GLOBAL_EXPORT_PREFIX}{i}"))
            .unwrap()
            .ty(&*store);
        ty.mutability() == wasmtime::Mutability::Var && ty.content().is_ref()
    })
}

fn put(bytes: &mut Vec<u8>, chunk: &[u8]) {
    bytes.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
    bytes.extend_from_slice(chunk);
}

fn take<'a>(bytes: &mut &'a [u8]) -> &'a [u8] {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let chunk = &bytes[8..8 + len];
    *bytes = &bytes[8 + len..];
    chunk
}

/// Every memory, every global and the stack memory, as bytes.
fn save(store: &mut Store<Host>, instance: &Instance, metadata: &instrument::Metadata) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..metadata.memory_count {
        let memory = instance
            .get_memory(&mut *store, &format!("{MEMORY_EXPORT_PREFIX}{i}"))
            .unwrap();
        put(&mut bytes, memory.data(&*store));
    }
    for i in 0..metadata.global_count {
        let global = instance
            .get_global(&mut *store, &format!("{GLOBAL_EXPORT_PREFIX}{i}"))
            .unwrap();
        put(&mut bytes, &bits(&global.get(&mut *store)).to_le_bytes());
    }
    let stack = instance
        .get_memory(&mut *store, STACK_MEMORY_EXPORT)
        .unwrap();
    put(&mut bytes, stack.data(&*store));
    bytes
}

fn load(
    store: &mut Store<Host>,
    instance: &Instance,
    metadata: &instrument::Metadata,
    mut bytes: &[u8],
) -> Result<()> {
    let memory_of =
        |store: &mut Store<Host>, memory: wasmtime::Memory, data: &[u8]| -> Result<()> {
            let pages = (data.len() - memory.data_size(&*store)) / 65536;
            memory.grow(&mut *store, pages as u64)?;
            memory.data_mut(&mut *store).copy_from_slice(data);
            Ok(())
        };
    for i in 0..metadata.memory_count {
        let memory = instance
            .get_memory(&mut *store, &format!("{MEMORY_EXPORT_PREFIX}{i}"))
            .unwrap();
        let data = take(&mut bytes);
        memory_of(store, memory, data)?;
    }
    for i in 0..metadata.global_count {
        let global = instance
            .get_global(&mut *store, &format!("{GLOBAL_EXPORT_PREFIX}{i}"))
            .unwrap();
        let raw = u128::from_le_bytes(take(&mut bytes).try_into().unwrap());
        let ty = global.ty(&*store);
        if ty.mutability() != wasmtime::Mutability::Var {
            continue;
        }
        let value = match ty.content() {
            ValType::I32 => Val::I32(raw as u32 as i32),
            ValType::I64 => Val::I64(raw as u64 as i64),
            ValType::F32 => Val::F32(raw as u32),
            ValType::F64 => Val::F64(raw as u64),
            ValType::V128 => Val::V128(raw.into()),
            _ => continue,
        };
        global.set(&mut *store, value)?;
    }
    let stack = instance
        .get_memory(&mut *store, STACK_MEMORY_EXPORT)
        .unwrap();
    memory_of(store, stack, take(&mut bytes))?;
    Ok(())
}
