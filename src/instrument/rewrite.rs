//! Phase 2: rewrite one function body so that it can unwind and rewind.
//!
//! Wasm's operand stack cannot be read from the host, and values below a
//! block boundary cannot be reached from inside the block. So inside every
//! *suspendable* construct (one that contains, at any depth, a call that can
//! suspend) the operand stack is kept in locals instead: the value at height
//! `h` of type `T` lives in a "slot" local dedicated to `(h, T)`. Runs of
//! ordinary instructions between suspendable items become *segments* that
//! load the slots they consume, run unchanged on the real stack, store what
//! they leave, and are skipped while rewinding:
//!
//! ```wat
//! ;; before                      ;; after (inside a suspendable frame)
//! local.get 0                    (if (i32.eqz (global.get $state))
//! i32.const 1                      (then local.get 0  i32.const 1  i32.add
//! i32.add                                local.set $slot0_i32))
//! call $sleep ;; suspends        (if (i32.or (i32.eqz (global.get $state))
//!                                            (i32.eq (local.get $ridx) (i32.const 0)))
//!                                  (then (call $sleep (local.get $slot0_i32))
//!                                        (if (i32.eq (global.get $state) (i32.const 1))
//!                                          (then (br $unwind (i32.const 0))))))
//! ```
//!
//! Each suspending call gets an index. Unwinding branches to the function's
//! `$unwind` label with that index, which saves every local (slots
//! included) as a frame in the stack memory. Rewinding restores the frame at
//! entry and "falls forward": segments are skipped, suspendable blocks,
//! loops and `if` arms are entered, until the call with the saved index runs
//! again with the same arguments, which are still in their slots. A
//! suspendable `if` is lowered so that rewinding enters the `then` arm and,
//! if the call was not there, falls into the `else` arm:
//!
//! ```wat
//! ;; before                      ;; after
//! if (result i32)                block $if (result i32)
//!   ...then...                     block $else
//! else                               local.get $cond  rewinding?  i32.or
//!   ...else...                       i32.eqz  br_if $else
//! end                                ...then...  results from slots
//!                                    normal?  br_if $if   drop
//!                                  end
//!                                  ...else...  results from slots
//!                                end
//! ```
//!
//! Code outside suspendable constructs, and functions that cannot suspend,
//! are left exactly as they were.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, Function, Instruction, MemArg};
use wasmparser::{
    FuncToValidate, FuncValidator, FunctionBody, Operator, ValType, ValidatorResources,
};

use super::analyse::Module;
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
            many => {
                let key = (Vec::new(), many.to_vec());
                let position = match self.types.iter().position(|t| *t == key) {
                    Some(position) => position,
                    None => {
                        self.types.push(key);
                        self.types.len() - 1
                    }
                };
                BlockType::FunctionType(self.first_index + position as u32)
            }
        }
    }
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
    /// A label the rewrite introduced.
    Added,
    /// The function's `$unwind` block.
    Unwind,
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
    module: &Module,
    index: u32,
    body: &FunctionBody<'_>,
    func: FuncToValidate<ValidatorResources>,
    additions: &Additions,
    new_types: &mut NewTypes,
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
    if let Some(ty) = local_types.iter().find(|t| !is_storable(**t)) {
        bail!(
            "{} needs instrumentation but has a local of type {ty}, which cannot be saved in a snapshot",
            describe()
        );
    }
    let original_locals = local_types.len() as u32;

    let mut rewriter = Rewriter {
        module,
        ops: &ops,
        roles: &roles,
        validator: {
            let mut validator = func.into_validator(Default::default());
            validator.read_locals(&mut body.get_binary_reader())?;
            validator
        },
        types: Vec::new(),
        labels: vec![Label::Unwind, Label::Original(FUNCTION_FRAME)],
        out: Vec::new(),
        slots: HashMap::new(),
        result_temps: HashMap::new(),
        extra_locals: Vec::new(),
        slot_heights: HashMap::new(),
        first_extra: original_locals,
        call_sites: Vec::new(),
        additions,
        new_types,
        describe: describe(),
    };
    // Fixed temporaries first: they are never saved.
    let pos = rewriter.new_local(ValType::I32);
    let rewind_index = rewriter.new_local(ValType::I32);
    let call_index = rewriter.new_local(ValType::I32);
    let ctx = Temporaries {
        pos,
        rewind_index,
        call_index,
    };
    let results = signature.results().to_vec();
    let body_type = rewriter.new_types.block_type(&results);

    // The body, inside `$unwind` and the function's own label.
    rewriter.out.push(Instruction::Block(BlockType::Result(
        wasm_encoder::ValType::I32,
    )));
    rewriter.out.push(Instruction::Block(body_type));
    let end = rewriter.region(0, &ctx)?;
    rewriter.load_region_results(0, &results);
    rewriter.validate(end)?;
    rewriter.out.push(Instruction::End);
    rewriter.out.push(Instruction::Return);
    rewriter.out.push(Instruction::End);

    let layout = rewriter.frame_layout(&local_types);
    let mut function = Function::new(compress_locals(
        local_types[signature.params().len()..]
            .iter()
            .chain(&rewriter.extra_locals)
            .copied(),
    ));
    let index_in_frame = index;
    emit_rewind_prologue(&mut function, &layout, index_in_frame, &ctx, additions);
    for instruction in &rewriter.out {
        function.instruction(instruction);
    }
    emit_unwind_epilogue(
        &mut function,
        &layout,
        index_in_frame,
        &ctx,
        additions,
        &results,
    );
    function.instruction(&Instruction::End);
    Ok(Rewritten {
        body: function,
        layout,
    })
}

