//! The instrumenter on input it must refuse: random bytes, wasm-smith
//! modules with invalid function bodies or with one instruction tweaked to
//! break validation, and byte mutations of real guest modules.
//!
//! Whatever the input, the instrumenter must not panic; it must refuse an
//! invalid module with a one-line error, and whatever it outputs must
//! validate. Shared with the `robustness` cargo-fuzz target, which
//! includes this file by path and drives [`case`] with libFuzzer's bytes.
//!
//! `WASNAP_ROBUSTNESS_CASES=N` runs more cases (the default keeps a debug
//! `cargo test` short); `WASNAP_ROBUSTNESS_SEED=S` runs only case `S`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use arbitrary::{Result as ArbitraryResult, Unstructured};
use wasm_encoder::reencode::{Error, Reencode, utils};
use wasmparser::Operator;
use wasnap::instrument::{Options, instrument};

use crate::smith::{config, seed_bytes};

/// How an input is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Random bytes, usually after a valid header.
    Bytes,
    /// A wasm-smith module whose function bodies may be random bytes.
    InvalidBodies,
    /// A valid wasm-smith module with one instruction changed.
    Tweaked,
    /// A real module with a few bytes changed.
    Mutated,
}

pub const KINDS: [Kind; 4] = [
    Kind::Bytes,
    Kind::InvalidBodies,
    Kind::Tweaked,
    Kind::Mutated,
];

/// What happened to one input.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Valid, and instrumented into a valid module.
    Instrumented,
    /// Valid, and refused for a feature wasnap cannot snapshot.
    Refused,
    /// Invalid, and refused.
    Invalid,
}

/// Instruments `wasm` and checks the instrumenter's promises: no panic, no
/// output for an invalid module, a valid output for a valid one, and a
/// one-line error otherwise. `Err` describes a broken promise.
pub fn check(wasm: &[u8]) -> Result<Outcome, String> {
    let valid = wasmparser::Validator::new_with_features(features())
        .validate_all(wasm)
        .is_ok();
    let result = catch_unwind(AssertUnwindSafe(|| instrument(wasm, &options())))
        .map_err(|panic| format!("the instrumenter panicked: {}", panic_message(&panic)))?;
    match result {
        Ok(output) => {
            if !valid {
                return Err("an invalid module was instrumented without an error".into());
            }
            wasmparser::Validator::new_with_features(features())
                .validate_all(&output.wasm)
                .map_err(|e| format!("a valid module was instrumented into an invalid one: {e}"))?;
            Ok(Outcome::Instrumented)
        }
        Err(error) => {
            let message = format!("{error:#}");
            if message.contains('\n') || message.is_empty() {
                return Err(format!("the error is not one line: {message:?}"));
            }
            let says_invalid = message.contains("not valid WebAssembly")
                || message.contains("not a WebAssembly module")
                || message.contains("binary version");
            match (valid, says_invalid) {
                (true, true) => Err(format!("a valid module was called invalid: {message}")),
                (true, false) => Ok(Outcome::Refused),
                (false, _) => Ok(Outcome::Invalid),
            }
        }
    }
}

/// Suspending on every import reaches the most code.
fn options() -> Options {
    Options::default().suspending("*")
}

/// What the instrumenter's validator accepts: everything but components
/// (features it cannot snapshot are then refused by name).
fn features() -> wasmparser::WasmFeatures {
    wasmparser::WasmFeatures::all() - wasmparser::WasmFeatures::COMPONENT_MODEL
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".into()
    }
}

/// Makes an input of `kind` from `u`, mutating one of `bases` for
/// [`Kind::Mutated`]. `None` when `u` ran out before a module was made.
pub fn case(kind: Kind, u: &mut Unstructured<'_>, bases: &[Vec<u8>]) -> Option<Vec<u8>> {
    let made = match kind {
        Kind::Bytes => random_bytes(u),
        Kind::InvalidBodies => invalid_bodies(u),
        Kind::Tweaked => tweaked(u),
        Kind::Mutated => mutated(u, bases),
    };
    made.ok()
}

