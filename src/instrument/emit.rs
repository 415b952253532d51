//! Phase 3: assemble the output module.
//!
//! Every section of the input is copied as it is, except those that grow:
//! the type section (the runtime functions' signatures and multi-value
//! block types), the function and code sections (rewritten bodies, the
//! `asyncify_*` functions and the frame helpers, then the whole copy of
//! each rewritten function that resumes it), the name section (the copies
//! named as what they copy), the memory section
//! (the stack memory), the global section (state and data pointer) and the
//! export section (the runtime functions, and every memory, global and
//! table under a reserved name). Nothing is renumbered: what the module had
//! keeps its index, additions come after it.

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::{Result, anyhow, bail};
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, Instruction, MemArg, MemorySection, MemoryType, NameMap,
    NameSection, RawSection, TypeSection, ValType,
};
use wasmparser::{Operator, Parser, Payload};

use super::analyse::Analysis;
use super::rewrite::{Additions, CopyIndices, NewTypes, Versions, guard_calls, rewrite};
use super::{
    DATA_GLOBAL_EXPORT, FRAME_HEADER_SIZE, GLOBAL_EXPORT_PREFIX, Instrumented,
    MEMORY_EXPORT_PREFIX, Metadata, STACK_MEMORY_EXPORT, STATE_GLOBAL_EXPORT, STATE_NORMAL,
    STATE_REWINDING, STATE_UNWINDING, TABLE_EXPORT_PREFIX,
};

/// Section ids in the order the binary format requires them.
const SECTION_ORDER: [u8; 13] = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];
/// The sections the output always has, because they gain entries.
const GROWING_SECTIONS: [u8; 6] = [1, 3, 5, 6, 7, 10];

/// The runtime functions appended after the module's own, in this order;
/// the unnamed ones are helpers of the rewritten code, not exported.
const RUNTIME_FUNCTIONS: [&str; 8] = [
    "",
    "",
    "",
    "asyncify_start_unwind",
    "asyncify_stop_unwind",
    "asyncify_start_rewind",
    "asyncify_stop_rewind",
    "asyncify_get_state",
];

