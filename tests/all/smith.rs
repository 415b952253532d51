//! Random modules from wasm-smith, and the verdict of the differential
//! harness on them. Shared by the `fuzz` test (fixed seeds) and the
//! `differential` cargo-fuzz target (libFuzzer's inputs), which includes
//! this file and `harness.rs` by path so both check exactly the same thing.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use arbitrary::Unstructured;
use wasm_encoder::reencode::Reencode;
use wasnap::instrument::{self, Options};

use crate::harness::differential;

/// The function imports generated modules may use: a spread of shapes
/// (no results, several results, every storable type), all suspending.
const AVAILABLE_IMPORTS: &str = r#"(module
  (import "env" "sleep" (func (param i32) (result i32)))
  (import "env" "tick" (func))
  (import "env" "mix" (func (param i64 f32 f64) (result i64 f64)))
  (import "env" "pair" (func (param i32 i32) (result i32 i32)))
  (import "env" "wide" (func (param v128 i64) (result v128)))
  (import "env" "note" (func (param f32)))
)"#;

/// Fuel each generated module gets, so that its loops and recursion end
/// (the fuel is a global, decremented at each function entry and loop head,
/// trapping at zero).
const FUEL: u32 = 200;

/// The wasm-smith configuration: the features wasnap supports, everything
/// exported (so every function gets called), deterministic floats, and
/// function imports only; at most `max_memories` memories.
pub fn config(max_memories: usize, reference_types: bool) -> wasm_smith::Config {
    wasm_smith::Config {
        available_imports: Some(wat::parse_str(AVAILABLE_IMPORTS).expect("valid imports")),
        max_imports: 6,
        export_everything: true,
        allow_start_export: false,
        canonicalize_nans: true,
        multi_value_enabled: true,
        bulk_memory_enabled: true,
        sign_extension_ops_enabled: true,
        saturating_float_to_int_enabled: true,
        reference_types_enabled: reference_types,
        simd_enabled: true,
        // Relaxed SIMD may differ between engines; the harness compares
        // runs in one engine, but Binaryen 108 does not parse it.
        relaxed_simd_enabled: false,
        max_memories,
        max_tables: 2,
        exceptions_enabled: false,
        gc_enabled: false,
        custom_descriptors_enabled: false,
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        tail_call_enabled: false,
        memory64_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        // Keep memories small: the harness copies all of them at every
        // suspension.
        max_memory32_bytes: 4 * 65536,
        // A trap ends a run: the exports after it are never called. Avoid
        // most of them, so that runs go deep enough to suspend.
        disallow_traps: true,
        max_funcs: 12,
        max_instructions: 120,
        ..wasm_smith::Config::default()
    }
}

/// Generates a module from `u`, with fuel so that it terminates.
pub fn generate(u: &mut Unstructured<'_>, max_memories: usize) -> arbitrary::Result<Vec<u8>> {
    // Reference types in one module of four: wasm-smith then declares
    // externrefs in most modules, which wasnap's wasmtime (built without
    // its `gc` feature) cannot run at all.
    let reference_types = u.ratio(1, 4)?;
    let mut module = wasm_smith::Module::new(config(max_memories, reference_types), u)?;
    module
        .ensure_termination(FUEL)
        .expect("wasm-smith generated the bodies itself");
    Ok(without_rec_groups(&module.to_bytes()))
}

/// wasm-smith copies the types of [`AVAILABLE_IMPORTS`] as explicit
/// one-type `rec` groups, which only GC engines accept; without GC a lone
/// final type means the same.
fn without_rec_groups(wasm: &[u8]) -> Vec<u8> {
    struct Plain;
    impl Reencode for Plain {
        type Error = std::convert::Infallible;
        fn parse_recursive_type_group(
            &mut self,
            encoder: wasm_encoder::CoreTypeEncoder,
            group: wasmparser::RecGroup,
        ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
            let lone = match group.types().collect::<Vec<_>>()[..] {
                [ty] if ty.is_final && ty.supertype_idx.is_none() => Some(ty.clone()),
                _ => None,
            };
            match lone {
                Some(ty) => {
                    encoder.subtype(&self.sub_type(ty)?);
                    Ok(())
                }
                None => {
                    wasm_encoder::reencode::utils::parse_recursive_type_group(self, encoder, group)
                }
            }
        }
    }
    let mut module = wasm_encoder::Module::new();
    Plain
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .expect("wasm-smith's output is valid");
    module.finish()
}

