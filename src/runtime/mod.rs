//! The runtime: load modules, run workflows to their next suspension, and
//! turn a suspended workflow into a [`Snapshot`] and back.
//!
//! ```text
//! Engine::load(wasm)        instrument + compile, cached by content hash
//! Engine::start(module)     a fresh Workflow
//! Workflow::run()           runs to the next suspension: Step::Yielded / Step::Finished
//! Workflow::snapshot()      the engine-neutral state, any time it is suspended
//! Engine::restore(snapshot) a Workflow in a fresh Store, ready to run() again
//! ```

mod abi;
mod artifact;
mod clock;
mod handler;
mod host;
pub mod journal;
mod paging;
mod state;
mod stdin;
mod uffd;
mod unwinder;
mod validate;
mod wasi;
mod workflow;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use wasmtime::{InstancePre, Linker};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::instrument::{self, Metadata, Options};
use crate::snapshot::{ModuleHash, PAGE_SIZE, Snapshot};

pub use abi::LimitReached;
pub use clock::{duration_text, now_ms, utc_text};
pub use handler::HandlerKind;
pub use host::{Decision, Handler, HostCall};
pub use paging::{ChangeTracking, MemoryRestore, Support, soft_dirty_bits, support};
pub use state::UnreadablePage;
pub use wasmtime::Val;
pub use workflow::{Step, Workflow};

use host::HostFunction;

use abi::HostState;

/// Compiles and caches modules, and starts and restores workflows.
///
/// One engine serves any number of modules and workflows; modules are
/// cached by the hash of their original bytes, so loading the same bytes
/// twice instruments and compiles them once.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    wasmtime: wasmtime::Engine,
    max_wasm_stack: usize,
    linker: Linker<HostState>,
    options: Options,
    host_functions: Vec<HostFunction>,
    modules: Mutex<HashMap<ModuleHash, Module>>,
    ticker: Once,
}

/// A module ready to run: instrumented, compiled and linked.
#[derive(Clone)]
pub struct Module {
    inner: Arc<ModuleInner>,
}

struct ModuleInner {
    hash: ModuleHash,
    /// Whether its reads of standard input suspend (the engine's
    /// [`Options::suspend_on_stdin`]).
    stdin_suspends: bool,
    /// The engine's Wasm stack limit, which its workflows run with.
    max_wasm_stack: usize,
    metadata: Metadata,
    compiled: wasmtime::Module,
    instance_pre: InstancePre<HostState>,
    entry: String,
}

impl Module {
    /// BLAKE3 hash of the original module bytes.
    pub fn hash(&self) -> ModuleHash {
        self.inner.hash
    }

    /// What the instrumenter found and produced.
    pub fn metadata(&self) -> &Metadata {
        &self.inner.metadata
    }

    /// The compiled artifact (with the instrumentation metadata), for a
    /// cache that outlives this process; give it back to
    /// [`Engine::load_with_artifact`] to skip instrumentation and
    /// compilation.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        artifact::encode(&self.inner.metadata, &self.inner.compiled.serialize()?)
    }

    /// The export the workflow starts at: `_start` or `run`.
    pub fn entry(&self) -> &str {
        &self.inner.entry
    }

    /// Checks that `snapshot` is a state this module can be restored to:
    /// the checks every restore makes before anything runs (see
    /// [`Engine::restore_with`]), for a caller that wants to know before
    /// it stores a snapshot.
    pub fn check_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        validate::check(snapshot, self)
    }
}

/// The hash under which wasnap identifies a module's original bytes.
pub fn module_hash(wasm: &[u8]) -> ModuleHash {
    *blake3::hash(wasm).as_bytes()
}

/// Where a workflow's WASI stdout goes.
#[derive(Clone, Debug, Default)]
pub enum Output {
    /// The host process's stdout.
    #[default]
    Inherit,
    /// An in-memory buffer, read with [`Captured::contents`].
    Capture(Captured),
}

/// A buffer that collects a workflow's stdout.
#[derive(Clone, Debug)]
pub struct Captured(MemoryOutputPipe);

