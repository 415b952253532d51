//! wasm-smith modules from fixed seeds through the differential harness,
//! with every import suspending. Each module must pass, or be refused for
//! a cause the instrumenter documents (a reference-typed value that would
//! have to be saved).
//!
//! `WASNAP_FUZZ_CASES=N` runs more seeds, from `WASNAP_FUZZ_FIRST` (0) on,
//! so that a long run can go on where an earlier one stopped;
//! `WASNAP_FUZZ_SEED=S` runs only seed `S`; `WASNAP_FUZZ_DUMP=DIR` writes each failing module there as
//! `seed-S.wasm`, to minimise it.

use std::time::Instant;

use crate::smith::{Summary, check, module_for_seed};

/// Enough seeds to cover the shapes wasm-smith makes while keeping a debug
/// `cargo test` well under a minute.
const DEFAULT_CASES: u64 = 600;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

#[test]
fn wasm_smith_modules_suspend_everywhere() {
    let seeds: Vec<u64> = match env_u64("WASNAP_FUZZ_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("WASNAP_FUZZ_FIRST").unwrap_or(0);
            let cases = env_u64("WASNAP_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
            (first..first + cases).collect()
        }
    };
    let dump = std::env::var_os("WASNAP_FUZZ_DUMP");
    let start = Instant::now();
    let mut summary = Summary::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        let wasm = module_for_seed(seed, 2);
        match check(&wasm) {
            Ok(verdict) => summary.add(&verdict),
            Err(error) => {
                if let Some(dir) = &dump {
                    let path = std::path::Path::new(dir).join(format!("seed-{seed}.wasm"));
                    std::fs::write(&path, &wasm).unwrap();
                }
                failures.push(format!("seed {seed}: {error:#}"));
            }
        }
    }
    eprintln!(
        "wasm-smith differential: {} cases in {:.1?}: {} passed ({} of them suspended, {} suspensions in all, {} rewound in place, {} with entered copies), {} skipped, {} with externref (not run: no wasmtime gc), refused: {:?}, {} failed",
        seeds.len(),
        start.elapsed(),
        summary.passed,
        summary.suspended_modules,
        summary.suspensions,
        summary.rewound_in_place,
        summary.suspended_with_entered_copies,
        summary.skipped,
        summary.engine_refuses,
        summary.refused,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} modules failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
    // A run where nothing suspends proves nothing about unwinding.
    assert!(
        seeds.len() < 50 || summary.suspensions > 0,
        "no module suspended: the generator no longer calls imports"
    );
    // Nor one where no resumed code can go on in an entered copy.
    assert!(
        seeds.len() < DEFAULT_CASES as usize || summary.suspended_with_entered_copies > 0,
        "no module that suspended has an entered copy"
    );
}