fn random_bytes(u: &mut Unstructured<'_>) -> ArbitraryResult<Vec<u8>> {
    let mut wasm = Vec::new();
    if u.ratio(7, 8)? {
        wasm.extend_from_slice(b"\0asm\x01\0\0\0");
    }
    let len = u.int_in_range(0..=256)?;
    wasm.extend_from_slice(u.bytes(len.min(u.len()))?);
    Ok(wasm)
}

fn invalid_bodies(u: &mut Unstructured<'_>) -> ArbitraryResult<Vec<u8>> {
    let mut config = config(2, u.ratio(1, 4)?);
    config.allow_invalid_funcs = true;
    Ok(wasm_smith::Module::new(config, u)?.to_bytes())
}

fn tweaked(u: &mut Unstructured<'_>) -> ArbitraryResult<Vec<u8>> {
    let valid = wasm_smith::Module::new(config(2, u.ratio(1, 4)?), u)?.to_bytes();
    let mut tweak = Tweak {
        target: u.int_in_range(0..=400)?,
        kind: u.choose_index(TWEAKS)?,
        delta: *u.choose(&[1, 2, 7, 1000, u32::MAX / 2, u32::MAX])?,
        seen: 0,
        done: false,
    };
    let mut module = wasm_encoder::Module::new();
    match tweak.parse_core_module(&mut module, wasmparser::Parser::new(0), &valid) {
        Ok(()) => Ok(module.finish()),
        // Reencoding refuses some tweaks itself (a block type that names
        // no type); the module as it was is still worth checking.
        Err(_) => Ok(valid),
    }
}

fn mutated(u: &mut Unstructured<'_>, bases: &[Vec<u8>]) -> ArbitraryResult<Vec<u8>> {
    let mut wasm = u.choose(bases)?.clone();
    for _ in 0..u.int_in_range(1..=4)? {
        if wasm.is_empty() {
            break;
        }
        let at = u.choose_index(wasm.len())?;
        match u.int_in_range(0..=5)? {
            0 => wasm[at] = u.arbitrary()?,
            1 => wasm[at] = *u.choose(&[0x00, 0x01, 0x7f, 0x80, 0xff])?,
            2 => wasm[at] ^= 1 << u.int_in_range(0..=7)?,
            3 => wasm.insert(at, u.arbitrary()?),
            4 => {
                wasm.remove(at);
            }
            _ => wasm.truncate(at),
        }
    }
    Ok(wasm)
}

/// How many tweaks [`Tweak`] knows.
const TWEAKS: usize = 6;

/// Reencodes a module with one instruction (the first, at or after
/// operator number `target`, that the tweak applies to) changed so that it
/// most likely breaks validation: an index out of range, or an operator
/// whose types do not fit.
struct Tweak {
    target: usize,
    kind: usize,
    delta: u32,
    seen: usize,
    done: bool,
}

impl Tweak {
    fn apply<'a>(&self, op: &Operator<'a>) -> Option<Operator<'a>> {
        let bump = |index: u32| index.wrapping_add(self.delta);
        Some(match (self.kind, op.clone()) {
            (0, Operator::Call { function_index }) => Operator::Call {
                function_index: bump(function_index),
            },
            (1, Operator::LocalGet { local_index }) => Operator::LocalGet {
                local_index: bump(local_index),
            },
            (1, Operator::LocalSet { local_index }) => Operator::LocalSet {
                local_index: bump(local_index),
            },
            (2, Operator::GlobalGet { global_index }) => Operator::GlobalGet {
                global_index: bump(global_index),
            },
            (3, Operator::Br { relative_depth }) => Operator::Br {
                relative_depth: bump(relative_depth),
            },
            (3, Operator::BrIf { relative_depth }) => Operator::BrIf {
                relative_depth: bump(relative_depth),
            },
            (4, Operator::CallIndirect { type_index, .. }) => Operator::CallIndirect {
                type_index: bump(type_index),
                table_index: 0,
            },
            (5, Operator::I32Add | Operator::I64Add) => Operator::Drop,
            (5, Operator::Call { .. }) => Operator::End,
            _ => return None,
        })
    }
}

