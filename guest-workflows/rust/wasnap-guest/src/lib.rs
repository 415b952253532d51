//! Write wasnap workflows in Rust.
//!
//! A workflow is ordinary sequential code: [`yield_str`] publishes a value,
//! suspends the whole workflow (which may be saved, and resumed hours later in
//! another process) and returns the reply it was resumed with. Coroutines
//! ([`spawn`], [`Coroutine::switch`], [`switch_to_parent`]) are greenlets:
//! each runs on its own shadow stack, and when its closure returns, its
//! parent (the coroutine that spawned it) resumes.
//!
//! Build for `wasm32-wasip1` (the engine calls `_start`, so `fn main` is the
//! workflow) or, without the `std` feature, for `wasm32-unknown-unknown`
//! (export a `run` function). The crate needs only `core` and `alloc`.
//!
//! ```ignore
//! fn main() {
//!     wasnap_guest::yield_str("do something");
//!     if wasnap_guest::yield_str("ask boss for permission") == "true" {
//!         wasnap_guest::yield_str("do another after approved");
//!     }
//! }
//! ```
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

use alloc::alloc::{Layout, alloc, dealloc};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

/// The guest ABI exactly as DESIGN.md fixes it: all i32, pointers are
/// offsets into memory 0.
pub mod raw {
    #[link(wasm_import_module = "wasnap")]
    unsafe extern "C" {
        /// Publish [ptr, ptr+len) and suspend the workflow; returns the length
        /// of the reply it is resumed with (0 when none).
        #[link_name = "yield"]
        pub fn yield_(ptr: i32, len: i32) -> i32;
        /// Copy up to `cap` bytes of the latest reply to `ptr`; returns the
        /// number copied.
        pub fn reply(ptr: i32, cap: i32) -> i32;
        /// New coroutine running `table0[func](arg)` on the shadow stack
        /// [stack_ptr, stack_ptr+stack_len); returns its id (> 0).
        pub fn spawn(func: i32, arg: i32, stack_ptr: i32, stack_len: i32) -> i32;
        /// Suspend the running coroutine and run coroutine `id` (0 = main).
        pub fn switch(id: i32, value: i32) -> i32;
        /// Id of the running coroutine.
        pub fn current() -> i32;
        /// Suspend until `ms` milliseconds from now (a durable timer).
        pub fn sleep(ms: i64);
        /// Like `yield`, with a deadline: returns the reply's length, or -1
        /// when `ms` milliseconds passed without a reply.
        pub fn yield_timeout(ptr: i32, len: i32, ms: i64) -> i32;
        /// In a query or update handler: the handler's result becomes
        /// [ptr, ptr+len).
        pub fn respond(ptr: i32, len: i32);
        /// In a handler exported as `query_*` or `update_*` (any name):
        /// copy up to `cap` bytes of the name asked for to `ptr`; returns
        /// its length.
        pub fn handler_name(ptr: i32, cap: i32) -> i32;
        /// In a query or update handler: end it with the error message
        /// [ptr, ptr+len); nothing it changed is committed. Does not return.
        pub fn handler_fail(ptr: i32, len: i32);
        /// 1 when the code should take the patch named [ptr, ptr+len)
        /// (see [`crate::patched`]).
        pub fn patched(ptr: i32, len: i32) -> i32;
    }
}

/// Pointers are 32-bit offsets on wasm32; the ABI passes them as i32.
fn addr<T: ?Sized>(p: *const T) -> i32 {
    p as *const u8 as usize as i32
}

/// Bytes must not wait in std's stdout buffer while the workflow is
/// suspended: the process may end there, and they would be printed later, by
/// another process, out of order.
fn flush_stdout() {
    #[cfg(feature = "std")]
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}

/// Publish `value` as this step's value and suspend the workflow; returns
/// the reply it is resumed with (empty when none).
pub fn yield_bytes(value: &[u8]) -> Vec<u8> {
    flush_stdout();
    // SAFETY: the host reads [ptr, ptr+len) of our memory, which `value` is.
    let len = unsafe { raw::yield_(addr(value.as_ptr()), value.len() as i32) };
    take_reply(len)
}

