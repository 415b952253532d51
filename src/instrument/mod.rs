//! The instrumenter: a pure function from module bytes to module bytes that
//! makes every function able to reach a suspending import unwindable and
//! rewindable, asyncify-style, and exposes everything the module holds.
//!
//! The pipeline is three phases, one file each:
//!
//! 1. `analyse`: read the module, refuse what cannot be snapshotted, and
//!    find the functions that can reach a suspending import (call graph,
//!    with indirect calls narrowed by signature and referenceability).
//! 2. `rewrite`: rewrite each of those function bodies so that a call
//!    which starts an unwind saves what is live there (`liveness`) to the
//!    stack memory and returns, and a function entered while rewinding
//!    branches straight to the call it was suspended in and restores it;
//!    the rewinding part lives in a second copy of the function, so that
//!    the code that runs before any resume carries none of it, and a
//!    resumed activation goes on in a third copy, entered at the next head
//!    of a loop (`reentry`).
//! 3. `emit`: assemble the output module: the rewritten bodies, the
//!    stack memory, the state globals, the Binaryen-compatible
//!    `asyncify_*` functions and an export for every memory, global and
//!    table.
//!
//! # The runtime protocol
//!
//! The output follows Binaryen's Asyncify ABI, in its secondary-memory
//! form: `asyncify_start_unwind(p)`, `asyncify_stop_unwind()`,
//! `asyncify_start_rewind(p)`, `asyncify_stop_rewind()` and
//! `asyncify_get_state()` (0 normal, 1 unwinding, 2 rewinding), where `p`
//! is the address of a `{pos: u32, end: u32}` header *in the stack memory*
//! (exported as [`STACK_MEMORY_EXPORT`]). Frames are pushed upward from
//! `pos`; when a frame does not fit below `end`, the stack memory grows and
//! `end` moves, so an unwind never overflows.
//!
//! Each frame is `{values..., function: u32, call_index: u32}`: the values
//! that call site saves, at the offsets its [`CallSite`] gives (every frame
//! of one function has the same size; what a call site does not save is
//! zero), then a header at the end, so that a frame can be popped from the
//! top knowing only the function's frame size. The innermost activation is
//! written first (lowest address); the outermost is on top.

mod analyse;
mod emit;
mod frames;
mod layout;
mod liveness;
mod reentry;
mod rewrite;

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use wasmparser::ValType;

pub use frames::SavedFrame;

/// Version of the instrumenter's output. Snapshots record it: the frames on
/// an unwound stack are only meaningful to code instrumented the same way.
pub const INSTRUMENTER_VERSION: u32 = 3;

/// Revision of the code the instrumenter emits. Unlike
/// [`INSTRUMENTER_VERSION`] it does not change what a frame means (a
/// snapshot still resumes), but modules compiled from an older revision's
/// output are compiled again.
pub(crate) const CODE_REVISION: u32 = 5;

/// Export name of the memory that holds unwound frames.
pub const STACK_MEMORY_EXPORT: &str = "__wasnap_stack";
/// Export name of the instrumenter's state global (0 normal, 1 unwinding,
/// 2 rewinding).
pub const STATE_GLOBAL_EXPORT: &str = "__wasnap_state";
/// Export name of the global holding the address of the `{pos, end}` header.
pub const DATA_GLOBAL_EXPORT: &str = "__wasnap_data";
/// Prefix of the export names under which memory `N` is exposed.
pub const MEMORY_EXPORT_PREFIX: &str = "__wasnap_memory_";
/// Prefix of the export names under which global `N` is exposed.
pub const GLOBAL_EXPORT_PREFIX: &str = "__wasnap_global_";
/// Prefix of the export names under which table `N` is exposed.
pub const TABLE_EXPORT_PREFIX: &str = "__wasnap_table_";

/// Size of the `{function, call_index}` header at the end of every saved frame.
pub const FRAME_HEADER_SIZE: u32 = 8;

