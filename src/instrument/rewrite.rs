//! Phase 2: rewrite one function body so that it can unwind and rewind.
//!
//! Wasm's operand stack cannot be read from the host, and values below a
//! block boundary cannot be reached from inside the block. So inside every
//! *suspendable* construct (one that contains, at any depth, a call that can
//! suspend) the operand stack between items is kept in locals: the value at
//! height `h` of type `T` lives in a "slot" local dedicated to `(h, T)`.
//! Runs of ordinary instructions between suspendable items become
//! *segments* that load the slots they consume, run unchanged on the real
//! stack, and store what they leave.
//!
//! **Unwinding.** After each suspending call, if the state says unwinding,
//! the call site pushes a frame holding only what is live there (the
//! original locals live after the call, found by [`super::liveness`], and
//! the operand slots up to the call's arguments) and returns:
//!
//! ```wat
//! ;; before                      ;; after (call index 0)
//! local.get 0                    local.get 0  i32.const 1  i32.add
//! i32.const 1                    local.set $slot0_i32            ;; segment
//! i32.add                        ...
//! call $sleep ;; suspends        local.get $slot0_i32
//! local.get 2                    call $sleep
//! i32.add                        (if (i32.eq (global.get $state) (i32.const 1))
//!                                  (then (local.set $pos (call $push_frame
//!                                          (i32.const 8) (i32.const $f) (i32.const 0)))
//!                                        (call $store_2_i32 (local.get $pos)
//!                                          (local.get 2) (local.get $slot0_i32))
//!                                        (return (i32.const 0))))
//!                                local.set $slot0_i32  ...
//! ```
//!
//! The values of a frame are grouped by type, and each group is stored
//! (and loaded back) by one call to a small helper, which keeps the code a
//! call site adds to about two bytes per saved value.
//!
//! Saving only live values at the call site, instead of every local in one
//! shared epilogue, is what keeps instrumented code fast: a shared save
//! reads every local on a path reachable from every call, so a compiler
//! must keep every local alive everywhere.
//!
//! **Rewinding.** The function's prologue reads the call index from the
//! frame on top of the stack. Every suspendable region (the function body,
//! a block or loop body, an `if` arm) starts with a *dispatch* that, while
//! rewinding, branches straight to the item holding that call: each item
//! is wrapped in an entry block, and a call item also in a landing block
//! that pops its frame and restores what was saved before falling into the
//! call. Ordinary code never runs while rewinding, and the restored values
//! only join the normal path right at the call:
//!
//! ```wat
//! block $entry1                      ;; item 1: a loop holding calls 1..3
//!   block $entry0                    ;; item 0: call 0
//!     block $landing0
//!       (if (i32.eq (global.get $state) (i32.const 2))
//!         (then (br_table $landing0 $entry1 $entry1 $entry1
//!                 (local.get $rewind_index))))
//!       ...segment...
//!       br $entry0
//!     end
//!     ...pop frame 0, restore what call 0 saved...
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
//! Code outside suspendable constructs, and functions that cannot suspend,
//! are left exactly as they were.

use std::collections::HashMap;
use std::ops::Range;

use anyhow::{Context as _, Result, bail};
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, Function, Instruction, MemArg};
use wasmparser::{
    FuncToValidate, FuncValidator, FunctionBody, Operator, ValType, ValidatorResources,
};

use super::analyse::Analysis;
use super::liveness::live_after;
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
    /// `push_frame(size, function, call_index) -> address`: reserves a
    /// frame of `size` bytes plus its header, writes the header, and
    /// returns where the saved values go.
    pub push_frame: u32,
    /// `pop_frame(size) -> address`: pops the frame on top of the stack,
    /// whose values take `size` bytes, and returns where they are.
    pub pop_frame: u32,
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

/// The most values one frame helper moves.
const MAX_HELPER_VALUES: usize = 16;

