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
//!
//! The plain run and the suspended run are helpers here for every real
//! program's tests (the interpreters' too).

use std::sync::{Arc, Mutex};

use anyhow::Result;
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasnap::instrument::Options;
use wasnap::runtime::Captured;
use wasnap::snapshot::file;
use wasnap::{Engine, Output, Settings, Step};

/// How often a suspension of SQLite goes through a snapshot file into a new
/// instance (the others resume in place, still unwinding and rewinding for
/// real).
const SNAPSHOT_EVERY: usize = 25;

/// A module built by `scripts/build-bench-guests --tests`; panics with that
/// hint when it is missing.
pub fn bench_guest(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/target/bench-guests/{name}.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|_| {
        panic!("{path} is missing: build it with scripts/build-bench-guests --tests")
    })
}

/// A program to run: its module, its WASI arguments (program name first),
/// and the host's answer to each value it yields.
pub struct Program<'a> {
    pub wasm: &'a [u8],
    pub args: &'a [&'a str],
    pub reply: fn(&[u8]) -> Vec<u8>,
}

impl<'a> Program<'a> {
    /// A program without arguments whose yields get no reply.
    pub fn new(wasm: &'a [u8]) -> Self {
        Program {
            wasm,
            args: &[],
            reply: |_| Vec::new(),
        }
    }
}

/// What a program printed, each value it yielded (when not empty) on a
/// line of its own, `> value`, where it yielded it: what the command line
/// shows, so that two runs compare with one `assert_eq!`.
#[derive(Default)]
struct Transcript {
    text: Vec<u8>,
    /// How much of stdout is already in `text`.
    printed: usize,
}

impl Transcript {
    fn add(&mut self, stdout: &[u8], yielded: Option<&[u8]>) {
        self.text.extend_from_slice(&stdout[self.printed..]);
        self.printed = stdout.len();
        if let Some(value) = yielded.filter(|value| !value.is_empty()) {
            self.text.extend_from_slice(b"> ");
            self.text.extend_from_slice(value);
            self.text.push(b'\n');
        }
    }
}

/// The wasmtime configuration of a plain run: wasmtime's defaults, with
/// the Wasm stack limited to `max_wasm_stack` bytes when given.
pub fn plain_engine(max_wasm_stack: Option<usize>) -> wasmtime::Engine {
    let mut config = wasmtime::Config::new();
    config.wasm_multi_memory(true);
    if let Some(bytes) = max_wasm_stack {
        // The Wasm stack lives on the calling thread's native stack, which
        // must be larger (see the callers), and within the async stack.
        config.max_wasm_stack(bytes);
        config.async_stack_size(bytes + (1 << 20));
    }
    wasmtime::Engine::new(&config).unwrap()
}

/// The original module in plain wasmtime, `wasnap.yield` answering 0 at
/// once: what the program prints when nothing suspends.
pub fn plain_run(wasm: &[u8]) -> Vec<u8> {
    let engine = plain_engine(None);
    let module = wasmtime::Module::new(&engine, wasm).unwrap();
    plain_run_of(&module, &Program::new(wasm)).unwrap_or_else(|e| panic!("{e:?}"))
}

/// `program` (compiled as `module`) in plain wasmtime, where `wasnap.yield`
/// returns the length of the program's reply at once and `wasnap.reply`
/// copies it out: the program's transcript, or the trap that ended it.
pub fn plain_run_of(module: &wasmtime::Module, program: &Program) -> Result<Vec<u8>> {
    struct Host {
        wasi: WasiP1Ctx,
        reply: Vec<u8>,
    }
    let engine = module.engine();
    let mut linker: wasmtime::Linker<Host> = wasmtime::Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |host: &mut Host| &mut host.wasi)?;
    let stdout = MemoryOutputPipe::new(usize::MAX);
    let transcript = Arc::new(Mutex::new(Transcript::default()));
    let (pipe, log) = (stdout.clone(), transcript.clone());
    let reply_to = program.reply;
    linker.func_wrap(
        "wasnap",
        "yield",
        move |mut caller: wasmtime::Caller<'_, Host>,
              ptr: i32,
              len: i32|
              -> wasmtime::Result<i32> {
            let memory = caller
                .get_export("memory")
                .and_then(|export| export.into_memory())
                .ok_or_else(|| wasmtime::Error::msg("the module exports no memory"))?;
            let start = ptr as u32 as usize;
            let value = memory
                .data(&caller)
                .get(start..start + len as u32 as usize)
                .ok_or_else(|| wasmtime::Error::msg("the yielded text is out of bounds"))?
                .to_vec();
            log.lock().unwrap().add(&pipe.contents(), Some(&value));
            caller.data_mut().reply = reply_to(&value);
            Ok(caller.data().reply.len() as i32)
        },
    )?;
    linker.func_wrap(
        "wasnap",
        "reply",
        |mut caller: wasmtime::Caller<'_, Host>, ptr: i32, cap: i32| -> wasmtime::Result<i32> {
            let memory = caller
                .get_export("memory")
                .and_then(|export| export.into_memory())
                .ok_or_else(|| wasmtime::Error::msg("the module exports no memory"))?;
            let reply = std::mem::take(&mut caller.data_mut().reply);
            let count = reply.len().min(cap.max(0) as usize);
            memory.write(&mut caller, ptr as u32 as usize, &reply[..count])?;
            Ok(count as i32)
        },
    )?;
    // The JavaScript runtime imports the timers too; no program run here
    // calls them, and one that did would trap saying so.
    let untimed = || wasmtime::Error::msg("the plain host has no timers");
    linker.func_wrap("wasnap", "sleep", move |_ms: i64| -> wasmtime::Result<()> {
        Err(untimed())
    })?;
    linker.func_wrap(
        "wasnap",
        "yield_timeout",
        move |_ptr: i32, _len: i32, _ms: i64| -> wasmtime::Result<i32> { Err(untimed()) },
    )?;
    let wasi = wasmtime_wasi::WasiCtxBuilder::new()
        .args(program.args)
        .stdout(stdout.clone())
        .inherit_stderr()
        .build_p1();
    let host = Host {
        wasi,
        reply: Vec::new(),
    };
    let mut store = wasmtime::Store::new(engine, host);
    let instance = linker.instantiate(&mut store, module)?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
    if let Err(e) = start.call(&mut store, ()) {
        match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(wasmtime_wasi::I32Exit(0)) => {}
            _ => return Err(e.into()),
        }
    }
    let mut transcript = transcript.lock().unwrap();
    transcript.add(&stdout.contents(), None);
    Ok(std::mem::take(&mut transcript.text))
}

