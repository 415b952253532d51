//! Where each value a function saves lives in its frames, and where on the
//! way back in it is restored.
//!
//! A function's frames all have one layout: every value it saves at any
//! call site (an original local, or the operand-stack value at some height)
//! has a fixed offset, so that the code restoring it does not depend on
//! which call the function was suspended in.
//!
//! A value is restored as far out as its value allows. Wherever a
//! restored value meets the normal path, the compiler has to merge the two
//! (a phi): restoring a value in front of every call that needs it merges
//! it at every call, and in a large function those chains of merges grow
//! past what the register allocator coalesces, which then gives each piece
//! its own stack slot and moves between them on every path. So a value is
//! restored at the entry of the outermost suspendable construct (or of the
//! function) within which it cannot change before the call:
//!
//! - a local not written from the construct's start to the call, and not
//!   written anywhere in a loop that encloses the call inside the
//!   construct (a write there would reach the call through the back edge);
//! - an operand-stack value below the construct's own operands, which code
//!   inside the construct cannot touch.
//!
//! Everything else (values computed just before the call, the call's own
//! arguments) is restored in the call's landing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context as _, Result, bail};
use wasmparser::{FuncValidator, Operator, ValType, ValidatorResources};

use super::analyse::Analysis;
use super::liveness::LocalSet;

/// A value a function saves: one of its locals, or the operand-stack value
/// at some height, kept in a local of its own of this type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Value {
    /// Parameter or local `N` of the original function.
    Local(u32),
    /// The operand-stack value at this height, of this type (by rank).
    Operand(u32, TypeRank),
}

/// A value type with an order, so that [`Value`]s sort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TypeRank(u8);

impl TypeRank {
    pub fn of(ty: ValType) -> Option<TypeRank> {
        let rank = match ty {
            ValType::I32 => 0,
            ValType::I64 => 1,
            ValType::F32 => 2,
            ValType::F64 => 3,
            ValType::V128 => 4,
            ValType::Ref(_) => return None,
        };
        Some(TypeRank(rank))
    }

    pub fn ty(self) -> ValType {
        [
            ValType::I32,
            ValType::I64,
            ValType::F32,
            ValType::F64,
            ValType::V128,
        ][self.0 as usize]
    }
}

/// Where a saved value is restored while rewinding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum RestorePoint {
    /// In the function's prologue.
    Entry,
    /// At the entry of the suspendable construct starting at this
    /// operator.
    Construct(usize),
    /// In the landing of the call itself.
    Landing,
}

/// What one suspending call saves.
#[derive(Clone, Debug, Default)]
pub(crate) struct SitePlan {
    /// Every value saved, with where it is restored.
    pub saved: Vec<(Value, RestorePoint)>,
    /// For each of the call's operands (arguments, then the table index
    /// of an indirect call), whether it is saved, to make the same call
    /// again. A call into instrumented code needs none of its arguments:
    /// the callee restores what it needs from its own frame.
    pub operands_saved: Vec<bool>,
}

/// The frame layout of one function and the restore points of its values.
pub(crate) struct Plan {
    /// Size of the values of every frame of this function.
    pub frame_size: u32,
    /// The offset of each value in the frame.
    pub offsets: BTreeMap<Value, u32>,
    /// By operator index of each suspending call.
    pub sites: HashMap<usize, SitePlan>,
    /// What is restored at each restore point other than landings.
    pub hoisted: BTreeMap<RestorePoint, BTreeSet<Value>>,
}

/// A suspendable construct, as the planner sees it.
struct Construct {
    start: usize,
    /// Height of the operand stack below the construct's own operands.
    base: u32,
    /// Whether the rewrite gives it an entry landing. A construct that
    /// opens its region (a chain of nested blocks) shares its region's
    /// dispatch and has none.
    has_entry: bool,
}