/// Builds the instrumented module from the input bytes and their analysis.
pub(crate) fn emit(wasm: &[u8], mut module: Analysis<'_>) -> Result<Instrumented> {
    if let Some(name) = module
        .export_names
        .iter()
        .find(|n| n.starts_with("__wasnap_"))
    {
        // The name is the module's: escaped, so that it cannot break the
        // message over lines.
        bail!(
            "the module exports {}, a name wasnap reserves for itself",
            name.escape_debug()
        );
    }
    if module.export_names.contains("asyncify_start_unwind") {
        return expose(wasm, &module);
    }
    // Not instrumented by Binaryen, yet exporting a name the output exports
    // (found by `cargo fuzz run robustness`: the output had two exports of
    // one name).
    if let Some(name) = RUNTIME_FUNCTIONS
        .iter()
        .find(|name| !name.is_empty() && module.export_names.contains(**name))
    {
        bail!(
            "the module exports {name} but not asyncify_start_unwind: it is not a module instrumented by Binaryen's Asyncify, and wasnap's instrumented module exports that name itself"
        );
    }
    let function_count = module.func_types.len() as u32;
    let additions = Additions {
        state_global: module.globals.len() as u32,
        data_global: module.globals.len() as u32 + 1,
        stack_memory: module.memories.len() as u32,
        grow_function: function_count,
        finish_frame: function_count + 1,
        reserve: function_count + 2,
    };
    // Signatures of the runtime functions, in the order of `RuntimeTypes`.
    let first_new_type = module.types.len() as u32;
    let runtime_types = RuntimeTypes(std::array::from_fn(|k| first_new_type + k as u32));
    let mut new_types = NewTypes::new(first_new_type + RUNTIME_TYPES.len() as u32);

    let mut metadata = Metadata {
        memory_count: module.memories.len() as u32,
        global_count: module.globals.len() as u32,
        table_count: module.tables.len() as u32,
        stack_pointer_global: module.stack_pointer_global,
        writes_tables: module.writes_tables,
        function_names: module.function_names.clone(),
        imported_functions: module.imported_functions.clone(),
        exported_functions: module.exported_functions.clone(),
        table0_functions: module.table0_functions.clone(),
        ..Metadata::default()
    };
    let mut code = CodeSection::new();
    // Hints the input gives stay valid for the bodies copied as they were.
    let mut branch_hints = input_branch_hints(wasm);
    let bodies = std::mem::take(&mut module.bodies);
    let mut whole_copies = WholeCopies::new(&module, &bodies, function_count);
    let mut wholes = Vec::new();
    let mut entered_copies = Vec::new();
    let mut leave_room = 0;
    for (body, func) in bodies {
        let index = func.index;
        if module.can_suspend[index as usize] || module.unnarrowed.is_some() {
            branch_hints.remove(&index);
        }
        if module.can_suspend[index as usize] {
            // The function as it runs, in its place; its whole copy, which
            // resumes, after the runtime functions; the copy the whole copy
            // goes on in from an entry loop, after the whole copies.
            let whole = whole_copies.index_of(index);
            let entered_index = whole_copies.first_entered() + entered_copies.len() as u32;
            let Versions {
                running,
                whole: copy,
                entered,
            } = rewrite(
                &module,
                index,
                &body,
                func,
                &additions,
                &mut new_types,
                CopyIndices {
                    whole,
                    entered: entered_index,
                },
            )?;
            code.function(&running.body);
            branch_hints.insert(index, unlikely(running.cold_branches));
            branch_hints.insert(whole, unlikely(copy.cold_branches));
            metadata.frames.insert(index, copy.layout);
            leave_room = leave_room.max(copy.leave_room);
            wholes.push(copy.body);
            if let Some(entered) = entered {
                branch_hints.insert(entered_index, unlikely(entered.cold_branches));
                entered_copies.push((index, entered.body));
            }
        } else if let Some(could_suspend) = &module.unnarrowed
            && could_suspend[index as usize]
        {
            code.function(&guard_calls(&module, &body, &additions)?);
        } else {
            code.raw(&wasm[body.range()]);
        }
    }
    // `reserve` keeps room for the largest frame, and for what a whole
    // copy leaves above `pos` for its entered copy.
    let room = largest_frame(&metadata).max(leave_room);
    for function in runtime_function_bodies(&additions, room) {
        code.function(&function);
    }
    for function in &wholes {
        code.function(function);
    }
    for (copied, function) in &entered_copies {
        whole_copies.add_entered(&module, *copied);
        code.function(function);
    }

    let push = |output: &mut wasm_encoder::Module, id: u8, data: Option<&[u8]>| -> Result<()> {
        match id {
            1 => output.section(&types_section(data, runtime_types, &new_types)?),
            3 => output.section(&functions_section(
                data,
                runtime_types,
                &whole_copies.types,
            )?),
            5 => output.section(&memories_section(data)?),
            6 => output.section(&globals_section(data)?),
            7 => output.section(&reserved_exports(data, &module, Some(&additions))?),
            10 => {
                if !branch_hints.is_empty() {
                    output.section(&branch_hint_section(&branch_hints));
                }
                output.section(&code)
            }
            0 if custom_section_name(data) == Some(BRANCH_HINT_SECTION) => output,
            0 if custom_section_name(data) == Some(NAME_SECTION) => {
                output.section(&names_section(data.unwrap_or_default(), &whole_copies)?)
            }
            _ => output.section(&RawSection {
                id,
                data: data.unwrap_or_default(),
            }),
        };
        Ok(())
    };
    let mut output = wasm_encoder::Module::new();
    let mut missing: Vec<u8> = GROWING_SECTIONS.to_vec();
    for (id, range) in sections(wasm)? {
        if id != 0 {
            // A section the output needs but the input lacks goes where the
            // binary format's order puts it.
            while let Some(&next) = missing.first().filter(|&&m| rank_of(m) < rank_of(id)) {
                push(&mut output, next, None)?;
                missing.remove(0);
            }
            missing.retain(|&m| m != id);
        }
        push(&mut output, id, Some(&wasm[range]))?;
    }
    for id in missing {
        push(&mut output, id, None)?;
    }
    Ok(Instrumented {
        wasm: output.finish(),
        metadata,
    })
}

