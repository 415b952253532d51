//! libFuzzer's bytes drive wasm-smith; the module must pass the same
//! differential check as the `fuzz` test's fixed seeds, whose code this
//! target includes rather than copies.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

// The harness serves the test suite too; some of it (the Binaryen oracle's
// entry points) is not used here.
#[allow(dead_code)]
#[path = "../../tests/all/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../../tests/all/smith.rs"]
mod smith;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(wasm) = smith::generate(&mut u, 2) else {
        return;
    };
    if let Err(error) = smith::check(&wasm) {
        panic!("{error:#}");
    }
});