/// What the planner needs to know about a function.
pub(crate) struct Function<'a, 'm> {
    pub module: &'m Analysis<'a>,
    pub ops: &'m [(Operator<'a>, usize)],
    /// Operator indices of suspending calls.
    pub sites: &'m [usize],
    /// Operator indices of suspendable constructs' starts.
    pub constructs: &'m [usize],
    /// Types of the parameters and locals.
    pub local_types: &'m [ValType],
    /// Locals live after each suspending call.
    pub live: &'m HashMap<usize, Vec<u32>>,
    pub describe: &'m str,
}

/// Plans the frames of a function; `validator` is a fresh validator for
/// its body (locals read), used to learn the operand stack at each call.
pub(crate) fn plan(
    function: &Function,
    validator: FuncValidator<ValidatorResources>,
) -> Result<Plan> {
    let stacks =
        operand_types(function, validator).with_context(|| format!("in {}", function.describe))?;
    let ends = construct_ends(function.ops);
    let loop_writes = loop_writes(function.ops, function.local_types.len());
    let written = Written {
        function,
        ends: &ends,
        loop_writes: &loop_writes,
    };
    // For each restore point, the locals that may have been written
    // between it and each call inside it.
    let mut written_since: HashMap<RestorePoint, HashMap<usize, LocalSet>> = HashMap::new();
    written_since.insert(RestorePoint::Entry, written.since(None));
    for &start in function.constructs {
        written_since.insert(RestorePoint::Construct(start), written.since(Some(start)));
    }
    let constructs: HashMap<usize, Construct> = function
        .constructs
        .iter()
        .map(|&start| (start, construct(function, &stacks, start)))
        .collect();

    let mut sites = HashMap::new();
    let mut hoisted: BTreeMap<RestorePoint, BTreeSet<Value>> = BTreeMap::new();
    let mut used: BTreeSet<Value> = BTreeSet::new();
    let mut open: Vec<usize> = Vec::new();
    let mut site_iter = function.sites.iter().peekable();
    for (i, (op, _)) in function.ops.iter().enumerate() {
        if site_iter.next_if(|&&site| site == i).is_some() {
            let chain: Vec<&Construct> = open
                .iter()
                .filter_map(|start| constructs.get(start))
                .collect();
            let site = plan_site(function, &stacks[&i], i, &chain, &written_since)?;
            for &(value, point) in &site.saved {
                used.insert(value);
                if point != RestorePoint::Landing {
                    hoisted.entry(point).or_default().insert(value);
                }
            }
            sites.insert(i, site);
        }
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => open.push(i),
            Operator::End => {
                open.pop();
            }
            _ => {}
        }
    }

    let mut offsets = BTreeMap::new();
    let mut frame_size = 0;
    for value in used {
        offsets.insert(value, frame_size);
        frame_size += byte_size(value_type(function, value));
    }
    Ok(Plan {
        frame_size,
        offsets,
        sites,
        hoisted,
    })
}

/// The type of a saved value.
pub(crate) fn value_type(function: &Function, value: Value) -> ValType {
    match value {
        Value::Local(local) => function.local_types[local as usize],
        Value::Operand(_, rank) => rank.ty(),
    }
}

fn construct(
    function: &Function,
    stacks: &HashMap<usize, Vec<ValType>>,
    start: usize,
) -> Construct {
    let (op, _) = &function.ops[start];
    let params = match op {
        Operator::Block { blockty } | Operator::Loop { blockty } | Operator::If { blockty } => {
            match blockty {
                wasmparser::BlockType::FuncType(index) => function.module.types[*index as usize]
                    .as_ref()
                    .map_or(0, |ty| ty.params().len()),
                _ => 0,
            }
        }
        _ => 0,
    };
    let is_if = matches!(op, Operator::If { .. });
    let height = stacks[&start].len();
    // A block or loop that opens a region (the function body, a
    // construct's body or an arm) shares that region's dispatch, which
    // the rewrite moves into it: rewinding enters it by falling in.
    let opens_region = start == 0
        || matches!(
            function.ops[start - 1].0,
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } | Operator::Else
        );
    Construct {
        start,
        base: height.saturating_sub(params + is_if as usize) as u32,
        has_entry: !opens_region || is_if,
    }
}

