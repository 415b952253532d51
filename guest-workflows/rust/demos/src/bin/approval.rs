//! The article's approval workflow, with a `status` query.
use wasnap_guest::{Shared, yield_str};

/// What the workflow is waiting for, for `wasnap query ID status`.
static STATUS: Shared<&str> = Shared::new("starting");

wasnap_guest::query!(status, |_| STATUS.get().into());

fn step(question: &'static str) -> String {
    STATUS.set(question);
    yield_str(question)
}

fn main() {
    step("do something");
    let is_approved = step("ask boss for permission") == "true";
    if is_approved {
        step("do another after approved");
    } else {
        step("do another after rejected");
    }
    STATUS.set("done");
}
