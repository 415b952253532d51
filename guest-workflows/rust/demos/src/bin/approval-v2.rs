//! New code for the approval workflow, compatible with its histories: up to
//! the boss's answer it does what approval.rs does, and after it, something
//! new. `wasnap upgrade ID approval-v2.wasm` moves a waiting instance here.
use wasnap_guest::{Shared, yield_str};

static STATUS: Shared<&str> = Shared::new("starting");

wasnap_guest::query!(status, |_| STATUS.get().into());

fn step(question: &'static str) -> String {
    STATUS.set(question);
    yield_str(question)
}

fn main() {
    step("do something");
    if step("ask boss for permission") == "true" {
        step("do another after approved, and tell the team");
    } else {
        step("do another after rejected, and tell the team");
    }
    STATUS.set("done");
}