/// Where the copies of the instrumented functions go: after the runtime
/// functions, the whole copies, in the order of the functions they copy;
/// then the entered copies, likewise, of the functions with entry loops.
struct WholeCopies {
    /// The first copy's function index.
    first: u32,
    /// The functions copied, by ascending index: whole copies, then
    /// entered copies.
    copied: Vec<u32>,
    /// How many of `copied` are whole copies.
    whole_count: usize,
    /// The copies' type indices, in order.
    types: Vec<u32>,
}

impl WholeCopies {
    fn new(
        module: &Analysis,
        bodies: &[(
            wasmparser::FunctionBody,
            wasmparser::FuncToValidate<wasmparser::ValidatorResources>,
        )],
        function_count: u32,
    ) -> Self {
        let copied: Vec<u32> = bodies
            .iter()
            .map(|(_, func)| func.index)
            .filter(|&index| module.can_suspend[index as usize])
            .collect();
        let types = copied
            .iter()
            .map(|&index| module.func_types[index as usize])
            .collect();
        WholeCopies {
            first: function_count + RUNTIME_FUNCTIONS.len() as u32,
            whole_count: copied.len(),
            copied,
            types,
        }
    }

    /// The function index of the first entered copy.
    fn first_entered(&self) -> u32 {
        self.first + self.whole_count as u32
    }

    /// Adds the entered copy of `copied`, after those added before.
    fn add_entered(&mut self, module: &Analysis, copied: u32) {
        self.copied.push(copied);
        self.types.push(module.func_types[copied as usize]);
    }

    /// The index of the whole copy of instrumented function `index`.
    fn index_of(&self, index: u32) -> u32 {
        let position = self.copied[..self.whole_count]
            .binary_search(&index)
            .expect("every instrumented function has a whole copy");
        self.first + position as u32
    }

    /// The copies' indices, each with the function it copies.
    fn pairs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (self.first..).zip(self.copied.iter().copied())
    }
}

/// Branch hints saying that the `if`s at `offsets` are rarely taken.
fn unlikely(offsets: Vec<u32>) -> Vec<(u32, bool)> {
    offsets.into_iter().map(|offset| (offset, false)).collect()
}

/// A module `wasm-opt --asyncify` already instrumented is used as it is:
/// it only gains the exports of its memories, globals and tables.
fn expose(wasm: &[u8], module: &Analysis) -> Result<Instrumented> {
    check_binaryen_callers(module)?;
    let mut output = wasm_encoder::Module::new();
    for (id, range) in sections(wasm)? {
        let data = &wasm[range];
        match id {
            7 => output.section(&reserved_exports(Some(data), module, None)?),
            _ => output.section(&RawSection { id, data }),
        };
    }
    Ok(Instrumented {
        wasm: output.finish(),
        metadata: Metadata {
            memory_count: module.memories.len() as u32,
            global_count: module.globals.len() as u32,
            table_count: module.tables.len() as u32,
            stack_pointer_global: module.stack_pointer_global,
            function_names: module.function_names.clone(),
            writes_tables: module.writes_tables,
            binaryen: true,
            imported_functions: module.imported_functions.clone(),
            exported_functions: module.exported_functions.clone(),
            table0_functions: module.table0_functions.clone(),
            ..Metadata::default()
        },
    })
}

/// Refuses a Binaryen module with a function that calls a suspending
/// import but was left uninstrumented (an `asyncify-imports` list, or a
/// remove list, that leaves the import or the function out): Binaryen's
/// instrumented functions read its state global after every call that may
/// unwind, and one that never reads it would run on after the import
/// started to suspend, so no snapshot of it could be faithful.
fn check_binaryen_callers(module: &Analysis) -> Result<()> {
    let Some(state) = binaryen_state_global(module)? else {
        return Ok(());
    };
    let imported = module.imported_funcs;
    for (offset, (body, _)) in module.bodies.iter().enumerate() {
        let mut suspending_call = None;
        let mut reads_state = false;
        for operator in body.get_operators_reader()? {
            match operator? {
                Operator::Call { function_index }
                    if function_index < imported && module.can_suspend[function_index as usize] =>
                {
                    suspending_call.get_or_insert(function_index);
                }
                Operator::GlobalGet { global_index } if global_index == state => {
                    reads_state = true;
                }
                _ => {}
            }
        }
        if let (Some(import), false) = (suspending_call, reads_state) {
            let import = &module.imported_functions[import as usize];
            bail!(
                "{} calls {import}, which suspends, but Binaryen's Asyncify left it uninstrumented (was {import} left out of --pass-arg=asyncify-imports?), so it cannot suspend there: load the original module, which wasnap instruments itself, or use `wasnap instrument`",
                module.describe_function(imported + offset as u32)
            );
        }
    }
    Ok(())
}

