//! The deploy workflow of ../deploy.expected.md.
const std = @import("std");
const wasnap = @import("wasnap.zig");

pub const panic = wasnap.panic;

const machines = 3;

pub fn main() void {
    var msg: [64]u8 = undefined;
    var ignored: [0]u8 = undefined;
    wasnap.write("building release\n");
    if (!wasnap.ask("waiting for approval", "yes")) {
        wasnap.write("deployment not approved\n");
        return;
    }
    var k: u32 = 1;
    while (k <= machines) : (k += 1) {
        const step = std.fmt.bufPrint(&msg, "deploying to machine-{d}", .{k}) catch unreachable;
        if (wasnap.ask(step, "fail")) {
            // Machine k failed: undo the ones already done, newest first.
            var j = k - 1;
            while (j >= 1) : (j -= 1) {
                const undo = std.fmt.bufPrint(&msg, "rolling back machine-{d}", .{j}) catch unreachable;
                _ = wasnap.yieldValue(undo, &ignored);
            }
            wasnap.print("rolled back after machine-{d} failed\n", .{k});
            return;
        }
    }
    wasnap.print("deployed to {d} machines\n", .{machines});
}
