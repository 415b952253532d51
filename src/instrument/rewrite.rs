//! Phase 2: rewrite one function body so that it can unwind and rewind.
//!
//! Wasm's operand stack cannot be read from the host, and values below a
//! block boundary cannot be reached from inside the block. So inside every
//! *suspendable* construct (one that contains, at any depth, a call that can
//! suspend) the operand stack between items is kept in locals: the value at
//! height `h` of type `T` lives in a "slot" local dedicated to `(h, T)`.
//! Runs of ordinary instructions between suspendable items become
//! *segments* that load the slots they consume, run unchanged on the real
//! stack, and store what they leave. The compiler turns these locals back
//! into plain values: the slots cost nothing by themselves.
//!
//! **Unwinding.** After each suspending call, if the state says unwinding,
//! the call site stores what is live there into a frame and returns. What
//! is live is the original locals live after the call (found by
//! [`super::liveness`]) and the operand slots below the call's operands,
//! and, to make the same call again on the way back, the operands the call
//! needs again (see [`layout`]). Every value has a fixed place in the
//! function's frames ([`layout`]):
//!
//! ```wat
//! ;; before                      ;; after (call index 0)
//! local.get 0                    local.get 0  i32.const 1  i32.add
//! i32.const 1                    local.set $slot0_i32            ;; segment
//! i32.add                        ...
//! call $f     ;; can suspend     i32.const 0  local.set $slot1_i32
//! local.get 2                    local.get $slot1_i32
//! i32.add                        call $f
//!                                (if (i32.eq (global.get $state) (i32.const 1))
//!                                  (then (local.set $pos (i32.load (global.get $data)))
//!                                        (i32.store offset=0 (local.get $pos) (local.get 2))
//!                                        (i32.store offset=4 (local.get $pos) (local.get $slot0_i32))
//!                                        (call $finish_frame (i32.const 8) (i32.const $f) (i32.const 0))
//!                                        (return (i32.const 0))))
//!                                local.set $slot1_i32  ...
//! ```
//!
//! The values are stored before anything is called, so that none of them
//! has to survive a call on that path; `finish_frame` then writes the
//! frame's header and keeps room for the next frame.
//!
//! Call sites that save the same values share one unwind path: the site
//! sets a local to its call index and branches to the path, which follows
//! the end of a block around the whole body (one block per shared path):
//!
//! ```wat
//! block $unwind_a                ;; around the body
//!   block (result i32)           ;; the body
//!     ...
//!     call $f
//!     (if (i32.eq (global.get $state) (i32.const 1))
//!       (then (local.set $site (i32.const 3)) (br $unwind_a)))
//!     ...
//!   end
//!   return
//! end
//! (local.set $pos (i32.load (global.get $data)))
//! ...the stores...
//! (call $finish_frame (i32.const 8) (i32.const $f) (local.get $site))
//! (return (i32.const 0))
//! ```
//!
//! In an interpreter's loop most of the hundreds of call sites save one of
//! a few sets of values, so this is far less code, and far fewer places
//! that read every value live after a call: measured on SQLite, whose
//! bytecode loop has 420 call sites, the run time went from 1.14x the
//! original to 1.09x and the code from 4.95x to 4.40x.
//!
//! Saving only live values at the call site, instead of every local in one
//! shared epilogue, is what keeps instrumented code fast: a shared save
//! reads every local on a path reachable from every call, so a compiler
//! must keep every local alive everywhere.
//!
//! **Rewinding.** The function's prologue pops the frame on top of the
//! stack and restores the values that have not changed since the function
//! started. Every suspendable region (the function body, a block or loop
//! body, an `if` arm) starts with a *dispatch* that, while rewinding,
//! branches straight to the item holding the call the function was
//! suspended in (its index is in the frame's header): each item is wrapped
//! in an entry block, and a call item (or a construct with values to
//! restore) also in a landing block that restores what [`layout`] says
//! it restores there before falling into the item. Ordinary code never
//! runs while rewinding, and the restored values only join the normal
//! path right at the item:
//!
//! ```wat
//! block $entry1                      ;; item 1: a loop holding calls 1..3
//!   block $entry0                    ;; item 0: call 0
//!     block $landing0
//!       (if (i32.eq (global.get $state) (i32.const 2))
//!         (then (br_table $landing0 $entry1 $entry1 $entry1
//!                 (call index from the frame))))
//!       ...segment...
//!       br $entry0
//!     end
//!     ...restore what call 0 saved and no construct restores...
//!   end
//!   ...call 0...
//!   ...segment...
//! end
//! loop ...its own dispatch... end
//! ```
//!
//! A suspendable `if` becomes a block around its arms whose condition,
//! while rewinding, is "the call is in the `then` arm".
//!
//! **Two versions.** Every landing is a second way into the code after
//! its call, and every value it restores meets the normal path there: in
//! an interpreter's dispatch loop, with hundreds of calls, the compiler
//! then keeps the loop's state in far more stack slots and reloads it on
//! the hot path (measured on QuickJS: the bytecode loop's frame grew from
//! 720 to 3,376 bytes, and the program ran at about 2x). So each function
//! is emitted twice. In its own place is the version that runs: the
//! original code with an unwind path after each suspending call
//! ([`emit_running_in_place`]), and a prologue that, while rewinding, goes
//! on in the other version with a tail call. That other version, the
//! *whole* copy after the module's functions, is everything above; a
//! rewind runs in it, and so does the rest of a function activation that
//! was resumed, up to the next head of a busy loop, where it goes on in a
//! third version entered at that loop ([`reentry`]). All versions have
//! the same call sites and frames, so any one's frame resumes in the
//! whole copy. (A function where a call
//! keeps values pushed outside its innermost block, which its unwind path
//! could not reach, runs the rewritten code instead, with the unwind paths
//! but no dispatch and no landing.)
//!
//! ```wat
//! (func $f (param i32) (result i32)       ;; runs
//!   (if (i32.eq (global.get $state) (i32.const 2))
//!     (then (return_call $f_whole (local.get 0))))
//!   ...the original body, an unwind path after each suspending call...)
//! (func $f_whole (param i32) (result i32) ;; resumes
//!   ...rewind prologue, dispatches, landings, unwind paths...)
//! ```
//!
//! Every `if` that only unwinding or rewinding enters gets a branch hint
//! (the branch-hinting proposal's custom section), so that the compiler
//! lays the normal path out without that code.
//!
//! Code outside suspendable constructs, and functions that cannot suspend,
//! are left exactly as they were.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use anyhow::{Context as _, Result, bail};
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, Function, Instruction, MemArg};
use wasmparser::{
    FuncToValidate, FuncValidator, FunctionBody, Operator, ValType, ValidatorResources,
};

use super::analyse::Analysis;
use super::layout::{self, Plan, RestorePoint, SitePlan, Value, byte_size};
use super::liveness::live_after;
use super::reentry::{self, EntryLoops, FUNCTION_BODY};
use super::{
    CallSite, FRAME_HEADER_SIZE, FrameLayout, LocalOrigin, STATE_REWINDING, STATE_UNWINDING,
    SavedLocal,
};

/// Indices of what the emitter adds to the module, which rewritten code uses.
pub(crate) struct Additions {
    /// The state global (0 normal, 1 unwinding, 2 rewinding).
    pub state_global: u32,
    /// The global holding the address of the `{pos, end}` header.
    pub data_global: u32,
    /// The stack memory.
    pub stack_memory: u32,
    /// `grow_stack(needed_end: i32)`: makes room up to `needed_end`.
    pub grow_function: u32,
    /// `finish_frame(size, function, call_index)`: writes the header of
    /// the frame whose `size` bytes of values were just stored at `pos`,
    /// moves `pos` past it, and keeps room for the largest frame after it.
    pub finish_frame: u32,
    /// `reserve()`: makes room for the largest frame above `pos`, before
    /// the first frame of an unwind is stored.
    pub reserve: u32,
}

/// Function types the rewritten code needs for multi-value blocks; they are
/// appended to the type section after the module's own types.
pub(crate) struct NewTypes {
    first_index: u32,
    pub types: Vec<(Vec<ValType>, Vec<ValType>)>,
}

impl NewTypes {
    pub fn new(first_index: u32) -> Self {
        NewTypes {
            first_index,
            types: Vec::new(),
        }
    }

    /// A block type for `[] -> results`.
    fn block_type(&mut self, results: &[ValType]) -> BlockType {
        match results {
            [] => BlockType::Empty,
            [one] => BlockType::Result(RoundtripReencoder.val_type(*one).expect("plain type")),
            many => BlockType::FunctionType(self.function_type(&[], many)),
        }
    }

    /// The index of the function type `params -> results`.
    pub fn function_type(&mut self, params: &[ValType], results: &[ValType]) -> u32 {
        let key = (params.to_vec(), results.to_vec());
        let position = match self.types.iter().position(|t| *t == key) {
            Some(position) => position,
            None => {
                self.types.push(key);
                self.types.len() - 1
            }
        };
        self.first_index + position as u32
    }
}