/// Decides what the call at `i` saves and where each value is restored.
fn plan_site(
    function: &Function,
    stack: &[ValType],
    i: usize,
    chain: &[&Construct],
    written_since: &HashMap<RestorePoint, HashMap<usize, LocalSet>>,
) -> Result<SitePlan> {
    let operands = call_operands(function, i);
    let Some(below) = stack.len().checked_sub(operands.len()) else {
        // In unreachable code, which the rewrite does not emit.
        return Ok(SitePlan::default());
    };
    let mut saved = Vec::new();
    for &local in function.live.get(&i).into_iter().flatten() {
        let ty = function.local_types[local as usize];
        if TypeRank::of(ty).is_none() {
            bail!(
                "{} needs local {local} of {} after a suspending call, which cannot be saved in a snapshot",
                function.describe,
                describe_type(ty)
            );
        }
        let point = local_restore_point(local, i, chain, written_since);
        saved.push((Value::Local(local), point));
    }
    for (height, &ty) in stack.iter().enumerate().take(below) {
        let Some(rank) = TypeRank::of(ty) else {
            bail!(
                "{} keeps a value of {} on the operand stack across a suspending call, which cannot be saved in a snapshot",
                function.describe,
                describe_type(ty)
            );
        };
        let height = height as u32;
        let point = chain
            .iter()
            .find(|c| c.has_entry && c.base > height)
            .map_or(RestorePoint::Landing, |c| RestorePoint::Construct(c.start));
        saved.push((Value::Operand(height, rank), point));
    }
    let mut operands_saved = Vec::new();
    for (k, saved_operand) in operands.iter().enumerate() {
        let height = (below + k) as u32;
        if *saved_operand {
            let ty = stack[below + k];
            let Some(rank) = TypeRank::of(ty) else {
                bail!(
                    "{} passes a value of {} to a call that can suspend and must be made again on resume, which cannot be saved in a snapshot",
                    function.describe,
                    describe_type(ty)
                );
            };
            saved.push((Value::Operand(height, rank), RestorePoint::Landing));
        }
        operands_saved.push(*saved_operand);
    }
    Ok(SitePlan {
        saved,
        operands_saved,
    })
}

/// For each operand of the call at `i` (arguments, then a table index),
/// whether a rewind needs its value to make the same call again: every
/// argument of a call that may reach a suspending import directly (the
/// host sees the call twice, with the same arguments), and the table index
/// of an indirect call (which function to call).
fn call_operands(function: &Function, i: usize) -> Vec<bool> {
    let module = function.module;
    match function.ops[i].0 {
        Operator::Call { function_index } => {
            let params = module.func_type(function_index).params().len();
            vec![function_index < module.imported_funcs; params]
        }
        Operator::CallIndirect { type_index, .. } => {
            let params = module.types[type_index as usize]
                .as_ref()
                .map_or(0, |ty| ty.params().len());
            let mut saved = vec![module.suspending_import_in_table; params];
            saved.push(true);
            saved
        }
        _ => Vec::new(),
    }
}

/// The outermost point where local `local`, live after the call at `i`,
/// already has the value it has at the call: the first, from the
/// function's entry inwards, since which nothing can have written it on
/// the way to the call.
fn local_restore_point(
    local: u32,
    i: usize,
    chain: &[&Construct],
    written_since: &HashMap<RestorePoint, HashMap<usize, LocalSet>>,
) -> RestorePoint {
    let unwritten = |point: RestorePoint| {
        written_since[&point]
            .get(&i)
            .is_some_and(|written| !written.contains(local))
    };
    if unwritten(RestorePoint::Entry) {
        return RestorePoint::Entry;
    }
    chain
        .iter()
        .filter(|c| c.has_entry)
        .map(|c| RestorePoint::Construct(c.start))
        .find(|&point| unwritten(point))
        .unwrap_or(RestorePoint::Landing)
}

