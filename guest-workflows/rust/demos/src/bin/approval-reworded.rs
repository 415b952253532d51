//! New code for the approval workflow that is not compatible with its
//! histories: it asks its second question differently, so an instance that
//! waits for the boss cannot be moved here (`wasnap upgrade` refuses and
//! names the step).
use wasnap_guest::{Shared, yield_str};

static STATUS: Shared<&str> = Shared::new("starting");

wasnap_guest::query!(status, |_| STATUS.get().into());

fn step(question: &'static str) -> String {
    STATUS.set(question);
    yield_str(question)
}

fn main() {
    step("do something");
    if step("ask the boss for permission, please") == "true" {
        step("do another after approved");
    } else {
        step("do another after rejected");
    }
    STATUS.set("done");
}