/// Binaryen's private state global: the one its exported
/// `asyncify_get_state` returns (`None` when that body is not the plain
/// `global.get` Binaryen writes).
fn binaryen_state_global(module: &Analysis) -> Result<Option<u32>> {
    let Some(&function) = module.exported_functions.get("asyncify_get_state") else {
        return Ok(None);
    };
    let Some(offset) = function.checked_sub(module.imported_funcs) else {
        return Ok(None);
    };
    let (body, _) = &module.bodies[offset as usize];
    let mut operators = body.get_operators_reader()?;
    Ok(match operators.read()? {
        Operator::GlobalGet { global_index } => Some(global_index),
        _ => None,
    })
}

/// The custom section of the branch-hinting proposal, which wasnap's
/// engine reads: it tells the compiler which side of a branch is cold.
const BRANCH_HINT_SECTION: &str = "metadata.code.branch_hint";

/// The branch hints of the input, by function: (offset, taken).
fn input_branch_hints(wasm: &[u8]) -> BTreeMap<u32, Vec<(u32, bool)>> {
    let mut hints = BTreeMap::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(Payload::CustomSection(reader)) = payload else {
            continue;
        };
        let wasmparser::KnownCustom::BranchHints(section) = reader.as_known() else {
            continue;
        };
        // Hints are advice: a malformed section is dropped, not an error.
        let parsed: wasmparser::Result<Vec<_>> = section
            .into_iter()
            .map(|function| {
                let function = function?;
                let hints: wasmparser::Result<Vec<_>> = function
                    .hints
                    .into_iter()
                    .map(|hint| hint.map(|h| (h.func_offset, h.taken)))
                    .collect();
                Ok((function.func, hints?))
            })
            .collect();
        hints = parsed.map(BTreeMap::from_iter).unwrap_or_default();
    }
    hints
}

fn branch_hint_section(hints: &BTreeMap<u32, Vec<(u32, bool)>>) -> wasm_encoder::BranchHints {
    let mut section = wasm_encoder::BranchHints::new();
    for (&function, hints) in hints {
        let hints: Vec<_> = hints
            .iter()
            .map(|&(offset, taken)| wasm_encoder::BranchHint {
                branch_func_offset: offset,
                branch_hint_value: u32::from(taken),
            })
            .collect();
        section.function_hints(function, hints);
    }
    section
}

/// The name of the custom section of debug names.
const NAME_SECTION: &str = "name";

/// The input's name section, in which each whole copy has the name of the
/// function it copies: a trace through resumed code reads like one through
/// the function as it runs.
fn names_section(data: &[u8], copies: &WholeCopies) -> Result<NameSection> {
    let custom = wasmparser::CustomSectionReader::new(wasmparser::BinaryReader::new(data, 0))?;
    let wasmparser::KnownCustom::Name(reader) = custom.as_known() else {
        bail!("the name section is not one");
    };
    let mut names = NameSection::new();
    for subsection in reader {
        match subsection? {
            wasmparser::Name::Function(map) => {
                let mut own = BTreeMap::new();
                for naming in map {
                    let naming = naming?;
                    own.insert(naming.index, naming.name);
                }
                let mut functions = NameMap::new();
                for (&index, name) in &own {
                    functions.append(index, name);
                }
                for (copy, copied) in copies.pairs() {
                    if let Some(name) = own.get(&copied) {
                        functions.append(copy, name);
                    }
                }
                names.functions(&functions);
            }
            other => RoundtripReencoder.parse_custom_name_subsection(&mut names, other)?,
        }
    }
    Ok(names)
}

/// The name of a custom section, from its contents.
fn custom_section_name(data: Option<&[u8]>) -> Option<&str> {
    wasmparser::BinaryReader::new(data?, 0).read_string().ok()
}

fn rank_of(id: u8) -> usize {
    SECTION_ORDER
        .iter()
        .position(|&s| s == id)
        .unwrap_or(SECTION_ORDER.len())
}