/// A rewritten function body and its frame layout.
pub(crate) struct Rewritten {
    pub body: Function,
    pub layout: FrameLayout,
    /// Byte offsets, from the start of the body, of the `if`s that only
    /// unwinding or rewinding enters, for the branch-hint section.
    pub cold_branches: Vec<u32>,
    /// The room a whole copy needs above `pos` to leave for its entered
    /// copy (see [`reentry`]); 0 if it never does.
    pub leave_room: u32,
}

/// Which code a rewritten body carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// Everything: the function runs, unwinds, and resumes from its
    /// frames (a dispatch at each suspendable region, a landing per call).
    Whole,
    /// The function as it runs before any resume: it runs and unwinds,
    /// and has no dispatch and no landing, so the code it runs has no
    /// path from a resume merging into it. A rewind that enters it goes
    /// on in its [`Version::Whole`] copy, function `whole` (a tail call
    /// at its entry).
    Running {
        /// The index of the function's whole copy.
        whole: u32,
    },
    /// The running version entered at one of its entry loops, which the
    /// whole copy goes on in (see [`reentry`]): the same code plus a way
    /// into each entry loop, and a prologue that takes the locals the
    /// whole copy left.
    Entered,
}

/// A label of the emitted code, to remap branch depths.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    /// The label of the original frame that starts at this operator index
    /// (`usize::MAX` for the function body).
    Original(usize),
    /// A label the rewrite introduced and never branches to by name.
    Added,
    /// A label the rewrite introduced and branches to: entry and landing
    /// blocks, by a number unique in the function.
    Marked(u32),
}

const FUNCTION_FRAME: usize = usize::MAX;

/// What an operator is to the rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Plain,
    SuspendingCall,
    /// `block`, `loop` or `if` whose body contains a suspending call.
    SuspendableStart,
}

/// Rewrites function `index`; see the module documentation.
pub(crate) fn rewrite(
    module: &Analysis,
    index: u32,
    body: &FunctionBody<'_>,
    func: FuncToValidate<ValidatorResources>,
    additions: &Additions,
    new_types: &mut NewTypes,
    copies: CopyIndices,
) -> Result<Versions> {
    let CopyIndices { whole, entered } = copies;
    let describe = || module.describe_function(index);
    let mut ops = Vec::new();
    let mut reader = body.get_operators_reader()?;
    while !reader.eof() {
        let offset = reader.original_position();
        ops.push((reader.read()?, offset));
    }
    let roles = classify(module, &ops).with_context(|| format!("in {}", describe()))?;

    let signature = module.func_type(index);
    let mut local_types: Vec<ValType> = signature.params().to_vec();
    for local in body.get_locals_reader()? {
        let (count, ty) = local?;
        local_types.extend(std::iter::repeat_n(ty, count as usize));
    }
    let sites: Vec<usize> = (0..ops.len())
        .filter(|&i| roles[i] == Role::SuspendingCall)
        .collect();
    let constructs: Vec<usize> = (0..ops.len())
        .filter(|&i| roles[i] == Role::SuspendableStart)
        .collect();
    let live = live_after(&ops, &sites, local_types.len());
    let validator = {
        let mut validator = func.into_validator(Default::default());
        validator.read_locals(&mut body.get_binary_reader())?;
        validator
    };
    let description = describe();
    let has_params = |blockty| !block_signature(module, blockty).0.is_empty();
    let entries = reentry::entry_loops(
        &ops,
        module.busy_loop_calls,
        |i| match roles[i] {
            Role::SuspendingCall => reentry::Kind::SuspendingCall,
            Role::SuspendableStart => reentry::Kind::Suspendable,
            Role::Plain => reentry::Kind::Other,
        },
        has_params,
        &local_types,
        validator.clone(),
    )?;
    let plan = layout::plan(
        &layout::Function {
            module,
            ops: &ops,
            sites: &sites,
            constructs: &constructs,
            local_types: &local_types,
            live: &live,
            describe: &description,
        },
        validator.clone(),
    )?;

    let source = Source {
        module,
        index,
        entered_copy: None,
        ops: &ops,
        roles: &roles,
        plan: &plan,
        local_types: &local_types,
        description: &description,
    };
    let none = EntryLoops::default();
    let running_version = Version::Running { whole };
    let whole_copy = Source {
        entered_copy: (!entries.is_empty()).then_some(entered),
        ..source
    };
    let whole_copy = emit_version(
        &whole_copy,
        validator.clone(),
        additions,
        new_types,
        Version::Whole,
        &entries,
    )?;
    let sites = whole_copy.layout.call_sites.clone();
    let in_place = |version, entries: &EntryLoops, new_types: &mut NewTypes| {
        emit_running_in_place(
            &source,
            validator.clone(),
            additions,
            new_types,
            version,
            &sites,
            entries,
        )
    };
    let running = in_place(running_version, &none, new_types)?;
    let entered = match running {
        Some(_) if !entries.is_empty() => in_place(Version::Entered, &entries, new_types)?,
        _ => None,
    };
    let whole_copy = if entered.is_some() || entries.is_empty() {
        whole_copy
    } else {
        // The running code could not be copied as it is (a call keeps
        // values outside its innermost block), so there is no entered copy:
        // the whole copy must not leave for one.
        let version = Version::Whole;
        emit_version(
            &source,
            validator.clone(),
            additions,
            new_types,
            version,
            &none,
        )?
    };
    let running = match running {
        Some(running) => running,
        None => emit_version(
            &source,
            validator,
            additions,
            new_types,
            running_version,
            &none,
        )?,
    };
    Ok(Versions {
        running,
        whole: whole_copy,
        entered,
    })
}

/// Where a function's copies go, for the code that calls them.
#[derive(Clone, Copy)]
pub(crate) struct CopyIndices {
    /// The index of its whole copy.
    pub whole: u32,
    /// The index its entered copy gets if it has one.
    pub entered: u32,
}

/// The versions of a function [`rewrite`] emits.
pub(crate) struct Versions {
    /// The function as it runs, in its own place.
    pub running: Rewritten,
    /// The whole copy, which resumes.
    pub whole: Rewritten,
    /// The running version entered at an entry loop, which the whole copy
    /// goes on in after a rewind, if the function has entry loops.
    pub entered: Option<Rewritten>,
}

/// What [`rewrite`] worked out about a function, shared by its versions.
#[derive(Clone, Copy)]
struct Source<'m, 'a> {
    module: &'m Analysis<'a>,
    index: u32,
    /// For the whole copy: the index of the entered copy it leaves for.
    entered_copy: Option<u32>,
    ops: &'m [(Operator<'a>, usize)],
    roles: &'m [Role],
    plan: &'m Plan,
    local_types: &'m [ValType],
    description: &'m str,
}

/// Emits one version of a rewritten function.
fn emit_version<'a>(
    source: &Source<'_, 'a>,
    validator: FuncValidator<ValidatorResources>,
    additions: &Additions,
    new_types: &mut NewTypes,
    version: Version,
    entries: &EntryLoops,
) -> Result<Rewritten> {
    let mut rewriter = Rewriter::new(source, validator, additions, new_types, version, entries);
    let results = rewriter.open_body();
    let (end, _) = rewriter.region(0, Vec::new())?;
    rewriter.load_region_results(0, &results);
    rewriter.validate(end)?;
    rewriter.out.push(Instruction::End);
    rewriter.labels.pop();
    rewriter.close_shared_unwinds()?;
    rewriter.finish()
}