impl Default for Captured {
    fn default() -> Self {
        Captured(MemoryOutputPipe::new(usize::MAX))
    }
}

impl Captured {
    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.contents().to_vec()
    }
}

/// How a workflow is started or restored: its arguments, where its output
/// goes, and its [`Policy`].
#[derive(Clone, Debug, Default)]
pub struct Settings {
    args: Vec<String>,
    stdout: Output,
    policy: Policy,
    change_tracking: ChangeTracking,
    memory_restore: MemoryRestore,
    replaying: Option<journal::Inputs>,
    unrecorded: bool,
}

/// What a workflow may use: its limits and what it is granted. A durable
/// instance keeps the policy it was started with and applies it again at
/// every resume (see [`crate::executor`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Upper bound on the time one [`Workflow::run`] may take before the
    /// workflow is interrupted with an error (checked every
    /// [`EPOCH_TICK`]). The version it started from is unaffected.
    pub time_limit: Option<Duration>,
    /// Upper bound, in bytes, on each of the workflow's memories.
    pub memory_limit: Option<u64>,
    /// Host directories the workflow may use through WASI (it has no
    /// filesystem access otherwise), preopened in this order, so that each
    /// gets the same descriptor at every resume.
    pub directories: Vec<Directory>,
    /// WASI environment variables. Empty on restore means "as the snapshot
    /// recorded them".
    pub env: Vec<(String, String)>,
}

/// A host directory granted to a workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    /// The directory on the host.
    pub host: PathBuf,
    /// The path under which the workflow sees it.
    pub guest: String,
}

impl Policy {
    /// This policy with every limit or grant that `other` sets replacing
    /// ours: how a resume's own flags override what an instance keeps.
    pub fn overridden_by(&self, other: &Policy) -> Policy {
        Policy {
            time_limit: other.time_limit.or(self.time_limit),
            memory_limit: other.memory_limit.or(self.memory_limit),
            directories: if other.directories.is_empty() {
                self.directories.clone()
            } else {
                other.directories.clone()
            },
            env: if other.env.is_empty() {
                self.env.clone()
            } else {
                other.env.clone()
            },
        }
    }
}

impl Settings {
    /// WASI arguments, program name first. Ignored on restore: a snapshot
    /// keeps the arguments the workflow was started with.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// WASI environment variables (see [`Policy::env`]).
    pub fn env<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.policy.env = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Where the workflow's stdout goes (default: inherited).
    pub fn stdout(mut self, output: Output) -> Self {
        self.stdout = output;
        self
    }

    /// Upper bound, in bytes, on each of the workflow's memories.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.policy.memory_limit = Some(bytes);
        self
    }

    /// Upper bound on the time one [`Workflow::run`] may take (see
    /// [`Policy::time_limit`]).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.policy.time_limit = Some(limit);
        self
    }

    /// Grants the workflow the host directory `host` as `guest` (WASI has
    /// no filesystem access otherwise).
    pub fn directory(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.policy.directories.push(Directory {
            host: host.into(),
            guest: guest.into(),
        });
        self
    }

    /// Every limit and grant at once, replacing those set before.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// How the workflow's snapshots find the pages that changed (default:
    /// the best this machine offers, see [`support`]). Asking for a way
    /// the machine does not offer makes starting or restoring fail.
    pub fn change_tracking(mut self, tracking: ChangeTracking) -> Self {
        self.change_tracking = tracking;
        self
    }

    /// How a restored workflow's memory is filled (default: lazily for
    /// large memories where the machine allows it). Ignored by a start.
    pub fn memory_restore(mut self, restore: MemoryRestore) -> Self {
        self.memory_restore = restore;
        self
    }

    /// Starts the workflow replaying `inputs` (see [`journal`]) instead of
    /// recording: its clocks, random draws and host functions give what a
    /// recorded run got, from instantiation on (a start function's inputs
    /// are part of the first run's). Granted directories are granted read
    /// only, so that a replay cannot write what the recorded run wrote.
    pub fn replaying(mut self, inputs: journal::Inputs) -> Self {
        self.replaying = Some(inputs);
        self
    }

    /// Whether the workflow records the inputs it takes from outside (it
    /// does by default; see [`journal`]). An embedder that never replays
    /// (never upgrades instances by replay) can turn it off and save one
    /// lock and one push per clock reading or random draw.
    pub fn recording(mut self, on: bool) -> Self {
        self.unrecorded = !on;
        self
    }
}