/// A function that stores a run of same-typed values at an address of the
/// stack memory, or loads them back. Call sites save and restore their
/// frames through these: about two bytes per value instead of nine for an
/// inline `local.get` / `store`, which matters when a program has
/// thousands of suspending call sites.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHelper {
    /// `store(address, values...)`, else `load(address) -> values...`.
    pub store: bool,
    /// The values' type.
    pub ty: ValType,
    /// How many values.
    pub count: u32,
    /// Its function type's index.
    pub type_index: u32,
}

/// The frame helpers the rewritten functions use, appended to the module
/// after the runtime functions in order of first use.
pub(crate) struct FrameHelpers {
    first_index: u32,
    pub helpers: Vec<FrameHelper>,
}

impl FrameHelpers {
    pub fn new(first_index: u32) -> Self {
        FrameHelpers {
            first_index,
            helpers: Vec::new(),
        }
    }

    /// The function index of the helper that stores (or loads) `count`
    /// values of type `ty`.
    fn index(&mut self, store: bool, ty: ValType, count: usize, types: &mut NewTypes) -> u32 {
        let found = self
            .helpers
            .iter()
            .position(|h| h.store == store && h.ty == ty && h.count as usize == count);
        let position = found.unwrap_or_else(|| {
            let values = vec![ty; count];
            let type_index = if store {
                types.function_type(&[&[ValType::I32], values.as_slice()].concat(), &[])
            } else {
                types.function_type(&[ValType::I32], &values)
            };
            self.helpers.push(FrameHelper {
                store,
                ty,
                count: count as u32,
                type_index,
            });
            self.helpers.len() - 1
        });
        self.first_index + position as u32
    }
}

/// The body of a frame helper: values at consecutive offsets from the
/// address in parameter 0.
pub(crate) fn frame_helper_body(helper: &FrameHelper, stack_memory: u32) -> Function {
    let mut function = Function::new([]);
    let size = byte_size(helper.ty);
    for k in 0..helper.count {
        let memarg = stack_memarg(stack_memory, k * size);
        function.instruction(&Instruction::LocalGet(0));
        if helper.store {
            function.instruction(&Instruction::LocalGet(k + 1));
            function.instruction(&store_instruction(helper.ty, memarg));
        } else {
            function.instruction(&load_instruction(helper.ty, memarg));
        }
    }
    function.instruction(&Instruction::End);
    function
}

