//! libFuzzer's bytes choose a snapshot of a demo workflow and edit it
//! field by field; the engine must refuse the result with one line or
//! restore it faithfully, as in the `forgery` test, whose code this target
//! includes rather than copies.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use wasnap::Engine;

// The test module's own #[test] is not compiled here.
#[allow(dead_code)]
#[path = "../../tests/all/forgery.rs"]
mod forgery;

thread_local! {
    /// The subjects are run once, not for every input.
    static SUBJECTS: (Engine, Vec<forgery::Subject>) = {
        let engine = Engine::new().unwrap();
        let subjects = forgery::subjects(&engine);
        (engine, subjects)
    };
}

fuzz_target!(|data: &[u8]| {
    SUBJECTS.with(|(engine, subjects)| {
        let mut u = Unstructured::new(data);
        if let Err(problem) = forgery::forge_and_check(engine, subjects, &mut u) {
            panic!("{problem}");
        }
    });
});
