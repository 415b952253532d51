//! The deploy workflow of ../deploy.expected.md.
const std = @import("std");
const wasnap = @import("wasnap.zig");

pub const panic = wasnap.panic;

const machines = 3;
/// Approve within 3 days, else the question goes to the release manager.
const approval_deadline_ms: i64 = 3 * 24 * 60 * 60 * 1000;
/// The maintenance window opens 2 s after the approval.
const maintenance_window_ms: i64 = 2000;

pub fn main() void {
    var msg: [64]u8 = undefined;
    var ignored: [0]u8 = undefined;
    var answer_buf: [4]u8 = undefined;
    wasnap.write("building release\n");
    const answer = wasnap.yieldTimeout("waiting for approval [yes/no]", approval_deadline_ms, &answer_buf) orelse blk: {
        wasnap.write("no answer within 3 days: escalating\n");
        break :blk wasnap.yieldValue("waiting for approval from the release manager [yes/no]", &answer_buf);
    };
    if (!std.mem.eql(u8, answer, "yes")) {
        wasnap.write("deployment not approved\n");
        return;
    }
    wasnap.write("waiting for the maintenance window\n");
    wasnap.sleep(maintenance_window_ms);
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