/// Locals the prologue and epilogue use; they are not part of the frame.
struct Temporaries {
    pos: u32,
    rewind_index: u32,
    call_index: u32,
}

/// Finds suspending calls and the constructs that contain them.
fn classify(module: &Module, ops: &[(Operator, usize)]) -> Result<Vec<Role>> {
    let mut roles = vec![Role::Plain; ops.len()];
    let mut open: Vec<usize> = Vec::new();
    for (i, (op, _)) in ops.iter().enumerate() {
        let suspends = match *op {
            Operator::Call { function_index } => module.can_suspend[function_index as usize],
            Operator::CallIndirect { type_index, .. } => module.indirect_can_suspend(type_index),
            Operator::ReturnCall { function_index } => {
                if module.can_suspend[function_index as usize] {
                    bail!("a tail call (return_call) can suspend, which wasnap cannot instrument")
                }
                false
            }
            Operator::ReturnCallIndirect { type_index, .. }
            | Operator::CallRef { type_index }
            | Operator::ReturnCallRef { type_index } => {
                if module.indirect_can_suspend(type_index) {
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

fn byte_size(ty: ValType) -> u32 {
    match ty {
        ValType::I32 | ValType::F32 => 4,
        ValType::I64 | ValType::F64 => 8,
        ValType::V128 => 16,
        ValType::Ref(_) => unreachable!("reference types are refused before layout"),
    }
}

struct Rewriter<'m, 'a> {
    module: &'m Module<'a>,
    ops: &'m [(Operator<'a>, usize)],
    roles: &'m [Role],
    validator: FuncValidator<ValidatorResources>,
    /// Types of the original operand stack, bottom first.
    types: Vec<ValType>,
    labels: Vec<Label>,
    out: Vec<Instruction<'a>>,
    slots: HashMap<(u32, ValType), u32>,
    result_temps: HashMap<(u32, ValType), u32>,
    /// Types of the locals added after the original ones.
    extra_locals: Vec<ValType>,
    /// The operand-stack height each slot local stands for.
    slot_heights: HashMap<u32, u32>,
    first_extra: u32,
    call_sites: Vec<CallSite>,
    additions: &'m Additions,
    new_types: &'m mut NewTypes,
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
        self.slot_heights.insert(local, height);
        Ok(local)
    }

    fn result_temp(&mut self, position: u32, ty: ValType) -> u32 {
        if let Some(&local) = self.result_temps.get(&(position, ty)) {
            return local;
        }
        let local = self.new_local(ty);
        self.result_temps.insert((position, ty), local);
        local
    }

    /// Pushes the results of the region just emitted, at heights `base..`,
    /// onto the real stack.
    fn load_region_results(&mut self, base: u32, types: &[ValType]) {
        if !self.frame_is_unreachable() || types.iter().all(|&ty| is_storable(ty)) {
            self.load_slots(base, types);
            return;
        }
        // The region ends in a branch, and a result is a reference, which
        // has no slot. Rewinding can still fall through here, the branch
        // being skipped, and then carries the saved slots on unchanged; a
        // reference result would have made the construct's store refuse, so
        // only a function's own results or a `then` arm's (dropped while
        // rewinding) get here. A null type-checks in their place.
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

    /// Emits the items of a suspendable frame from operator `i` up to the
    /// frame's `else` or `end`, whose index it returns (not consumed).
    fn region(&mut self, mut i: usize, ctx: &Temporaries) -> Result<usize> {
        loop {
            if matches!(self.ops[i].0, Operator::End | Operator::Else) {
                return Ok(i);
            }
            i = match self.roles[i] {
                Role::SuspendingCall => self.suspending_call(i, ctx)?,
                Role::SuspendableStart => self.suspendable_construct(i, ctx)?,
                Role::Plain => self.segment(i)?,
            };
            if self.frame_is_unreachable() {
                i = self.skip_dead_code(i)?;
            }
        }
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

    /// Emits a maximal run of plain operators starting at `i`, guarded so
    /// that it is skipped while rewinding; returns the index after it.
    fn segment(&mut self, mut i: usize) -> Result<usize> {
        let types_in = self.types.clone();
        let height_in = self.height();
        let mut lowest = height_in;
        let mut depth = 0usize;
        let mut body = Vec::new();
        let mut ends_in_branch = false;
        self.labels.push(Label::Added);
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
        self.labels.pop();

        // `if (state == normal)`: segments are skipped while rewinding.
        self.out.extend([
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Eqz,
            Instruction::If(BlockType::Empty),
        ]);
        self.load_slots(lowest, &types_in[lowest as usize..]);
        self.out.extend(body);
        if !ends_in_branch {
            let types_out = self.types[lowest as usize..].to_vec();
            self.store_slots(lowest, &types_out)?;
        }
        self.out.push(Instruction::End);
        Ok(i)
    }

    /// Emits the suspending call at `i`; returns the index after it.
    fn suspending_call(&mut self, i: usize, ctx: &Temporaries) -> Result<usize> {
        let (pops, _) = self.ops[i]
            .0
            .operator_arity(&self.validator)
            .context("a call's arity is known")?;
        let call_index = self.call_sites.len() as u32;
        self.call_sites.push(CallSite {
            code_offset: self.ops[i].1,
            callee: match self.ops[i].0 {
                Operator::Call { function_index } => Some(function_index),
                _ => None,
            },
        });
        let base = self.height() - pops;
        let params = self.types[base as usize..].to_vec();

        // Run the call normally, or while rewinding when it is the one the
        // frame was suspended in.
        self.out.extend([
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Eqz,
            Instruction::LocalGet(ctx.rewind_index),
            Instruction::I32Const(call_index as i32),
            Instruction::I32Eq,
            Instruction::I32Or,
            Instruction::If(BlockType::Empty),
        ]);
        self.labels.push(Label::Added);
        self.load_slots(base, &params);
        let call = self.translate(i)?;
        self.out.push(call);
        self.validate(i)?;
        let results = self.types[base as usize..].to_vec();
        // Results go to temporaries first: on an unwind they are dummies,
        // and the argument slots they would overwrite must be saved intact
        // so the call can be made again on rewind.
        let temps: Vec<u32> = results
            .iter()
            .enumerate()
            .map(|(k, &ty)| self.result_temp(k as u32, ty))
            .collect();
        for &temp in temps.iter().rev() {
            self.out.push(Instruction::LocalSet(temp));
        }
        self.out.extend([
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Const(STATE_UNWINDING),
            Instruction::I32Eq,
            Instruction::If(BlockType::Empty),
        ]);
        self.labels.push(Label::Added);
        let unwind_depth = self.depth_of(Label::Unwind);
        self.out.extend([
            Instruction::I32Const(call_index as i32),
            Instruction::Br(unwind_depth),
            Instruction::End,
        ]);
        self.labels.pop();
        for &temp in &temps {
            self.out.push(Instruction::LocalGet(temp));
        }
        self.store_slots(base, &results)?;
        self.out.push(Instruction::End);
        self.labels.pop();
        Ok(i + 1)
    }

    /// Emits a `block`, `loop` or `if` that contains a suspending call;
    /// returns the index after its `end`.
    fn suspendable_construct(&mut self, i: usize, ctx: &Temporaries) -> Result<usize> {
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
        let end = if is_if {
            self.if_arms(i, base, height - 1, &results, ctx)?
        } else {
            self.region(i + 1, ctx)?
        };
        self.load_region_results(base, &results);
        self.out.push(Instruction::End);
        self.labels.pop();
        self.validate(end)?;
        self.store_slots(base, &results)?;
        Ok(end + 1)
    }

    /// Emits the arms of a suspendable `if` inside its outer block; returns
    /// the index of its `end`.
    fn if_arms(
        &mut self,
        i: usize,
        base: u32,
        condition_height: u32,
        results: &[ValType],
        ctx: &Temporaries,
    ) -> Result<usize> {
        let condition = self.slot(condition_height, ValType::I32)?;
        self.out.push(Instruction::Block(BlockType::Empty));
        self.labels.push(Label::Added);
        self.out.extend([
            Instruction::LocalGet(condition),
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Const(STATE_REWINDING),
            Instruction::I32Eq,
            Instruction::I32Or,
            Instruction::I32Eqz,
            Instruction::BrIf(0),
        ]);
        let stop = self.region(i + 1, ctx)?;
        self.load_region_results(base, results);
        // Still rewinding: the suspended call is in the else arm.
        self.out.extend([
            Instruction::GlobalGet(self.additions.state_global),
            Instruction::I32Eqz,
            Instruction::BrIf(1),
        ]);
        self.out
            .extend(std::iter::repeat_n(Instruction::Drop, results.len()));
        self.out.push(Instruction::End);
        self.labels.pop();
        if matches!(self.ops[stop].0, Operator::Else) {
            self.validate(stop)?;
            self.region(stop + 1, ctx)
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

    /// Every original local, then every slot, packed after the header.
    fn frame_layout(&self, local_types: &[ValType]) -> FrameLayout {
        let mut offset = FRAME_HEADER_SIZE;
        let mut locals = Vec::new();
        let mut add = |index: u32, ty: ValType, origin: LocalOrigin| {
            locals.push(SavedLocal {
                index,
                ty,
                offset,
                origin,
            });
            offset += byte_size(ty);
        };
        for (index, &ty) in local_types.iter().enumerate() {
            add(index as u32, ty, LocalOrigin::Local(index as u32));
        }
        let mut slot_locals: Vec<u32> = self.slot_heights.keys().copied().collect();
        slot_locals.sort_unstable();
        for local in slot_locals {
            let ty = self.extra_locals[(local - self.first_extra) as usize];
            add(local, ty, LocalOrigin::Operand(self.slot_heights[&local]));
        }
        FrameLayout {
            size: offset,
            locals,
            call_sites: self.call_sites.clone(),
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

/// While rewinding: pop this function's frame and restore its locals.
fn emit_rewind_prologue(
    function: &mut Function,
    layout: &FrameLayout,
    function_index: u32,
    ctx: &Temporaries,
    additions: &Additions,
) {
    let memory = additions.stack_memory;
    let data = additions.data_global;
    let mut code = vec![
        Instruction::GlobalGet(additions.state_global),
        Instruction::I32Const(STATE_REWINDING),
        Instruction::I32Eq,
        Instruction::If(BlockType::Empty),
        Instruction::GlobalGet(data),
        Instruction::GlobalGet(data),
        Instruction::I32Load(stack_memarg(memory, 0)),
        Instruction::I32Const(layout.size as i32),
        Instruction::I32Sub,
        Instruction::LocalTee(ctx.pos),
        Instruction::I32Store(stack_memarg(memory, 0)),
        // A frame of another function means the stack and the code do not
        // belong together: stop rather than run on garbage.
        Instruction::LocalGet(ctx.pos),
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
    for local in &layout.locals {
        code.extend([
            Instruction::LocalGet(ctx.pos),
            load_instruction(local.ty, stack_memarg(memory, local.offset)),
            Instruction::LocalSet(local.index),
        ]);
    }
    code.push(Instruction::End);
    for instruction in &code {
        function.instruction(instruction);
    }
}

/// Reached by `br $unwind` with the call index: push this function's frame
/// and return dummy results.
fn emit_unwind_epilogue(
    function: &mut Function,
    layout: &FrameLayout,
    function_index: u32,
    ctx: &Temporaries,
    additions: &Additions,
    results: &[ValType],
) {
    let memory = additions.stack_memory;
    let data = additions.data_global;
    let mut code = vec![
        Instruction::LocalSet(ctx.call_index),
        Instruction::GlobalGet(data),
        Instruction::I32Load(stack_memarg(memory, 0)),
        Instruction::LocalSet(ctx.pos),
        // Grow the stack memory when the frame does not fit below `end`.
        Instruction::LocalGet(ctx.pos),
        Instruction::I32Const(layout.size as i32),
        Instruction::I32Add,
        Instruction::GlobalGet(data),
        Instruction::I32Load(stack_memarg(memory, 4)),
        Instruction::I32GtU,
        Instruction::If(BlockType::Empty),
        Instruction::LocalGet(ctx.pos),
        Instruction::I32Const(layout.size as i32),
        Instruction::I32Add,
        Instruction::Call(additions.grow_function),
        Instruction::End,
        Instruction::LocalGet(ctx.pos),
        Instruction::I32Const(function_index as i32),
        Instruction::I32Store(stack_memarg(memory, 0)),
        Instruction::LocalGet(ctx.pos),
        Instruction::LocalGet(ctx.call_index),
        Instruction::I32Store(stack_memarg(memory, 4)),
    ];
    for local in &layout.locals {
        code.extend([
            Instruction::LocalGet(ctx.pos),
            Instruction::LocalGet(local.index),
            store_instruction(local.ty, stack_memarg(memory, local.offset)),
        ]);
    }
    code.extend([
        Instruction::GlobalGet(data),
        Instruction::LocalGet(ctx.pos),
        Instruction::I32Const(layout.size as i32),
        Instruction::I32Add,
        Instruction::I32Store(stack_memarg(memory, 0)),
    ]);
    for &ty in results {
        code.push(zero(ty));
    }
    for instruction in &code {
        function.instruction(instruction);
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