/// Copies out the reply of `len` bytes the workflow was resumed with.
fn take_reply(len: i32) -> Vec<u8> {
    let mut reply = Vec::with_capacity(len.max(0) as usize);
    if len > 0 {
        // SAFETY: the host writes at most `len` bytes, the capacity we hold.
        unsafe {
            let got = raw::reply(addr(reply.as_mut_ptr()), len);
            reply.set_len(got.clamp(0, len) as usize);
        }
    }
    reply
}

fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Suspend the workflow for `ms` milliseconds: a durable timer, kept with
/// the saved version, that a service fires even after a restart.
pub fn sleep_ms(ms: i64) {
    flush_stdout();
    // SAFETY: no memory is passed.
    unsafe { raw::sleep(ms) };
}

/// A question with a deadline: publishes `value` and waits at most `ms`
/// milliseconds for the reply; `None` when the deadline passed first.
pub fn yield_str_timeout(value: &str, ms: i64) -> Option<String> {
    flush_stdout();
    // SAFETY: the host reads [ptr, ptr+len) of our memory, which `value` is.
    let len = unsafe { raw::yield_timeout(addr(value.as_ptr()), value.len() as i32, ms) };
    (len >= 0).then(|| lossy(take_reply(len)))
}

/// [`yield_bytes`] for text: the reply is decoded as UTF-8 (invalid bytes
/// become U+FFFD).
pub fn yield_str(value: &str) -> String {
    lossy(yield_bytes(value.as_bytes()))
}

/// A bare suspension (greenlet's `root.switch()`): an empty value, which the
/// host prints as nothing; any reply is ignored.
pub fn suspend() {
    flush_stdout();
    // SAFETY: an empty range publishes nothing.
    unsafe { raw::yield_(0, 0) };
}

/// In a query or update handler: its argument (what `wasnap query ...
/// --arg TEXT` passed), read through `wasnap.reply`.
pub fn handler_arg() -> Vec<u8> {
    let mut cap = 64usize;
    loop {
        let mut arg: Vec<u8> = Vec::with_capacity(cap);
        // SAFETY: the host writes at most `cap` bytes, the capacity we hold.
        let got = unsafe { raw::reply(addr(arg.as_mut_ptr()), cap as i32) };
        let got = got.clamp(0, cap as i32) as usize;
        if got < cap {
            // SAFETY: the host wrote `got` bytes.
            unsafe { arg.set_len(got) };
            return arg;
        }
        // It may be longer: ask again with more room.
        cap *= 4;
    }
}