/// Instrumentation state: nothing to do.
pub const STATE_NORMAL: i32 = 0;
/// Instrumentation state: frames are being saved on the way out.
pub const STATE_UNWINDING: i32 = 1;
/// Instrumentation state: frames are being restored on the way in.
pub const STATE_REWINDING: i32 = 2;

/// The WASI import that reads a file descriptor: with
/// [`Options::suspend_on_stdin`], it may suspend.
pub const WASI_READ_IMPORT: &str = "wasi_snapshot_preview1.fd_read";

/// What the instrumenter treats as suspending.
#[derive(Clone, Debug, Hash)]
pub struct Options {
    suspending_imports: Vec<String>,
    suspending_functions: Vec<String>,
    stdin_suspends: bool,
    busy_loop_calls: usize,
}

impl Default for Options {
    /// The guest ABI's suspending imports: `wasnap.yield`, `wasnap.switch`,
    /// `wasnap.sleep` and `wasnap.yield_timeout`; any function that can
    /// reach one of them may suspend.
    fn default() -> Self {
        Options {
            suspending_imports: [
                "wasnap.yield",
                "wasnap.switch",
                "wasnap.sleep",
                "wasnap.yield_timeout",
            ]
            .map(String::from)
            .to_vec(),
            suspending_functions: Vec::new(),
            stdin_suspends: false,
            busy_loop_calls: reentry::BUSY_LOOP_CALLS,
        }
    }
}

impl Options {
    /// How many suspending calls a loop must make itself (16 by default)
    /// for a resumed activation to leave the whole copy at its head and go
    /// on in a copy of the function's running code entered there. Fewer
    /// means more functions with that third copy: more code, and more
    /// resumed loops as fast as before the suspension.
    pub fn with_busy_loop_calls(mut self, calls: usize) -> Self {
        self.busy_loop_calls = calls.max(1);
        self
    }

    /// How many suspending calls make a loop busy; see
    /// [`Options::with_busy_loop_calls`].
    pub fn busy_loop_calls(&self) -> usize {
        self.busy_loop_calls
    }

    /// Makes every read of standard input a suspension point, so that a
    /// program written for a terminal (`fgets`, `input()`) waits for its
    /// input as a workflow waits for a reply: WASI's `fd_read` is treated
    /// as suspending, and an engine with these options answers a read of
    /// file descriptor 0 that finds no input buffered by suspending the
    /// workflow; the reply it is resumed with is the input.
    pub fn suspend_on_stdin(mut self) -> Self {
        self.stdin_suspends = true;
        self
    }

    /// Sets whether reads of standard input suspend.
    pub(crate) fn set_stdin_suspends(&mut self, suspends: bool) {
        self.stdin_suspends = suspends;
    }

    /// Whether reads of standard input suspend ([`Self::suspend_on_stdin`]).
    pub fn suspends_on_stdin(&self) -> bool {
        self.stdin_suspends
    }

    /// Also treat imports matching `pattern` (`module.name`, where `*`
    /// matches any run of characters, as in `myhost.*`) as suspending.
    pub fn suspending(mut self, pattern: impl Into<String>) -> Self {
        self.suspending_imports.push(pattern.into());
        self
    }

    /// The patterns of suspending imports, `module.name` with `*` wildcards.
    pub fn suspending_imports(&self) -> &[String] {
        &self.suspending_imports
    }

    /// Declares that only functions named like `pattern` (`*` wildcards,
    /// names from the name section; call it once per pattern) can be on
    /// the stack when the module suspends, as Binaryen's
    /// `asyncify-onlylist` does.
    ///
    /// An indirect call is assumed to reach every function of its
    /// signature that can suspend, so in a program that calls through
    /// function pointers everywhere (an allocator, a plug-in table) nearly
    /// every function would otherwise be instrumented. The others are left
    /// as they were, except for a check after each call that can reach a
    /// suspending import or an instrumented function: if a suspension does come through one of them, the module
    /// traps and the engine says so, instead of resuming into a frame that
    /// was never saved.
    pub fn only_functions(mut self, pattern: impl Into<String>) -> Self {
        self.suspending_functions.push(pattern.into());
        self
    }

