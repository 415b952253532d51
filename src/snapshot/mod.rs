//! Snapshots: one version of one workflow instance at a suspension point.
//!
//! A [`Snapshot`] is engine-neutral: memories are kept as their non-zero
//! pages, globals as raw bits (a NaN payload survives), table elements as
//! function indices, and every coroutine as the bytes of its unwound stack.
//! Nothing in it refers to a wasmtime object, so it can be written to a file
//! ([`file`](mod@file)) or to the store and restored in another process.

pub(crate) mod codec;
pub mod diff;
pub mod file;
pub mod inspect;
mod list;
mod page;

pub(crate) use list::RUN_PAGES;
pub use list::{PageList, Pages};
pub use page::PageData;
pub(crate) use page::{PageSource, WeakPage};

/// Size of one snapshot page, in bytes: the unit of zero-skipping and of
/// content-addressed storage. It is the Wasm page size, so a memory's size
/// is always a whole number of snapshot pages.
pub const PAGE_SIZE: usize = 65536;

/// A content hash (BLAKE3) identifying a module's original bytes.
pub type ModuleHash = [u8; 32];

/// The complete state of a suspended workflow instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// BLAKE3 hash of the original (uninstrumented) module bytes.
    pub module_hash: ModuleHash,
    /// Version of the instrumenter that produced the running code; frames on
    /// the unwound stacks are only meaningful to the same version.
    pub instrumenter_version: u32,
    /// Every memory the module defines, in index order, except the
    /// instrumenter's own stack memory (empty at every suspension point).
    pub memories: Vec<MemoryImage>,
    /// Every global the module defines, in index order.
    pub globals: Vec<GlobalValue>,
    /// Every table the module defines, in index order.
    pub tables: Vec<TableImage>,
    /// Every coroutine of the workflow, the main one (id 0) first.
    pub coroutines: Vec<Coroutine>,
    /// State kept by the host side of the guest ABI.
    pub host: HostSide,
}

/// One linear memory: its size and its non-zero pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryImage {
    /// Size in Wasm pages (64 KiB each).
    pub page_count: u64,
    /// The pages that hold at least one non-zero byte, by ascending index;
    /// every other page is all zeros. Built from a `Vec<Page>` (`.into()`).
    pub pages: PageList,
}

/// One non-zero page of a memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Page number within the memory (byte offset / [`PAGE_SIZE`]).
    pub index: u32,
    /// Exactly [`PAGE_SIZE`] bytes, shared and immutable (see [`PageData`]).
    pub data: PageData,
}

/// The value of a global, kept as raw bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlobalValue {
    /// An `i32`.
    I32(u32),
    /// An `i64`.
    I64(u64),
    /// The bits of an `f32`.
    F32(u32),
    /// The bits of an `f64`.
    F64(u64),
    /// A `v128`.
    V128(u128),
    /// A null reference of any type.
    NullRef,
    /// A non-null `funcref`, as the index of the function in the module.
    FuncRef(u32),
}

/// One table: its size and its elements as function indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableImage {
    /// Each element: `None` for null, else the referenced function index.
    pub elements: Vec<Option<u32>>,
}

/// Where a coroutine is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoroutineState {
    /// Spawned, not yet switched into: it will start at its entry function.
    Fresh,
    /// Unwound at a suspending call; its stack is in [`Coroutine::stack`].
    Suspended,
    /// Its function has returned.
    Finished,
}

/// One coroutine (greenlet) of a workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coroutine {
    /// Its id; 0 is the workflow's main.
    pub id: u32,
    /// The coroutine that created it, resumed when it returns (0 for main).
    pub parent: u32,
    /// Where it is in its life.
    pub state: CoroutineState,
    /// Index in table 0 of its entry function (unused for main).
    pub entry_function: u32,
    /// The argument its entry function is called with.
    pub entry_argument: u32,
    /// The value of the shadow-stack pointer global while it is switched out.
    pub stack_pointer: u32,
    /// The bytes of its unwound Wasm stack (empty unless suspended).
    pub stack: Vec<u8>,
    /// The value its pending `switch` returns when it is switched into.
    pub resume_value: u32,
}

/// How the workflow is suspended, seen from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSide {
    /// The coroutine that was running when the workflow suspended.
    pub current: u32,
    /// The next coroutine id `spawn` will hand out.
    pub next_coroutine_id: u32,
    /// The suspending import the workflow is blocked in, as `module.name`.
    pub suspended_in: String,
    /// The value it published (for `wasnap.yield`, the yielded bytes).
    pub yielded: Vec<u8>,
    /// The latest reply, readable by `wasnap.reply`.
    pub reply: Vec<u8>,
    /// The WASI arguments, program name first.
    pub args: Vec<String>,
    /// The WASI environment.
    pub env: Vec<(String, String)>,
    /// What reads of standard input find.
    pub stdin: Stdin,
}

/// A workflow's standard input, as the host keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Stdin {
    /// Reads find it empty, at its end: a workflow has no input of its own.
    #[default]
    Empty,
    /// Every read that finds nothing buffered suspends the workflow, and
    /// the reply it is resumed with is the input (see
    /// [`crate::instrument::Options::suspend_on_stdin`]).
    Suspending {
        /// Input received and not read yet: the rest of a reply longer
        /// than the read that asked for it.
        buffered: Vec<u8>,
    },
}