/// The id and content range of every section, in input order.
fn sections(wasm: &[u8]) -> Result<Vec<(u8, Range<usize>)>> {
    let mut sections = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let (id, range) = match payload? {
            Payload::TypeSection(r) => (1, r.range()),
            Payload::ImportSection(r) => (2, r.range()),
            Payload::FunctionSection(r) => (3, r.range()),
            Payload::TableSection(r) => (4, r.range()),
            Payload::MemorySection(r) => (5, r.range()),
            Payload::TagSection(r) => (13, r.range()),
            Payload::GlobalSection(r) => (6, r.range()),
            Payload::ExportSection(r) => (7, r.range()),
            Payload::StartSection { range, .. } => (8, range),
            Payload::ElementSection(r) => (9, r.range()),
            Payload::DataCountSection { range, .. } => (12, range),
            Payload::CodeSectionStart { range, .. } => (10, range),
            Payload::DataSection(r) => (11, r.range()),
            Payload::CustomSection(r) => (0, r.range()),
            _ => continue,
        };
        sections.push((id, range));
    }
    Ok(sections)
}

fn reader<'a, T>(
    data: &'a [u8],
    read: impl FnOnce(wasmparser::BinaryReader<'a>) -> wasmparser::Result<T>,
) -> Result<T> {
    Ok(read(wasmparser::BinaryReader::new(data, 0))?)
}

fn types_section(
    data: Option<&[u8]>,
    runtime_types: RuntimeTypes,
    new_types: &NewTypes,
) -> Result<TypeSection> {
    let mut section = TypeSection::new();
    if let Some(data) = data {
        let existing = reader(data, wasmparser::TypeSectionReader::new)?;
        RoundtripReencoder.parse_type_section(&mut section, existing)?;
    }
    debug_assert_eq!(section.len(), runtime_types.0[0]);
    for (params, results) in RUNTIME_TYPES {
        section
            .ty()
            .function(params.iter().copied(), results.iter().copied());
    }
    for (params, results) in &new_types.types {
        let convert = |types: &[wasmparser::ValType]| -> Result<Vec<ValType>> {
            types
                .iter()
                .map(|t| Ok(RoundtripReencoder.val_type(*t)?))
                .collect()
        };
        section.ty().function(convert(params)?, convert(results)?);
    }
    Ok(section)
}

/// The signatures the runtime functions use, as (params, results).
const RUNTIME_TYPES: [(&[ValType], &[ValType]); 4] = [
    (&[ValType::I32], &[]),
    (&[], &[]),
    (&[], &[ValType::I32]),
    (&[ValType::I32, ValType::I32, ValType::I32], &[]),
];

/// The type indices of [`RUNTIME_TYPES`] in the output.
#[derive(Clone, Copy)]
struct RuntimeTypes([u32; 4]);

fn functions_section(
    data: Option<&[u8]>,
    runtime_types: RuntimeTypes,
    whole_types: &[u32],
) -> Result<FunctionSection> {
    let mut section = FunctionSection::new();
    if let Some(data) = data {
        let existing = reader(data, wasmparser::FunctionSectionReader::new)?;
        RoundtripReencoder.parse_function_section(&mut section, existing)?;
    }
    let [takes_i32, plain, returns_i32, finish_frame] = runtime_types.0;
    // In the order of RUNTIME_FUNCTIONS: grow_stack, finish_frame,
    // reserve, start_unwind, stop_unwind, start_rewind, stop_rewind,
    // get_state.
    let types = [
        takes_i32,
        finish_frame,
        plain,
        takes_i32,
        plain,
        takes_i32,
        plain,
        returns_i32,
    ];
    for ty in types.into_iter().chain(whole_types.iter().copied()) {
        section.function(ty);
    }
    Ok(section)
}

fn memories_section(data: Option<&[u8]>) -> Result<MemorySection> {
    let mut section = MemorySection::new();
    if let Some(data) = data {
        let existing = reader(data, wasmparser::MemorySectionReader::new)?;
        RoundtripReencoder.parse_memory_section(&mut section, existing)?;
    }
    section.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    Ok(section)
}

fn globals_section(data: Option<&[u8]>) -> Result<GlobalSection> {
    let mut section = GlobalSection::new();
    if let Some(data) = data {
        let existing = reader(data, wasmparser::GlobalSectionReader::new)?;
        RoundtripReencoder.parse_global_section(&mut section, existing)?;
    }
    let mutable_i32 = GlobalType {
        val_type: ValType::I32,
        mutable: true,
        shared: false,
    };
    section.global(mutable_i32, &ConstExpr::i32_const(STATE_NORMAL));
    section.global(mutable_i32, &ConstExpr::i32_const(0));
    Ok(section)
}

