//! The instrumenter on broken input, with libFuzzer choosing the input:
//! the checks and generators of the `robustness` test, whose code this
//! target includes rather than copies.
//!
//! An input starting with `\0asm` is instrumented as it is, so that a
//! corpus of real modules gets libFuzzer's own byte mutations:
//!
//!     cargo +nightly fuzz run robustness ../guest-workflows/out/*/ ../target/bench-guests/
//!
//! Any other input drives one of the test's generators (random bytes,
//! wasm-smith modules with invalid bodies or a tweaked instruction, byte
//! mutations of the fixtures and guest modules).

#![no_main]

use std::sync::LazyLock;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/all/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../../tests/all/robustness.rs"]
mod robustness;
#[allow(dead_code)]
#[path = "../../tests/all/smith.rs"]
mod smith;

static BASES: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| robustness::bases(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));

fuzz_target!(|data: &[u8]| {
    let wasm = if data.starts_with(b"\0asm") {
        data.to_vec()
    } else {
        let mut u = Unstructured::new(data);
        let Ok(&kind) = u.choose(&robustness::KINDS) else {
            return;
        };
        let Some(wasm) = robustness::case(kind, &mut u, &BASES) else {
            return;
        };
        wasm
    };
    if let Err(error) = robustness::check(&wasm) {
        panic!("{error}");
    }
});