impl Engine {
    /// An engine suspending on the guest ABI's `wasnap.yield` and
    /// `wasnap.switch`.
    pub fn new() -> Result<Engine> {
        Engine::with_options(Options::default())
    }

    /// An engine with instrumentation options, for example more suspending
    /// imports.
    pub fn with_options(options: Options) -> Result<Engine> {
        Engine::builder().options(options).build()
    }

    /// A builder for an engine with host functions of the embedder's own,
    /// or another Wasm stack limit.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            options: Options::default(),
            host_functions: Vec::new(),
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
        }
    }

    fn build(
        options: Options,
        host_functions: Vec<HostFunction>,
        max_wasm_stack: usize,
    ) -> Result<Engine> {
        let mut config = wasmtime::Config::new();
        config.wasm_multi_memory(true);
        // Workflows run where the native stack holds this much Wasm stack
        // and the host's frames (`on_workflow_stack`).
        config.max_wasm_stack(max_wasm_stack);
        // wasmtime-wasi builds wasmtime with async support, whose fibers
        // must be able to hold the Wasm stack (wasnap itself runs none).
        config.async_stack_size(max_wasm_stack + HOST_STACK);
        // The instrumenter marks the code only unwinding or rewinding runs
        // as cold, for the compiler to lay out apart from the normal path.
        config.wasm_branch_hinting(true);
        // Time limits interrupt a run at the next epoch check; the checks
        // cost a load and a compare at loop heads and function entries.
        config.epoch_interruption(true);
        let wasmtime = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&wasmtime);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |host: &mut HostState| &mut host.wasi)?;
        wasi::add_to_linker(&mut linker)?;
        if options.suspends_on_stdin() {
            stdin::add_to_linker(&mut linker)?;
        }
        abi::add_to_linker(&mut linker)?;
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                max_wasm_stack,
                linker,
                options,
                host_functions,
                modules: Mutex::new(HashMap::new()),
                ticker: Once::new(),
            }),
        })
    }

    /// Whether this engine's workflows suspend on reads of standard input
    /// ([`Options::suspend_on_stdin`]).
    pub fn suspends_on_stdin(&self) -> bool {
        self.inner.options.suspends_on_stdin()
    }

    /// An engine like this one (its options, host functions and limits)
    /// whose workflows' reads of standard input suspend, or do not: see
    /// [`Options::suspend_on_stdin`]. A clone of this one when it already
    /// is so.
    pub fn with_stdin_suspending(&self, suspends: bool) -> Result<Engine> {
        if suspends == self.suspends_on_stdin() {
            return Ok(self.clone());
        }
        let mut options = self.inner.options.clone();
        options.set_stdin_suspends(suspends);
        Engine::build(
            options,
            self.inner.host_functions.clone(),
            self.inner.max_wasm_stack,
        )
    }

    /// The most native stack Wasm code may use (see
    /// [`EngineBuilder::max_wasm_stack`]).
    pub fn max_wasm_stack(&self) -> usize {
        self.inner.max_wasm_stack
    }

    /// Identifies the compiler and instrumenter settings: a compiled
    /// artifact is only valid for an engine with the same fingerprint. The
    /// instrumenter's version and options are part of it, because they
    /// decide the code that was compiled.
    ///
    /// It is a BLAKE3 hash, the same in every build and process with the
    /// same settings (the standard library's `DefaultHasher` makes no such
    /// promise across Rust releases). wasmtime's compatibility hash is
    /// only available through `Hash`, whose implementations feed the bytes
    /// of the integers and strings hashed.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        self.inner
            .wasmtime
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        instrument::INSTRUMENTER_VERSION.hash(&mut hasher);
        instrument::CODE_REVISION.hash(&mut hasher);
        self.inner.options.hash(&mut hasher);
        let hash = hasher.0.finalize();
        format!("wasmtime-48-{}", &hash.to_hex()[..32])
    }

    /// The module with content hash `hash` if this engine has loaded it
    /// already.
    pub fn cached(&self, hash: &ModuleHash) -> Option<Module> {
        self.inner.modules.lock().unwrap().get(hash).cloned()
    }

    /// Instruments and compiles `wasm` (or returns the cached result).
    pub fn load(&self, wasm: &[u8]) -> Result<Module> {
        // SAFETY: there is no artifact.
        unsafe { self.load_with_artifact(wasm, None) }
    }

    /// Like [`Engine::load`], but takes a compiled artifact made earlier by
    /// [`Module::serialize`] with an engine of the same fingerprint, which
    /// skips instrumentation and compilation. An artifact that does not fit
    /// is ignored.
    ///
    /// # Safety
    ///
    /// An artifact is native code, and loading one runs it as it is:
    /// wasmtime checks that it was compiled by a compatible engine, not
    /// what it does. `artifact` must be bytes that [`Module::serialize`]
    /// wrote for this very module, or that are trusted as much: never
    /// bytes from a file or database someone else may have written.
    /// (`wasnap::store` authenticates the artifacts it hands back, see
    /// [`crate::store::ArtifactKey`].)
    pub unsafe fn load_with_artifact(
        &self,
        wasm: &[u8],
        artifact: Option<&[u8]>,
    ) -> Result<Module> {
        let hash = module_hash(wasm);
        if let Some(module) = self.inner.modules.lock().unwrap().get(&hash) {
            return Ok(module.clone());
        }
        let cached = artifact
            .and_then(artifact::decode)
            .and_then(|(metadata, code)| {
                // SAFETY: the caller vouches for the artifact.
                let compiled = unsafe { self.deserialize(code) }?;
                Some((metadata, compiled))
            });
        let (metadata, compiled) = match cached {
            Some(cached) => cached,
            None => {
                let instrumented = instrument::instrument(wasm, &self.inner.options)?;
                let compiled = wasmtime::Module::new(&self.inner.wasmtime, &instrumented.wasm)
                    .map_err(anyhow::Error::from)
                    .context("compiling the instrumented module")?;
                (instrumented.metadata, compiled)
            }
        };
        let entry = ["_start", "run"]
            .into_iter()
            .find(|name| compiled.get_export(name).is_some())
            .context("the module exports neither _start nor run, so there is nothing to start")?
            .to_string();
        let instance_pre = self
            .linker_for(&compiled)?
            .instantiate_pre(&compiled)
            .map_err(anyhow::Error::from)
            .context("the module imports something wasnap does not provide")?;
        let module = Module {
            inner: Arc::new(ModuleInner {
                hash,
                stdin_suspends: self.inner.options.suspends_on_stdin(),
                max_wasm_stack: self.inner.max_wasm_stack,
                metadata,
                compiled,
                instance_pre,
                entry,
            }),
        };
        self.inner
            .modules
            .lock()
            .unwrap()
            .insert(hash, module.clone());
        Ok(module)
    }

    /// The engine's linker plus the embedder's host functions for the
    /// imports of this module that match them (their types come from the
    /// module, so one pattern serves imports of any signature).
    fn linker_for(&self, compiled: &wasmtime::Module) -> Result<Linker<HostState>> {
        if self.inner.host_functions.is_empty() {
            return Ok(self.inner.linker.clone());
        }
        let mut linker = self.inner.linker.clone();
        linker.allow_shadowing(true);
        for import in compiled.imports() {
            let wasmtime::ExternType::Func(ty) = import.ty() else {
                continue;
            };
            let found = self.inner.host_functions.iter().find(|f| {
                instrument::wildcard_match(
                    &f.pattern,
                    &format!("{}.{}", import.module(), import.name()),
                )
            });
            if let Some(function) = found {
                function.define(&mut linker, import.module(), import.name(), ty)?;
            }
        }
        Ok(linker)
    }

    /// wasmtime's code of an artifact.
    ///
    /// # Safety
    ///
    /// As for [`Engine::load_with_artifact`].
    unsafe fn deserialize(&self, artifact: &[u8]) -> Option<wasmtime::Module> {
        // SAFETY: the caller vouches for the bytes; wasmtime checks the
        // engine compatibility header itself and refuses a mismatch.
        unsafe { wasmtime::Module::deserialize(&self.inner.wasmtime, artifact) }.ok()
    }

    /// A new workflow instance of `module`, not yet running.
    pub fn start(&self, module: &Module, settings: Settings) -> Result<Workflow> {
        self.start_ticker_for(&settings);
        Workflow::start(module.clone(), settings)
    }

    /// Time limits are measured in epochs: the first workflow with one
    /// starts a thread that advances the engine's epoch every
    /// [`EPOCH_TICK`] for the rest of the process.
    fn start_ticker_for(&self, settings: &Settings) {
        if settings.policy.time_limit.is_none() {
            return;
        }
        self.inner.ticker.call_once(|| {
            let engine = self.inner.wasmtime.clone();
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            });
        });
    }

    /// A workflow restored from `snapshot` into a fresh store, ready to
    /// [`Workflow::run`] from where it was suspended. Its stdout is the
    /// host's; see [`Engine::restore_with`].
    pub fn restore(&self, module: &Module, snapshot: &Snapshot) -> Result<Workflow> {
        self.restore_with(module, snapshot, Settings::default())
    }

    /// Like [`Engine::restore`], with the output and limits of `settings`.
    ///
    /// Nothing of the snapshot runs before it has been checked against the
    /// module ([`Module::check_snapshot`]): a snapshot that is not a state
    /// the module could have suspended in (an edited file, say, sealed
    /// again with a fresh checksum) is refused with an error that names
    /// what is wrong. So is one whose memories are larger than the memory
    /// limit of `settings`.
    pub fn restore_with(
        &self,
        module: &Module,
        snapshot: &Snapshot,
        settings: Settings,
    ) -> Result<Workflow> {
        workflow::check_stdin_mode(snapshot, module)?;
        validate::check(snapshot, module)?;
        if let Some(limit) = settings.policy.memory_limit
            && let Some((index, memory)) = (0..)
                .zip(&snapshot.memories)
                .find(|(_, m)| m.page_count.saturating_mul(PAGE_SIZE as u64) > limit)
        {
            bail!(
                "memory {index} of the snapshot holds {} bytes, more than the memory limit of {limit} bytes",
                memory.page_count * PAGE_SIZE as u64
            );
        }
        self.start_ticker_for(&settings);
        Workflow::restore(module.clone(), snapshot, settings)
    }
}