/// A rewritten function body and its frame layout.
pub(crate) struct Rewritten {
    pub body: Function,
    pub layout: FrameLayout,
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

/// Locals of the rewritten code that are never saved: the first two it
/// adds after the original ones.
#[derive(Clone, Copy)]
struct Temporaries {
    /// The address of the frame being pushed or popped.
    pos: u32,
    /// While rewinding, the call index the function was suspended at.
    rewind_index: u32,
}

/// Rewrites function `index`; see the module documentation.
pub(crate) fn rewrite(
    module: &Analysis,
    index: u32,
    body: &FunctionBody<'_>,
    func: FuncToValidate<ValidatorResources>,
    additions: &Additions,
    new_types: &mut NewTypes,
    helpers: &mut FrameHelpers,
) -> Result<Rewritten> {
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
    let live = live_after(&ops, &sites, local_types.len());

    let mut rewriter = Rewriter {
        module,
        function_index: index,
        ops: &ops,
        roles: &roles,
        live,
        local_types: &local_types,
        validator: {
            let mut validator = func.into_validator(Default::default());
            validator.read_locals(&mut body.get_binary_reader())?;
            validator
        },
        types: Vec::new(),
        labels: vec![Label::Original(FUNCTION_FRAME)],
        next_mark: 0,
        out: Vec::new(),
        slots: HashMap::new(),
        extra_locals: vec![ValType::I32, ValType::I32],
        first_extra: local_types.len() as u32,
        temps: Temporaries {
            pos: local_types.len() as u32,
            rewind_index: local_types.len() as u32 + 1,
        },
        call_sites: Vec::new(),
        additions,
        new_types,
        helpers,
        describe: describe(),
    };
    let results = signature.results().to_vec();
    let body_type = rewriter.new_types.block_type(&results);

    rewriter.out.push(Instruction::Block(body_type));
    let (end, _) = rewriter.region(0, Vec::new())?;
    rewriter.load_region_results(0, &results);
    rewriter.validate(end)?;
    rewriter.out.push(Instruction::End);

    let mut function = Function::new(compress_locals(
        local_types[signature.params().len()..]
            .iter()
            .chain(&rewriter.extra_locals)
            .copied(),
    ));
    let prologue = rewind_prologue(index, signature.params(), rewriter.temps, additions);
    for instruction in prologue.iter().chain(&rewriter.out) {
        function.instruction(instruction);
    }
    function.instruction(&Instruction::End);
    Ok(Rewritten {
        body: function,
        layout: FrameLayout {
            call_sites: rewriter.call_sites,
        },
    })
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

/// The order of types in a frame: grouped, so that helpers move each
/// type's values together.
fn type_rank(ty: ValType) -> u8 {
    match ty {
        ValType::I32 => 0,
        ValType::I64 => 1,
        ValType::F32 => 2,
        ValType::F64 => 3,
        ValType::V128 => 4,
        ValType::Ref(_) => 5,
    }
}

fn byte_size(ty: ValType) -> u32 {
    match ty {
        ValType::I32 | ValType::F32 => 4,
        ValType::I64 | ValType::F64 => 8,
        ValType::V128 => 16,
        ValType::Ref(_) => unreachable!("reference types are refused before layout"),
    }
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
}

struct Rewriter<'m, 'a> {
    module: &'m Analysis<'a>,
    function_index: u32,
    ops: &'m [(Operator<'a>, usize)],
    roles: &'m [Role],
    /// The original locals live after each suspending call, by operator index.
    live: HashMap<usize, Vec<u32>>,
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
    temps: Temporaries,
    call_sites: Vec<CallSite>,
    additions: &'m Additions,
    new_types: &'m mut NewTypes,
    helpers: &'m mut FrameHelpers,
    describe: String,
}

