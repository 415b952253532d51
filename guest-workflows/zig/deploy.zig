//! The deploy workflow of ../deploy.expected.md, with a `status` query and
//! a `machines` update (how many machines to roll out to, 1 to 9).
const std = @import("std");
const wasnap = @import("wasnap.zig");

pub const panic = wasnap.panic;

const max_machines = 9;
/// Approve within 3 days, else the question goes to the release manager.
const approval_deadline_ms: i64 = 3 * 24 * 60 * 60 * 1000;
/// The maintenance window opens 2 s after the approval.
const maintenance_window_ms: i64 = 2000;

/// Changed by `wasnap update ID machines --arg N`.
var machines: u32 = 3;
/// Machines done so far.
var deployed: u32 = 0;
var status_buf: [64]u8 = undefined;
var status: []const u8 = "building release";

export fn query_status() void {
    var buf: [128]u8 = undefined;
    wasnap.respond(std.fmt.bufPrint(&buf, "{s} ({d} of {d} machines done)", .{ status, deployed, machines }) catch buf[0..]);
}

export fn update_machines() void {
    var arg_buf: [16]u8 = undefined;
    var buf: [96]u8 = undefined;
    const n = std.fmt.parseInt(u32, wasnap.handlerArg(&arg_buf), 10) catch 0;
    const least = @max(deployed, 1);
    if (n < least or n > max_machines) {
        wasnap.respond(std.fmt.bufPrint(&buf, "refused: {d} machines (at least {d}, at most {d})", .{ n, least, max_machines }) catch buf[0..]);
        return;
    }
    machines = n;
    wasnap.respond(std.fmt.bufPrint(&buf, "machines = {d}", .{n}) catch buf[0..]);
}

fn setStatus(text: []const u8) void {
    @memcpy(status_buf[0..text.len], text);
    status = status_buf[0..text.len];
}

fn ask(question: []const u8, comptime expected: []const u8) bool {
    setStatus(question);
    return wasnap.ask(question, expected);
}

pub fn main() void {
    var msg: [64]u8 = undefined;
    wasnap.write("building release\n");
    var answer_buf: [4]u8 = undefined;
    const first = "waiting for approval [yes/no]";
    setStatus(first);
    const answer = wasnap.yieldTimeout(first, approval_deadline_ms, &answer_buf) orelse blk: {
        wasnap.write("no answer within 3 days: escalating\n");
        const second = "waiting for approval from the release manager [yes/no]";
        setStatus(second);
        break :blk wasnap.yieldValue(second, &answer_buf);
    };
    if (!std.mem.eql(u8, answer, "yes")) {
        wasnap.write("deployment not approved\n");
        return;
    }
    wasnap.write("waiting for the maintenance window\n");
    setStatus("waiting for the maintenance window");
    wasnap.sleep(maintenance_window_ms);
    var k: u32 = 1;
    while (k <= machines) : (k += 1) {
        const step = std.fmt.bufPrint(&msg, "deploying to machine-{d}", .{k}) catch unreachable;
        if (ask(step, "fail")) {
            // Machine k failed: undo the ones already done, newest first.
            var j = k - 1;
            while (j >= 1) : (j -= 1) {
                const undo = std.fmt.bufPrint(&msg, "rolling back machine-{d}", .{j}) catch unreachable;
                deployed = j - 1;
                _ = ask(undo, "");
            }
            wasnap.print("rolled back after machine-{d} failed\n", .{k});
            return;
        }
        deployed = k;
    }
    status = "deployed";
    wasnap.print("deployed to {d} machines\n", .{machines});
}
