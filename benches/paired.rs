//! Paired rounds, for a machine shared with other work.
//!
//! In each round every variant runs once, in an order that rotates from
//! round to round, and each variant's time is divided by its reference's
//! from the same round: load that comes and goes hits both sides of a
//! ratio alike. What is reported is the median of the per-round ratios,
//! with its quartiles as a measure of how noisy the run was.

use std::path::PathBuf;
use std::time::Instant;

/// How many rounds to run (`WASNAP_BENCH_ROUNDS`, default 15).
pub fn rounds() -> usize {
    std::env::var("WASNAP_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

/// Runs every variant once per round, rotating their order; returns each
/// variant's times in seconds, round by round.
pub fn run(rounds: usize, variants: &mut [&mut dyn FnMut()]) -> Vec<Vec<f64>> {
    let n = variants.len();
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let v = (round + k) % n;
            let started = Instant::now();
            (variants[v])();
            times[v].push(started.elapsed().as_secs_f64());
        }
    }
    times
}

/// The median and quartiles of `xs`.
pub fn quartiles(xs: &[f64]) -> (f64, f64, f64) {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

/// Per-round ratios of `a` to `b`: their median and quartiles.
pub fn ratios(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    quartiles(&r)
}

/// One line of a paired table: the case, the measure and its reference
/// (median seconds), the median ratio and its quartiles, and the rounds.
pub fn line(case: &str, a: &[f64], b: &[f64]) -> String {
    let (ratio, low, high) = ratios(a, b);
    format!(
        "{case}\t{:.9}\t{:.9}\t{ratio:.4}\t{low:.4}\t{high:.4}\t{}",
        quartiles(a).0,
        quartiles(b).0,
        a.len()
    )
}

/// The header of [`line`]'s columns, after the case's own.
pub const COLUMNS: &str = "measure_s\treference_s\tratio\tratio_p25\tratio_p75\trounds";

/// Writes `rows` under `header` to `target/<dir>/<file>`, for
/// `scripts/bench-ratios`.
pub fn write(dir: &str, file: &str, header: &str, rows: &[String]) {
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or("target".into())).join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), format!("{header}\n{}\n", rows.join("\n"))).unwrap();
}

/// Whether a benchmark that is not a criterion benchmark should run: not
/// when a filter is given that does not name it.
pub fn selected(name: &str) -> bool {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    filter.is_none_or(|f| name.contains(f.as_str()))
}