    /// Whether [`Self::only_functions`] narrowed which functions may suspend.
    pub(crate) fn narrows(&self) -> bool {
        !self.suspending_functions.is_empty()
    }

    /// Whether a function with this name may be on the stack when the
    /// module suspends: always, unless [`Self::only_functions`] narrowed it.
    pub fn may_suspend_in(&self, name: Option<&str>) -> bool {
        self.suspending_functions.is_empty()
            || name.is_some_and(|name| {
                self.suspending_functions
                    .iter()
                    .any(|pattern| wildcard_match(pattern, name))
            })
    }

    /// Whether the import `module.name` is suspending under these options.
    pub fn is_suspending(&self, module: &str, name: &str) -> bool {
        let full = format!("{module}.{name}");
        (self.stdin_suspends && full == WASI_READ_IMPORT)
            || self
                .suspending_imports
                .iter()
                .any(|pattern| wildcard_match(pattern, &full))
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            let Some(mut remaining) = text.strip_prefix(prefix) else {
                return false;
            };
            loop {
                if wildcard_match(rest, remaining) {
                    return true;
                }
                let mut chars = remaining.chars();
                if chars.next().is_none() {
                    return false;
                }
                remaining = chars.as_str();
            }
        }
    }
}

/// An instrumented module and what the engine needs to know about it.
#[derive(Clone, Debug)]
pub struct Instrumented {
    /// The output module.
    pub wasm: Vec<u8>,
    /// Layouts, names and indices that describe the output.
    pub metadata: Metadata,
}

/// What the engine needs to know about an instrumented module.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    /// Number of memories of the original module (the stack memory is not
    /// counted); memory `N` is exported as `__wasnap_memory_N`.
    pub memory_count: u32,
    /// Number of globals of the original module; global `N` is exported as
    /// `__wasnap_global_N`.
    pub global_count: u32,
    /// Number of tables of the original module; table `N` is exported as
    /// `__wasnap_table_N`.
    pub table_count: u32,
    /// Whether the module came already instrumented by `wasm-opt
    /// --asyncify` and was only given the exports above: its frames are
    /// Binaryen's, driven through its exported `asyncify_*` functions.
    pub binaryen: bool,
    /// Whether any code writes a table at run time (`table.set`,
    /// `table.grow`, `table.fill`, `table.copy`, `table.init`).
    pub writes_tables: bool,
    /// The global that holds the shadow-stack pointer (`__stack_pointer` by
    /// name, else by the LLVM convention), which coroutines switch.
    pub stack_pointer_global: Option<u32>,
    /// The frame layout of each instrumented function, by function index.
    pub frames: BTreeMap<u32, FrameLayout>,
    /// Function names from the name section, by function index.
    pub function_names: BTreeMap<u32, String>,
    /// `module.name` of each imported function, by function index (imports
    /// come first in the function index space): what a call site's
    /// [`CallSite::callee`] below this count calls.
    pub imported_functions: Vec<String>,
    /// The exported functions' indices, by export name.
    pub exported_functions: BTreeMap<String, u32>,
    /// The function in each slot of table 0 that the module's active
    /// element segments fill at instantiation, by slot; `None` when that
    /// cannot be known without instantiating (a segment's offset is not a
    /// constant). Other slots are null.
    pub table0_functions: Option<BTreeMap<u32, u32>>,
}

/// How one instrumented function saves its frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// The suspending call sites, indexed by call index.
    pub call_sites: Vec<CallSite>,
}

/// One value saved in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedLocal {
    /// Local index in the instrumented function.
    pub index: u32,
    /// Its type.
    pub ty: ValType,
    /// Byte offset within the frame.
    pub offset: u32,
    /// What the local is: one of the original function's or a value that
    /// was on the operand stack.
    pub origin: LocalOrigin,
}

