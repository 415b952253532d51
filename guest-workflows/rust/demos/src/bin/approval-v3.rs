//! New code for the approval workflow that adds a step before the boss is
//! asked: an audit record. Instances that were asked already must not see
//! it, so the step is behind `patched("audit")`: replaying their history,
//! it is skipped; from the first step that runs anew, it is taken.
use wasnap_guest::{Shared, yield_str};

static STATUS: Shared<&str> = Shared::new("starting");

wasnap_guest::query!(status, |_| STATUS.get().into());

fn step(question: &'static str) -> String {
    STATUS.set(question);
    yield_str(question)
}

fn main() {
    step("do something");
    if wasnap_guest::patched("audit") {
        step("audit: approval requested");
    }
    if step("ask boss for permission") == "true" {
        step("do another after approved");
    } else {
        step("do another after rejected");
    }
    STATUS.set("done");
}
