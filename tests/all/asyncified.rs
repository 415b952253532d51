//! Modules that `wasm-opt --asyncify` already instrumented run as they are:
//! the engine drives Binaryen's exported `asyncify_*` functions and places
//! the frame buffer in memory 0 itself.

use std::process::Command;

use wasnap::runtime::Captured;
use wasnap::snapshot::file;
use wasnap::{Engine, Output, Settings, Step};

/// A seed demo, instrumented by Binaryen (Debian's `binaryen` package).
fn asyncified(demo: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wasm");
    let output = dir.path().join("out.wasm");
    let wat = format!(
        "{}/guest-workflows/wat/{demo}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::write(&input, wat::parse_file(wat).unwrap()).unwrap();
    let status = Command::new("wasm-opt")
        .arg(&input)
        .args([
            "--asyncify",
            "--pass-arg=asyncify-imports@wasnap.yield,wasnap.switch",
            "-g",
            "-o",
        ])
        .arg(&output)
        .status()
        .expect("wasm-opt not found: install Debian's binaryen package (.ci/run does)");
    assert!(status.success());
    std::fs::read(output).unwrap()
}

/// Runs one step in a fresh engine from snapshot bytes; returns the step,
/// the next snapshot's bytes and what the guest printed.
fn step(wasm: &[u8], from: Option<&[u8]>, reply: &str) -> (Step, Vec<u8>, String) {
    let engine = Engine::new().unwrap();
    let module = engine.load(wasm).unwrap();
    assert!(module.metadata().binaryen);
    let captured = Captured::default();
    let settings = Settings::default().stdout(Output::Capture(captured.clone()));
    let mut workflow = match from {
        Some(bytes) => {
            let (snapshot, _) = file::decode(bytes).unwrap();
            engine.restore_with(&module, &snapshot, settings).unwrap()
        }
        None => engine.start(&module, settings).unwrap(),
    };
    workflow.send(reply.as_bytes());
    let step = workflow.run().unwrap();
    let bytes = match step {
        Step::Yielded(_) => file::encode(&workflow.snapshot().unwrap(), None).unwrap(),
        Step::Finished(_) => Vec::new(),
    };
    (step, bytes, String::from_utf8(captured.contents()).unwrap())
}

fn yielded(text: &str) -> Step {
    Step::Yielded(text.as_bytes().to_vec())
}

#[test]
fn binaryen_approval_runs_as_it_is() {
    let wasm = asyncified("approval");
    let (s, v1, _) = step(&wasm, None, "");
    assert_eq!(s, yielded("do something"));
    let (s, v2, _) = step(&wasm, Some(&v1), "");
    assert_eq!(s, yielded("ask boss for permission"));
    let (s, _, _) = step(&wasm, Some(&v2), "true");
    assert_eq!(s, yielded("do another after approved"));
    let (s, _, _) = step(&wasm, Some(&v2), "false");
    assert_eq!(s, yielded("do another after rejected"));
}

#[test]
fn binaryen_greenlet_keeps_the_coroutine_stack() {
    let wasm = asyncified("greenlet");
    let (_, v1, mut out) = step(&wasm, None, "");
    let raw = zstd::decode_all(&v1[..]).unwrap();
    assert!(raw.windows(15).any(|w| w == b"special-g-stack"));
    let (_, v2, text) = step(&wasm, Some(&v1), "");
    out += &text;
    let (_, v3, text) = step(&wasm, Some(&v2), "");
    out += &text;
    let (_, _, text) = step(&wasm, Some(&v1), "");
    out += &text;
    let (end, _, text) = step(&wasm, Some(&v3), "");
    out += &text;
    assert_eq!(end, Step::Finished(0));
    assert_eq!(out, "enter g\na\nleave g\nb\na\nleave g\nc\n");
}
