//! The article's approval workflow, with a `status` query.
const wasnap = @import("wasnap.zig");

pub const panic = wasnap.panic;

/// What the workflow waits for, for `wasnap query ID status`.
var status: []const u8 = "starting";

export fn query_status() void {
    wasnap.respond(status);
}

fn ask(question: []const u8, comptime expected: []const u8) bool {
    status = question;
    return wasnap.ask(question, expected);
}

pub fn main() void {
    _ = ask("do something", "");
    if (ask("ask boss for permission", "true")) {
        _ = ask("do another after approved", "");
    } else {
        _ = ask("do another after rejected", "");
    }
    status = "done";
}
