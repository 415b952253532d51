//! Deep recursion in Rust: a recursive-descent evaluator over a chain of
//! nested expressions, whose nodes are trait objects (indirect calls), with
//! `wasnap.yield` at the bottom of the recursion, reached through a trait
//! object too. The recursion tests measure how much Wasm stack the module
//! needs for a given depth (argv[1], default 1000), before and after
//! instrumentation, and suspend it at the bottom.
//!
//! Built on its own with `rustc` (no dependencies) by
//! `scripts/build-bench-guests`.

#[link(wasm_import_module = "wasnap")]
unsafe extern "C" {
    #[link_name = "yield"]
    fn wasnap_yield(ptr: *const u8, len: i32) -> i32;
}

/// What an expression can ask of its evaluator.
trait Host {
    fn bottom(&mut self, depth: u64) -> i64;
    fn combine(&mut self, left: i64, right: i64, depth: u64) -> i64;
}

/// An expression node.
trait Expr {
    fn eval(&self, host: &mut dyn Host, depth: u64) -> i64;
}

/// `combine(child, weight * depth)`: one level of the chain.
struct Nest {
    child: Box<dyn Expr>,
    weight: i64,
    scale: f64,
}

/// The bottom of the chain, where the host suspends.
struct Leaf;

impl Expr for Nest {
    #[inline(never)]
    fn eval(&self, host: &mut dyn Host, depth: u64) -> i64 {
        // Values live across the recursive call, as in a real evaluator.
        let before = (depth as f64 * self.scale) as i64;
        let mixed = self.weight.wrapping_mul(depth as i64) ^ before;
        let inner = self.child.eval(host, depth + 1);
        let right = mixed.wrapping_add(inner.rotate_left((depth % 31) as u32));
        host.combine(inner, right, depth) ^ before
    }
}

impl Expr for Leaf {
    #[inline(never)]
    fn eval(&self, host: &mut dyn Host, depth: u64) -> i64 {
        host.bottom(depth)
    }
}

/// The evaluator's host: counts, hashes, and suspends at the bottom.
struct Counter {
    combines: u64,
    hash: u64,
}

impl Host for Counter {
    #[inline(never)]
    fn bottom(&mut self, depth: u64) -> i64 {
        let progress = [depth as u32, self.combines as u32];
        // SAFETY: the host reads `len` bytes (0 here) at `ptr`.
        let answer = unsafe { wasnap_yield(progress.as_ptr().cast(), 0) };
        answer as i64 + depth as i64
    }

    #[inline(never)]
    fn combine(&mut self, left: i64, right: i64, depth: u64) -> i64 {
        self.combines += 1;
        self.hash = (self.hash ^ left as u64 ^ (right as u64).rotate_left(17))
            .wrapping_mul(0x100000001b3)
            .wrapping_add(depth);
        (left ^ right) & 0xff_ffff
    }
}

fn main() {
    let depth: u64 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1000);
    let mut expr: Box<dyn Expr> = Box::new(Leaf);
    for level in 0..depth {
        expr = Box::new(Nest {
            child: expr,
            weight: (level as i64 * 7919) % 1009,
            scale: 1.0 + level as f64 / 1024.0,
        });
    }
    let mut host = Counter {
        combines: 0,
        hash: 0xcbf29ce484222325,
    };
    let result = expr.eval(&mut host, 0);
    println!(
        "depth {depth}: result {result}, {} combines, hash {:016x}",
        host.combines, host.hash
    );
    // The chain is as deep as the recursion: dropping it recursively would
    // need as much native stack again, so let the process end take it.
    std::mem::forget(expr);
}