/// [`handler_arg`] as text (invalid UTF-8 becomes U+FFFD).
pub fn handler_arg_str() -> String {
    let arg = handler_arg();
    match String::from_utf8(arg) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// In a handler for any name (an export `query_*` or `update_*`, called
/// when the module exports no handler of the name asked for): the name.
/// An interpreter serves its script's handlers that way.
pub fn handler_name() -> String {
    // SAFETY: with a capacity of 0 the host writes nothing.
    let len = unsafe { raw::handler_name(0, 0) }.max(0) as usize;
    let mut name: Vec<u8> = Vec::with_capacity(len);
    // SAFETY: the host writes at most `len` bytes, the capacity we hold.
    let got = unsafe { raw::handler_name(addr(name.as_mut_ptr()), len as i32) };
    // SAFETY: the host wrote `got` (at most `len`) bytes.
    unsafe { name.set_len(got.clamp(0, len as i32) as usize) };
    String::from_utf8_lossy(&name).into_owned()
}

/// Ends the running query or update handler with an error message;
/// nothing it changed is committed.
pub fn fail_handler(message: &str) -> ! {
    // SAFETY: the host reads [ptr, ptr+len) of our memory, which `message`
    // is, and ends the call there.
    unsafe { raw::handler_fail(addr(message.as_ptr()), message.len() as i32) };
    unreachable!("wasnap.handler_fail returned")
}

/// In a query or update handler: its result.
pub fn respond(result: &[u8]) {
    // SAFETY: the host reads [ptr, ptr+len) of our memory, which `result` is.
    unsafe { raw::respond(addr(result.as_ptr()), result.len() as i32) }
}

/// Defines a query handler, the export `query_NAME`, run on the suspended
/// workflow's state by `wasnap query ID NAME [--arg TEXT]`: the closure
/// gets the argument as text and returns the result. A handler must not
/// yield, switch or spawn. The workflow's locals live in its suspended
/// frames, not in memory, so keep what handlers read in statics.
///
/// ```ignore
/// wasnap_guest::query!(status, |_arg| STATUS.get().to_string());
/// ```
#[macro_export]
macro_rules! query {
    ($name:ident, $body:expr) => {
        const _: () = {
            #[unsafe(export_name = concat!("query_", stringify!($name)))]
            extern "C" fn handler() {
                let body: fn(&str) -> $crate::__String = $body;
                let result = body(&$crate::handler_arg_str());
                $crate::respond(result.as_bytes());
            }
        };
    };
}

/// Defines an update handler, the export `update_NAME`, run on the head of
/// a waiting instance by `wasnap update ID NAME [--arg TEXT]`; what it
/// changes is committed as a new version that still waits at the same
/// call. See [`query!`].
#[macro_export]
macro_rules! update {
    ($name:ident, $body:expr) => {
        const _: () = {
            #[unsafe(export_name = concat!("update_", stringify!($name)))]
            extern "C" fn handler() {
                let body: fn(&str) -> $crate::__String = $body;
                let result = body(&$crate::handler_arg_str());
                $crate::respond(result.as_bytes());
            }
        };
    };
}

#[doc(hidden)]
pub use alloc::string::String as __String;

/// A value a workflow keeps for its handlers: readable and changeable from
/// a query or update handler while the workflow is suspended. Guests are
/// single-threaded and a handler never runs while workflow code does.
pub struct Shared<T>(UnsafeCell<T>);

// SAFETY: wasm32 guests are single-threaded (see `Registry`).
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// A shared value.
    pub const fn new(value: T) -> Self {
        Shared(UnsafeCell::new(value))
    }

    /// Replaces the value.
    pub fn set(&self, value: T) {
        // SAFETY: single-threaded, and no reference from `with` is alive.
        unsafe { *self.0.get() = value }
    }

    /// Runs `f` on the value.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: single-threaded, and `f` cannot reach `self` again
        // except through another `with`, which the borrow rules of its
        // closure prevent from overlapping in safe code.
        f(unsafe { &mut *self.0.get() })
    }
}

impl<T: Copy> Shared<T> {
    /// A copy of the value.
    pub fn get(&self) -> T {
        // SAFETY: single-threaded.
        unsafe { *self.0.get() }
    }
}

/// Whether the code should take the patch named `id`, for changes that
/// `wasnap upgrade` must replay: true when running normally (and that is
/// recorded), and while replaying true only where the recorded run took
/// the patch too. Old histories keep the old path; everything after them
/// takes the new one:
///
/// ```ignore
/// if wasnap_guest::patched("notify-on-start") { notify() }
/// ```
pub fn patched(id: &str) -> bool {
    // SAFETY: the host reads [ptr, ptr+len) of our memory, which `id` is.
    unsafe { raw::patched(addr(id.as_ptr()), id.len() as i32) != 0 }
}

/// Id of the running coroutine (0 is the workflow's main).
pub fn current() -> i32 {
    // SAFETY: no arguments, no memory.
    unsafe { raw::current() }
}

/// Suspend the running coroutine and run coroutine `id` (0 = main), whose
/// pending `switch` returns `value`. Returns what this coroutine is later
/// resumed with (0 when a child it switched into has returned).
pub fn switch(id: i32, value: i32) -> i32 {
    flush_stdout();
    // SAFETY: switching touches no memory of ours; the engine keeps each
    // coroutine's stack where it is.
    unsafe { raw::switch(id, value) }
}

/// Which coroutine spawned which: (id, parent). The engine knows too, but the
/// ABI has no call to ask it, and greenlets need `parent`.
struct Registry(UnsafeCell<Vec<(i32, i32)>>);
// SAFETY: wasm32 guests are single-threaded (wasnap refuses shared memories
// and threads), so the registry is never touched concurrently.
unsafe impl Sync for Registry {}
static PARENTS: Registry = Registry(UnsafeCell::new(Vec::new()));

