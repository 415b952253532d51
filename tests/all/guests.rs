//! The seed demos and the deploy workflow in every guest language, through
//! the Rust API, every step restored from a snapshot into a new Engine.
//!
//! The modules come from `guest-workflows/build` (run by `.ci/run` before
//! the tests); a missing module fails the test with that hint.

use wasnap::runtime::Captured;
use wasnap::{Engine, Output, Settings, Snapshot, Step};

/// Every language build directory under `guest-workflows/out`.
pub const LANGUAGES: [&str; 9] = [
    "wat",
    "c",
    "c-O0",
    "rust",
    "rust-O0",
    "zig",
    "zig-O0",
    "assemblyscript",
    "assemblyscript-O0",
];

/// The path of a built guest module; panics with the build command when
/// it is missing.
pub fn built(language: &str, demo: &str) -> String {
    let path = format!(
        "{}/guest-workflows/out/{language}/{demo}.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: build the guests with guest-workflows/build --with-O0"
    );
    path
}

fn module(language: &str, demo: &str) -> Vec<u8> {
    std::fs::read(built(language, demo)).unwrap()
}

/// One step of a workflow "in a new process": a new engine restores the
/// snapshot (or starts the module), sends the reply, runs to the next
/// suspension. Returns the step, the snapshot after it, and the stdout
/// lines, yielded values included, as the command line prints them.
fn step(
    wasm: &[u8],
    from: Option<&Snapshot>,
    reply: Option<&str>,
) -> (Step, Option<Snapshot>, String) {
    let engine = Engine::new().unwrap();
    let module = engine.load(wasm).unwrap();
    let captured = Captured::default();
    let settings = Settings::default().stdout(Output::Capture(captured.clone()));
    let mut workflow = match from {
        Some(snapshot) => engine.restore_with(&module, snapshot, settings).unwrap(),
        None => engine.start(&module, settings).unwrap(),
    };
    match reply {
        Some(TIMER) => workflow.wake(),
        Some(reply) => workflow.send(reply.as_bytes()),
        None => {}
    }
    let step = workflow.run().unwrap_or_else(|e| panic!("{e:?}"));
    let mut out = String::from_utf8(captured.contents()).unwrap();
    let snapshot = match &step {
        Step::Yielded(value) => {
            if !value.is_empty() {
                out += &String::from_utf8_lossy(value);
                out += "\n";
            }
            Some(workflow.snapshot().unwrap())
        }
        Step::Finished(_) => None,
    };
    (step, snapshot, out)
}

/// In a list of replies: the suspension's timer fires instead (a sleep
/// wakes, a question's deadline passes).
pub const TIMER: &str = "(timer)";

/// Runs a workflow to its end with one reply per resume; returns stdout.
fn run_with_replies(wasm: &[u8], replies: &[Option<&str>]) -> String {
    let (_, mut snapshot, mut out) = step(wasm, None, None);
    for reply in replies {
        let snap = snapshot.expect("suspended before its last reply");
        let (_, next, text) = step(wasm, Some(&snap), *reply);
        out += &text;
        snapshot = next;
    }
    assert!(snapshot.is_none(), "the workflow did not finish");
    out
}

#[test]
fn approval_in_every_language() {
    for language in LANGUAGES {
        let wasm = module(language, "approval");
        let approved = run_with_replies(&wasm, &[None, Some("true"), None]);
        assert_eq!(
            approved, "do something\nask boss for permission\ndo another after approved\n",
            "{language}"
        );
        // Branch from version 2 with another answer.
        let (_, v1, _) = step(&wasm, None, None);
        let (_, v2, _) = step(&wasm, v1.as_ref(), None);
        let (_, _, rejected) = step(&wasm, v2.as_ref(), Some("false"));
        assert_eq!(rejected, "do another after rejected\n", "{language}");
    }
}

#[test]
fn greenlet_in_every_language() {
    for language in LANGUAGES {
        let wasm = module(language, "greenlet");
        let (_, v1, mut out) = step(&wasm, None, None);
        let v1 = v1.unwrap();
        let pickled = v1.memories.iter().flat_map(|m| &m.pages).any(|page| {
            page.data
                .bytes()
                .unwrap()
                .windows(b"special-g-stack".len())
                .any(|w| w == b"special-g-stack")
        });
        out += &format!(
            "is greenlet g also pickled? {}\n",
            if pickled { "True" } else { "False" }
        );
        let (_, v2, text) = step(&wasm, Some(&v1), None);
        out += &text;
        let (_, v3, text) = step(&wasm, v2.as_ref(), None);
        out += &text;
        let (_, _, text) = step(&wasm, Some(&v1), None);
        out += &text;
        let (end, _, text) = step(&wasm, v3.as_ref(), None);
        out += &text;
        assert!(matches!(end, Step::Finished(_)), "{language}");
        assert_eq!(
            out, "enter g\nis greenlet g also pickled? True\na\nleave g\nb\na\nleave g\nc\n",
            "{language}"
        );
    }
}

