//! Workflows written as scripts: the JavaScript runtime (QuickJS-ng,
//! `js.wasm`) runs the demos given as source text, every step restored
//! from snapshot bytes into a new engine, or through the command line,
//! every step a new process; the Python runtime (RustPython,
//! `python.wasm`) runs them through the command line.
//!
//! The runtimes come from `guest-workflows/build` (run by `.ci/run`); a
//! missing one fails the test with that hint.

use std::path::Path;
use std::sync::OnceLock;

use wasnap::runtime::Captured;
use wasnap::snapshot::file;
use wasnap::{Engine, Output, Settings, Step};

use crate::cli::{fails, ok, scratch};
use crate::guests::{TIMER, built, deploy_scenarios};
use crate::handlers::deploy_is_queried_and_updated;

/// A runtime module, and its compiled artifact, made once for all the
/// steps of all the tests (as the command line keeps it in its database).
struct Runtime {
    wasm: Vec<u8>,
    artifact: Vec<u8>,
    language: &'static str,
}

fn runtime(language: &'static str) -> &'static Runtime {
    static JS: OnceLock<Runtime> = OnceLock::new();
    assert_eq!(language, "js", "the only runtime");
    JS.get_or_init(|| {
        let wasm = std::fs::read(built(language, language)).unwrap();
        let artifact = engine().load(&wasm).unwrap().serialize().unwrap();
        Runtime {
            wasm,
            artifact,
            language,
        }
    })
}

/// Wasm stack for the instrumented interpreters.
const MAX_WASM_STACK: usize = 4 << 20;

fn engine() -> Engine {
    Engine::builder()
        .max_wasm_stack(MAX_WASM_STACK)
        .build()
        .unwrap()
}

/// The source of a demo script in `guest-workflows/<language>/`.
fn demo(language: &str, name: &str) -> (String, String) {
    let file = format!("{name}.{language}");
    let path = format!(
        "{}/guest-workflows/{language}/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    (file, std::fs::read_to_string(path).unwrap())
}

impl Runtime {
    /// One step in a "new process": a new engine starts the script or
    /// restores the snapshot bytes, sends the reply, runs to the next
    /// suspension.
    fn step(
        &self,
        script: &(String, String),
        from: Option<&[u8]>,
        reply: Option<&str>,
    ) -> (Step, Vec<u8>, String) {
        let engine = engine();
        // SAFETY: the artifact was compiled by this test's own engine
        // settings, from these very bytes, a moment before.
        let module =
            unsafe { engine.load_with_artifact(&self.wasm, Some(&self.artifact)) }.unwrap();
        let captured = Captured::default();
        let settings = Settings::default().stdout(Output::Capture(captured.clone()));
        let mut workflow = match from {
            Some(bytes) => {
                let snapshot = file::decode(bytes).unwrap().0;
                engine.restore_with(&module, &snapshot, settings).unwrap()
            }
            None => {
                let (name, source) = script;
                let args = [name.as_str(), "--source", name, source];
                engine.start(&module, settings.args(args)).unwrap()
            }
        };
        match reply {
            Some(TIMER) => workflow.wake(),
            Some(reply) => workflow.send(reply.as_bytes()),
            None => {}
        }
        let step = workflow
            .run()
            .unwrap_or_else(|e| panic!("{}: {e:?}", self.language));
        let mut out = String::from_utf8(captured.contents()).unwrap();
        let bytes = match &step {
            Step::Yielded(value) => {
                if !value.is_empty() {
                    out += &String::from_utf8_lossy(value);
                    out += "\n";
                }
                file::encode(&workflow.snapshot().unwrap(), None).unwrap()
            }
            Step::Finished(_) => Vec::new(),
        };
        (step, bytes, out)
    }
}

/// Runs `f` on a thread whose native stack holds [`MAX_WASM_STACK`].
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(MAX_WASM_STACK + (8 << 20))
            .spawn_scoped(scope, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

impl Runtime {
    /// Runs a script to its end with one reply per resume; returns stdout.
    fn run_with_replies(&self, script: &(String, String), replies: &[Option<&str>]) -> String {
        let (_, mut snapshot, mut out) = self.step(script, None, None);
        for reply in replies {
            assert!(
                !snapshot.is_empty(),
                "{}: finished before its last reply",
                self.language
            );
            let (_, next, text) = self.step(script, Some(&snapshot), *reply);
            out += &text;
            snapshot = next;
        }
        assert!(
            snapshot.is_empty(),
            "{}: the script did not finish",
            self.language
        );
        out
    }
}

const LANGUAGES: [&str; 1] = ["js"];

#[test]
fn approval_in_javascript() {
    on_big_stack(|| {
        for language in LANGUAGES {
            let runtime = runtime(language);
            let script = demo(language, "approval");
            let approved = runtime.run_with_replies(&script, &[None, Some("true"), None]);
            assert_eq!(
                approved, "do something\nask boss for permission\ndo another after approved\n",
                "{language}"
            );
            // Branch from version 2 with another answer.
            let (_, v1, _) = runtime.step(&script, None, None);
            let (_, v2, _) = runtime.step(&script, Some(&v1), None);
            let (_, _, rejected) = runtime.step(&script, Some(&v2), Some("false"));
            assert_eq!(rejected, "do another after rejected\n", "{language}");
        }
    });
}

#[test]
fn deploy_in_javascript() {
    on_big_stack(|| {
        for language in LANGUAGES {
            let runtime = runtime(language);
            let script = demo(language, "deploy");
            for (replies, expected) in deploy_scenarios() {
                assert_eq!(
                    runtime.run_with_replies(&script, replies),
                    expected,
                    "{language} {replies:?}"
                );
            }
        }
    });
}

/// The file name extension of a language's scripts.
fn extension(language: &str) -> &'static str {
    match language {
        "js" => "js",
        "python" => "py",
        _ => panic!("no runtime for {language}"),
    }
}

/// The path of a demo script, as the command line is given it.
fn demo_path(language: &str, name: &str) -> String {
    format!(
        "{}/guest-workflows/{language}/{name}.{}",
        env!("CARGO_MANIFEST_DIR"),
        extension(language)
    )
}

/// `wasnap run SCRIPT` and then resume after resume, each a new process:
/// the approval demo as instance `id` of `db`, and the branch from its
/// version 2.
fn approval_through_the_command_line(language: &str, db: &Path, id: &str) {
    let script = demo_path(language, "approval");
    let run = |args: &[&str]| ok(db, args);
    assert_eq!(run(&["run", &script]), "do something\n", "{language}");
    assert_eq!(run(&["resume", id]), "ask boss for permission\n");
    assert_eq!(
        run(&["resume", id, "--send", "true"]),
        "do another after approved\n"
    );
    assert_eq!(run(&["resume", id]), "", "{language}: the workflow ends");
    let error = fails(db, &["resume", id]);
    assert!(error.contains("finished"), "{error}");
    // The same saved moment, another answer.
    assert_eq!(
        run(&["resume", &format!("{id}@2"), "--send", "false"]),
        "do another after rejected\n",
        "{language}"
    );
}

#[test]
fn approval_scripts_every_step_a_new_process() {
    for language in LANGUAGES {
        let (_dir, db) = scratch();
        approval_through_the_command_line(language, &db, "1");
    }
}

/// Every deploy scenario with its timers through the command line, every
/// step a new process, as instances `first`, `first + 1`, ... of `db`: a
/// plain resume of a sleeping instance is refused, `--now` fires the timer.
/// Then the first one's version 3, which waits at machine 1, gets another
/// answer.
fn deploy_through_the_command_line(language: &str, db: &Path, first: usize) {
    let run = |args: &[&str]| ok(db, args);
    let deploy = demo_path(language, "deploy");
    for (n, (replies, expected)) in deploy_scenarios().into_iter().enumerate() {
        let id = (first + n).to_string();
        let mut out = run(&["run", &deploy]);
        for reply in replies {
            out += &match *reply {
                Some(TIMER) => run(&["resume", &id, "--now"]),
                Some(reply) => run(&["resume", &id, "--send", reply]),
                None => run(&["resume", &id]),
            };
            if out.ends_with("waiting for the maintenance window\n") {
                let error = fails(db, &["resume", &id]);
                assert!(error.contains("sleeps until"), "{language}: {error}");
            }
        }
        assert_eq!(out, expected, "{language} {replies:?}");
        let error = fails(db, &["resume", &id]);
        assert!(error.contains("finished"), "{language}: {error}");
    }
    assert_eq!(
        run(&["resume", &format!("{first}@3"), "--send", "fail"]),
        "rolled back after machine-1 failed\n",
        "{language}"
    );
}

#[test]
fn deploy_scripts_every_step_a_new_process() {
    for language in LANGUAGES {
        let (_dir, db) = scratch();
        deploy_through_the_command_line(language, &db, 1);
    }
}

/// A script whose function keeps a string, built at run time, in a local
/// variable while it is suspended.
fn local_variable_script(language: &str) -> &'static str {
    match language {
        "js" => {
            "function wait() {\n  const note = [\"special\", \"js\", \"local\"].join(\"-\");\n  wasnap.yield(\"waiting\");\n  print(note);\n}\nwait();\n"
        }
        "python" => {
            "import wasnap\n\ndef wait():\n    note = \"-\".join([\"special\", \"python\", \"local\"])\n    wasnap.yield_(\"waiting\")\n    print(note)\n\nwait()\n"
        }
        _ => panic!("no runtime for {language}"),
    }
}

#[test]
fn a_suspended_function_s_local_variable_is_in_the_snapshot_file() {
    for language in LANGUAGES {
        let (dir, db) = scratch();
        local_variable_in_the_snapshot_file(language, dir.path(), &db, "1");
    }
}

/// Runs [`local_variable_script`] as instance `id` of `db`; `zstd -dc` of
/// its snapshot file finds the local variable's string, which neither the
/// runtime nor the script holds.
fn local_variable_in_the_snapshot_file(language: &str, dir: &Path, db: &Path, id: &str) {
    let script = dir.join(format!("wait.{}", extension(language)));
    std::fs::write(&script, local_variable_script(language)).unwrap();
    let run = |args: &[&str]| ok(db, args);
    assert_eq!(run(&["run", script.to_str().unwrap()]), "waiting\n");
    let file = dir.join("v1.wsnap");
    ok(db, &["snapshot", id, "-o", file.to_str().unwrap()]);
    let decompressed = std::process::Command::new("zstd")
        .arg("-dc")
        .arg(&file)
        .output()
        .expect("zstd is installed (.ci/run installs it)")
        .stdout;
    let note = format!("special-{language}-local");
    let contains = |bytes: &[u8]| bytes.windows(note.len()).any(|w| w == note.as_bytes());
    assert!(
        contains(&decompressed),
        "{language}: {note} is in the snapshot"
    );
    assert!(
        !contains(&std::fs::read(built(language, language)).unwrap())
            && !contains(local_variable_script(language).as_bytes()),
        "{language}: {note} is made at run time"
    );
    assert_eq!(run(&["resume", id]), format!("{note}\n"));
}

#[test]
fn scripts_register_query_and_update_handlers() {
    for language in LANGUAGES {
        let (dir, db) = scratch();
        let deploy = demo_path(language, "deploy");
        deploy_is_queried_and_updated(&db, &deploy, "1", language);
        handlers_of_a_script(language, dir.path(), &db, "2");
    }
}

/// A script with a query that answers JSON, an update that throws past a
/// limit, and a query that tries to suspend.
fn handler_script(language: &str) -> &'static str {
    match language {
        "js" => {
            "let count = 0;\n\
             wasnap.query(\"counted\", () => ({ count, note: \"n\" }));\n\
             wasnap.update(\"bump\", (arg) => {\n\
             \x20 count += Number(arg);\n\
             \x20 if (count > 10) throw new Error(`too many: ${count}`);\n\
             \x20 return count;\n\
             });\n\
             wasnap.query(\"sneaky\", () => wasnap.yield(\"no\"));\n\
             wasnap.yield(\"waiting\");\n\
             print(`count ${count}`);\n"
        }
        "python" => {
            "import wasnap\n\
             count = 0\n\
             @wasnap.query\n\
             def counted(arg):\n\
             \x20   return {\"count\": count, \"note\": \"n\"}\n\
             def bump(arg):\n\
             \x20   global count\n\
             \x20   count += int(arg)\n\
             \x20   if count > 10:\n\
             \x20       raise ValueError(f\"too many: {count}\")\n\
             \x20   return count\n\
             wasnap.update(\"bump\", bump)\n\
             wasnap.query(\"sneaky\", lambda arg: wasnap.yield_(\"no\"))\n\
             wasnap.yield_(\"waiting\")\n\
             print(f\"count {count}\")\n"
        }
        _ => panic!("no runtime for {language}"),
    }
}