/// The module's exports, then (for wasnap's own instrumentation) the
/// runtime's, then every memory, global and table under its reserved name.
fn reserved_exports(
    data: Option<&[u8]>,
    module: &Analysis,
    additions: Option<&Additions>,
) -> Result<ExportSection> {
    let mut section = ExportSection::new();
    if let Some(data) = data {
        let existing = reader(data, wasmparser::ExportSectionReader::new)?;
        RoundtripReencoder.parse_export_section(&mut section, existing)?;
    }
    if let Some(additions) = additions {
        for (offset, name) in RUNTIME_FUNCTIONS.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let index = additions.grow_function + offset as u32;
            section.export(name, ExportKind::Func, index);
        }
        section.export(
            STACK_MEMORY_EXPORT,
            ExportKind::Memory,
            additions.stack_memory,
        );
        section.export(
            STATE_GLOBAL_EXPORT,
            ExportKind::Global,
            additions.state_global,
        );
        section.export(
            DATA_GLOBAL_EXPORT,
            ExportKind::Global,
            additions.data_global,
        );
    }
    for index in 0..module.memories.len() as u32 {
        section.export(
            &format!("{MEMORY_EXPORT_PREFIX}{index}"),
            ExportKind::Memory,
            index,
        );
    }
    for index in 0..module.globals.len() as u32 {
        section.export(
            &format!("{GLOBAL_EXPORT_PREFIX}{index}"),
            ExportKind::Global,
            index,
        );
    }
    for index in 0..module.tables.len() as u32 {
        section.export(
            &format!("{TABLE_EXPORT_PREFIX}{index}"),
            ExportKind::Table,
            index,
        );
    }
    Ok(section)
}

/// The size of the largest frame any call site pushes, header included:
/// the room `reserve` keeps above `pos`, so that a call site can store its
/// values before it calls anything.
fn largest_frame(metadata: &Metadata) -> u32 {
    let sizes = metadata.frames.values().flat_map(|f| &f.call_sites);
    sizes.map(|site| site.size).max().unwrap_or(0) + FRAME_HEADER_SIZE
}