impl Reencode for Tweak {
    type Error = std::convert::Infallible;

    fn instruction<'a>(
        &mut self,
        op: Operator<'a>,
    ) -> Result<wasm_encoder::Instruction<'a>, Error<Self::Error>> {
        self.seen += 1;
        let op = match self.apply(&op) {
            Some(tweaked) if !self.done && self.seen > self.target => {
                self.done = true;
                tweaked
            }
            _ => op,
        };
        utils::instruction(self, op)
    }
}

/// Modules to mutate: the WAT fixtures, and the guest modules that are
/// built (`guest-workflows/build`), under the project directory `root`.
pub fn bases(root: &str) -> Vec<Vec<u8>> {
    let mut bases = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(format!("{root}/tests/fixtures"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "wat"))
        .collect();
    paths.sort();
    for path in paths {
        bases.push(wat::parse_file(&path).expect("fixtures are valid WAT"));
    }
    for language in ["wat", "c", "rust", "zig", "assemblyscript"] {
        for demo in ["approval", "deploy", "greenlet"] {
            let path = format!("{root}/guest-workflows/out/{language}/{demo}.wasm");
            if let Ok(wasm) = std::fs::read(&path) {
                bases.push(wasm);
            }
        }
    }
    bases
}

/// The number of inputs of each kind the test makes by default.
const DEFAULT_CASES: u64 = 100;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// Names are the module's own and may hold line breaks: an error that
/// quotes one stays on one line (found by `cargo fuzz run robustness`).
#[test]
fn a_name_with_a_line_break_still_makes_a_one_line_error() {
    let wasm =
        wat::parse_str(r#"(module (func (export "__wasnap_x\nsecond line") (export "run")))"#)
            .unwrap();
    assert_eq!(check(&wasm), Ok(Outcome::Refused));
    let error = format!("{:#}", instrument(&wasm, &options()).unwrap_err());
    assert!(error.contains(r"__wasnap_x\nsecond line"), "{error}");
}

/// A module that exports a name of the functions wasnap's output exports,
/// without being instrumented by Binaryen, is refused: the output would
/// export that name twice (found by `cargo fuzz run robustness`).
#[test]
fn a_module_exporting_a_name_the_output_exports_is_refused() {
    for name in ["asyncify_stop_unwind", "asyncify_get_state"] {
        let wasm = wat::parse_str(format!(
            r#"(module (func (export "{name}")) (func (export "run")))"#
        ))
        .unwrap();
        assert_eq!(check(&wasm), Ok(Outcome::Refused));
        let error = format!("{:#}", instrument(&wasm, &options()).unwrap_err());
        assert!(error.contains(name), "{error}");
    }
}

#[test]
fn broken_modules_are_refused_in_one_line_and_never_panic() {
    let bases = bases(env!("CARGO_MANIFEST_DIR"));
    assert!(bases.len() > 10, "too few modules to mutate");
    let seeds: Vec<u64> = match env_u64("WASNAP_ROBUSTNESS_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("WASNAP_ROBUSTNESS_CASES").unwrap_or(DEFAULT_CASES)).collect(),
    };
    let mut counts = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for kind in KINDS {
        for &seed in &seeds {
            let bytes = seed_bytes(seed ^ ((kind as u64) << 56), 4096);
            let Some(wasm) = case(kind, &mut Unstructured::new(&bytes), &bases) else {
                continue;
            };
            match check(&wasm) {
                Ok(outcome) => *counts.entry((kind, outcome)).or_insert(0) += 1,
                Err(error) => failures.push(format!("{kind:?} seed {seed}: {error}")),
            }
        }
    }
    eprintln!("robustness: {counts:?}, {} failures", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Each kind must produce what it is meant to, or the test proves little.
    for kind in KINDS {
        assert!(
            counts.get(&(kind, Outcome::Invalid)).copied().unwrap_or(0) > 0,
            "{kind:?} made no invalid module"
        );
    }
    assert!(
        counts
            .iter()
            .any(|((_, outcome), _)| *outcome == Outcome::Instrumented),
        "nothing valid was instrumented"
    );
}
