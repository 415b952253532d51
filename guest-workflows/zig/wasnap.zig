//! Write wasnap workflows in Zig.
//!
//! Build: python3 -m ziglang build-exe -target wasm32-wasi -O ReleaseSmall my.zig
//! (the engine calls `_start`, so `pub fn main() void` is the workflow).
//!
//! Output goes straight to WASI's fd_write: nothing is buffered, so nothing
//! can be left unprinted in a buffer when the workflow suspends (the process
//! may end there). Coroutines are greenlets: each runs on its own shadow
//! stack, and when its function returns, its parent resumes.
const std = @import("std");

/// The guest ABI exactly as DESIGN.md fixes it: all i32 (pointers and usize
/// are 32 bits on wasm32), pointers are offsets into memory 0.
pub const raw = struct {
    /// Publish [ptr, ptr+len) and suspend the workflow; returns the length of
    /// the reply it is resumed with (0 when none).
    pub extern "wasnap" fn @"yield"(ptr: [*]const u8, len: usize) i32;
    /// Copy up to `cap` bytes of the latest reply to `ptr`; returns the number copied.
    pub extern "wasnap" fn reply(ptr: [*]u8, cap: usize) i32;
    /// New coroutine running table0[func](arg) on [stack_ptr, stack_ptr+stack_len).
    pub extern "wasnap" fn spawn(func: usize, arg: usize, stack_ptr: [*]u8, stack_len: usize) i32;
    /// Suspend the running coroutine and run coroutine `id` (0 = main).
    pub extern "wasnap" fn @"switch"(id: i32, value: i32) i32;
    /// Id of the running coroutine.
    pub extern "wasnap" fn current() i32;
    /// Suspend until `ms` milliseconds from now (a durable timer).
    pub extern "wasnap" fn sleep(ms: i64) void;
    /// Like `yield`, with a deadline: returns the reply's length, or -1 when
    /// `ms` milliseconds passed without a reply.
    pub extern "wasnap" fn yield_timeout(ptr: [*]const u8, len: usize, ms: i64) i32;
    /// In a query or update handler: the handler's result becomes [ptr, ptr+len).
    pub extern "wasnap" fn respond(ptr: [*]const u8, len: usize) void;
    /// 1 when the code should take the patch named [ptr, ptr+len) (see `patched`).
    pub extern "wasnap" fn patched(ptr: [*]const u8, len: usize) i32;
};

// ---- Queries and updates ----
//
// A handler is an exported function of no arguments, run on the suspended
// workflow's state (`wasnap query` / `wasnap update`); it must not yield,
// switch or spawn. The workflow's locals live in its suspended frames, not
// in memory, so keep what handlers read or change in container-level vars:
//
//     var status: []const u8 = "starting";
//     export fn query_status() void { wasnap.respond(status); }
//
// (build with -rdynamic, so that the exports are kept).

/// In a handler: its argument, copied into `buf` (truncated to its size).
pub fn handlerArg(buf: []u8) []u8 {
    const got: usize = @intCast(@max(raw.reply(buf.ptr, buf.len), 0));
    return buf[0..@min(got, buf.len)];
}

/// In a handler: its result.
pub fn respond(bytes: []const u8) void {
    raw.respond(bytes.ptr, bytes.len);
}

/// Whether the code should take the patch named `id`, for changes that
/// `wasnap upgrade` must replay: true when running normally (and that is
/// recorded), and while replaying true only where the recorded run took the
/// patch too. Old histories keep the old path; everything after them takes
/// the new one: `if (wasnap.patched("notify-on-start")) notify();`
pub fn patched(id: []const u8) bool {
    return raw.patched(id.ptr, id.len) != 0;
}

/// A panic handler for workflows: the message goes to stderr and the module
/// traps, so the engine reports the workflow as failed. It spares the module
/// std's stack-trace machinery (and the WASI imports that comes with).
/// Use it with `pub const panic = wasnap.panic;` in the root file.
pub const panic = std.debug.FullPanic(panicTrap);

fn panicTrap(msg: []const u8, _: ?usize) noreturn {
    writeFd(2, "panic: ");
    writeFd(2, msg);
    writeFd(2, "\n");
    @trap();
}

fn writeFd(fd: std.os.wasi.fd_t, bytes: []const u8) void {
    var rest = bytes;
    while (rest.len > 0) {
        const iov = [1]std.os.wasi.ciovec_t{.{ .base = rest.ptr, .len = rest.len }};
        var written: usize = 0;
        if (std.os.wasi.fd_write(fd, &iov, 1, &written) != .SUCCESS or written == 0) return;
        rest = rest[written..];
    }
}

/// Write bytes to stdout (fd 1), unbuffered.
pub fn write(bytes: []const u8) void {
    writeFd(1, bytes);
}

/// Formatted output to stdout; a line may be up to 1 KiB long.
pub fn print(comptime fmt: []const u8, args: anytype) void {
    var buf: [1024]u8 = undefined;
    const text = std.fmt.bufPrint(&buf, fmt, args) catch buf[0..];
    write(text);
}

/// Publish `value` and suspend the workflow. The reply it is resumed with is
/// copied into `reply_buf` (truncated to its size) and returned.
pub fn yieldValue(value: []const u8, reply_buf: []u8) []u8 {
    const len: usize = @intCast(@max(raw.@"yield"(value.ptr, value.len), 0));
    const want = @min(len, reply_buf.len);
    if (want == 0) return reply_buf[0..0];
    const got: usize = @intCast(@max(raw.reply(reply_buf.ptr, want), 0));
    return reply_buf[0..@min(got, want)];
}