/// Builds an [`Engine`] with host functions of the embedder's own.
///
/// ```
/// use wasnap::runtime::{Decision, Val};
/// use wasnap::{Settings, Engine, Step};
///
/// # fn main() -> anyhow::Result<()> {
/// // `machines.wait(id)` suspends until the machine is ready; the reply is
/// // its answer, an i32.
/// let engine = Engine::builder()
///     .suspending("machines.wait", |call| match call.reply() {
///         None => Ok(Decision::Suspend(format!("waiting for {:?}", call.args()[0].unwrap_i32()).into_bytes())),
///         Some(reply) => Ok(Decision::Answer(vec![Val::I32(reply.len() as i32)])),
///     })
///     .build()?;
/// let wasm = wat::parse_str(r#"
///     (module
///       (import "machines" "wait" (func $wait (param i32) (result i32)))
///       (global (export "answer") (mut i32) (i32.const 0))
///       (memory 1)
///       (func (export "run") (global.set 0 (call $wait (i32.const 7)))))
/// "#)?;
/// let module = engine.load(&wasm)?;
/// let mut workflow = engine.start(&module, Settings::default())?;
/// assert_eq!(workflow.run()?, Step::Yielded(b"waiting for 7".to_vec()));
/// let snapshot = workflow.snapshot()?;
/// let mut later = engine.restore(&module, &snapshot)?;
/// later.send(b"ready");
/// assert_eq!(later.run()?, Step::Finished(0));
/// # Ok(())
/// # }
/// ```
pub struct EngineBuilder {
    options: Options,
    host_functions: Vec<HostFunction>,
    max_wasm_stack: usize,
}