/// Emits the running version of a function as its original code, changed
/// only at its suspending calls, when it can be: when, at every call, all
/// the values on the operand stack were pushed inside the innermost block
/// (so the call site can take them into locals for its unwind path).
/// Returns `None` otherwise, and [`emit_version`] emits it with slots.
///
/// Each suspending call gets its unwind path, with the call index
/// `whole_sites` (the whole copy's call sites) gives it. A call that keeps
/// values below its operands, or whose operands a rewind needs again,
/// first moves the stack into the slot locals and back, which costs the
/// compiled code nothing:
///
/// ```wat
/// ;; before                      ;; after (call index 4)
/// local.get 0                    local.get 0
/// local.get 1                    local.get 1
/// local.get 2                    local.get 2
/// call_indirect (type $t)        local.set $slot2_i32  local.set $slot1_i32
///                                local.set $slot0_i32  local.get $slot0_i32
///                                local.get $slot1_i32  local.get $slot2_i32
///                                call_indirect (type $t)
///                                (if (i32.eq (global.get $state) (i32.const 1))
///                                  (then (local.set $site (i32.const 4))
///                                        (br $unwind_a)))
/// ```
///
/// Everything else is copied as it is. A compiler then sees the original
/// function plus a check and a cold branch after each call: measured on
/// QuickJS, whose bytecode loop makes hundreds of calls that can suspend,
/// the slots, blocks and landings that [`emit_version`] leaves in a
/// running version cost about 10% of its run time.
fn emit_running_in_place<'a>(
    source: &Source<'_, 'a>,
    validator: FuncValidator<ValidatorResources>,
    additions: &Additions,
    new_types: &mut NewTypes,
    version: Version,
    whole_sites: &[CallSite],
    entries: &EntryLoops,
) -> Result<Option<Rewritten>> {
    let call_index_at: HashMap<usize, u32> = whole_sites
        .iter()
        .enumerate()
        .map(|(k, site)| (site.code_offset, k as u32))
        .collect();
    let mut rewriter = Rewriter::new(source, validator, additions, new_types, version, entries);
    rewriter.open_body();
    rewriter.open_ways_in(FUNCTION_BODY);
    let mut instrumented = 0;
    for i in 0..rewriter.ops.len() {
        let (op, offset) = &rewriter.ops[i];
        let reachable = !rewriter.frame_is_unreachable();
        if rewriter.roles[i] == Role::SuspendingCall && reachable {
            let Some(&call_index) = call_index_at.get(offset) else {
                return Ok(None);
            };
            if !rewriter.call_in_place(i, call_index)? {
                return Ok(None);
            }
            instrumented += 1;
            continue;
        }
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                rewriter.close_way_in(i);
                rewriter.labels.push(Label::Original(i));
            }
            Operator::End => {
                rewriter.labels.pop();
            }
            Operator::Else => {}
            // Anything else that opens a frame (exception handling) is
            // left to the general rewrite.
            Operator::TryTable { .. } | Operator::Try { .. } | Operator::Delegate { .. } => {
                return Ok(None);
            }
            _ => {}
        }
        let instruction = rewriter.translate(i)?;
        rewriter.out.push(instruction);
        rewriter.validate(i)?;
        if let Operator::Block { .. } | Operator::Loop { .. } = op {
            rewriter.open_ways_in(i);
        }
    }
    if instrumented != whole_sites.len() {
        return Ok(None);
    }
    rewriter.close_shared_unwinds()?;
    Ok(Some(rewriter.finish()?))
}

/// Copies the body of a function that [`super::Options::only_functions`]
/// keeps from suspending although it could, adding a check that traps if a
/// call did start an unwind: the function's frame would not be saved, so
/// resuming would be wrong.
///
/// Only calls that can reach a suspending import or an instrumented
/// function get the check. A suspension that comes back through a call to
/// another function left out has already trapped in that function, the
/// innermost left-out frame being the first to see it.
///
/// ```wat
/// call_indirect (type $t)        call_indirect (type $t)
///                                (if (global.get $state) (then unreachable))
/// ```
pub(crate) fn guard_calls(
    module: &Analysis,
    body: &FunctionBody<'_>,
    additions: &Additions,
) -> Result<Function> {
    let mut locals = Vec::new();
    for local in body.get_locals_reader()? {
        let (count, ty) = local?;
        locals.push((count, RoundtripReencoder.val_type(ty)?));
    }
    let mut function = Function::new(locals);
    let mut reader = body.get_operators_reader()?;
    while !reader.eof() {
        let op = reader.read()?;
        let could_suspend = match op {
            Operator::Call { function_index } => module.can_suspend[function_index as usize],
            Operator::CallIndirect {
                type_index,
                table_index,
            } => module.indirect_can_suspend(type_index, Some(table_index)),
            Operator::CallRef { type_index } => module.indirect_can_suspend(type_index, None),
            _ => false,
        };
        function.instruction(&RoundtripReencoder.instruction(op)?);
        if could_suspend {
            for instruction in [
                Instruction::GlobalGet(additions.state_global),
                Instruction::If(BlockType::Empty),
                Instruction::Unreachable,
                Instruction::End,
            ] {
                function.instruction(&instruction);
            }
        }
    }
    Ok(function)
}

/// Finds suspending calls and the constructs that contain them.
fn classify(module: &Analysis, ops: &[(Operator, usize)]) -> Result<Vec<Role>> {
    let mut roles = vec![Role::Plain; ops.len()];
    let mut open: Vec<usize> = Vec::new();
    for (i, (op, _)) in ops.iter().enumerate() {
        let suspends = match *op {
            Operator::Call { function_index } => module.can_suspend[function_index as usize],
            Operator::CallIndirect {
                type_index,
                table_index,
            } => module.indirect_can_suspend(type_index, Some(table_index)),
            Operator::ReturnCall { function_index } => {
                if module.can_suspend[function_index as usize] {
                    bail!("a tail call (return_call) can suspend, which wasnap cannot instrument")
                }
                false
            }
            Operator::ReturnCallIndirect {
                type_index,
                table_index,
            } => {
                if module.indirect_can_suspend(type_index, Some(table_index)) {
                    bail!(
                        "a tail call (return_call_indirect) can suspend, which wasnap cannot instrument"
                    )
                }
                false
            }
            Operator::CallRef { type_index } | Operator::ReturnCallRef { type_index } => {
                if module.indirect_can_suspend(type_index, None) {
                    bail!("a call_ref or tail call can suspend, which wasnap cannot instrument")
                }
                false
            }
            _ => false,
        };
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => open.push(i),
            Operator::End => {
                if let Some(start) = open.pop()
                    && roles[start] == Role::SuspendableStart
                    && let Some(&parent) = open.last()
                {
                    roles[parent] = Role::SuspendableStart;
                }
            }
            _ => {}
        }
        if suspends {
            roles[i] = Role::SuspendingCall;
            if let Some(&innermost) = open.last() {
                roles[innermost] = Role::SuspendableStart;
            }
        }
    }
    Ok(roles)
}

/// Whether a value of this type can be stored in the stack memory.
fn is_storable(ty: ValType) -> bool {
    matches!(
        ty,
        ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 | ValType::V128
    )
}

/// A suspendable item of a region, as the region's dispatch sees it.
#[derive(Clone, Copy)]
struct Item {
    /// The label of the block around the code before the item.
    entry: u32,
    /// For a call, the label of the block that skips its landing on the
    /// normal path.
    landing: Option<u32>,
}

impl Item {
    /// The label a dispatch branches to for this item: the call's landing,
    /// or the construct's entry.
    fn target(&self) -> u32 {
        self.landing.unwrap_or(self.entry)
    }
}

/// Where a dispatch was emitted, to fill in once its items have their
/// call indices.
struct Dispatch {
    /// Index in `out` of the `i32.const` holding the first call index.
    first_const: usize,
    /// Index in `out` of the `br_table`.
    table: usize,
    /// The branch depth, from the dispatch, of each target, in program order.
    depths: Vec<u32>,
    /// The call indices each target holds, as far as known.
    ranges: Vec<Range<usize>>,
    /// Whether it was emitted: a [`Version::Running`] body has none.
    emitted: bool,
}

/// The unwind paths of a function that several call sites share: those
/// saving the same values (in an interpreter's loop, most of its hundreds
/// of call sites save one of a few sets). One copy of the stores is less
/// code, and fewer places that read every value live after a call.
#[derive(Default)]
struct SharedUnwinds {
    /// Each shared path, in the order its block was opened: the
    /// outermost first.
    paths: Vec<SharedUnwind>,
    /// Which path each call site (by operator index) branches to.
    by_site: HashMap<usize, usize>,
    /// The local holding the call index of the site that branched.
    site_local: u32,
}

/// One unwind path shared by call sites that save the same values.
struct SharedUnwind {
    /// The label of the block whose end it follows.
    mark: u32,
    /// What it saves.
    values: Vec<Value>,
    /// Whether it makes room for the first frame of an unwind.
    reserve: bool,
}

struct Rewriter<'m, 'a> {
    module: &'m Analysis<'a>,
    function_index: u32,
    version: Version,
    ops: &'m [(Operator<'a>, usize)],
    roles: &'m [Role],
    /// The frame layout and where each saved value is restored.
    plan: &'m Plan,
    /// Types of the original parameters and locals.
    local_types: &'m [ValType],
    validator: FuncValidator<ValidatorResources>,
    /// Types of the original operand stack, bottom first.
    types: Vec<ValType>,
    labels: Vec<Label>,
    next_mark: u32,
    out: Vec<Instruction<'a>>,
    slots: HashMap<(u32, ValType), u32>,
    /// Types of the locals added after the original ones.
    extra_locals: Vec<ValType>,
    first_extra: u32,
    /// A local of the rewritten code that is never saved: the address of
    /// the frame being stored or restored.
    pos: u32,
    /// Indices in `out` of the `if`s only unwinding or rewinding enters.
    cold: Vec<usize>,
    call_sites: Vec<CallSite>,
    /// The unwind paths that call sites share, and which site uses which.
    shared_unwinds: SharedUnwinds,
    /// The loops a resumed activation leaves the whole copy at.
    entries: &'m EntryLoops,
    /// For the whole copy: the index of the entered copy it leaves for.
    entered_copy: Option<u32>,
    /// The local holding an entry loop's number: in the whole copy, the
    /// one it leaves at; in the entered copy, the one it enters at (0 once
    /// there).
    entry_local: u32,
    /// In the whole copy, the label of the block around the body whose
    /// end is followed by the path that leaves for the entered copy.
    leave_mark: Option<u32>,
    /// In the entered copy, for each construct on the way to an entry loop
    /// (by its operator index): the label of the block that ends right
    /// before it, and, for an entry loop, of the block inside that whose
    /// end clears the entry loop's number (the way in to the loop itself).
    way_in_marks: HashMap<usize, (u32, Option<u32>)>,
    additions: &'m Additions,
    new_types: &'m mut NewTypes,
    describe: String,
}