/// Computes which locals may have been written between a restore point
/// and the calls after it.
struct Written<'f, 'a, 'm> {
    function: &'f Function<'a, 'm>,
    ends: &'f HashMap<usize, usize>,
    /// The locals written anywhere in each loop, by its start.
    loop_writes: &'f HashMap<usize, LocalSet>,
}

/// A construct open during [`Written::since`]'s walk.
struct OpenConstruct {
    is_loop: bool,
    /// Locals written on the paths that reach its end (branches to it,
    /// falling out of it); `None` while no path reaches it.
    at_end: Option<LocalSet>,
    /// For an `if`: what was written when its condition was tested, for
    /// the `else` arm (or the missing one).
    at_if: Option<LocalSet>,
}

impl Written<'_, '_, '_> {
    /// For each suspending call inside the construct starting at `start`
    /// (`None`: the function body), the locals that may have been written
    /// on some path from the construct's start to the call.
    ///
    /// The construct's own back edge, if it is a loop, does not count: a
    /// value restored at its entry is the value the suspended iteration
    /// started with. A nested loop's back edges do, so a write anywhere in
    /// a loop that encloses the call counts.
    fn since(&self, start: Option<usize>) -> HashMap<usize, LocalSet> {
        let ops = self.function.ops;
        let locals = self.function.local_types.len();
        let (from, to) = match start {
            Some(start) => (start + 1, self.ends[&start]),
            None => (0, ops.len()),
        };
        let mut sites = self.function.sites.iter().peekable();
        while sites.next_if(|&&site| site < from).is_some() {}
        let mut result = HashMap::new();
        let mut current = Some(LocalSet::new(locals));
        let mut open = vec![OpenConstruct {
            is_loop: false,
            at_end: None,
            at_if: None,
        }];
        for (i, (op, _)) in ops.iter().enumerate().take(to).skip(from) {
            if sites.next_if(|&&site| site == i).is_some() {
                result.insert(i, current.clone().unwrap_or(LocalSet::new(locals)));
            }
            match op {
                Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                    if let Some(current) = &mut current {
                        current.insert(*local_index);
                    }
                }
                Operator::Block { .. } | Operator::If { .. } => {
                    let at_if = matches!(op, Operator::If { .. })
                        .then(|| current.clone())
                        .flatten();
                    open.push(OpenConstruct {
                        is_loop: false,
                        at_end: None,
                        at_if,
                    });
                }
                Operator::Loop { .. } => {
                    if let Some(current) = &mut current {
                        current.union_with(&self.loop_writes[&i]);
                    }
                    open.push(OpenConstruct {
                        is_loop: true,
                        at_end: None,
                        at_if: None,
                    });
                }
                Operator::Else => {
                    let top = open.last_mut().expect("validated nesting");
                    merge(&mut top.at_end, current.take());
                    current = top.at_if.take();
                }
                Operator::End => {
                    let Some(mut top) = open.pop() else { break };
                    if open.is_empty() {
                        break;
                    }
                    merge(&mut top.at_end, current.take());
                    merge(&mut top.at_end, top.at_if.take());
                    current = top.at_end;
                }
                Operator::Br { relative_depth } => {
                    self.branch(&mut open, *relative_depth, &current);
                    current = None;
                }
                Operator::BrIf { relative_depth }
                | Operator::BrOnNull { relative_depth }
                | Operator::BrOnNonNull { relative_depth } => {
                    self.branch(&mut open, *relative_depth, &current);
                }
                Operator::BrTable { targets } => {
                    let depths: Vec<u32> = targets
                        .targets()
                        .flatten()
                        .chain([targets.default()])
                        .collect();
                    for depth in depths {
                        self.branch(&mut open, depth, &current);
                    }
                    current = None;
                }
                Operator::Return
                | Operator::Unreachable
                | Operator::ReturnCall { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::ReturnCallRef { .. } => current = None,
                _ => {}
            }
        }
        result
    }

    /// A branch `depth` levels out carries `current` to that label: the end
    /// of a block or `if`. A branch to a loop goes back to its start, which
    /// the loop's writes already account for (or, for the construct the
    /// walk started in, which does not count); so does leaving that
    /// construct.
    fn branch(&self, open: &mut [OpenConstruct], depth: u32, current: &Option<LocalSet>) {
        let Some(index) = open.len().checked_sub(1 + depth as usize) else {
            return;
        };
        if index == 0 || open[index].is_loop {
            return;
        }
        merge(&mut open[index].at_end, current.clone());
    }
}