/// Where a saved local comes from in the original function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalOrigin {
    /// Parameter or local `N` of the original function.
    Local(u32),
    /// The value at this height of the original operand stack.
    Operand(u32),
}

/// One call site that can suspend, and the frame it saves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSite {
    /// Offset of the call instruction in the original module's bytes.
    pub code_offset: usize,
    /// The function called, for a direct call.
    pub callee: Option<u32>,
    /// The table called through, for a `call_indirect`; the element index
    /// it calls is then the saved operand at the greatest height.
    pub table: Option<u32>,
    /// Size in bytes of the frame's values, header excluded: the same for
    /// every call site of a function.
    pub size: u32,
    /// The saved values, by offset: the original locals live after the
    /// call, the operand stack below the call's operands, and the operands
    /// the call is made again with on the way back (every argument of a
    /// call that may reach a suspending import, and the table index of an
    /// indirect call).
    pub saved: Vec<SavedLocal>,
}

/// How deep a function's blocks, loops and `if`s may nest: [`instrument`]
/// refuses a module with a function nested deeper. The rewrite recurses
/// once per level of nesting, on a stack sized for this many; compilers
/// stay far below (a C `switch` nests a block per case; the deepest
/// function of the Python runtime, RustPython, nests 691 deep, of QuickJS
/// 306).
pub const MAX_NESTING: usize = 10_000;

/// Instruments `wasm` so that it can suspend at the imports `options`
/// names, and exposes all of its state; see the module documentation.
pub fn instrument(wasm: &[u8], options: &Options) -> Result<Instrumented> {
    // The rewrite recurses once per level of a function's nesting, up to
    // `MAX_NESTING` levels; a thread of the caller's (an async runtime's
    // 2 MiB, say) may not hold that, so it runs on a thread of its own.
    std::thread::scope(|scope| {
        let instrumenting = std::thread::Builder::new()
            .name("wasnap-instrument".into())
            .stack_size(INSTRUMENT_STACK)
            .spawn_scoped(scope, || instrument_here(wasm, options))
            .context("cannot start a thread to instrument on")?;
        instrumenting
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The stack the instrumenter runs on: a function nested
/// [`MAX_NESTING`] deep needs between 32 and 48 MiB in a debug
/// build (measured; `errors::` tests the deepest nesting), less
/// in a release build. Only the pages used are ever backed by memory.
const INSTRUMENT_STACK: usize = 128 << 20;

fn instrument_here(wasm: &[u8], options: &Options) -> Result<Instrumented> {
    let module = analyse::analyse(wasm, options)?;
    let output = emit::emit(wasm, module)?;
    if cfg!(debug_assertions) {
        emit::validate_output(&output.wasm)?;
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_runs_of_characters() {
        assert!(wildcard_match("myhost.*", "myhost.wait"));
        assert!(wildcard_match("*.yield", "wasnap.yield"));
        assert!(wildcard_match("a*c*e", "abcde"));
        assert!(!wildcard_match("myhost.*", "other.wait"));
        assert!(!wildcard_match("wasnap.yield", "wasnap.yields"));
    }

    #[test]
    fn default_options_suspend_on_yield_and_switch_only() {
        let options = Options::default();
        assert!(options.is_suspending("wasnap", "yield"));
        assert!(options.is_suspending("wasnap", "switch"));
        assert!(!options.is_suspending("wasnap", "reply"));
        assert!(
            Options::default()
                .suspending("env.*")
                .is_suspending("env", "sleep")
        );
    }

    #[test]
    fn the_stdin_mode_makes_wasi_reads_suspending() {
        let (module, name) = WASI_READ_IMPORT.split_once('.').unwrap();
        assert!(!Options::default().is_suspending(module, name));
        let options = Options::default().suspend_on_stdin();
        assert!(options.is_suspending(module, name));
        assert!(!options.is_suspending(module, "fd_write"));
    }
}
