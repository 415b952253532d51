//! The article's two demos through the Rust API. Every step after the
//! first goes through snapshot bytes into a *new* Engine, so nothing is
//! carried in process memory from one step to the next.

use wasnap::runtime::Captured;
use wasnap::snapshot::file;
use wasnap::{Engine, Output, Settings, Snapshot, Step};

fn guest(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/guest-workflows/wat/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    wat::parse_file(&path).unwrap()
}

/// A step in a "new process": a fresh engine restores the snapshot bytes,
/// optionally sends a reply, and runs to the next suspension.
fn resume(wasm: &[u8], snapshot: &Bytes, reply: Option<&str>) -> (Step, Bytes, String) {
    let engine = Engine::new().unwrap();
    let module = engine.load(wasm).unwrap();
    let snapshot = decode(snapshot);
    let captured = Captured::default();
    let settings = Settings::default().stdout(Output::Capture(captured.clone()));
    let mut workflow = engine.restore_with(&module, &snapshot, settings).unwrap();
    if let Some(reply) = reply {
        workflow.send(reply.as_bytes());
    }
    let step = workflow.run().unwrap();
    let bytes = match step {
        Step::Yielded(_) => encode(&workflow.snapshot().unwrap()),
        Step::Finished(_) => Vec::new(),
    };
    (step, bytes, String::from_utf8(captured.contents()).unwrap())
}

type Bytes = Vec<u8>;

fn encode(snapshot: &Snapshot) -> Bytes {
    file::encode(snapshot, None).unwrap()
}

fn decode(bytes: &Bytes) -> Snapshot {
    file::decode(bytes).unwrap().0
}

fn yielded(text: &str) -> Step {
    Step::Yielded(text.as_bytes().to_vec())
}

#[test]
fn approval_workflow_waits_for_the_boss_across_processes() {
    let wasm = guest("approval");
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), yielded("do something"));
    let v1 = encode(&workflow.snapshot().unwrap());
    drop((workflow, module, engine));

    let (step, v2, _) = resume(&wasm, &v1, None);
    assert_eq!(step, yielded("ask boss for permission"));
    let (step, v3, _) = resume(&wasm, &v2, Some("true"));
    assert_eq!(step, yielded("do another after approved"));
    let (step, _, _) = resume(&wasm, &v3, None);
    assert_eq!(step, Step::Finished(0));

    // The same saved moment, another answer: a branch.
    let (step, _, _) = resume(&wasm, &v2, Some("false"));
    assert_eq!(step, yielded("do another after rejected"));
}

#[test]
fn greenlet_demo_restores_old_versions_with_a_nested_coroutine() {
    let wasm = guest("greenlet");
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let captured = Captured::default();
    let settings = Settings::default().stdout(Output::Capture(captured.clone()));
    let mut workflow = engine.start(&module, settings).unwrap();
    let mut output = String::new();

    assert_eq!(workflow.run().unwrap(), yielded(""));
    output += &String::from_utf8(captured.contents()).unwrap();
    let v1 = encode(&workflow.snapshot().unwrap());
    // As `zstd -d` would see the file.
    let decompressed = zstd::decode_all(&v1[..]).unwrap();
    let pickled = decompressed
        .windows(b"special-g-stack".len())
        .any(|w| w == b"special-g-stack");
    output += &format!(
        "is greenlet g also pickled? {}\n",
        if pickled { "True" } else { "False" }
    );

    let (step, v2, out) = resume(&wasm, &v1, None);
    assert_eq!(step, yielded(""));
    output += &out;
    let (step, v3, out) = resume(&wasm, &v2, None);
    assert_eq!(step, yielded(""));
    output += &out;
    let (step, _, out) = resume(&wasm, &v1, None);
    assert_eq!(step, yielded(""));
    output += &out;
    let (step, _, out) = resume(&wasm, &v3, None);
    assert_eq!(step, Step::Finished(0));
    output += &out;

    assert_eq!(
        output,
        "enter g\nis greenlet g also pickled? True\na\nleave g\nb\na\nleave g\nc\n"
    );
}

#[test]
fn snapshot_of_a_restored_workflow_is_identical() {
    let wasm = guest("greenlet");
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let settings = Settings::default().stdout(Output::Capture(Captured::default()));
    let mut workflow = engine.start(&module, settings).unwrap();
    workflow.run().unwrap();
    let first = workflow.snapshot().unwrap();
    let settings = Settings::default().stdout(Output::Capture(Captured::default()));
    let mut restored = Engine::new()
        .unwrap()
        .restore_with(
            &Engine::new().unwrap().load(&wasm).unwrap(),
            &first,
            settings,
        )
        .unwrap();
    assert_eq!(restored.snapshot().unwrap(), first);
}

#[test]
fn a_cached_artifact_loads_without_instrumenting_and_runs_the_same() {
    let wasm = guest("approval");
    let engine = Engine::new().unwrap();
    let artifact = engine.load(&wasm).unwrap().serialize().unwrap();

    // A new engine (a new process, in the command line) given the artifact.
    let engine = Engine::new().unwrap();
    // SAFETY: serialized by this process, just above.
    let module = unsafe { engine.load_with_artifact(&wasm, Some(&artifact)) }.unwrap();
    let fresh = Engine::new().unwrap().load(&wasm).unwrap();
    assert_eq!(
        format!("{:?}", module.metadata()),
        format!("{:?}", fresh.metadata())
    );
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), yielded("do something"));

    // An artifact made with other instrumentation options is another
    // engine's: the fingerprints differ, so the store never offers it.
    let narrowed = wasnap::instrument::Options::default().only_functions("run");
    let other = Engine::with_options(narrowed).unwrap();
    assert_ne!(other.fingerprint(), engine.fingerprint());
    // And garbage in place of an artifact is ignored, not trusted.
    // SAFETY: these bytes are no artifact of any format, let alone code.
    let module = unsafe {
        Engine::new()
            .unwrap()
            .load_with_artifact(&wasm, Some(b"not an artifact"))
    }
    .unwrap();
    assert!(!module.metadata().frames.is_empty());
}