impl<'m, 'a> Rewriter<'m, 'a> {
    fn new(
        source: &Source<'m, 'a>,
        validator: FuncValidator<ValidatorResources>,
        additions: &'m Additions,
        new_types: &'m mut NewTypes,
        version: Version,
        entries: &'m EntryLoops,
    ) -> Self {
        let local_count = source.local_types.len() as u32;
        Rewriter {
            module: source.module,
            function_index: source.index,
            version,
            ops: source.ops,
            roles: source.roles,
            plan: source.plan,
            local_types: source.local_types,
            validator,
            types: Vec::new(),
            labels: Vec::new(),
            next_mark: 0,
            out: Vec::new(),
            slots: HashMap::new(),
            extra_locals: vec![ValType::I32],
            first_extra: local_count,
            pos: local_count,
            cold: Vec::new(),
            call_sites: Vec::new(),
            shared_unwinds: SharedUnwinds::default(),
            entries,
            entered_copy: source.entered_copy,
            entry_local: 0,
            leave_mark: None,
            way_in_marks: HashMap::new(),
            additions,
            new_types,
            describe: source.description.to_string(),
        }
    }

    /// Opens the blocks of the shared unwind paths, then the block of the
    /// body, labelled as the function's own frame; returns the function's
    /// result types, which the body's block has.
    fn open_body(&mut self) -> Vec<ValType> {
        let results = self
            .module
            .func_type(self.function_index)
            .results()
            .to_vec();
        let body_type = self.new_types.block_type(&results);
        if !self.entries.is_empty() {
            self.entry_local = self.new_local(ValType::I32);
            if self.entered_copy.is_some() {
                self.leave_mark = Some(self.open_marked_block(BlockType::Empty));
            }
        }
        self.open_shared_unwinds();
        self.labels.push(Label::Original(FUNCTION_FRAME));
        self.out.push(Instruction::Block(body_type));
        results
    }

    /// Puts the body emitted after its prologue, with the locals it added.
    fn finish(mut self) -> Result<Rewritten> {
        let signature = self.module.func_type(self.function_index);
        let mut function = Function::new(compress_locals(
            self.local_types[signature.params().len()..]
                .iter()
                .chain(&self.extra_locals)
                .copied(),
        ));
        let prologue = match self.version {
            Version::Whole => self.rewind_prologue(signature.params())?,
            Version::Running { whole } => self.continue_rewind_in(whole, signature.params()),
            Version::Entered => self.entering_prologue(),
        };
        let leave_room = match self.entered_copy {
            Some(_) => self.entries.room(),
            None => 0,
        };
        let mut cold = self.cold.iter().copied().peekable();
        let mut cold_branches = Vec::new();
        for (k, instruction) in prologue.iter().chain(&self.out).enumerate() {
            if cold.next_if(|&index| index == k).is_some() {
                cold_branches.push(function.byte_len() as u32);
            }
            function.instruction(instruction);
        }
        function.instruction(&Instruction::End);
        Ok(Rewritten {
            body: function,
            layout: FrameLayout {
                call_sites: self.call_sites,
            },
            cold_branches,
            leave_room,
        })
    }

    /// Emits the suspending call at `i` for [`emit_running_in_place`]:
    /// the values its unwind path saves from the operand stack taken into
    /// their slots and back, the call, and its unwind path. Returns false,
    /// having emitted nothing, when a value it saves was pushed outside
    /// the innermost block, or one it moves has no slot.
    fn call_in_place(&mut self, i: usize, call_index: u32) -> Result<bool> {
        let frame_base = self
            .validator
            .get_control_frame(0)
            .map_or(0, |frame| frame.height);
        let site = self.plan.sites[&i].clone();
        let lowest_saved = site
            .saved
            .iter()
            .filter_map(|&(value, _)| match value {
                Value::Operand(height, _) => Some(height),
                Value::Local(_) => None,
            })
            .min();
        if let Some(lowest) = lowest_saved {
            if (lowest as usize) < frame_base {
                return Ok(false);
            }
            let moved = self.types[lowest as usize..].to_vec();
            if !moved.iter().all(|&ty| is_storable(ty)) {
                return Ok(false);
            }
            self.store_slots(lowest, &moved)?;
            self.load_slots(lowest, &moved);
        }
        let call = self.translate(i)?;
        self.out.push(call);
        self.validate(i)?;
        self.unwind_path(i, &site, call_index)?;
        Ok(true)
    }

    fn new_local(&mut self, ty: ValType) -> u32 {
        self.extra_locals.push(ty);
        self.first_extra + self.extra_locals.len() as u32 - 1
    }

    /// The slot local for the operand at `height` of type `ty`.
    fn slot(&mut self, height: u32, ty: ValType) -> Result<u32> {
        if let Some(&local) = self.slots.get(&(height, ty)) {
            return Ok(local);
        }
        if !is_storable(ty) {
            bail!(
                "{} keeps a value of {} on the operand stack across a suspending call, which cannot be saved in a snapshot",
                self.describe,
                layout::describe_type(ty)
            );
        }
        let local = self.new_local(ty);
        self.slots.insert((height, ty), local);
        Ok(local)
    }

    /// Pushes the results of the region just emitted, at heights `base..`,
    /// onto the real stack.
    fn load_region_results(&mut self, base: u32, types: &[ValType]) {
        if !self.frame_is_unreachable() || types.iter().all(|&ty| is_storable(ty)) {
            self.load_slots(base, types);
            return;
        }
        // The region ends in a branch, so nothing reaches this point at run
        // time (a dispatch only targets items that were emitted). The code
        // must still validate, and a reference result has no slot: a null
        // type-checks in its place.
        for (k, &ty) in types.iter().enumerate() {
            if is_storable(ty) {
                self.load_slots(base + k as u32, &[ty]);
            } else {
                self.out.push(zero(ty));
            }
        }
    }

    /// Pushes the slots for heights `base..` holding `types` onto the real stack.
    fn load_slots(&mut self, base: u32, types: &[ValType]) {
        for (k, &ty) in types.iter().enumerate() {
            let local = self.slot(base + k as u32, ty).expect("checked when stored");
            self.out.push(Instruction::LocalGet(local));
        }
    }

    /// Pops `types` from the real stack into the slots for heights `base..`.
    fn store_slots(&mut self, base: u32, types: &[ValType]) -> Result<()> {
        for (k, &ty) in types.iter().enumerate().rev() {
            let local = self.slot(base + k as u32, ty)?;
            self.out.push(Instruction::LocalSet(local));
        }
        Ok(())
    }

    fn height(&self) -> u32 {
        self.types.len() as u32
    }

    /// Feeds operator `i` to the validator and tracks the operand types.
    fn validate(&mut self, i: usize) -> Result<()> {
        let (op, offset) = &self.ops[i];
        let arity = op.operator_arity(&self.validator);
        self.validator
            .op(*offset, op)
            .with_context(|| format!("in {}", self.describe))?;
        let height = self.validator.operand_stack_height() as usize;
        let pushed = match arity {
            Some((_, pushes)) => (pushes as usize).min(height),
            None => height,
        };
        self.types.truncate(height - pushed);
        while self.types.len() < height {
            let depth = height - 1 - self.types.len();
            // An unknown type only appears in unreachable code, whose
            // values never reach a slot; any placeholder will do.
            let ty = self
                .validator
                .get_operand_type(depth)
                .flatten()
                .unwrap_or(ValType::I32);
            self.types.push(ty);
        }
        Ok(())
    }

    fn frame_is_unreachable(&self) -> bool {
        self.validator
            .get_control_frame(0)
            .is_some_and(|frame| frame.unreachable)
    }

    /// Opens an empty block the rewrite will branch to; returns its mark.
    fn open_marked_block(&mut self, block_type: BlockType) -> u32 {
        let mark = self.next_mark;
        self.next_mark += 1;
        self.out.push(Instruction::Block(block_type));
        self.labels.push(Label::Marked(mark));
        mark
    }

    fn close_block(&mut self) {
        self.out.push(Instruction::End);
        self.labels.pop();
    }

    /// Emits `if (state == state_value)`: code only an unwind or a rewind
    /// runs, which the compiler is told is cold (a branch hint), so that it
    /// lays the normal path out without it.
    fn if_state(&mut self, state_value: i32, block_type: BlockType) {
        self.out.extend([
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Const(state_value),
            Instruction::I32Eq,
        ]);
        self.cold.push(self.out.len());
        self.out.push(Instruction::If(block_type));
    }

