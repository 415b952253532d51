//! The article's approval workflow.
const wasnap = @import("wasnap.zig");

pub const panic = wasnap.panic;

pub fn main() void {
    var reply: [0]u8 = undefined;
    _ = wasnap.yieldValue("do something", &reply);
    if (wasnap.ask("ask boss for permission", "true")) {
        _ = wasnap.yieldValue("do another after approved", &reply);
    } else {
        _ = wasnap.yieldValue("do another after rejected", &reply);
    }
}