impl<'a> Rewriter<'_, 'a> {
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
                "{} keeps a value of type {ty} on the operand stack across a suspending call, which cannot be saved in a snapshot",
                self.describe
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
    fn open_marked_block(&mut self) -> u32 {
        let mark = self.next_mark;
        self.next_mark += 1;
        self.out.push(Instruction::Block(BlockType::Empty));
        self.labels.push(Label::Marked(mark));
        mark
    }

    fn close_block(&mut self) {
        self.out.push(Instruction::End);
        self.labels.pop();
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
                        self.close_landing(item, i)?
                    } else {
                        self.close_block();
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
        // Items in unreachable code were skipped: close their blocks.
        for item in &items[ranges.len()..] {
            if item.landing.is_some() {
                self.close_block();
            }
            self.close_block();
        }
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
        let mut kinds = Vec::new();
        let mut depth = 0usize;
        for (role, (op, _)) in self.roles[start..].iter().zip(&self.ops[start..]) {
            if depth == 0 {
                if matches!(op, Operator::End | Operator::Else) {
                    break;
                }
                if *role != Role::Plain {
                    kinds.push(*role == Role::SuspendingCall);
                }
            }
            match op {
                Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => depth += 1,
                Operator::End => depth -= 1,
                _ => {}
            }
        }
        let mut items: Vec<Item> = kinds
            .iter()
            .rev()
            .map(|&is_call| Item {
                entry: self.open_marked_block(),
                landing: is_call.then(|| self.open_marked_block()),
            })
            .collect();
        items.reverse();
        items
    }

    /// Emits a region's dispatch: while rewinding, branch to the item that
    /// holds the call being resumed. Its table is filled in by
    /// [`Self::fill_dispatch`] once the items have their call indices.
    fn dispatch(&mut self, targets: &[u32]) -> Dispatch {
        self.out.extend([
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Const(STATE_REWINDING),
            Instruction::I32Eq,
            Instruction::If(BlockType::Empty),
        ]);
        self.labels.push(Label::Added);
        let depths = targets
            .iter()
            .map(|&target| self.depth_of(Label::Marked(target)))
            .collect();
        self.out
            .push(Instruction::LocalGet(self.temps.rewind_index));
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
        }
    }

    /// Fills in a dispatch's table: call index `k` goes to the item whose
    /// range holds it.
    fn fill_dispatch(&mut self, dispatch: Dispatch) {
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

    /// What a frame saved at the call at `i` holds: the original locals
    /// live after the call, then every operand slot up to and including
    /// the call's arguments (needed to make the call again on rewind).
    ///
    /// Values are grouped by type, so that frame helpers move each group
    /// in one call.
    fn saved_values(&mut self, i: usize) -> Result<(Vec<SavedLocal>, u32)> {
        let mut saved = Vec::new();
        let live = self.live.get(&i).cloned().unwrap_or_default();
        for local in live {
            let ty = self.local_types[local as usize];
            if !is_storable(ty) {
                bail!(
                    "{} needs local {local} of type {ty} after a suspending call, which cannot be saved in a snapshot",
                    self.describe
                );
            }
            saved.push(SavedLocal {
                index: local,
                ty,
                offset: 0,
                origin: LocalOrigin::Local(local),
            });
        }
        for height in 0..self.height() {
            let ty = self.types[height as usize];
            let local = self.slot(height, ty)?;
            saved.push(SavedLocal {
                index: local,
                ty,
                offset: 0,
                origin: LocalOrigin::Operand(height),
            });
        }
        saved.sort_by_key(|value| type_rank(value.ty));
        let mut offset = 0;
        for value in &mut saved {
            value.offset = offset;
            offset += byte_size(value.ty);
        }
        Ok((saved, offset))
    }

    /// Saves (`store`) or restores the values of a frame at `pos`, one
    /// frame-helper call per run of same-typed values.
    fn move_frame_values(&mut self, saved: &[SavedLocal], store: bool) {
        let pos = self.temps.pos;
        for group in saved
            .chunk_by(|a, b| a.ty == b.ty)
            .flat_map(|run| run.chunks(MAX_HELPER_VALUES))
        {
            let helper = self
                .helpers
                .index(store, group[0].ty, group.len(), &mut *self.new_types);
            self.out.push(Instruction::LocalGet(pos));
            if group[0].offset != 0 {
                self.out.extend([
                    Instruction::I32Const(group[0].offset as i32),
                    Instruction::I32Add,
                ]);
            }
            if store {
                self.out
                    .extend(group.iter().map(|v| Instruction::LocalGet(v.index)));
                self.out.push(Instruction::Call(helper));
            } else {
                self.out.push(Instruction::Call(helper));
                self.out
                    .extend(group.iter().rev().map(|v| Instruction::LocalSet(v.index)));
            }
        }
    }

    /// Ends the segment before the call item at `i` (jumping over the
    /// landing), emits the landing that pops and restores the call's frame,
    /// and then the call; returns the index after it.
    fn close_landing(&mut self, item: Item, i: usize) -> Result<usize> {
        let (saved, size) = self.saved_values(i)?;
        self.out
            .push(Instruction::Br(self.depth_of(Label::Marked(item.entry))));
        self.close_block();
        self.out.extend([
            Instruction::I32Const(size as i32),
            Instruction::Call(self.additions.pop_frame),
            Instruction::LocalSet(self.temps.pos),
        ]);
        self.move_frame_values(&saved, false);
        self.close_block();
        self.suspending_call(i, saved, size)
    }

    /// Emits the suspending call at `i` and its unwind path, which saves
    /// `saved` (`size` bytes); returns the index after it.
    fn suspending_call(&mut self, i: usize, saved: Vec<SavedLocal>, size: u32) -> Result<usize> {
        let (pops, _) = self.ops[i]
            .0
            .operator_arity(&self.validator)
            .context("a call's arity is known")?;
        let call_index = self.call_sites.len() as u32;
        let base = self.height() - pops;
        let params = self.types[base as usize..].to_vec();
        self.load_slots(base, &params);
        let call = self.translate(i)?;
        self.out.push(call);
        self.validate(i)?;
        let results = self.types[base as usize..].to_vec();

        // Unwinding: the call's results (still on the stack, below) are
        // dummies and the argument slots are intact; save, then return.
        let pos = self.temps.pos;
        self.out.extend([
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Const(STATE_UNWINDING),
            Instruction::I32Eq,
            Instruction::If(BlockType::Empty),
            Instruction::I32Const(size as i32),
            Instruction::I32Const(self.function_index as i32),
            Instruction::I32Const(call_index as i32),
            Instruction::Call(self.additions.push_frame),
            Instruction::LocalSet(pos),
        ]);
        self.move_frame_values(&saved, true);
        let function_results = self.module.func_type(self.function_index).results();
        self.out.extend(function_results.iter().map(|&ty| zero(ty)));
        self.out.extend([Instruction::Return, Instruction::End]);
        self.store_slots(base, &results)?;

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
            size,
            saved,
        });
        Ok(i + 1)
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
        let (params, results) = self.block_signature(block_type);
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
        // select(in_then_range, condition, rewinding)
        self.out
            .push(Instruction::LocalGet(self.temps.rewind_index));
        let first_const = self.out.len();
        self.out.extend([
            Instruction::I32Const(0),
            Instruction::I32Sub,
            Instruction::I32Const(0),
            Instruction::I32LtU,
            Instruction::LocalGet(condition),
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Const(STATE_REWINDING),
            Instruction::I32Eq,
            Instruction::Select,
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

    fn block_signature(&self, block_type: wasmparser::BlockType) -> (Vec<ValType>, Vec<ValType>) {
        match block_type {
            wasmparser::BlockType::Empty => (vec![], vec![]),
            wasmparser::BlockType::Type(ty) => (vec![], vec![ty]),
            wasmparser::BlockType::FuncType(index) => {
                let ty = self.module.types[index as usize]
                    .as_ref()
                    .expect("validated block type");
                (ty.params().to_vec(), ty.results().to_vec())
            }
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

/// While rewinding: check that the frame on top of the stack is this
/// function's, read the call index it was suspended at, and clear the
/// parameters. Nothing else is restored here: each call's landing restores
/// what that call saved. Clearing the parameters makes every value on the
/// way to a landing a constant, so none of them stays alive for nothing.
fn rewind_prologue<'a>(
    function_index: u32,
    params: &[ValType],
    ctx: Temporaries,
    additions: &Additions,
) -> Vec<Instruction<'a>> {
    let memory = additions.stack_memory;
    let mut code = vec![
        Instruction::GlobalGet(additions.state_global),
        Instruction::I32Const(STATE_REWINDING),
        Instruction::I32Eq,
        Instruction::If(BlockType::Empty),
        Instruction::GlobalGet(additions.data_global),
        Instruction::I32Load(stack_memarg(memory, 0)),
        Instruction::I32Const(FRAME_HEADER_SIZE as i32),
        Instruction::I32Sub,
        Instruction::LocalTee(ctx.pos),
        // A frame of another function means the stack and the code do not
        // belong together: stop rather than run on garbage.
        Instruction::I32Load(stack_memarg(memory, 0)),
        Instruction::I32Const(function_index as i32),
        Instruction::I32Ne,
        Instruction::If(BlockType::Empty),
        Instruction::Unreachable,
        Instruction::End,
        Instruction::LocalGet(ctx.pos),
        Instruction::I32Load(stack_memarg(memory, 4)),
        Instruction::LocalSet(ctx.rewind_index),
    ];
    for (index, &ty) in params.iter().enumerate() {
        if is_storable(ty) {
            code.extend([zero(ty), Instruction::LocalSet(index as u32)]);
        }
    }
    code.push(Instruction::End);
    code
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