    /// Emits the items of a suspendable frame from operator `start` up to
    /// the frame's `else` or `end`, whose index it returns (not consumed).
    ///
    /// `inherited` are the targets of enclosing regions that deferred their
    /// dispatch to this one; when there are any, the dispatch is returned
    /// (its table not yet filled) for them to add their call indices.
    fn region(&mut self, start: usize, inherited: Vec<u32>) -> Result<(usize, Option<Dispatch>)> {
        let items = self.open_items(start);
        // A region that starts right away with a block or loop needs no
        // dispatch of its own: the first item's dispatch, inside it, can
        // branch out to this region's later items too. Chains of nested
        // blocks (a `switch`) then pay one check, not one per level.
        let defer = self.roles[start] == Role::SuspendableStart
            && matches!(
                self.ops[start].0,
                Operator::Block { .. } | Operator::Loop { .. }
            );
        let outer_targets = |items: &[Item]| -> Vec<u32> {
            let mut targets: Vec<u32> = items.iter().skip(1).map(Item::target).collect();
            targets.extend(&inherited);
            targets
        };
        let mut dispatch = if defer {
            None
        } else {
            let mut targets: Vec<u32> = items.iter().map(Item::target).collect();
            targets.extend(&inherited);
            Some(self.dispatch(&targets))
        };
        let mut ranges: Vec<Range<usize>> = Vec::new();
        let mut i = start;
        loop {
            if matches!(self.ops[i].0, Operator::End | Operator::Else) {
                break;
            }
            i = match self.roles[i] {
                Role::Plain => self.segment(i)?,
                role => {
                    let item = items[ranges.len()];
                    let first = self.call_sites.len();
                    let next = if role == Role::SuspendingCall {
                        self.call_item(item, i)?
                    } else {
                        if item.landing.is_some() {
                            let values = self.hoisted(RestorePoint::Construct(i));
                            self.landing(item, &values, |_| Ok(()))?;
                        } else {
                            self.close_block();
                        }
                        let pass_down = if i == start && defer {
                            outer_targets(&items)
                        } else {
                            Vec::new()
                        };
                        let (next, inner) = self.suspendable_construct(i, pass_down)?;
                        if inner.is_some() {
                            dispatch = inner;
                        }
                        next
                    };
                    ranges.push(first..self.call_sites.len());
                    next
                }
            };
            if self.frame_is_unreachable() {
                i = self.skip_dead_code(i)?;
            }
        }
        // Items in unreachable code were skipped: close their blocks. No
        // dispatch enters a skipped item's landing (it has no call index),
        // and nothing runs after it: the code before it ended in a branch.
        let skipped = ranges.len()..items.len();
        for item in &items[skipped.clone()] {
            if item.landing.is_some() {
                self.close_block();
                self.out.push(Instruction::Unreachable);
            }
            self.close_block();
            self.out.push(Instruction::Unreachable);
        }
        // A skipped item holds no call, but keeps its place among the
        // dispatch's targets, which pair with the ranges in order: without
        // it, the calls of the items after it (inherited from an outer
        // region) would go to the wrong target.
        let end = self.call_sites.len();
        ranges.extend(skipped.map(|_| end..end));
        let Some(mut dispatch) = dispatch else {
            // Deferred, and the first item, the only one with calls,
            // filled its own dispatch (or was unreachable).
            return Ok((i, None));
        };
        // A deferred dispatch already holds the first item's calls.
        dispatch
            .ranges
            .extend(ranges.iter().skip(usize::from(defer)).cloned());
        if inherited.is_empty() {
            self.fill_dispatch(dispatch);
            Ok((i, None))
        } else {
            Ok((i, Some(dispatch)))
        }
    }

    /// Opens the entry (and, for calls, landing) blocks of the region's
    /// items, the first item innermost.
    fn open_items(&mut self, start: usize) -> Vec<Item> {
        let mut has_landing = Vec::new();
        let mut depth = 0usize;
        for (i, (role, (op, _))) in self.roles.iter().zip(self.ops).enumerate().skip(start) {
            if depth == 0 {
                if matches!(op, Operator::End | Operator::Else) {
                    break;
                }
                // A call's landing restores its frame; a construct has one
                // when values are restored at its entry.
                match role {
                    Role::Plain => {}
                    Role::SuspendingCall => has_landing.push((true, i)),
                    Role::SuspendableStart => has_landing.push((
                        self.plan.hoisted.contains_key(&RestorePoint::Construct(i)),
                        i,
                    )),
                }
            }
            match op {
                Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => depth += 1,
                Operator::End => depth -= 1,
                _ => {}
            }
        }
        let mut items = Vec::new();
        for &(landing, start) in has_landing.iter().rev() {
            // A call's entry block carries the call's results: the call is
            // made on both ways in, and they meet after it.
            let results = match self.roles[start] {
                Role::SuspendingCall => self.call_results(start),
                _ => Vec::new(),
            };
            let entry_type = self.new_types.block_type(&results);
            items.push(Item {
                entry: self.open_marked_block(entry_type),
                landing: landing.then(|| self.open_marked_block(BlockType::Empty)),
            });
        }
        items.reverse();
        items
    }

    /// Emits a region's dispatch: while rewinding, branch to the item that
    /// holds the call being resumed. Its table is filled in by
    /// [`Self::fill_dispatch`] once the items have their call indices.
    fn dispatch(&mut self, targets: &[u32]) -> Dispatch {
        if self.version != Version::Whole {
            return Dispatch {
                first_const: 0,
                table: 0,
                depths: Vec::new(),
                ranges: Vec::new(),
                emitted: false,
            };
        }
        self.if_state(STATE_REWINDING, BlockType::Empty);
        self.labels.push(Label::Added);
        let depths = targets
            .iter()
            .map(|&target| self.depth_of(Label::Marked(target)))
            .collect();
        self.rewind_index();
        let first_const = self.out.len();
        self.out
            .extend([Instruction::I32Const(0), Instruction::I32Sub]);
        let table = self.out.len();
        self.out.push(Instruction::Unreachable);
        self.close_block();
        Dispatch {
            first_const,
            table,
            depths,
            ranges: Vec::new(),
            emitted: true,
        }
    }

    /// Fills in a dispatch's table: call index `k` goes to the item whose
    /// range holds it.
    fn fill_dispatch(&mut self, dispatch: Dispatch) {
        if !dispatch.emitted {
            return;
        }
        let first = dispatch.ranges.iter().map(|r| r.start).min().unwrap_or(0);
        let mut targets = Vec::new();
        for (range, &depth) in dispatch.ranges.iter().zip(&dispatch.depths) {
            targets.extend(std::iter::repeat_n(depth, range.len()));
        }
        let default = dispatch.depths.last().copied().unwrap_or(0);
        self.out[dispatch.first_const] = Instruction::I32Const(first as i32);
        self.out[dispatch.table] = Instruction::BrTable(targets.into(), default);
    }

    /// Validates, without emitting, the unreachable rest of a frame.
    fn skip_dead_code(&mut self, mut i: usize) -> Result<usize> {
        let mut depth = 0usize;
        loop {
            match self.ops[i].0 {
                Operator::End | Operator::Else if depth == 0 => return Ok(i),
                Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => depth += 1,
                Operator::End => depth -= 1,
                _ => {}
            }
            self.validate(i)?;
            i += 1;
        }
    }