impl EngineBuilder {
    /// Instrumentation options, for example more suspending imports.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The most native stack, in bytes, that a workflow's Wasm code may use
    /// (default [`DEFAULT_MAX_WASM_STACK`]): wasmtime's engine-wide
    /// `max_wasm_stack`. Deeper recursion ends the run with an error that
    /// names this limit. Workflows run on the calling thread when its
    /// stack has room for this plus the host's frames, else on a thread
    /// of their own with a stack that size, so any size works.
    pub fn max_wasm_stack(mut self, bytes: usize) -> Self {
        self.max_wasm_stack = bytes;
        self
    }

    /// A host function for the imports matching `pattern` (`module.name`,
    /// `*` allowed) that may suspend the workflow: see [`HostCall`].
    pub fn suspending(
        mut self,
        pattern: &str,
        handler: impl Fn(&mut HostCall<'_, '_>) -> Result<Decision> + Send + Sync + 'static,
    ) -> Self {
        self.options = self.options.suspending(pattern);
        self.host_functions.push(HostFunction {
            pattern: pattern.to_string(),
            suspending: true,
            handler: Arc::new(handler),
        });
        self
    }

    /// A host function for the imports matching `pattern` that always
    /// answers at once (it must return [`Decision::Answer`]).
    pub fn function(
        mut self,
        pattern: &str,
        handler: impl Fn(&mut HostCall<'_, '_>) -> Result<Decision> + Send + Sync + 'static,
    ) -> Self {
        self.host_functions.push(HostFunction {
            pattern: pattern.to_string(),
            suspending: false,
            handler: Arc::new(handler),
        });
        self
    }

