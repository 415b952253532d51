//! Where a resumed activation leaves the whole copy: its *entry loops*.
//!
//! A rewind runs in a function's whole copy (see [`super::rewrite`]), and
//! so, without more, does the rest of every activation that was on the
//! stack. In an interpreter's bytecode loop, which makes hundreds of
//! suspending calls, every landing of the whole copy is a second way into
//! the loop's code, and the compiler keeps the loop's state in memory for
//! them: measured on QuickJS, the rest of a resumed `hot` loop ran at 1.58x
//! the original, against 1.05x for the running version; Lua at 1.26x.
//!
//! So a function whose loop is busy gets a third version, the *entered
//! copy*: the running version's code, with a way in to its entry loops and
//! a prologue that takes the function's locals from above `pos`. At the
//! head of an entry loop, the whole copy, when not rewinding (so: after
//! the rewind), stores its locals and the loop's number there and
//! tail-calls the entered copy, which goes straight to that loop.
//!
//! A way into a loop costs the code it leads into: the values coming in
//! from the prologue meet the normal ones before the loop, and measured on
//! SQLite, one way into its bytecode loop in the running version made it
//! 1.21x instead of 1.10x; ways into every loop of QuickJS's interpreter,
//! in the entered copy, 6.2x. Hence a third version, and few ways in:
//!
//! - an entry loop makes at least [`BUSY_LOOP_CALLS`] suspending calls
//!   itself (not in loops inside it), and is the loop of its loop nest
//!   that makes the most (QuickJS's bytecode loop lies in a loop that
//!   rarely turns; Lua's and SQLite's are a nest's outermost loop);
//! - it lies in no `if` and no block with parameters, and it and every
//!   block and loop around it start with an empty operand stack, in code
//!   that can be reached (not after a branch), so that the way in needs no
//!   value but the locals and makes nothing run that could not.
//!
//! Each construct on the way (the function's body, then every block and
//! loop around the entry loop) starts with a dispatch over the entry loops
//! it holds. In the entered copy:
//!
//! ```wat
//! ;; running version             ;; entered copy (the loop is entry loop 1)
//! block $out                     ...take the locals and $entry from above pos...
//!   ...                          block $out
//!   loop $again                    block $before
//!     ...                            block $clear
//!     call $f  ;; can suspend          (if (local.get $entry)      ;; cold
//!     br_if $again                       (then (br_table $clear 0
//!   end                                    (i32.sub (local.get $entry) (i32.const 1)))))
//! end                                  ...
//!                                      br $before
//!                                    end
//!                                    (local.set $entry (i32.const 0))
//!                                  end
//!                                  loop $again
//!                                    ...
//! ```
//!
//! The way in to an entry loop clears `$entry`, so that a dispatch in a
//! loop around it, passed again, goes on as if not entering.
//!
//! In the whole copy, each entry loop begins:
//!
//! ```wat
//! loop $again
//!   (if (i32.eqz (global.get $state))                     ;; cold
//!     (then (local.set $entry (i32.const 1)) (br $leave)))
//!   ...
//! ```
//!
//! where `$leave`, after the body, stores every local above `pos` and
//! tail-calls the entered copy with the function's arguments. The whole
//! copy only runs with the state normal after a rewind, so the first entry
//! loop head it reaches leaves. The entered copy has the running version's
//! call sites and frames: a suspension in it resumes in the whole copy like
//! one in the running version.

use std::collections::HashMap;
use std::ops::Range;

use anyhow::Result;
use wasmparser::{FuncValidator, Operator, ValType, ValidatorResources};

use super::layout::byte_size;

/// How many suspending calls a loop must make itself to be an entry loop,
/// unless [`Options::with_busy_loop_calls`](super::Options::with_busy_loop_calls)
/// says otherwise.
/// A whole copy costs about what its landings cost, so one with a few in
/// a loop runs about as fast as the running version (the compute, Rust
/// and JSON guests: 1.00-1.02x after a resume), and an entered copy would
/// be code for nothing; an interpreter's bytecode loop makes hundreds
/// (QuickJS 699, SQLite 351, Lua 137).
pub(crate) const BUSY_LOOP_CALLS: usize = 16;

/// The operator index standing for the function's body as a region.
pub(crate) const FUNCTION_BODY: usize = usize::MAX;

/// The entry loops of one function, and the ways into them.
#[derive(Default)]
pub(crate) struct EntryLoops {
    /// The number (from 1) of each entry loop, by its operator index.
    pub numbers: HashMap<usize, u32>,
    /// For each construct on the way to an entry loop (by the operator
    /// index of its `block` or `loop`, or [`FUNCTION_BODY`]): the constructs directly
    /// in it that are or hold entry loops, in order, each with the numbers
    /// of the entry loops it holds.
    pub ways_in: HashMap<usize, Vec<(usize, Range<u32>)>>,
    /// Where each local is kept while leaving the whole copy (its offset
    /// above `pos`), then the entry loop's number, at `size`.
    pub offsets: Vec<u32>,
    /// The bytes the locals take, where the number is kept.
    pub size: u32,
}