/// How a suspended program is resumed.
pub struct Resume {
    /// Every how many suspensions it goes through a snapshot file into a
    /// new instance (the others resume in place, still unwinding and
    /// rewinding for real).
    pub through_file_every: usize,
    /// Whether that new instance is made by a new [`Engine`] (loading the
    /// compiled module from its serialized artifact, as a new process
    /// does), rather than by the same one.
    pub in_new_engine: bool,
}

/// What a suspended run did.
pub struct SuspendedRun {
    /// As [`plain_run_of`] gives it.
    pub transcript: Vec<u8>,
    /// The exit status.
    pub status: i32,
    /// How many times it suspended.
    pub suspensions: usize,
}

/// `program` through `engine`, where every yield suspends (the stack
/// really unwinds, and rewinds when the program runs again), restored as
/// `resume` says, and answered with the program's reply.
pub fn suspended_run(
    engine: &Engine,
    new_engine: fn() -> Result<Engine>,
    program: &Program,
    resume: &Resume,
) -> Result<SuspendedRun> {
    let mut engine = engine.clone();
    let mut module = engine.load(program.wasm)?;
    let artifact = module.serialize()?;
    let captured = Captured::default();
    let settings = || {
        Settings::default()
            .args(program.args.iter().copied())
            .stdout(Output::Capture(captured.clone()))
    };
    let mut transcript = Transcript::default();
    let mut workflow = engine.start(&module, settings())?;
    let mut suspensions = 0;
    let status = loop {
        let value = match workflow.run()? {
            Step::Yielded(value) => value,
            Step::Finished(status) => break status,
        };
        suspensions += 1;
        transcript.add(&captured.contents(), Some(&value));
        if suspensions % resume.through_file_every == 0 {
            let bytes = file::encode(&workflow.snapshot()?, None)?;
            drop(workflow);
            if resume.in_new_engine {
                engine = new_engine()?;
                // SAFETY: `artifact` is what `Module::serialize` wrote for
                // this very module, in this process.
                module = unsafe { engine.load_with_artifact(program.wasm, Some(&artifact)) }?;
            }
            let (snapshot, _) = file::decode(&bytes)?;
            workflow = engine.restore_with(&module, &snapshot, settings())?;
        }
        workflow.send(&(program.reply)(&value));
    };
    transcript.add(&captured.contents(), None);
    Ok(SuspendedRun {
        transcript: transcript.text,
        status,
        suspensions,
    })
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

    let resume = Resume {
        through_file_every: SNAPSHOT_EVERY,
        in_new_engine: false,
    };
    let run = suspended_run(&engine, Engine::new, &Program::new(&wasm), &resume)
        .unwrap_or_else(|e| panic!("{e:?}"));

    assert_eq!(run.status, 0);
    assert_eq!(
        String::from_utf8_lossy(&run.transcript),
        String::from_utf8_lossy(&expected)
    );
    // The program reports how often its progress handler ran: each of
    // those was a suspension here.
    let suspensions = run.suspensions;
    let reported = format!("progress calls {suspensions}\n");
    assert!(
        run.transcript.ends_with(reported.as_bytes()),
        "{suspensions} suspensions, but the program says otherwise"
    );
    assert!(suspensions > 100, "only {suspensions} suspensions");
    eprintln!(
        "sqlite: {suspensions} suspensions, {} through a snapshot file",
        suspensions / SNAPSHOT_EVERY
    );
}