    /// The engine.
    pub fn build(self) -> Result<Engine> {
        for function in &self.host_functions {
            host::check_pattern(&function.pattern)?;
        }
        if self.max_wasm_stack < MIN_MAX_WASM_STACK {
            bail!(
                "a Wasm stack limit of {} is too small to run anything (the least is {})",
                format_size(self.max_wasm_stack),
                format_size(MIN_MAX_WASM_STACK)
            );
        }
        Engine::build(self.options, self.host_functions, self.max_wasm_stack)
    }
}

/// A suspension's timer: when a suspended workflow wants to run again
/// without waiting for anyone. Times are milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// `wasnap.sleep`: it waits for this time, not for a reply.
    Sleep {
        /// When it wakes.
        wake_at: u64,
    },
    /// `wasnap.yield_timeout`: a question that waits for a reply until this
    /// time, when it times out.
    Deadline {
        /// When it times out.
        wake_at: u64,
    },
}

impl Timer {
    /// When the timer fires, in milliseconds since the Unix epoch.
    pub fn wake_at(self) -> u64 {
        match self {
            Timer::Sleep { wake_at } | Timer::Deadline { wake_at } => wake_at,
        }
    }

    /// Whether the suspension waits for a reply (a question with a
    /// deadline) rather than for time alone (a sleep).
    pub fn expects_reply(self) -> bool {
        matches!(self, Timer::Deadline { .. })
    }
}

/// A `Hasher` whose output is BLAKE3's, for values only hashable through
/// `Hash`; see [`Engine::fingerprint`].
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let hash = self.0.finalize();
        u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

/// The Wasm stack limit of an engine built without
/// [`EngineBuilder::max_wasm_stack`]: 8 MiB, sixteen times wasmtime's own
/// default, enough for script interpreters running deeply recursive
/// scripts (each script-level call is a few native frames of a large
/// interpreter function).
pub const DEFAULT_MAX_WASM_STACK: usize = 8 << 20;

/// The smallest Wasm stack limit an engine accepts.
pub const MIN_MAX_WASM_STACK: usize = 64 << 10;

/// Native stack a workflow's thread has beyond its Wasm stack limit, for
/// wasmtime's and the host functions' own frames.
const HOST_STACK: usize = 2 << 20;

/// Room a thread's stack must have beyond what a run needs, for what the
/// measure of it leaves out: a guard page, the program's arguments and
/// environment at the top of the main thread's stack.
const STACK_SLACK: usize = 256 << 10;

