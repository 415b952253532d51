//! The paged guest of the store and service benchmarks, and the page fill
//! that the snapshot benchmark's guest shares.

// Each benchmark that includes this file uses some of its guests.
#![allow(dead_code)]

/// The WAT function `$fill (param $page i32) (param $seed i64)`, which
/// writes memory page `$page` with a half-compressible pattern: (address +
/// seed) times a 64-bit odd constant, every other byte masked to zero.
/// zstd compresses it to a bit over half, like typical heap data, rather
/// than to nothing (constant fill) or not at all (noise).
pub const FILL: &str = r#"
  (func $fill (param $page i32) (param $seed i64)
    (local $addr i32) (local $end i32)
    (local.set $addr (i32.mul (local.get $page) (i32.const 65536)))
    (local.set $end (i32.add (local.get $addr) (i32.const 65536)))
    (loop $words
      (i64.store (local.get $addr)
        (i64.and
          (i64.mul
            (i64.add (i64.extend_i32_u (local.get $addr)) (local.get $seed))
            (i64.const 0x9E3779B97F4A7C15))
          (i64.const 0x00FF00FF00FF00FF)))
      (br_if $words
        (i32.lt_u
          (local.tee $addr (i32.add (local.get $addr) (i32.const 8)))
          (local.get $end)))))"#;

/// A guest that grows its memory to `mib` MiB and writes every page with
/// the pattern of [`FILL`], then, before each yield, rewrites `changed`
/// pages (the next ones round-robin) with the pattern seeded by the step
/// number, so that every rewritten page is new content.
pub fn guest(mib: u32, changed: u32) -> Vec<u8> {
    stepping_guest(mib, &format!("(i32.const {changed})"))
}

/// The guest of [`guest`], rewriting as many pages per step as the WAT
/// expression `per_step` says (`$reply` holds the length of the reply).
pub fn stepping_guest(mib: u32, per_step: &str) -> Vec<u8> {
    build(mib, per_step, false)
}

/// [`guest`] whose pages also depend on 8 random bytes drawn at start, so
/// that instances of it share no page: each one's steps store new pages,
/// as independent workflows would.
pub fn salted_guest(mib: u32, changed: u32) -> Vec<u8> {
    build(mib, &format!("(i32.const {changed})"), true)
}

fn build(mib: u32, per_step: &str, salted: bool) -> Vec<u8> {
    let pages = mib * 16;
    // The salt is drawn into the first 8 bytes, before they are filled.
    let (import, salt) = if salted {
        (
            r#"(import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))"#,
            "(drop (call $random_get (i32.const 0) (i32.const 8))) (local.set $salt (i64.load (i32.const 0)))",
        )
    } else {
        ("", "")
    };
    let wat = format!(
        r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  {import}
  (memory (export "memory") 1)
  {FILL}
  (func (export "run")
    (local $i i32) (local $step i64) (local $next i32) (local $reply i32) (local $salt i64)
    {salt}
    (drop (memory.grow (i32.const {grow})))
    (block $done
      (loop $pages
        (br_if $done (i32.ge_u (local.get $i) (i32.const {pages})))
        (call $fill (local.get $i) (local.get $salt))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $pages)))
    (loop $steps
      (local.set $reply (call $yield (i32.const 0) (i32.const 0)))
      (local.set $step (i64.add (local.get $step) (i64.const 1)))
      (local.set $i (i32.const 0))
      (block $done
        (loop $changes
          (br_if $done (i32.ge_u (local.get $i) {per_step}))
          (call $fill (local.get $next)
            (i64.add (local.get $salt) (i64.mul (local.get $step) (i64.const 0x10001))))
          (local.set $next (i32.rem_u (i32.add (local.get $next) (i32.const 1)) (i32.const {pages})))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $changes)))
      (br $steps))))
"#,
        grow = pages - 1,
    );
    wat::parse_str(&wat).expect("the bench guest is valid WAT")
}
