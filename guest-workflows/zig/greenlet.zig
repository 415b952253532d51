//! The article's greenlet demo: main is f, g is a coroutine with its own stack.
const std = @import("std");
const wasnap = @import("wasnap.zig");

pub const panic = wasnap.panic;

/// "special-g-stack" with every byte shifted up by one: the text itself must
/// exist only where g builds it, on its own stack, never in a data segment
/// (the host looks for it in the snapshot to see that g's stack was saved).
const shifted = "tqfdjbm.h.tubdl";

fn g(_: ?*anyopaque) void {
    wasnap.write("enter g\n");
    var mystack: [16]u8 = undefined;
    // Read through a volatile pointer: the optimiser may not fold the bytes
    // back into a constant.
    const src: *const volatile [shifted.len]u8 = shifted;
    for (0..shifted.len) |i| mystack[i] = src[i] - 1;
    mystack[shifted.len] = 0;
    // The buffer's address escapes: it must be in g's stack frame in memory.
    std.mem.doNotOptimizeAway(&mystack);
    _ = wasnap.switchToParent(0);
    const kept: *volatile [16]u8 = &mystack;
    for (0..shifted.len) |i| {
        if (kept[i] != src[i] - 1) @panic("g's stack did not survive the switch");
    }
    wasnap.write("leave g\n");
}

pub fn main() void {
    const greenlet_g = wasnap.spawn(std.heap.wasm_allocator, &g, null, 16 * 1024) catch @panic("out of memory");
    _ = greenlet_g.switchInto(0);
    wasnap.suspendWorkflow(); // root.switch()
    wasnap.write("a\n");
    _ = greenlet_g.switchInto(0);
    wasnap.suspendWorkflow();
    wasnap.write("b\n");
    wasnap.suspendWorkflow();
    wasnap.write("c\n");
    _ = greenlet_g.release();
}