/// `grow_stack`, `finish_frame`, `reserve` and the five
/// Binaryen-compatible `asyncify_*` functions.
fn runtime_function_bodies(additions: &Additions, largest_frame: u32) -> Vec<Function> {
    let memory = additions.stack_memory;
    let at = |offset: u64| MemArg {
        offset,
        align: 2,
        memory_index: memory,
    };
    let state = additions.state_global;
    let data = additions.data_global;
    // Binaryen's only overflow check, kept for compatibility: pos > end traps.
    let check = [
        Instruction::GlobalGet(data),
        Instruction::I32Load(at(0)),
        Instruction::GlobalGet(data),
        Instruction::I32Load(at(4)),
        Instruction::I32GtU,
        Instruction::If(BlockType::Empty),
        Instruction::Unreachable,
        Instruction::End,
    ];
    let set_state = |value: i32, with_data: bool| {
        let mut code = vec![Instruction::I32Const(value), Instruction::GlobalSet(state)];
        if with_data {
            code.extend([Instruction::LocalGet(0), Instruction::GlobalSet(data)]);
        }
        code.extend(check.iter().cloned());
        code
    };
    // grow_stack(needed_end): grow to a whole number of pages covering
    // needed_end, then move `end` to the memory's new size.
    let grow = vec![
        Instruction::LocalGet(0),
        Instruction::I32Const(65535),
        Instruction::I32Add,
        Instruction::I32Const(16),
        Instruction::I32ShrU,
        Instruction::MemorySize(memory),
        Instruction::I32Sub,
        Instruction::LocalTee(1),
        Instruction::I32Const(0),
        Instruction::I32GtS,
        Instruction::If(BlockType::Empty),
        Instruction::LocalGet(1),
        Instruction::MemoryGrow(memory),
        Instruction::I32Const(-1),
        Instruction::I32Eq,
        Instruction::If(BlockType::Empty),
        Instruction::Unreachable,
        Instruction::End,
        Instruction::End,
        Instruction::GlobalGet(data),
        Instruction::MemorySize(memory),
        Instruction::I32Const(16),
        Instruction::I32Shl,
        Instruction::I32Store(at(4)),
    ];
    // reserve(): make room for the largest frame above `pos`.
    let reserve = vec![
        Instruction::GlobalGet(data),
        Instruction::I32Load(at(0)),
        Instruction::I32Const(largest_frame as i32),
        Instruction::I32Add,
        Instruction::LocalTee(0),
        Instruction::GlobalGet(data),
        Instruction::I32Load(at(4)),
        Instruction::I32GtU,
        Instruction::If(BlockType::Empty),
        Instruction::LocalGet(0),
        Instruction::Call(additions.grow_function),
        Instruction::End,
    ];
    // finish_frame(size, function, call_index): the values are stored at
    // `pos`; write the header after them, move `pos` past it, and keep
    // room for the next frame.
    let finish_frame = vec![
        Instruction::GlobalGet(data),
        Instruction::I32Load(at(0)),
        Instruction::LocalGet(0),
        Instruction::I32Add,
        Instruction::LocalTee(3),
        Instruction::LocalGet(1),
        Instruction::I32Store(at(0)),
        Instruction::LocalGet(3),
        Instruction::LocalGet(2),
        Instruction::I32Store(at(4)),
        Instruction::GlobalGet(data),
        Instruction::LocalGet(3),
        Instruction::I32Const(FRAME_HEADER_SIZE as i32),
        Instruction::I32Add,
        Instruction::I32Store(at(0)),
        Instruction::Call(additions.reserve),
    ];
    let mut start_unwind = set_state(STATE_UNWINDING, true);
    start_unwind.push(Instruction::Call(additions.reserve));
    let bodies = [
        (grow, vec![(1, ValType::I32)]),
        (finish_frame, vec![(1, ValType::I32)]),
        (reserve, vec![(1, ValType::I32)]),
        (start_unwind, vec![]),
        (set_state(STATE_NORMAL, false), vec![]),
        (set_state(STATE_REWINDING, true), vec![]),
        (set_state(STATE_NORMAL, false), vec![]),
        (vec![Instruction::GlobalGet(state)], vec![]),
    ];
    bodies
        .into_iter()
        .map(|(code, locals)| {
            let mut function = Function::new(locals);
            for instruction in &code {
                function.instruction(instruction);
            }
            function.instruction(&Instruction::End);
            function
        })
        .collect()
}

/// Validates the output (debug builds): a failure is a bug in the
/// instrumenter, reported with the WAT of the function it broke.
pub(crate) fn validate_output(wasm: &[u8]) -> Result<()> {
    let features = wasmparser::WasmFeatures::all() - wasmparser::WasmFeatures::COMPONENT_MODEL;
    let Err(error) = wasmparser::Validator::new_with_features(features).validate_all(wasm) else {
        return Ok(());
    };
    let function = broken_function(wasm, error.offset());
    let text = function
        .and_then(|index| function_text(wasm, index))
        .unwrap_or_else(|| "(function not found)".into());
    Err(anyhow!(
        "wasnap produced an invalid module (an instrumenter bug): {error}\n{text}"
    ))
}

/// The index of the function whose body contains `offset`.
fn broken_function(wasm: &[u8], offset: usize) -> Option<u32> {
    let mut index = 0;
    let mut imported = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            Payload::ImportSection(r) => {
                imported = r
                    .into_imports()
                    .filter(|i| {
                        matches!(i.as_ref().map(|i| i.ty), Ok(wasmparser::TypeRef::Func(_)))
                    })
                    .count() as u32;
            }
            Payload::CodeSectionEntry(body) => {
                if body.range().contains(&offset) {
                    return Some(imported + index);
                }
                index += 1;
            }
            _ => {}
        }
    }
    None
}

/// The WAT of function `index`, cut out of the printed module.
fn function_text(wasm: &[u8], index: u32) -> Option<String> {
    let text = wasmprinter::print_bytes(wasm).ok()?;
    let start = text.find(&format!("(func (;{index};)"))?;
    let end = text[start + 1..]
        .find("\n  (func ")
        .map_or(text.len(), |e| start + 1 + e);
    Some(text[start..end].to_string())
}