/// Like `yieldValue`, with a reply of any length allocated from `allocator`.
pub fn yieldAlloc(allocator: std.mem.Allocator, value: []const u8) ![]u8 {
    const len: usize = @intCast(@max(raw.@"yield"(value.ptr, value.len), 0));
    const buf = try allocator.alloc(u8, len);
    if (len == 0) return buf;
    const got: usize = @intCast(@max(raw.reply(buf.ptr, len), 0));
    return buf[0..@min(got, len)];
}

/// Suspend the workflow for `ms` milliseconds: a durable timer, kept with
/// the saved version, that a service fires even after a restart.
pub fn sleep(ms: i64) void {
    raw.sleep(ms);
}

/// A question with a deadline: publishes `value` and waits at most `ms`
/// milliseconds for the reply, copied into `reply_buf` (truncated to its
/// size); null when the deadline passed first.
pub fn yieldTimeout(value: []const u8, ms: i64, reply_buf: []u8) ?[]u8 {
    const n = raw.yield_timeout(value.ptr, value.len, ms);
    if (n < 0) return null;
    const want = @min(@as(usize, @intCast(n)), reply_buf.len);
    if (want == 0) return reply_buf[0..0];
    const got: usize = @intCast(@max(raw.reply(reply_buf.ptr, want), 0));
    return reply_buf[0..@min(got, want)];
}

/// True when yielding `value` is answered with exactly `expected`.
pub fn ask(value: []const u8, comptime expected: []const u8) bool {
    // One byte more than `expected`, so a longer reply never matches.
    var buf: [expected.len + 1]u8 = undefined;
    return std.mem.eql(u8, yieldValue(value, &buf), expected);
}

/// A bare suspension (greenlet's root.switch()): an empty value, which the
/// host prints as nothing; any reply is ignored.
pub fn suspendWorkflow() void {
    const empty: []const u8 = "";
    _ = raw.@"yield"(empty.ptr, 0);
}

pub fn current() i32 {
    return raw.current();
}

/// Suspend the running coroutine and run coroutine `id` (0 = main), whose
/// pending switch returns `value`. Returns what this coroutine is resumed
/// with later (0 when a child it switched into has returned).
pub fn switchTo(id: i32, value: i32) i32 {
    return raw.@"switch"(id, value);
}

/// Shadow stacks grow down from a 16-byte aligned top, as LLVM expects.
const stack_align = std.mem.Alignment.@"16";

pub const Coroutine = struct {
    /// The engine's id, > 0.
    id: i32,
    /// The coroutine that spawned it; it resumes when `func` returns.
    parent: i32,
    done: bool = false,
    func: *const fn (?*anyopaque) void,
    data: ?*anyopaque,
    stack: []align(16) u8,
    allocator: std.mem.Allocator,
    next: ?*Coroutine = null,

    /// Run this coroutine (greenlet.switch()).
    pub fn switchInto(self: *Coroutine, value: i32) i32 {
        return switchTo(self.id, value);
    }

    /// Free a finished coroutine's record and stack. An unfinished one still
    /// runs on its stack: it is left alone and false is returned.
    pub fn release(self: *Coroutine) bool {
        if (!self.done) return false;
        var link = &coroutines;
        while (link.*) |co| : (link = &co.next) {
            if (co == self) {
                link.* = co.next;
                break;
            }
        }
        const allocator = self.allocator;
        allocator.free(self.stack);
        allocator.destroy(self);
        return true;
    }
};

/// Every coroutine spawned here (wasm32 guests are single-threaded).
var coroutines: ?*Coroutine = null;

/// Every coroutine starts here: spawn takes the table index of a function of
/// type (i32) -> (), and its argument is the Coroutine record.
fn trampoline(arg: usize) callconv(.c) void {
    const co: *Coroutine = @ptrFromInt(arg);
    co.func(co.data);
    co.done = true;
}

/// A new coroutine that will run `func(data)` on a shadow stack of
/// `stack_size` bytes from `allocator`; it starts at the first switch into
/// it, and its parent is the running coroutine. The stack is not guarded:
/// size it generously.
pub fn spawn(allocator: std.mem.Allocator, func: *const fn (?*anyopaque) void, data: ?*anyopaque, stack_size: usize) !*Coroutine {
    const size = std.mem.alignForward(usize, @max(stack_size, 16), 16);
    const stack = try allocator.alignedAlloc(u8, stack_align, size);
    errdefer allocator.free(stack);
    const co = try allocator.create(Coroutine);
    co.* = .{ .id = 0, .parent = current(), .func = func, .data = data, .stack = stack, .allocator = allocator };
    // In wasm32 a function pointer is the function's index in table 0.
    co.id = raw.spawn(@intFromPtr(&trampoline), @intFromPtr(co), stack.ptr, stack.len);
    co.next = coroutines;
    coroutines = co;
    return co;
}

/// The parent of the running coroutine, null in main.
pub fn parent() ?i32 {
    const me = current();
    var it = coroutines;
    while (it) |co| : (it = co.next) {
        if (co.id == me) return co.parent;
    }
    return null;
}

/// greenlet.getcurrent().parent.switch(value); main has no parent.
pub fn switchToParent(value: i32) i32 {
    const p = parent() orelse @panic("the workflow's main has no parent coroutine");
    return switchTo(p, value);
}