/// The native stack to give a thread that runs many workflows of an engine
/// whose Wasm stack limit is `max_wasm_stack`, so that each run takes
/// place on it rather than on a new thread of its own (see
/// [`on_workflow_stack`]): the run's needs, plus room for the frames that
/// call it.
pub(crate) fn workflow_thread_stack(max_wasm_stack: usize) -> usize {
    max_wasm_stack + HOST_STACK + 2 * STACK_SLACK
}

/// Runs `f` where the native stack holds `max_wasm_stack` of Wasm frames
/// and the host's: on the calling thread when its stack has that much room
/// left (the `wasnap` command makes its main thread's so), else on a new
/// thread with a stack of that size. A new thread costs more than a short
/// run: about 0.1 ms on an idle machine, and on a busy one it may wait
/// milliseconds for a time slice of its own while the caller waits for it.
pub(crate) fn on_workflow_stack<T: Send>(
    max_wasm_stack: usize,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let needed = max_wasm_stack + HOST_STACK;
    if stack_left().is_some_and(|left| left >= needed + STACK_SLACK) {
        return f();
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("wasnap-workflow".into())
            .stack_size(max_wasm_stack + HOST_STACK)
            .spawn_scoped(scope, f)
            .context("cannot start the thread that runs the workflow")?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// How far the calling thread's stack may still grow below this frame,
/// as the C library knows it: for the main thread, up to the stack size
/// limit (`RLIMIT_STACK`) at the time of the call. `None` where it cannot
/// tell.
#[cfg(target_os = "linux")]
fn stack_left() -> Option<usize> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    let mut lowest: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: `attr` is initialised by `pthread_getattr_np` before it is
    // read, and destroyed once, only when that succeeded.
    let found = unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let found = libc::pthread_attr_getstack(attr.as_ptr(), &mut lowest, &mut size) == 0;
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        found
    };
    let here = std::ptr::addr_of!(lowest) as usize;
    found.then(|| here.saturating_sub(lowest as usize))
}

#[cfg(not(target_os = "linux"))]
fn stack_left() -> Option<usize> {
    None
}

/// A byte count as people write it: `8 MiB`, `512 KiB`, `100 bytes`.
pub fn format_size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// How often time limits are checked.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The first 12 hex digits of a hash, as shown to users.
pub fn short_hash(hash: &ModuleHash) -> String {
    hash[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn stack_left_is_at_least_what_a_thread_was_given() {
        let left = std::thread::Builder::new()
            .stack_size(4 << 20)
            .spawn(stack_left)
            .unwrap()
            .join()
            .unwrap()
            .expect("known on Linux");
        // The C library may hand the thread a cached stack of up to four
        // times the size asked for; the measure is of the real one.
        assert!(
            left > (3 << 20) && left <= (16 << 20) + STACK_SLACK,
            "{left}"
        );
    }

    #[test]
    fn a_run_too_deep_for_this_stack_gets_a_thread_of_its_own() {
        let on_16_mib = std::thread::Builder::new().stack_size(16 << 20);
        on_16_mib
            .spawn(|| {
                let caller = std::thread::current().id();
                let run = |limit| on_workflow_stack(limit, || Ok(std::thread::current().id()));
                assert_eq!(run(DEFAULT_MAX_WASM_STACK).unwrap(), caller);
                assert_ne!(run(64 << 20).unwrap(), caller);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A thread given `workflow_thread_stack` runs each workflow on itself,
    /// for the default limit and for a large one.
    #[test]
    fn a_thread_sized_for_workflows_runs_them_itself() {
        for limit in [DEFAULT_MAX_WASM_STACK, 32 << 20] {
            std::thread::Builder::new()
                .stack_size(workflow_thread_stack(limit))
                .spawn(move || {
                    let caller = std::thread::current().id();
                    let ran_on = on_workflow_stack(limit, || Ok(std::thread::current().id()));
                    assert_eq!(ran_on.unwrap(), caller, "limit {limit}");
                })
                .unwrap()
                .join()
                .unwrap();
        }
    }
}
