//! The deploy workflow of ../../../../deploy.expected.md, with a `status`
//! query and a `machines` update (how many machines to roll out to).
use wasnap_guest::{Shared, sleep_ms, yield_str, yield_str_timeout};

const MAX_MACHINES: u32 = 9;
/// Approve within 3 days, else the question goes to the release manager.
const APPROVAL_DEADLINE_MS: i64 = 3 * 24 * 60 * 60 * 1000;
/// The maintenance window opens 2 s after the approval.
const MAINTENANCE_WINDOW_MS: i64 = 2000;

/// Changed by `wasnap update ID machines --arg N`.
static MACHINES: Shared<u32> = Shared::new(3);
/// Machines done so far.
static DEPLOYED: Shared<u32> = Shared::new(0);
static STATUS: Shared<String> = Shared::new(String::new());

wasnap_guest::query!(status, |_| {
    let status = STATUS.with(|s| s.clone());
    format!("{status} ({} of {} machines done)", DEPLOYED.get(), MACHINES.get())
});

wasnap_guest::update!(machines, |arg| {
    let n: u32 = arg.trim().parse().unwrap_or(0);
    let least = DEPLOYED.get().max(1);
    if n < least || n > MAX_MACHINES {
        return format!("refused: {n} machines (at least {least}, at most {MAX_MACHINES})");
    }
    MACHINES.set(n);
    format!("machines = {n}")
});

fn ask(question: String) -> String {
    STATUS.set(question.clone());
    yield_str(&question)
}

fn main() {
    STATUS.set("building release".into());
    println!("building release");
    let first = "waiting for approval [yes/no]";
    STATUS.set(first.into());
    let answer = yield_str_timeout(first, APPROVAL_DEADLINE_MS).unwrap_or_else(|| {
        println!("no answer within 3 days: escalating");
        ask("waiting for approval from the release manager [yes/no]".into())
    });
    if answer != "yes" {
        println!("deployment not approved");
        return;
    }
    println!("waiting for the maintenance window");
    STATUS.set("waiting for the maintenance window".into());
    sleep_ms(MAINTENANCE_WINDOW_MS);
    let mut k = 1;
    while k <= MACHINES.get() {
        if ask(format!("deploying to machine-{k}")) == "fail" {
            // Machine k failed: undo the ones already done, newest first.
            for j in (1..k).rev() {
                DEPLOYED.set(j - 1);
                ask(format!("rolling back machine-{j}"));
            }
            println!("rolled back after machine-{k} failed");
            return;
        }
        DEPLOYED.set(k);
        k += 1;
    }
    STATUS.set("deployed".into());
    println!("deployed to {} machines", MACHINES.get());
}
