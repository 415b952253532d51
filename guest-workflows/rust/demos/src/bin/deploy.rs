//! The deploy workflow of ../../../../deploy.expected.md.
use wasnap_guest::{sleep_ms, yield_str, yield_str_timeout};

const MACHINES: u32 = 3;
/// Approve within 3 days, else the question goes to the release manager.
const APPROVAL_DEADLINE_MS: i64 = 3 * 24 * 60 * 60 * 1000;
/// The maintenance window opens 2 s after the approval.
const MAINTENANCE_WINDOW_MS: i64 = 2000;

fn main() {
    println!("building release");
    let answer = yield_str_timeout("waiting for approval [yes/no]", APPROVAL_DEADLINE_MS)
        .unwrap_or_else(|| {
            println!("no answer within 3 days: escalating");
            yield_str("waiting for approval from the release manager [yes/no]")
        });
    if answer != "yes" {
        println!("deployment not approved");
        return;
    }
    println!("waiting for the maintenance window");
    sleep_ms(MAINTENANCE_WINDOW_MS);
    for k in 1..=MACHINES {
        if yield_str(&format!("deploying to machine-{k}")) == "fail" {
            // Machine k failed: undo the ones already done, newest first.
            for j in (1..k).rev() {
                yield_str(&format!("rolling back machine-{j}"));
            }
            println!("rolled back after machine-{k} failed");
            return;
        }
    }
    println!("deployed to {MACHINES} machines");
}