    /// Emits a maximal run of plain operators starting at `i`, taking the
    /// values it consumes from slots and leaving what it produces in slots;
    /// returns the index after it.
    fn segment(&mut self, mut i: usize) -> Result<usize> {
        let types_in = self.types.clone();
        let height_in = self.height();
        let mut lowest = height_in;
        let mut depth = 0usize;
        let mut body = Vec::new();
        let mut ends_in_branch = false;
        loop {
            let op = &self.ops[i].0;
            if depth == 0
                && (self.roles[i] != Role::Plain || matches!(op, Operator::End | Operator::Else))
            {
                break;
            }
            if depth == 0 {
                let pops = op.operator_arity(&self.validator).map_or(0, |(p, _)| p);
                lowest = lowest.min(self.height().saturating_sub(pops));
            }
            body.push(self.translate(i)?);
            match op {
                Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                    self.labels.push(Label::Original(i));
                    depth += 1;
                }
                Operator::End => {
                    self.labels.pop();
                    depth -= 1;
                }
                _ => {}
            }
            self.validate(i)?;
            i += 1;
            if depth == 0 && self.frame_is_unreachable() {
                ends_in_branch = true;
                break;
            }
        }
        self.load_slots(lowest, &types_in[lowest as usize..]);
        self.out.extend(body);
        if !ends_in_branch {
            let types_out = self.types[lowest as usize..].to_vec();
            self.store_slots(lowest, &types_out)?;
        }
        Ok(i)
    }

    /// The instrumented-code local that holds a saved value.
    fn local_of(&mut self, value: Value) -> Result<u32> {
        match value {
            Value::Local(local) => Ok(local),
            Value::Operand(height, rank) => self.slot(height, rank.ty()),
        }
    }

    /// Where a saved value is in the frame, for the metadata.
    fn saved_local(&mut self, value: Value) -> Result<SavedLocal> {
        let (ty, origin) = match value {
            Value::Local(local) => (self.local_types[local as usize], LocalOrigin::Local(local)),
            Value::Operand(height, rank) => (rank.ty(), LocalOrigin::Operand(height)),
        };
        Ok(SavedLocal {
            index: self.local_of(value)?,
            ty,
            offset: self.plan.offsets[&value],
            origin,
        })
    }

    /// The locals holding `values`, in the order of their places in a frame.
    fn saved_locals(&mut self, values: impl Iterator<Item = Value>) -> Result<Vec<SavedLocal>> {
        let mut saved = values
            .map(|value| self.saved_local(value))
            .collect::<Result<Vec<_>>>()?;
        saved.sort_by_key(|value| value.offset);
        Ok(saved)
    }

    /// Sets `pos` to the top of the stack memory's frames.
    fn pos_to_top(&mut self) {
        self.out.extend([
            Instruction::GlobalGet(self.additions.data_global),
            Instruction::I32Load(stack_memarg(self.additions.stack_memory, 0)),
            Instruction::LocalSet(self.pos),
        ]);
    }

    /// Pushes the address of the frame being restored: the prologue has
    /// already popped it, so it starts at `pos`.
    fn frame_address(&mut self) {
        self.out.extend([
            Instruction::GlobalGet(self.additions.data_global),
            Instruction::I32Load(stack_memarg(self.additions.stack_memory, 0)),
        ]);
    }

    /// Pushes the call index the function was suspended at, read from the
    /// header of its frame (which the prologue popped).
    fn rewind_index(&mut self) {
        self.frame_address();
        self.out.push(Instruction::I32Load(stack_memarg(
            self.additions.stack_memory,
            self.plan.frame_size + 4,
        )));
    }

    /// Loads `values` from the frame being restored into their locals.
    fn restore(&mut self, values: &[Value]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.frame_address();
        self.out.push(Instruction::LocalSet(self.pos));
        for &value in values {
            let saved = self.saved_local(value)?;
            self.out.extend([
                Instruction::LocalGet(self.pos),
                load_instruction(
                    saved.ty,
                    stack_memarg(self.additions.stack_memory, saved.offset),
                ),
                Instruction::LocalSet(saved.index),
            ]);
        }
        Ok(())
    }

    /// The values restored at a construct's entry, or at the function's.
    fn hoisted(&self, point: RestorePoint) -> Vec<Value> {
        self.plan
            .hoisted
            .get(&point)
            .map(|values| values.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The function's prologue, while rewinding: check that the frame on
    /// top of the stack is this function's, pop it, restore the values
    /// that have the same value at every call (see [`layout`]), and clear
    /// the other parameters. Clearing them makes every value on the way
    /// to a landing a constant, so none of them stays alive for nothing.
    fn rewind_prologue(&mut self, params: &[ValType]) -> Result<Vec<Instruction<'a>>> {
        let memory = self.additions.stack_memory;
        let body = self.start_prologue();
        let frame_size = self.plan.frame_size;
        self.if_state(STATE_REWINDING, BlockType::Empty);
        self.out.extend([
            Instruction::GlobalGet(self.additions.data_global),
            Instruction::I32Load(stack_memarg(memory, 0)),
            Instruction::I32Const((frame_size + FRAME_HEADER_SIZE) as i32),
            Instruction::I32Sub,
            Instruction::LocalTee(self.pos),
            // A frame of another function means the stack and the code do
            // not belong together: stop rather than run on garbage.
            Instruction::I32Load(stack_memarg(memory, frame_size)),
            Instruction::I32Const(self.function_index as i32),
            Instruction::I32Ne,
            Instruction::If(BlockType::Empty),
            Instruction::Unreachable,
            Instruction::End,
            Instruction::GlobalGet(self.additions.data_global),
            Instruction::LocalGet(self.pos),
            Instruction::I32Store(stack_memarg(memory, 0)),
        ]);
        let restored = self.hoisted(RestorePoint::Entry);
        self.restore(&restored)?;
        for (index, &ty) in params.iter().enumerate() {
            let index = index as u32;
            if is_storable(ty) && !restored.contains(&Value::Local(index)) {
                self.out.extend([zero(ty), Instruction::LocalSet(index)]);
            }
        }
        self.out.push(Instruction::End);
        Ok(self.finish_prologue(body))
    }

    /// Sets the body emitted so far aside, with its cold branches, so
    /// that a prologue can be emitted; see [`Self::finish_prologue`].
    fn start_prologue(&mut self) -> (Vec<Instruction<'a>>, Vec<usize>) {
        (
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.cold),
        )
    }

    /// Returns the prologue emitted since [`Self::start_prologue`] and puts
    /// the body back; the prologue comes first, so the body's cold
    /// branches move by its length.
    fn finish_prologue(
        &mut self,
        (body, body_cold): (Vec<Instruction<'a>>, Vec<usize>),
    ) -> Vec<Instruction<'a>> {
        let prologue = std::mem::replace(&mut self.out, body);
        let shift = prologue.len();
        self.cold
            .extend(body_cold.into_iter().map(|index| index + shift));
        prologue
    }

    /// The entry of a [`Version::Running`] body: while rewinding, go on in
    /// the function's whole copy `whole`, with the same arguments (a tail
    /// call, so that a resumed stack is as deep as the one it resumes).
    fn continue_rewind_in(&mut self, whole: u32, params: &[ValType]) -> Vec<Instruction<'a>> {
        let body = self.start_prologue();
        self.if_state(STATE_REWINDING, BlockType::Empty);
        self.out
            .extend((0..params.len() as u32).map(Instruction::LocalGet));
        self.out
            .extend([Instruction::ReturnCall(whole), Instruction::End]);
        self.finish_prologue(body)
    }

    /// The entry of a [`Version::Entered`] body: take the locals the whole
    /// copy left above `pos`, and the number of the entry loop to go to.
    fn entering_prologue(&mut self) -> Vec<Instruction<'a>> {
        let body = self.start_prologue();
        let memory = self.additions.stack_memory;
        self.pos_to_top();
        for (local, &ty) in self.local_types.iter().enumerate() {
            self.out.extend([
                Instruction::LocalGet(self.pos),
                load_instruction(ty, stack_memarg(memory, self.entries.offsets[local])),
                Instruction::LocalSet(local as u32),
            ]);
        }
        self.out.extend([
            Instruction::LocalGet(self.pos),
            Instruction::I32Load(stack_memarg(memory, self.entries.size)),
            Instruction::LocalSet(self.entry_local),
        ]);
        self.finish_prologue(body)
    }

    /// In the entered copy, at the start of the function's body or of a
    /// block or loop on the way to entry loops: a block ending right before
    /// each construct that is or holds one (and inside it, for an entry
    /// loop, one whose end clears the number), and a dispatch over them,
    /// which only the way in from the prologue takes (see [`reentry`]).
    fn open_ways_in(&mut self, construct: usize) {
        let Some(items) = self.entries.ways_in.get(&construct) else {
            return;
        };
        for (item, numbers) in items.iter().rev() {
            let before = self.open_marked_block(BlockType::Empty);
            let is_entry_loop = self.entries.numbers.get(item) == Some(&numbers.start);
            let clearing = is_entry_loop.then(|| self.open_marked_block(BlockType::Empty));
            self.way_in_marks.insert(*item, (before, clearing));
        }
        let first = items[0].1.start;
        self.out.push(Instruction::LocalGet(self.entry_local));
        self.cold.push(self.out.len());
        self.out.push(Instruction::If(BlockType::Empty));
        self.labels.push(Label::Added);
        let mut targets = Vec::new();
        for (item, numbers) in items {
            let (before, clearing) = self.way_in_marks[item];
            for number in numbers.clone() {
                let label = match clearing {
                    Some(clearing) if number == numbers.start => clearing,
                    _ => before,
                };
                targets.push(self.depth_of(Label::Marked(label)));
            }
        }
        self.out.extend([
            Instruction::LocalGet(self.entry_local),
            Instruction::I32Const(first as i32),
            Instruction::I32Sub,
            // Another construct's entry loop: on, as if not entering.
            Instruction::BrTable(targets.into(), 0),
        ]);
        self.close_block();
    }

    /// In the entered copy, before construct `i`: ends the blocks a way in
    /// to it branches out of, if it is on the way to an entry loop; the
    /// way in to an entry loop itself clears the number, so that no
    /// dispatch takes it again.
    fn close_way_in(&mut self, i: usize) {
        let Some((before, clearing)) = self.way_in_marks.remove(&i) else {
            return;
        };
        if let Some(clearing) = clearing {
            debug_assert!(self.labels.last() == Some(&Label::Marked(clearing)));
            self.out
                .push(Instruction::Br(self.depth_of(Label::Marked(before))));
            self.close_block();
            self.out.extend([
                Instruction::I32Const(0),
                Instruction::LocalSet(self.entry_local),
            ]);
        }
        debug_assert!(self.labels.last() == Some(&Label::Marked(before)));
        self.close_block();
    }

    /// In the whole copy, at the head of entry loop `number`: when not
    /// rewinding, leave for the entered copy (see [`reentry`]).
    fn leave_at_loop_head(&mut self, number: u32) {
        let Some(mark) = self.leave_mark else {
            return;
        };
        self.out.extend([
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Eqz,
        ]);
        self.cold.push(self.out.len());
        self.out.extend([
            Instruction::If(BlockType::Empty),
            Instruction::I32Const(number as i32),
            Instruction::LocalSet(self.entry_local),
            // One more label than `labels` knows: the `if`.
            Instruction::Br(self.depth_of(Label::Marked(mark)) + 1),
            Instruction::End,
        ]);
    }

    /// The path that leaves the whole copy for the entered copy: keep
    /// every local above `pos` (made room for first), then the entry
    /// loop's number, and tail-call the entered copy.
    fn leave_path(&mut self, entered_copy: u32) {
        let memory = self.additions.stack_memory;
        self.out.push(Instruction::Call(self.additions.reserve));
        self.pos_to_top();
        for (local, &ty) in self.local_types.iter().enumerate() {
            self.out.extend([
                Instruction::LocalGet(self.pos),
                Instruction::LocalGet(local as u32),
                store_instruction(ty, stack_memarg(memory, self.entries.offsets[local])),
            ]);
        }
        let params = self.module.func_type(self.function_index).params().len() as u32;
        self.out.extend([
            Instruction::LocalGet(self.pos),
            Instruction::LocalGet(self.entry_local),
            Instruction::I32Store(stack_memarg(memory, self.entries.size)),
        ]);
        self.out.extend((0..params).map(Instruction::LocalGet));
        self.out.push(Instruction::ReturnCall(entered_copy));
    }

    /// Whether the call at `i` may call a suspending import itself, which
    /// makes it the first to push a frame when that import unwinds.
    fn may_call_import(&self, i: usize) -> bool {
        match self.ops[i].0 {
            Operator::Call { function_index } => function_index < self.module.imported_funcs,
            _ => self.module.suspending_import_in_table,
        }
    }

    /// Ends the code before an item (jumping over its landing), and emits
    /// the landing, which restores `values`; `then` emits what the landing
    /// needs after that.
    fn landing(
        &mut self,
        item: Item,
        values: &[Value],
        then: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.out
            .push(Instruction::Br(self.depth_of(Label::Marked(item.entry))));
        self.close_block();
        if self.version == Version::Whole {
            self.restore(values)?;
            then(self)?;
        } else {
            // No dispatch branches here: nothing reaches the landing.
            self.out.push(Instruction::Unreachable);
        }
        self.close_block();
        Ok(())
    }

    /// The result types of the call at `i`.
    fn call_results(&self, i: usize) -> Vec<ValType> {
        let ty = match self.ops[i].0 {
            Operator::Call { function_index } => self.module.func_type(function_index),
            Operator::CallIndirect { type_index, .. } => self.module.types[type_index as usize]
                .as_ref()
                .expect("validated: call_indirect names a function type"),
            _ => unreachable!("only calls are suspending items"),
        };
        ty.results().to_vec()
    }

    /// Emits the suspending call item at `i`: the call at the end of the
    /// code before it, and again in its landing, with the operands it is
    /// made again with (those saved, restored; the others, a value of
    /// their type); then its unwind path. The two ways meet after the
    /// call, so that the operands of neither outlive it. Returns the index
    /// after the call.
    fn call_item(&mut self, item: Item, i: usize) -> Result<usize> {
        let site = self.plan.sites[&i].clone();
        let at_landing: Vec<Value> = site
            .saved
            .iter()
            .filter(|(_, point)| *point == RestorePoint::Landing)
            .map(|&(value, _)| value)
            .collect();
        let (pops, _) = self.ops[i]
            .0
            .operator_arity(&self.validator)
            .context("a call's arity is known")?;
        let base = self.height() - pops;
        let operands = self.types[base as usize..].to_vec();
        let call = self.translate(i)?;

        self.load_slots(base, &operands);
        self.out.push(call.clone());
        self.landing(item, &at_landing, |rewriter| {
            for (k, (&saved, &ty)) in site.operands_saved.iter().zip(&operands).enumerate() {
                if saved {
                    rewriter.load_slots(base + k as u32, &[ty]);
                } else {
                    rewriter.out.push(zero(ty));
                }
            }
            rewriter.out.push(call);
            Ok(())
        })?;
        self.validate(i)?;
        let call_index = self.call_sites.len() as u32;
        self.unwind_path(i, &site, call_index)?;
        let results = self.types[base as usize..].to_vec();
        self.store_slots(base, &results)?;
        Ok(i + 1)
    }

    /// Emits what follows a suspending call: if the call started (or
    /// continued) an unwind, store what `site` saves and return, or
    /// branch to the unwind path it shares with other call sites.
    fn unwind_path(&mut self, i: usize, site: &SitePlan, call_index: u32) -> Result<()> {
        let saved = self.saved_locals(site.saved.iter().map(|&(value, _)| value))?;

        // Unwinding: the call's results (still on the stack, below) are
        // dummies and the argument slots are intact; save, then return.
        self.if_state(STATE_UNWINDING, BlockType::Empty);
        if let Some(&shared) = self.shared_unwinds.by_site.get(&i) {
            let site_local = self.shared_unwinds.site_local;
            let mark = self.shared_unwinds.paths[shared].mark;
            self.out.extend([
                Instruction::I32Const(call_index as i32),
                Instruction::LocalSet(site_local),
                // One more label than `labels` knows: the `if` above.
                Instruction::Br(self.depth_of(Label::Marked(mark)) + 1),
            ]);
        } else {
            let reserve = self.may_call_import(i);
            self.save_frame(&saved, reserve, Instruction::I32Const(call_index as i32));
        }
        self.out.push(Instruction::End);

        self.call_sites.push(CallSite {
            code_offset: self.ops[i].1,
            callee: match self.ops[i].0 {
                Operator::Call { function_index } => Some(function_index),
                _ => None,
            },
            table: match self.ops[i].0 {
                Operator::CallIndirect { table_index, .. } => Some(table_index),
                _ => None,
            },
            size: self.plan.frame_size,
            saved,
        });
        Ok(())
    }

    /// Emits the end of an unwind path: store `saved` in a new frame (made
    /// room for first when `reserve`), write its header with the call
    /// index `call_index` pushes, and return.
    ///
    /// Nothing is called before the values are stored, so that none of
    /// them has to survive a call on this path.
    fn save_frame(&mut self, saved: &[SavedLocal], reserve: bool, call_index: Instruction<'a>) {
        if reserve {
            // The first frame of an unwind: make room for the largest
            // frame (every later one is pushed after `finish_frame`, which
            // keeps that much room).
            self.out.push(Instruction::Call(self.additions.reserve));
        }
        self.pos_to_top();
        let frame_size = self.plan.frame_size;
        let stored: u32 = saved.iter().map(|value| byte_size(value.ty)).sum();
        if stored < frame_size {
            // What this call does not save is zero, so that a frame's
            // bytes depend on nothing but the program's state.
            self.out.extend([
                Instruction::LocalGet(self.pos),
                Instruction::I32Const(0),
                Instruction::I32Const(frame_size as i32),
                Instruction::MemoryFill(self.additions.stack_memory),
            ]);
        }
        for value in saved {
            self.out.extend([
                Instruction::LocalGet(self.pos),
                Instruction::LocalGet(value.index),
                store_instruction(
                    value.ty,
                    stack_memarg(self.additions.stack_memory, value.offset),
                ),
            ]);
        }
        self.out.extend([
            Instruction::I32Const(frame_size as i32),
            Instruction::I32Const(self.function_index as i32),
            call_index,
            Instruction::Call(self.additions.finish_frame),
        ]);
        let function_results = self.module.func_type(self.function_index).results();
        self.out.extend(function_results.iter().map(|&ty| zero(ty)));
        self.out.push(Instruction::Return);
    }

    /// Finds the call sites that save the same values, and opens, around
    /// the body, a block for each set saved at more than one site: the
    /// unwind path those sites share follows the block's end.
    fn open_shared_unwinds(&mut self) {
        let mut sites_by_key: BTreeMap<(Vec<Value>, bool), Vec<usize>> = BTreeMap::new();
        for (&i, site) in &self.plan.sites {
            let mut values: Vec<Value> = site.saved.iter().map(|&(value, _)| value).collect();
            values.sort();
            let key = (values, self.may_call_import(i));
            sites_by_key.entry(key).or_default().push(i);
        }
        let shared: Vec<_> = sites_by_key
            .into_iter()
            .filter(|(_, sites)| sites.len() > 1)
            .collect();
        if shared.is_empty() {
            return;
        }
        self.shared_unwinds.site_local = self.new_local(ValType::I32);
        // Opened outermost first, from the last set in order, so that the
        // first set's block is the innermost and its path comes first
        // after the body.
        for ((values, reserve), sites) in shared.into_iter().rev() {
            let path = self.shared_unwinds.paths.len();
            for i in sites {
                self.shared_unwinds.by_site.insert(i, path);
            }
            let mark = self.open_marked_block(BlockType::Empty);
            self.shared_unwinds.paths.push(SharedUnwind {
                mark,
                values,
                reserve,
            });
        }
    }

    /// Closes the blocks [`Self::open_shared_unwinds`] opened, each
    /// followed by its unwind path, after the body (whose results it
    /// returns first).
    /// Then, in a whole copy with entry loops, the block around them all,
    /// followed by the path that leaves for the entered copy.
    fn close_shared_unwinds(&mut self) -> Result<()> {
        if self.shared_unwinds.paths.is_empty() && self.leave_mark.is_none() {
            return Ok(());
        }
        self.out.push(Instruction::Return);
        let paths = std::mem::take(&mut self.shared_unwinds.paths);
        for path in paths.iter().rev() {
            self.close_block();
            let saved = self.saved_locals(path.values.iter().copied())?;
            let site_local = self.shared_unwinds.site_local;
            self.save_frame(&saved, path.reserve, Instruction::LocalGet(site_local));
        }
        if self.leave_mark.take().is_some() {
            self.close_block();
            self.leave_path(self.entered_copy.expect("a leave block leaves for it"));
        }
        Ok(())
    }

    /// Emits a `block`, `loop` or `if` that contains a suspending call;
    /// returns the index after its `end`.
    fn suspendable_construct(
        &mut self,
        i: usize,
        inherited: Vec<u32>,
    ) -> Result<(usize, Option<Dispatch>)> {
        let (op, _) = &self.ops[i];
        let block_type = match op {
            Operator::Block { blockty } | Operator::Loop { blockty } | Operator::If { blockty } => {
                *blockty
            }
            _ => unreachable!("classified as a construct start"),
        };
        let (params, results) = block_signature(self.module, block_type);
        let is_if = matches!(op, Operator::If { .. });
        let height = self.height();
        let base = height - params.len() as u32 - is_if as u32;
        let encoded_type = RoundtripReencoder.block_type(block_type)?;

        self.load_slots(base, &params);
        self.out.push(match op {
            Operator::Loop { .. } => Instruction::Loop(encoded_type),
            _ => Instruction::Block(encoded_type),
        });
        self.labels.push(Label::Original(i));
        self.validate(i)?;
        // Entry and every branch back to a loop bring the parameters on the
        // real stack: keep them in their slots.
        self.store_slots(base, &params)?;
        if let Some(&number) = self.entries.numbers.get(&i) {
            self.leave_at_loop_head(number);
        }
        let (end, dispatch) = if is_if {
            (self.if_arms(i, base, height - 1, &results)?, None)
        } else {
            self.region(i + 1, inherited)?
        };
        self.load_region_results(base, &results);
        self.out.push(Instruction::End);
        self.labels.pop();
        self.validate(end)?;
        self.store_slots(base, &results)?;
        Ok((end + 1, dispatch))
    }

    /// Emits the arms of a suspendable `if` inside its outer block; returns
    /// the index of its `end`. While rewinding, the condition is whether
    /// the call being resumed is in the `then` arm.
    fn if_arms(
        &mut self,
        i: usize,
        base: u32,
        condition_height: u32,
        results: &[ValType],
    ) -> Result<usize> {
        let condition = self.slot(condition_height, ValType::I32)?;
        self.out.push(Instruction::Block(BlockType::Empty));
        self.labels.push(Label::Added);
        // rewinding ? in_then_range : condition. The condition is read on
        // the normal path only: a read on the way to a landing would keep
        // its slot alive from the region's dispatch onwards.
        self.if_state(
            STATE_REWINDING,
            BlockType::Result(wasm_encoder::ValType::I32),
        );
        self.rewind_index();
        let first_const = self.out.len();
        self.out.extend([
            Instruction::I32Const(0),
            Instruction::I32Sub,
            Instruction::I32Const(0),
            Instruction::I32LtU,
            Instruction::Else,
            Instruction::LocalGet(condition),
            Instruction::End,
            Instruction::I32Eqz,
            Instruction::BrIf(0),
        ]);
        let first = self.call_sites.len();
        let (stop, _) = self.region(i + 1, Vec::new())?;
        let count = self.call_sites.len() - first;
        self.out[first_const] = Instruction::I32Const(first as i32);
        self.out[first_const + 2] = Instruction::I32Const(count as i32);
        self.load_region_results(base, results);
        self.out
            .push(Instruction::Br(self.depth_of(Label::Original(i))));
        self.close_block();
        if matches!(self.ops[stop].0, Operator::Else) {
            self.validate(stop)?;
            Ok(self.region(stop + 1, Vec::new())?.0)
        } else {
            Ok(stop)
        }
    }

    /// Translates operator `i`, remapping branch depths to the emitted labels.
    fn translate(&self, i: usize) -> Result<Instruction<'a>> {
        let op = self.ops[i].0.clone();
        Ok(match op {
            Operator::Br { relative_depth } => Instruction::Br(self.remap(relative_depth)),
            Operator::BrIf { relative_depth } => Instruction::BrIf(self.remap(relative_depth)),
            Operator::BrOnNull { relative_depth } => {
                Instruction::BrOnNull(self.remap(relative_depth))
            }
            Operator::BrOnNonNull { relative_depth } => {
                Instruction::BrOnNonNull(self.remap(relative_depth))
            }
            Operator::BrTable { targets } => {
                let mut remapped = Vec::with_capacity(targets.len() as usize);
                for target in targets.targets() {
                    remapped.push(self.remap(target?));
                }
                Instruction::BrTable(remapped.into(), self.remap(targets.default()))
            }
            other => RoundtripReencoder.instruction(other)?,
        })
    }

    /// The emitted depth of the original label at `depth`.
    fn remap(&self, depth: u32) -> u32 {
        let mut originals = 0;
        for (position, label) in self.labels.iter().rev().enumerate() {
            if let Label::Original(_) = label {
                if originals == depth {
                    return position as u32;
                }
                originals += 1;
            }
        }
        unreachable!("validated branch depth {depth}")
    }

    fn depth_of(&self, wanted: Label) -> u32 {
        let position = self.labels.iter().rev().position(|l| *l == wanted);
        position.expect("label is open") as u32
    }
}

