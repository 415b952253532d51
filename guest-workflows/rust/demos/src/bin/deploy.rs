//! The deploy workflow of ../../../../deploy.expected.md.
use wasnap_guest::yield_str;

const MACHINES: u32 = 3;

fn main() {
    println!("building release");
    if yield_str("waiting for approval") != "yes" {
        println!("deployment not approved");
        return;
    }
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
