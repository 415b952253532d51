//! The Python runtime for wasnap workflows: RustPython, built for
//! `wasm32-wasip1`, running a script the user gives at run time, with a
//! native `wasnap` module.
//!
//! ```text
//! python.wasm SCRIPT.py [ARGS...]              reads SCRIPT.py through WASI
//!                                              (it needs a granted directory)
//! python.wasm --source NAME SOURCE [ARGS...]   runs SOURCE, named NAME in
//!                                              tracebacks
//! ```
//!
//! `wasnap run approval.py` uses the second form: the script's text is a
//! WASI argument of the instance's first run. Either way the script is
//! read before the first suspension; from then on it lives, compiled, in
//! the interpreter's heap, which every snapshot holds.
//!
//! The interpreter is sandboxed: no host environment (no `os`, no files),
//! no threads, and no standard library beyond the modules written in Rust
//! that RustPython always has (`sys`, `math`, `time`, `itertools`, ...)
//! and the frozen modules it needs to start; `sys.stdin` and `sys.stdout`
//! are the process's, so `print` and `input()` work as in a terminal.

use std::process::ExitCode;

use rustpython_vm::{Interpreter, Settings};

mod wasnap;

const USAGE: &str =
    "usage: python.wasm SCRIPT.py [ARGS...]\n       python.wasm --source NAME SOURCE [ARGS...]";

/// The script to run: its name (in tracebacks and `sys.argv[0]`), its
/// text, and its own arguments.
struct Script {
    name: String,
    source: String,
    args: Vec<String>,
}

impl Script {
    fn from_args(mut args: impl Iterator<Item = String>) -> Result<Script, String> {
        let first = args.next().ok_or(USAGE)?;
        if first == "--source" {
            let (Some(name), Some(source)) = (args.next(), args.next()) else {
                return Err(USAGE.into());
            };
            return Ok(Script {
                name,
                source,
                args: args.collect(),
            });
        }
        if first.starts_with('-') {
            return Err(USAGE.into());
        }
        let source = std::fs::read_to_string(&first)
            .map_err(|e| format!("{first}: cannot read the script: {e}"))?;
        Ok(Script {
            name: first,
            source,
            args: args.collect(),
        })
    }
}

fn main() -> ExitCode {
    let script = match Script::from_args(std::env::args().skip(1)) {
        Ok(script) => script,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut settings = Settings::default();
    settings.argv = std::iter::once(script.name.clone())
        .chain(script.args)
        .collect();
    let builder = Interpreter::builder(settings);
    let module = wasnap::module_def(&builder.ctx);
    let interpreter = builder.add_native_module(module).build();
    let status = interpreter.run(|vm| {
        wasnap::enter(vm, || {
            let scope = vm.new_scope_with_main()?;
            vm.run_string(scope, &script.source, script.name.clone())
                .map(drop)
        })
    });
    ExitCode::from(status.min(255) as u8)
}