/// Runs [`handler_script`] as instance `id` of `db`: its handlers answer
/// by the names the script registered them under, a value that is not
/// text as JSON; an exception or a suspension in a handler fails it with
/// one line that says so, and nothing is committed; a name the script
/// did not register is refused with the names it did.
fn handlers_of_a_script(language: &str, dir: &Path, db: &Path, id: &str) {
    let script = dir.join(format!("count.{}", extension(language)));
    std::fs::write(&script, handler_script(language)).unwrap();
    let run = |args: &[&str]| ok(db, args);
    let refused = |args: &[&str]| fails(db, args);
    let versions = || ok(db, &["log", id, "--json"]).lines().count();
    assert_eq!(run(&["run", script.to_str().unwrap()]), "waiting\n");
    assert_eq!(
        run(&["query", id, "counted"]),
        "{\"count\":0,\"note\":\"n\"}\n",
        "{language}"
    );
    assert_eq!(
        run(&["update", id, "bump", "--arg", "4"]),
        "4\n",
        "{language}"
    );
    assert_eq!(versions(), 2, "{language}");
    let error = refused(&["update", id, "bump", "--arg", "20"]);
    assert!(
        error.contains("handler update_bump failed: ") && error.contains("too many: 24"),
        "{language}: {error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "{language}: {error}");
    let error = refused(&["query", id, "nothing"]);
    assert!(
        error.contains("the script has no query handler \"nothing\" (it has: counted, sneaky)"),
        "{language}: {error}"
    );
    let error = refused(&["query", id, "sneaky"]);
    assert!(error.contains("must not suspend"), "{language}: {error}");
    let error = refused(&["update", id, "counted"]);
    assert!(
        error.contains("no update handler \"counted\" (it has: bump)"),
        "{language}: {error}"
    );
    assert_eq!(versions(), 2, "{language}: a failed handler committed");
    assert_eq!(
        run(&["query", id, "counted"]),
        "{\"count\":4,\"note\":\"n\"}\n",
        "{language}"
    );
    assert_eq!(run(&["resume", id]), "count 4\n", "{language}");
}

/// The Python runtime through the command line, every step a new process:
/// the approval demo with its branch, every deploy scenario with its timers
/// (a plain resume of a sleeping instance is refused, `--now` fires the
/// timer), a local variable in a snapshot file, and the script's query and
/// update handlers. One database for all:
/// the interpreter (12 MB of Wasm) is instrumented and compiled once, by
/// the first run, and every later run of a script finds its artifact there.
#[test]
fn python_scripts_every_step_a_new_process() {
    let (dir, db) = scratch();
    approval_through_the_command_line("python", &db, "1");
    deploy_through_the_command_line("python", &db, 2);
    local_variable_in_the_snapshot_file("python", dir.path(), &db, "7");
    deploy_is_queried_and_updated(&db, &demo_path("python", "deploy"), "8", "python");
    handlers_of_a_script("python", dir.path(), &db, "9");
}