/// Adds the writes of another path into `into`.
fn merge(into: &mut Option<LocalSet>, path: Option<LocalSet>) {
    match (into.as_mut(), path) {
        (_, None) => {}
        (None, Some(path)) => *into = Some(path),
        (Some(into), Some(path)) => into.union_with(&path),
    }
}

/// The locals written anywhere in each loop, by the loop's start.
fn loop_writes(ops: &[(Operator, usize)], locals: usize) -> HashMap<usize, LocalSet> {
    let mut writes = HashMap::new();
    let mut open: Vec<Option<usize>> = Vec::new();
    for (i, (op, _)) in ops.iter().enumerate() {
        match op {
            Operator::Loop { .. } => {
                open.push(Some(i));
                writes.insert(i, LocalSet::new(locals));
            }
            Operator::Block { .. } | Operator::If { .. } => open.push(None),
            Operator::End => {
                open.pop();
            }
            Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                for start in open.iter().flatten() {
                    writes
                        .get_mut(start)
                        .expect("opened above")
                        .insert(*local_index);
                }
            }
            _ => {}
        }
    }
    writes
}

/// The operator index of the `end` of every `block`, `loop` and `if`.
fn construct_ends(ops: &[(Operator, usize)]) -> HashMap<usize, usize> {
    let mut ends = HashMap::new();
    let mut open = Vec::new();
    for (i, (op, _)) in ops.iter().enumerate() {
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => open.push(i),
            Operator::End => {
                if let Some(start) = open.pop() {
                    ends.insert(start, i);
                }
            }
            _ => {}
        }
    }
    ends
}

/// The types on the operand stack (all of it, bottom first) before each
/// suspending call and each suspendable construct.
fn operand_types(
    function: &Function,
    mut validator: FuncValidator<ValidatorResources>,
) -> Result<HashMap<usize, Vec<ValType>>> {
    let wanted: BTreeSet<usize> = function
        .sites
        .iter()
        .chain(function.constructs)
        .copied()
        .collect();
    let mut stacks = HashMap::new();
    for (i, (op, offset)) in function.ops.iter().enumerate() {
        if wanted.contains(&i) {
            let height = validator.operand_stack_height() as usize;
            // An unknown type only appears in unreachable code, which the
            // rewrite does not emit; any placeholder will do.
            let types = (0..height)
                .rev()
                .map(|depth| {
                    validator
                        .get_operand_type(depth)
                        .flatten()
                        .unwrap_or(ValType::I32)
                })
                .collect();
            stacks.insert(i, types);
        }
        validator.op(*offset, op)?;
    }
    Ok(stacks)
}

/// The size of a value of type `ty` in a frame.
pub(crate) fn byte_size(ty: ValType) -> u32 {
    match ty {
        ValType::I32 | ValType::F32 => 4,
        ValType::I64 | ValType::F64 => 8,
        ValType::V128 => 16,
        ValType::Ref(_) => unreachable!("reference types are refused before layout"),
    }
}

/// A value type as refusals name it: "type i64", or for a reference,
/// which has no bytes to save, "reference type funcref".
pub(crate) fn describe_type(ty: ValType) -> String {
    if ty.is_reference_type() {
        format!("reference type {ty}")
    } else {
        format!("type {ty}")
    }
}
