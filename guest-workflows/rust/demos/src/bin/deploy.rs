//! The deploy workflow of ../../../../deploy.expected.md, with a `status`
//! query and a `machines` update (how many machines to roll out to).
use wasnap_guest::{Shared, yield_str};

const MAX_MACHINES: u32 = 9;

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
    if ask("waiting for approval".into()) != "yes" {
        println!("deployment not approved");
        return;
    }
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