/// A block type's parameters and results.
fn block_signature(
    module: &Analysis,
    block_type: wasmparser::BlockType,
) -> (Vec<ValType>, Vec<ValType>) {
    match block_type {
        wasmparser::BlockType::Empty => (vec![], vec![]),
        wasmparser::BlockType::Type(ty) => (vec![], vec![ty]),
        wasmparser::BlockType::FuncType(index) => {
            let ty = module.types[index as usize]
                .as_ref()
                .expect("validated block type");
            (ty.params().to_vec(), ty.results().to_vec())
        }
    }
}

/// Groups consecutive locals of the same type, as the code section wants.
fn compress_locals(types: impl Iterator<Item = ValType>) -> Vec<(u32, wasm_encoder::ValType)> {
    let mut groups: Vec<(u32, wasm_encoder::ValType)> = Vec::new();
    for ty in types {
        let ty = RoundtripReencoder.val_type(ty).expect("plain type");
        match groups.last_mut() {
            Some((count, last)) if *last == ty => *count += 1,
            _ => groups.push((1, ty)),
        }
    }
    groups
}

fn stack_memarg(memory: u32, offset: u32) -> MemArg {
    MemArg {
        offset: offset as u64,
        align: 0,
        memory_index: memory,
    }
}

fn load_instruction<'a>(ty: ValType, memarg: MemArg) -> Instruction<'a> {
    match ty {
        ValType::I32 => Instruction::I32Load(memarg),
        ValType::I64 => Instruction::I64Load(memarg),
        ValType::F32 => Instruction::F32Load(memarg),
        ValType::F64 => Instruction::F64Load(memarg),
        ValType::V128 => Instruction::V128Load(memarg),
        ValType::Ref(_) => unreachable!("reference types are refused before layout"),
    }
}

fn store_instruction<'a>(ty: ValType, memarg: MemArg) -> Instruction<'a> {
    match ty {
        ValType::I32 => Instruction::I32Store(memarg),
        ValType::I64 => Instruction::I64Store(memarg),
        ValType::F32 => Instruction::F32Store(memarg),
        ValType::F64 => Instruction::F64Store(memarg),
        ValType::V128 => Instruction::V128Store(memarg),
        ValType::Ref(_) => unreachable!("reference types are refused before layout"),
    }
}

/// The zero (or null) value of a type, returned by an unwinding function.
fn zero<'a>(ty: ValType) -> Instruction<'a> {
    match ty {
        ValType::I32 => Instruction::I32Const(0),
        ValType::I64 => Instruction::I64Const(0),
        ValType::F32 => Instruction::F32Const(0.0f32.into()),
        ValType::F64 => Instruction::F64Const(0.0f64.into()),
        ValType::V128 => Instruction::V128Const(0),
        ValType::Ref(r) => Instruction::RefNull(
            RoundtripReencoder
                .heap_type(r.heap_type())
                .expect("plain heap type"),
        ),
    }
}