fn with_parents<R>(f: impl FnOnce(&mut Vec<(i32, i32)>) -> R) -> R {
    // SAFETY: single-threaded, and `f` never re-enters the registry.
    f(unsafe { &mut *PARENTS.0.get() })
}

/// The parent of the running coroutine, `None` in main.
pub fn parent() -> Option<i32> {
    let me = current();
    with_parents(|p| p.iter().find(|(id, _)| *id == me).map(|&(_, parent)| parent))
}

/// `greenlet.getcurrent().parent.switch(value)`.
///
/// # Panics
/// In main, which has no parent.
pub fn switch_to_parent(value: i32) -> i32 {
    let parent = parent().expect("the workflow's main has no parent coroutine");
    switch(parent, value)
}

/// What the trampoline needs; `arg` of `spawn` points at it.
struct Start {
    body: Option<Box<dyn FnOnce()>>,
    done: bool,
}

/// Every coroutine starts here: `spawn` takes the table index of a function
/// of type (i32) -> (), and the closure is behind `arg`.
extern "C" fn trampoline(arg: i32) {
    // SAFETY: `arg` is the `Start` that `spawn` leaked for this coroutine,
    // alive until the coroutine is done (see `Drop for Coroutine`).
    let start = unsafe { &mut *(arg as usize as *mut Start) };
    if let Some(body) = start.body.take() {
        body();
    }
    start.done = true;
    flush_stdout(); // returning resumes the parent
}

/// A coroutine made by [`spawn`]; it owns its shadow stack.
pub struct Coroutine {
    id: i32,
    start: *mut Start,
    stack: *mut u8,
    layout: Layout,
}

/// Shadow stacks grow down from a 16-byte aligned top, as LLVM expects.
const STACK_ALIGN: usize = 16;

/// A new coroutine that will run `body` on a shadow stack of `stack_size`
/// bytes allocated from the heap. It starts at the first switch into it; its
/// parent is the running coroutine. The stack is not guarded: a coroutine
/// that overflows it writes over heap memory, so size it generously.
pub fn spawn<F: FnOnce() + 'static>(body: F, stack_size: usize) -> Coroutine {
    let size = stack_size.next_multiple_of(STACK_ALIGN).max(STACK_ALIGN);
    let layout = Layout::from_size_align(size, STACK_ALIGN).expect("stack size too large");
    // SAFETY: the layout has a non-zero size.
    let stack = unsafe { alloc(layout) };
    if stack.is_null() {
        alloc::alloc::handle_alloc_error(layout);
    }
    let start = Box::into_raw(Box::new(Start { body: Some(Box::new(body)), done: false }));
    let entry: extern "C" fn(i32) = trampoline;
    // In wasm32 a function pointer is the function's index in table 0.
    let func = entry as usize as i32;
    // SAFETY: the engine keeps the pointers; both stay valid while the
    // coroutine can run (see Drop).
    let id = unsafe { raw::spawn(func, addr(start), addr(stack), size as i32) };
    let parent = current();
    with_parents(|p| p.push((id, parent)));
    Coroutine { id, start, stack, layout }
}

impl Coroutine {
    /// The engine's id of this coroutine.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// Run this coroutine (`greenlet.switch()`); returns what the running
    /// coroutine is resumed with, 0 when this one has returned.
    pub fn switch(&self, value: i32) -> i32 {
        switch(self.id, value)
    }

    /// Whether its closure has returned.
    pub fn is_done(&self) -> bool {
        // SAFETY: `start` lives as long as `self`.
        unsafe { (*self.start).done }
    }
}

impl Drop for Coroutine {
    /// A finished coroutine's stack is freed. An unfinished one may still be
    /// switched into (it is suspended on that stack, and its frames point into
    /// it), so its stack and closure are leaked rather than freed under it.
    fn drop(&mut self) {
        if !self.is_done() {
            return;
        }
        let id = self.id;
        with_parents(|p| p.retain(|(c, _)| *c != id));
        // SAFETY: allocated in `spawn` with these layouts, and the coroutine
        // has returned, so nothing uses them any more.
        unsafe {
            drop(Box::from_raw(self.start));
            dealloc(self.stack, self.layout);
        }
    }
}
