//! The instrumenter: WAT fixtures through the differential harness, and
//! the errors for what it refuses.

use wasnap::instrument::{Options, instrument};

use crate::harness::differential;

fn options() -> Options {
    Options::default().suspending("env.sleep")
}

/// Runs a fixture from `tests/fixtures` through the harness and returns
/// the results of its `run` export, checking it really suspended.
fn fixture(name: &str) -> Vec<u128> {
    let wasm = fixture_module(name);
    let report = differential(&wasm, &options())
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
        .expect("fixtures import functions only");
    assert!(report.suspensions > 0, "{name} never suspended");
    assert_eq!(report.original.outcomes, report.suspended.outcomes);
    report.suspended.outcomes[0].clone().expect("run returns")
}

/// The module of a fixture in `tests/fixtures`.
fn fixture_module(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}.wat", env!("CARGO_MANIFEST_DIR"));
    wat::parse_file(&path).unwrap()
}

#[test]
fn only_listed_functions_are_instrumented() {
    let path = format!(
        "{}/tests/fixtures/only_functions.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    let wasm = wat::parse_file(&path).unwrap();
    let instrumented_names = |options: &Options| -> Vec<String> {
        let metadata = instrument(&wasm, options).unwrap().metadata;
        let names = metadata
            .frames
            .keys()
            .map(|f| metadata.function_names[f].clone());
        names.collect()
    };
    assert_eq!(
        instrumented_names(&options()),
        ["on_progress", "size_of", "run"]
    );
    let narrowed = options().only_functions("run").only_functions("on_*");
    assert_eq!(instrumented_names(&narrowed), ["on_progress", "run"]);

    let report = differential(&wasm, &narrowed).unwrap().unwrap();
    assert_eq!(report.suspensions, 1);
    assert_eq!(report.suspended.outcomes, [Ok(vec![60])]);
}

#[test]
fn values_below_nested_blocks_survive() {
    assert_eq!(fixture("nested_blocks"), [1126]);
}

#[test]
fn loops_suspend_on_every_iteration() {
    assert_eq!(fixture("loop_accumulate"), [145]);
}

#[test]
fn if_else_arms_resume_in_the_right_arm() {
    assert_eq!(fixture("if_else"), [1072]);
}

#[test]
fn branches_leave_suspending_regions() {
    assert_eq!(fixture("branches"), [321]);
}

#[test]
fn block_parameters_and_multi_value() {
    assert_eq!(fixture("block_params"), [1127]);
}

#[test]
fn indirect_calls_through_tables() {
    assert_eq!(fixture("call_indirect"), [40]);
}

#[test]
fn recursion_keeps_every_frame() {
    assert_eq!(fixture("recursion"), [90]);
}

#[test]
fn wide_locals_and_nan_bits_survive() {
    assert_eq!(fixture("wide_locals"), [1]);
}

#[test]
fn globals_and_every_memory_survive() {
    assert_eq!(fixture("globals_memory"), [19]);
}

#[test]
fn reference_results_after_a_final_branch() {
    assert_eq!(fixture("reference_result_after_return"), [1]);
}

#[test]
fn functions_that_cannot_suspend_are_left_alone() {
    let wasm = wat::parse_file(format!(
        "{}/tests/fixtures/call_indirect.wat",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let output = instrument(&wasm, &options()).unwrap();
    let frames: Vec<u32> = output.metadata.frames.keys().copied().collect();
    // 0 is the import; $double (1) and $wide_id (3) cannot suspend.
    assert_eq!(frames, [2, 4]);
}

#[test]
fn indirect_calls_are_narrowed_per_table() {
    let path = format!(
        "{}/tests/fixtures/two_tables.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    let wasm = wat::parse_file(&path).unwrap();
    let metadata = instrument(&wasm, &options()).unwrap().metadata;
    let instrumented: Vec<&str> = metadata
        .frames
        .keys()
        .map(|f| metadata.function_names[f].as_str())
        .collect();
    assert_eq!(instrumented, ["wait", "notify", "open", "run"]);
    assert_eq!(fixture("two_tables"), [53]);
}

#[test]
fn call_sites_saving_the_same_values_share_one_unwind_path() {
    // The first three calls save `n` and `acc`; the last also `x`.
    let wasm = wat::parse_str(
        r#"(module
          (import "env" "sleep" (func $sleep (param i32) (result i32)))
          (func (export "run") (result i32)
            (local $n i32) (local $acc i32) (local $x i32)
            (local.set $n (i32.const 5))
            (local.set $x (call $sleep (i32.const 1)))
            (local.set $acc (i32.add (local.get $acc) (local.get $x)))
            (local.set $x (call $sleep (i32.const 2)))
            (local.set $acc (i32.add (local.get $acc) (local.get $x)))
            (local.set $x (call $sleep (i32.const 3)))
            (local.set $acc (i32.add (local.get $acc) (local.get $x)))
            (local.set $acc (i32.add (local.get $acc) (call $sleep (local.get $x))))
            (i32.add (i32.mul (local.get $acc) (local.get $n)) (local.get $x))))"#,
    )
    .unwrap();
    let output = instrument(&wasm, &options()).unwrap();
    assert_eq!(output.metadata.frames[&1].call_sites.len(), 4);
    // Functions: the import, `run`, then the runtime's (`grow_stack`,
    // `finish_frame`, `reserve` and the five `asyncify_*` exports), then
    // the whole copy of `run`.
    let finish_frame = 3;
    let bodies = code_bodies(&output.wasm);
    assert_eq!(bodies.len(), 10);
    for (name, body) in [("running", &bodies[0]), ("whole", &bodies[9])] {
        let frames_finished = body
            .iter()
            .filter(|op| {
                matches!(op, wasmparser::Operator::Call { function_index } if *function_index == finish_frame)
            })
            .count();
        // One shared path for the first three sites, one of its own for
        // the last.
        assert_eq!(frames_finished, 2, "{name} version");
    }
    let report = differential(&wasm, &options()).unwrap().unwrap();
    assert_eq!(report.suspensions, 4);
    assert_eq!(report.original.outcomes, report.suspended.outcomes);
}

#[test]
fn the_running_version_is_the_original_code_with_a_check_after_each_call() {
    // Both calls keep a value under their operands (`acc`), in the block
    // they are made in.
    let wasm = wat::parse_str(
        r#"(module
          (import "env" "sleep" (func $sleep (param i32) (result i32)))
          (func (export "run") (result i32)
            (local $n i32) (local $acc i32)
            (local.set $n (i32.const 4))
            (loop $again
              (local.set $acc (i32.add (local.get $acc) (call $sleep (local.get $n))))
              (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
            (i32.mul (local.get $acc) (call $sleep (i32.const 7)))))"#,
    )
    .unwrap();
    let output = instrument(&wasm, &options()).unwrap();
    let original = &code_bodies(&wasm)[0];
    let running = &code_bodies(&output.wasm)[0];

    // Every original operator is there, in order, branch depths and all.
    let mut rest = running.iter();
    for op in original {
        assert!(
            rest.any(|candidate| candidate == op),
            "{op:?} is missing or out of order in {running:?}"
        );
    }
    // What opens a frame: the original's loop, the body's block, the
    // entry's check for a rewind and one check per call; no block around
    // the code before a call, as the whole copy has.
    let frames = |ops: &[wasmparser::Operator]| {
        ops.iter()
            .filter(|op| {
                matches!(
                    op,
                    wasmparser::Operator::Block { .. }
                        | wasmparser::Operator::Loop { .. }
                        | wasmparser::Operator::If { .. }
                )
            })
            .count()
    };
    assert_eq!(frames(original), 1);
    assert_eq!(frames(running), 1 + 1 + 1 + 2);

    let report = differential(&wasm, &options()).unwrap().unwrap();
    assert_eq!(report.suspensions, 5);
    assert_eq!(report.original.outcomes, report.suspended.outcomes);
}

/// The operators of each function body in the code section of `wasm`.
fn code_bodies(wasm: &[u8]) -> Vec<Vec<wasmparser::Operator<'_>>> {
    wasmparser::Parser::new(0)
        .parse_all(wasm)
        .filter_map(|payload| match payload.unwrap() {
            wasmparser::Payload::CodeSectionEntry(body) => Some(
                body.get_operators_reader()
                    .unwrap()
                    .into_iter()
                    .map(Result::unwrap)
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn output_is_deterministic() {
    let wasm = wat::parse_file(format!(
        "{}/tests/fixtures/branches.wat",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let first = instrument(&wasm, &options()).unwrap().wasm;
    let second = instrument(&wasm, &options()).unwrap().wasm;
    assert_eq!(first, second);
}

fn refusal(wat: &str) -> String {
    let wasm = wat::parse_str(wat).unwrap();
    format!("{:#}", instrument(&wasm, &options()).unwrap_err())
}

#[test]
fn refuses_shared_memories() {
    let message = refusal("(module (memory 1 1 shared))");
    assert!(message.contains("threads"), "{message}");
    assert!(message.contains("memory 0 is shared"), "{message}");
}

#[test]
fn refuses_exception_handling_naming_the_function() {
    let message = refusal(r#"(module (tag $e) (func $thrower (throw $e)))"#);
    assert!(message.contains("exception handling"), "{message}");
}

#[test]
fn refuses_exception_handling_in_code() {
    let message = refusal(r#"(module (func $f (block $b (try_table (catch_all $b) nop))))"#);
    assert!(message.contains("exception handling"), "{message}");
    assert!(message.contains("function 0 (f)"), "{message}");
}

#[test]
fn refuses_gc_types() {
    let message = refusal("(module (type (struct (field i32))))");
    assert!(message.contains("GC types"), "{message}");
}

#[test]
fn refuses_a_suspending_tail_call() {
    let message = refusal(
        r#"(module
             (import "env" "sleep" (func $sleep (param i32) (result i32)))
             (func $f (param i32) (result i32) local.get 0 return_call $sleep))"#,
    );
    assert!(message.contains("return_call"), "{message}");
    assert!(message.contains("function 1 (f)"), "{message}");
}

#[test]
fn refuses_a_reference_passed_to_a_suspending_import() {
    // The import is called again on resume with the same arguments, and a
    // funcref has no bytes to save.
    let message = refusal(
        r#"(module
             (import "env" "sleep" (func $sleep (param funcref) (result i32)))
             (func $f (result i32) ref.null func call $sleep))"#,
    );
    assert!(message.contains("reference type funcref"), "{message}");
    assert!(message.contains("function 1 (f)"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn refuses_components_and_garbage() {
    let component = [0, b'a', b's', b'm', 0x0d, 0, 1, 0];
    let message = format!("{:#}", instrument(&component, &options()).unwrap_err());
    assert!(message.contains("component"), "{message}");
    let message = format!("{:#}", instrument(b"hello", &options()).unwrap_err());
    assert!(message.contains("not a WebAssembly module"), "{message}");
}

#[test]
fn a_dead_call_in_a_block_leaves_the_next_call_its_landing() {
    assert_eq!(fixture("dead_call_in_block"), [128]);
}

#[test]
fn every_local_comes_through_the_step_into_the_entered_copy() {
    assert_eq!(fixture("loops_after_resume"), [1]);
}

#[test]
fn a_resumed_busy_loop_goes_on_in_the_entered_copy_at_its_next_head() {
    let wasm = fixture_module("leave_at_loop_head");
    let report = differential(&wasm, &options()).unwrap().unwrap();
    assert_eq!(report.suspensions, 16);
    assert_eq!(report.suspended.outcomes.len(), 1);
    assert!(report.suspended.outcomes[0].is_err());
    // Function 1 is `run` as it runs; after the runtime's eight
    // functions come its whole copy (10), which the rewind went through,
    // and its entered copy (11), which the whole copy went on in at the
    // loop's next head.
    assert_eq!(report.trapped_in, [11]);

    // In an `if`, the loop has no way in from the entered copy's entry,
    // so the rest of the activation stays in the whole copy.
    let sixteen_calls = (0..15).fold("(call $sleep (i32.const 1))".to_string(), |sum, _| {
        format!("(i32.add {sum} (call $sleep (i32.const 1)))")
    });
    let in_an_if = wat::parse_str(
        r#"(module
          (import "env" "sleep" (func $sleep (param i32) (result i32)))
          (func (export "run") (param $go i32) (result i32)
            (local $i i32)
            (if (i32.eqz (local.get $go))
              (then
                (loop $again
                  (if (i32.eqz (local.get $i))
                    (then (drop SIXTEEN_CALLS)))
                  (if (i32.eq (local.get $i) (i32.const 3))
                    (then unreachable))
                  (local.set $i (i32.add (local.get $i) (i32.const 1)))
                  (br $again))))
            (local.get $i)))"#
            .replace("SIXTEEN_CALLS", &sixteen_calls),
    )
    .unwrap();
    let report = differential(&in_an_if, &options()).unwrap().unwrap();
    assert_eq!(report.suspensions, 16);
    assert_eq!(report.trapped_in, [10]);
}

#[test]
fn a_busy_loop_after_a_branch_gets_no_way_in() {
    // The loop follows a branch, so nothing reaches it (nor its call), and
    // the code after it pops an f64 that is not there, which only
    // unreachable code may. A way in to it would make that code run (found
    // by wasm-smith, seed 960).
    let wasm = wat::parse_str(
        r#"(module
          (import "env" "sleep" (func $sleep (param i32) (result i32)))
          (global $g (mut f64) (f64.const 0))
          (func (export "run") (result i32)
            (block $out
              (drop (call $sleep (i32.const 1)))
              (br $out)
              (loop $dead (result i32)
                (block $skip
                  (br $skip)
                  (drop (call $sleep (i32.const 2))))
                (i32.const 5))
              drop
              f64.add
              global.set $g)
            (i32.const 7)))"#,
    )
    .unwrap();
    let every_loop = options().with_busy_loop_calls(1);
    let report = differential(&wasm, &every_loop).unwrap().unwrap();
    assert_eq!(report.suspensions, 1);
    assert_eq!(report.suspended.outcomes, [Ok(vec![7])]);
}