/// Bytes for seed `seed`: a splitmix64 stream, so that a seed names the
/// same module on every machine and every run.
pub fn seed_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        bytes.extend_from_slice(&z.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The module for seed `seed`, with at most `max_memories` memories.
pub fn module_for_seed(seed: u64, max_memories: usize) -> Vec<u8> {
    let bytes = seed_bytes(seed, 8192);
    generate(&mut Unstructured::new(&bytes), max_memories)
        .expect("wasm-smith never runs out of choices")
}

/// Every import is suspending, and every loop that can be an entry loop
/// is one, so that resumed code goes through entered copies as often as
/// the modules allow.
pub fn options() -> Options {
    Options::default().suspending("*").with_busy_loop_calls(1)
}

/// What happened to one module.
#[derive(Debug)]
pub enum Verdict {
    /// All three runs agreed; the module suspended this many times, and
    /// was rewound in place (its references not copyable) or not.
    Passed {
        suspensions: usize,
        rewound_in_place: bool,
        /// Whether the output has an entered copy of some function.
        entered_copies: bool,
    },
    /// The instrumenter refused it for an acceptable cause.
    Refused(&'static str),
    /// The module imports something other than functions.
    Skipped,
    /// wasnap's wasmtime cannot run it: externref needs wasmtime's `gc`
    /// feature, which wasnap does not build.
    EngineRefuses,
}

/// Why the instrumenter may refuse a wasm-smith module: values that cannot
/// be written to the stack memory. Any other refusal is a bug.
fn acceptable_refusal(message: &str) -> Option<&'static str> {
    if message.contains("after a suspending call") && message.contains("cannot be saved") {
        Some("reference-typed local live across a suspension")
    } else if message.contains("on the operand stack across a suspending call")
        && message.contains("cannot be saved")
    {
        Some("reference-typed operand live across a suspension")
    } else if message.contains("must be made again on resume")
        && message.contains("cannot be saved")
    {
        // A suspending import is called again on resume with the same
        // arguments, so they are saved too.
        Some("reference-typed argument of a call made again on resume")
    } else {
        None
    }
}

/// Instruments `wasm` with every import suspending and runs it through
/// the differential harness. `Err` is a bug: an unexpected refusal, or a
/// difference in behaviour.
pub fn check(wasm: &[u8]) -> Result<Verdict> {
    if let Err(error) = wasmtime::Module::validate(&crate::harness::engine(), wasm) {
        if format!("{error:#}").contains("gc types are disallowed") {
            return Ok(Verdict::EngineRefuses);
        }
        bail!("wasmtime refuses a generated module: {error:#}");
    }
    let options = options();
    let instrumented = match instrument::instrument(wasm, &options) {
        Ok(instrumented) => instrumented,
        Err(error) => {
            let message = format!("{error:#}");
            return match acceptable_refusal(&message) {
                Some(cause) => Ok(Verdict::Refused(cause)),
                None => bail!("unexpected refusal: {message}"),
            };
        }
    };
    // Each instrumented function has a whole copy; the runtime adds eight
    // functions; any more are entered copies.
    let copies_and_runtime = instrumented.metadata.frames.len() + 8;
    let entered_copies =
        defined_functions(&instrumented.wasm) > defined_functions(wasm) + copies_and_runtime;
    match differential(wasm, &options).context("differential run")? {
        Some(report) => Ok(Verdict::Passed {
            suspensions: report.suspensions,
            rewound_in_place: report.rewound_in_place,
            entered_copies,
        }),
        None => Ok(Verdict::Skipped),
    }
}

/// How many functions a module defines.
fn defined_functions(wasm: &[u8]) -> usize {
    wasmparser::Parser::new(0)
        .parse_all(wasm)
        .filter(|payload| matches!(payload, Ok(wasmparser::Payload::CodeSectionEntry(_))))
        .count()
}

/// Counts of verdicts over a run.
#[derive(Default, Debug)]
pub struct Summary {
    pub passed: usize,
    pub suspensions: usize,
    pub suspended_modules: usize,
    pub rewound_in_place: usize,
    /// Modules that suspended and have an entered copy.
    pub suspended_with_entered_copies: usize,
    pub skipped: usize,
    pub engine_refuses: usize,
    pub refused: BTreeMap<&'static str, usize>,
}

impl Summary {
    pub fn add(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Passed {
                suspensions,
                rewound_in_place,
                entered_copies,
            } => {
                self.passed += 1;
                self.suspended_with_entered_copies +=
                    usize::from(*suspensions > 0 && *entered_copies);
                self.suspensions += suspensions;
                self.suspended_modules += usize::from(*suspensions > 0);
                self.rewound_in_place += usize::from(*suspensions > 0 && *rewound_in_place);
            }
            Verdict::Refused(cause) => *self.refused.entry(cause).or_default() += 1,
            Verdict::Skipped => self.skipped += 1,
            Verdict::EngineRefuses => self.engine_refuses += 1,
        }
    }
}