impl EntryLoops {
    /// Whether the function has no entry loop.
    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }

    /// The room leaving needs above `pos`: the locals and the number.
    pub fn room(&self) -> u32 {
        if self.is_empty() { 0 } else { self.size + 4 }
    }
}

/// What an operator is to [`entry_loops`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A call that can suspend.
    SuspendingCall,
    /// A construct holding such a call.
    Suspendable,
    /// Anything else.
    Other,
}

/// A loop that could be an entry loop.
struct Candidate {
    /// Its operator index.
    index: usize,
    /// The constructs around it, outermost first.
    path: Vec<usize>,
    /// The outermost loop on its path, or itself: its loop nest.
    nest: usize,
}

/// Finds a function's entry loops, those making at least `busy` suspending
/// calls. `kind` says what each operator is, `has_params` which block
/// types take parameters; `validator` has read the function's locals. A
/// function with a local that has no bytes (a reference) has none.
pub(crate) fn entry_loops(
    ops: &[(Operator<'_>, usize)],
    busy: usize,
    kind: impl Fn(usize) -> Kind,
    has_params: impl Fn(wasmparser::BlockType) -> bool,
    local_types: &[ValType],
    mut validator: FuncValidator<ValidatorResources>,
) -> Result<EntryLoops> {
    let mut found = EntryLoops::default();
    if local_types.iter().any(|ty| ty.is_reference_type()) {
        return Ok(found);
    }
    // The constructs open at each operator: their operator index and
    // whether an entry loop may lie in them.
    let mut open: Vec<(usize, bool)> = vec![(FUNCTION_BODY, true)];
    let mut open_loops: Vec<usize> = Vec::new();
    let mut candidates = Vec::new();
    // Suspending calls directly in each loop (in no loop inside it).
    let mut calls_in: HashMap<usize, usize> = HashMap::new();
    for (i, (op, offset)) in ops.iter().enumerate() {
        // Code after a branch: the validator lets it pop what is not
        // there, and a way in would make it run.
        let reachable = validator
            .get_control_frame(0)
            .is_some_and(|frame| !frame.unreachable);
        let empty_stack = reachable && validator.operand_stack_height() == 0;
        let way_open = open.last().is_some_and(|&(_, may)| may);
        if kind(i) == Kind::SuspendingCall
            && let Some(&innermost) = open_loops.last()
        {
            *calls_in.entry(innermost).or_default() += 1;
        }
        match op {
            Operator::Block { blockty } | Operator::Loop { blockty } => {
                let way_on = way_open && empty_stack && !has_params(*blockty);
                if let Operator::Loop { .. } = op {
                    if way_on && kind(i) == Kind::Suspendable {
                        candidates.push(Candidate {
                            index: i,
                            path: open.iter().map(|&(construct, _)| construct).collect(),
                            nest: open_loops.first().copied().unwrap_or(i),
                        });
                    }
                    open_loops.push(i);
                }
                open.push((i, way_on));
            }
            Operator::If { .. } | Operator::TryTable { .. } | Operator::Try { .. } => {
                open.push((i, false));
            }
            Operator::End => {
                if let Some((construct, _)) = open.pop()
                    && open_loops.last() == Some(&construct)
                {
                    open_loops.pop();
                }
            }
            _ => {}
        }
        validator.op(*offset, op)?;
    }
    // One entry loop per loop nest: the one making the most suspending
    // calls itself (an interpreter's bytecode loop, rather than a loop
    // around it or one in an instruction's code), the outermost of equals.
    let mut chosen: HashMap<usize, (usize, usize)> = HashMap::new();
    for candidate in &candidates {
        let calls = calls_in.get(&candidate.index).copied().unwrap_or(0);
        let best = chosen
            .entry(candidate.nest)
            .or_insert((candidate.index, calls));
        if calls > best.1 {
            *best = (candidate.index, calls);
        }
    }
    for candidate in candidates {
        if chosen[&candidate.nest].0 != candidate.index {
            continue;
        }
        if chosen[&candidate.nest].1 < busy {
            continue;
        }
        let number = found.numbers.len() as u32 + 1;
        found.numbers.insert(candidate.index, number);
        let mut inner = candidate.index;
        for &construct in candidate.path.iter().rev() {
            add_way_in(&mut found.ways_in, construct, inner, number);
            inner = construct;
        }
    }
    let mut size = 0;
    for &ty in local_types {
        found.offsets.push(size);
        size += byte_size(ty);
    }
    found.size = size;
    Ok(found)
}

/// Adds entry loop `number`, in construct `inner`, to the ways into
/// `construct`. Loops are found in order, so a construct's loops are one
/// range.
fn add_way_in(
    ways_in: &mut HashMap<usize, Vec<(usize, Range<u32>)>>,
    construct: usize,
    inner: usize,
    number: u32,
) {
    let items = ways_in.entry(construct).or_default();
    match items.last_mut() {
        Some((item, numbers)) if *item == inner => numbers.end = number + 1,
        _ => items.push((inner, number..number + 1)),
    }
}