/// The deploy workflow's scenarios of deploy.expected.md: the replies
/// after the first run ([`TIMER`] for a timer firing) and all of stdout.
pub fn deploy_scenarios() -> [(&'static [Option<&'static str>], String); 5] {
    const START: &str = "building release\nwaiting for approval [yes/no]\n";
    const WINDOW: &str = "waiting for the maintenance window\n";
    let all_ok = format!(
        "{START}{WINDOW}deploying to machine-1\ndeploying to machine-2\ndeploying to machine-3\ndeployed to 3 machines\n"
    );
    let escalated = format!(
        "{START}no answer within 3 days: escalating\nwaiting for approval from the release manager [yes/no]\n{WINDOW}deploying to machine-1\ndeploying to machine-2\ndeploying to machine-3\ndeployed to 3 machines\n"
    );
    let third_fails = format!(
        "{START}{WINDOW}deploying to machine-1\ndeploying to machine-2\ndeploying to machine-3\nrolling back machine-2\nrolling back machine-1\nrolled back after machine-3 failed\n"
    );
    let second_fails = format!(
        "{START}{WINDOW}deploying to machine-1\ndeploying to machine-2\nrolling back machine-1\nrolled back after machine-2 failed\n"
    );
    let refused = format!("{START}deployment not approved\n");
    [
        (
            &[Some("yes"), Some(TIMER), Some("ok"), Some("ok"), Some("ok")],
            all_ok,
        ),
        (
            &[
                Some(TIMER),
                Some("yes"),
                Some(TIMER),
                Some("ok"),
                Some("ok"),
                Some("ok"),
            ],
            escalated,
        ),
        (
            &[
                Some("yes"),
                Some(TIMER),
                Some("ok"),
                Some("ok"),
                Some("fail"),
                None,
                None,
            ],
            third_fails,
        ),
        (
            &[Some("yes"), Some(TIMER), Some("ok"), Some("fail"), None],
            second_fails,
        ),
        (&[Some("no")], refused),
    ]
}

#[test]
fn deploy_in_every_language() {
    for language in LANGUAGES {
        let wasm = module(language, "deploy");
        for (replies, expected) in deploy_scenarios() {
            assert_eq!(
                run_with_replies(&wasm, replies),
                expected,
                "{language} {replies:?}"
            );
        }
    }
}

/// The deploy workflow's question has a 3-day deadline and its sleep a
/// 2-second wake-up time, in every language: the timers the store keeps.
#[test]
fn deploy_timers_in_every_language() {
    for language in LANGUAGES {
        let wasm = module(language, "deploy");
        let engine = Engine::new().unwrap();
        let module = engine.load(&wasm).unwrap();
        let settings = Settings::default().stdout(Output::Capture(Captured::default()));
        let mut workflow = engine.start(&module, settings).unwrap();
        let before = wasnap::runtime::now_ms();
        assert!(matches!(workflow.run().unwrap(), Step::Yielded(_)));
        let Some(wasnap::Timer::Deadline { wake_at }) = workflow.timer() else {
            panic!(
                "{language}: the approval has no deadline: {:?}",
                workflow.timer()
            );
        };
        let three_days = 3 * 24 * 3600 * 1000;
        assert!(wake_at >= before + three_days && wake_at < before + three_days + 60_000);
        workflow.send(b"yes");
        let before = wasnap::runtime::now_ms();
        assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
        let Some(wasnap::Timer::Sleep { wake_at }) = workflow.timer() else {
            panic!("{language}: no sleep: {:?}", workflow.timer());
        };
        assert!(
            wake_at >= before + 2000 && wake_at < before + 62_000,
            "{language}"
        );
        workflow.wake();
        assert_eq!(
            workflow.run().unwrap(),
            Step::Yielded(b"deploying to machine-1".to_vec()),
            "{language}"
        );
        assert_eq!(workflow.timer(), None, "{language}");
    }
}
