//! The article's approval workflow.
use wasnap_guest::yield_str;

fn main() {
    yield_str("do something");
    let is_approved = yield_str("ask boss for permission") == "true";
    if is_approved {
        yield_str("do another after approved");
    } else {
        yield_str("do another after rejected");
    }
}
