//! Phase 1: read and validate the module, refuse what cannot be snapshotted,
//! and find every function that can reach a suspending import.
//!
//! A function can suspend when it calls a suspending import, calls a
//! function that can suspend, or makes an indirect call that can reach a
//! function that can suspend, of the same signature:
//!
//! - a `call_indirect` on table T reaches the functions that T's active
//!   element segments place in it, or, when T is *open* (imported,
//!   exported, or written at run time by `table.set`, `table.grow`,
//!   `table.fill`, `table.copy` or `table.init`), any function the program
//!   can take a reference to (in an element segment, named by `ref.func`,
//!   or exported);
//! - a `call_ref` reaches any function the program can take a reference to.
//!
//! This is narrower than treating every indirect call as suspending, and
//! still sound: a function nobody can reference cannot be called
//! indirectly, and a closed table holds only what its segments put there.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Result, anyhow, bail};
use wasmparser::{
    ElementItems, ElementKind, ExternalKind, FuncToValidate, FuncType, FuncValidatorAllocations,
    FunctionBody, GlobalType, KnownCustom, MemoryType, Name, Operator, Parser, Payload, TableType,
    TypeRef, ValidPayload, Validator, ValidatorResources, WasmFeatures,
};

use super::{MAX_NESTING, Options};

/// Everything the later phases need to know about the input module.
pub(crate) struct Analysis<'a> {
    /// Function types by type index (`None` for a non-function type).
    pub types: Vec<Option<FuncType>>,
    /// Type index of every function, imports first.
    pub func_types: Vec<u32>,
    /// Number of imported functions.
    pub imported_funcs: u32,
    /// How many suspending calls a loop makes itself to be an entry loop
    /// ([`Options::busy_loop_calls`]).
    pub busy_loop_calls: usize,
    /// Every global's type, imports first.
    pub globals: Vec<GlobalType>,
    /// Number of imported globals.
    pub imported_globals: u32,
    /// Every memory's type, imports first.
    pub memories: Vec<MemoryType>,
    /// Every table's type, imports first.
    pub tables: Vec<TableType>,
    /// The body of each defined function with its validator.
    pub bodies: Vec<(FunctionBody<'a>, FuncToValidate<ValidatorResources>)>,
    /// Whether each function (imports first) can suspend.
    pub can_suspend: Vec<bool>,
    /// The indirect calls that can suspend: by signature, and by table
    /// (`None` for `call_ref`).
    pub suspending_targets: HashSet<IndirectTarget>,
    /// With [`Options::only_functions`]: which functions could suspend had
    /// the list not narrowed it. Those it marks but `can_suspend` does not
    /// are left out, with a check after their calls that can suspend.
    pub unnarrowed: Option<Vec<bool>>,
    /// The shadow-stack pointer global, if one is known.
    pub stack_pointer_global: Option<u32>,
    /// Function names from the name section.
    pub function_names: BTreeMap<u32, String>,
    /// Names already exported, so that added exports can avoid them.
    pub export_names: HashSet<String>,
    /// Whether any code writes a table at run time.
    pub writes_tables: bool,
    /// `module.name` of each imported function, by function index.
    pub imported_functions: Vec<String>,
    /// The exported functions' indices, by export name.
    pub exported_functions: BTreeMap<String, u32>,
    /// What table 0 holds after instantiation, when that is known.
    pub table0_functions: Option<BTreeMap<u32, u32>>,
    /// Whether a suspending import can be called indirectly (a reference
    /// to it can be taken), so that an indirect call may be the first to
    /// see an unwind start.
    pub suspending_import_in_table: bool,
}

impl Analysis<'_> {
    /// The signature of function `index`.
    pub fn func_type(&self, index: u32) -> &FuncType {
        self.types[self.func_types[index as usize] as usize]
            .as_ref()
            .expect("validated: functions have function types")
    }

    /// A human name for function `index` for error messages (its name
    /// from the name section escaped, so that it stays on one line).
    pub fn describe_function(&self, index: u32) -> String {
        match self.function_names.get(&index) {
            Some(name) => format!("function {index} ({})", name.escape_debug()),
            None => format!("function {index}"),
        }
    }

    /// Whether a `call_indirect` on `table` (`None`: a `call_ref`) with
    /// signature `type_index` can reach a suspending function.
    pub fn indirect_can_suspend(&self, type_index: u32, table: Option<u32>) -> bool {
        self.indirect_target(type_index, table)
            .is_some_and(|target| self.suspending_targets.contains(&target))
    }

    /// The key of an indirect call in `suspending_targets`.
    pub fn indirect_target(&self, type_index: u32, table: Option<u32>) -> Option<IndirectTarget> {
        let signature = self.types[type_index as usize].clone()?;
        Some(IndirectTarget { signature, table })
    }
}

/// What an indirect call can reach: functions of one signature, in one
/// table (`None`: any function a reference can be taken to, for `call_ref`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct IndirectTarget {
    pub signature: FuncType,
    pub table: Option<u32>,
}

/// The features wasnap accepts in its input: what compilers emit today.
/// Features it cannot snapshot are validated too, then refused with a
/// message naming them.
fn validation_features() -> WasmFeatures {
    WasmFeatures::all() - WasmFeatures::COMPONENT_MODEL
}

/// Reads, validates and analyses `wasm`.
pub(crate) fn analyse<'a>(wasm: &'a [u8], options: &Options) -> Result<Analysis<'a>> {
    refuse_components(wasm)?;
    let mut validator = Validator::new_with_features(validation_features());
    let mut module = Analysis {
        types: Vec::new(),
        func_types: Vec::new(),
        imported_funcs: 0,
        busy_loop_calls: options.busy_loop_calls(),
        globals: Vec::new(),
        imported_globals: 0,
        memories: Vec::new(),
        tables: Vec::new(),
        bodies: Vec::new(),
        can_suspend: Vec::new(),
        suspending_targets: HashSet::new(),
        unnarrowed: None,
        stack_pointer_global: None,
        function_names: BTreeMap::new(),
        export_names: HashSet::new(),
        writes_tables: false,
        imported_functions: Vec::new(),
        exported_functions: BTreeMap::new(),
        table0_functions: Some(BTreeMap::new()),
        suspending_import_in_table: false,
    };
    let mut graph = CallGraph::default();
    let mut validation_allocations = FuncValidatorAllocations::default();
    let mut import_names: Vec<(String, String)> = Vec::new();
    let mut global_names: HashMap<u32, String> = HashMap::new();

    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(invalid)?;
        let valid = validator.payload(&payload).map_err(invalid)?;
        match payload {
            Payload::TypeSection(reader) => {
                for group in reader.into_iter_err_on_gc_types().map(|g| g.map(Some)) {
                    let ty = group.map_err(|e| refuse_gc(e.offset()))?;
                    module.types.push(ty);
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    match import.ty {
                        TypeRef::Func(ty) => {
                            module.func_types.push(ty);
                            module.imported_funcs += 1;
                            import_names.push((import.module.into(), import.name.into()));
                        }
                        TypeRef::Global(ty) => {
                            module.globals.push(ty);
                            module.imported_globals += 1;
                        }
                        TypeRef::Memory(ty) => module.memories.push(ty),
                        TypeRef::Table(ty) => {
                            if module.tables.is_empty() {
                                module.table0_functions = None;
                            }
                            graph.open_tables.insert(module.tables.len() as u32);
                            module.tables.push(ty);
                        }
                        TypeRef::Tag(_) => bail!(refusal("exception handling", "an imported tag")),
                        _ => bail!(
                            "unsupported import kind for {}.{}",
                            import.module,
                            import.name
                        ),
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    module.func_types.push(ty?);
                }
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    module.tables.push(table?.ty);
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    module.memories.push(memory?);
                }
            }
            Payload::TagSection(_) => bail!(refusal("exception handling", "a tag section")),
            Payload::GlobalSection(reader) => {
                for global in reader {
                    let global = global?;
                    for op in global.init_expr.get_operators_reader() {
                        if let Operator::RefFunc { function_index } = op? {
                            graph.referenceable.insert(function_index);
                        }
                    }
                    module.globals.push(global.ty);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export?;
                    module.export_names.insert(export.name.to_string());
                    match export.kind {
                        ExternalKind::Func => {
                            graph.referenceable.insert(export.index);
                            module
                                .exported_functions
                                .insert(export.name.to_string(), export.index);
                        }
                        ExternalKind::Table => {
                            graph.open_tables.insert(export.index);
                        }
                        // AssemblyScript names its shadow stack by export.
                        ExternalKind::Global if export.name == "__stack_pointer" => {
                            global_names.insert(export.index, export.name.to_string());
                        }
                        _ => {}
                    }
                }
            }
            Payload::ElementSection(reader) => {
                for element in reader {
                    let element = element?;
                    fill_table0(&mut module.table0_functions, &element)?;
                    let table = match element.kind {
                        ElementKind::Active { table_index, .. } => Some(table_index.unwrap_or(0)),
                        _ => None,
                    };
                    graph.add_element_items(table, element.items)?;
                }
            }
            Payload::CodeSectionEntry(body) => {
                let ValidPayload::Func(func, _) = valid else {
                    unreachable!("the validator hands out every function body")
                };
                validation_allocations = validate_body(&func, &body, validation_allocations)?;
                graph.scan_body(func.index, &body)?;
                module.bodies.push((body, func));
            }
            Payload::CustomSection(reader) => {
                if let KnownCustom::Name(names) = reader.as_known() {
                    read_names(names, &mut module.function_names, &mut global_names);
                }
            }
            _ => {}
        }
    }

    for (index, memory) in module.memories.iter().enumerate() {
        if memory.shared {
            bail!(refusal("threads", &format!("memory {index} is shared")));
        }
    }
    if let Some((function, proposal)) = graph.unsupported.first() {
        bail!(refusal(
            proposal,
            &format!("it is used in {}", module.describe_function(*function))
        ));
    }

    module.imported_functions = import_names
        .iter()
        .map(|(m, n)| format!("{m}.{n}"))
        .collect();
    let suspending_imports: Vec<bool> = import_names
        .iter()
        .map(|(m, n)| options.is_suspending(m, n))
        .collect();
    let (can_suspend, targets) = graph.propagate(&module, &suspending_imports, |_| true);
    module.can_suspend = can_suspend;
    module.suspending_targets = targets;
    if options.narrows() {
        let (narrowed, targets) = graph.propagate(&module, &suspending_imports, |f| {
            options.may_suspend_in(module.function_names.get(&f).map(String::as_str))
        });
        if narrowed != module.can_suspend {
            module.unnarrowed = Some(std::mem::replace(&mut module.can_suspend, narrowed));
            module.suspending_targets = targets;
        }
    }
    module.stack_pointer_global = find_stack_pointer(&module, &global_names);
    module.writes_tables = graph.writes_tables;
    module.suspending_import_in_table = (0..module.imported_funcs)
        .any(|f| suspending_imports[f as usize] && graph.referenceable.contains(&f));
    Ok(module)
}

/// Records what an active element segment for table 0 puts where, or
/// forgets table 0's contents when the segment's offset is not a constant.
fn fill_table0(
    table0: &mut Option<BTreeMap<u32, u32>>,
    element: &wasmparser::Element,
) -> Result<()> {
    let ElementKind::Active {
        table_index,
        offset_expr,
    } = &element.kind
    else {
        return Ok(());
    };
    if table_index.unwrap_or(0) != 0 {
        return Ok(());
    }
    let mut ops = offset_expr.get_operators_reader();
    let offset = match (ops.read()?, ops.read()?) {
        (Operator::I32Const { value }, Operator::End) => u64::from(value as u32),
        (Operator::I64Const { value }, Operator::End) => value as u64,
        _ => {
            *table0 = None;
            return Ok(());
        }
    };
    let Some(slots) = table0 else {
        return Ok(());
    };
    let functions: Vec<Option<u32>> = match element.items.clone() {
        ElementItems::Functions(reader) => reader
            .into_iter()
            .map(|f| f.map(Some))
            .collect::<Result<_, _>>()?,
        ElementItems::Expressions(_, expressions) => expressions
            .into_iter()
            .map(|expression| {
                let mut function = None;
                for op in expression?.get_operators_reader() {
                    if let Operator::RefFunc { function_index } = op? {
                        function = Some(function_index);
                    }
                }
                Ok(function)
            })
            .collect::<Result<_>>()?,
    };
    for (slot, function) in (offset..).zip(functions) {
        let Ok(slot) = u32::try_from(slot) else {
            break;
        };
        match function {
            Some(function) => slots.insert(slot, function),
            None => slots.remove(&slot),
        };
    }
    Ok(())
}

/// Validates a function body in full, before anything reads it: the
/// analysis and the rewrite index types, functions and locals by what the
/// body says, which only validation makes safe. Returns the validator's
/// allocations for the next body.
fn validate_body(
    func: &FuncToValidate<ValidatorResources>,
    body: &FunctionBody<'_>,
    allocations: FuncValidatorAllocations,
) -> Result<FuncValidatorAllocations> {
    let mut validator = FuncToValidate {
        resources: func.resources.clone(),
        index: func.index,
        ty: func.ty,
        features: func.features,
    }
    .into_validator(allocations);
    validator.validate(body).map_err(invalid)?;
    Ok(validator.into_allocations())
}

/// The depth of nesting after `op`, given the depth before it.
fn nested_after(nesting: usize, op: &Operator<'_>) -> usize {
    match op {
        Operator::Block { .. }
        | Operator::Loop { .. }
        | Operator::If { .. }
        | Operator::Try { .. }
        | Operator::TryTable { .. } => nesting + 1,
        // A valid body's last `end` closes the function itself.
        Operator::End => nesting.saturating_sub(1),
        _ => nesting,
    }
}

/// The one-line error for a module the validator refuses.
fn invalid(error: wasmparser::BinaryReaderError) -> anyhow::Error {
    anyhow!("the module is not valid WebAssembly: {error}")
}

/// Gives a component its own error rather than a parse failure.
fn refuse_components(wasm: &[u8]) -> Result<()> {
    if wasm.len() >= 8 && wasm[0..4] == *b"\0asm" && wasm[4..8] != [1, 0, 0, 0] {
        if wasm[6..8] == [1, 0] {
            bail!("this is a WebAssembly component, not a core module: wasnap runs core modules");
        }
        bail!("unsupported WebAssembly binary version {:?}", &wasm[4..8]);
    }
    if wasm.len() < 4 || wasm[0..4] != *b"\0asm" {
        bail!("not a WebAssembly module (the file does not start with \\0asm)");
    }
    Ok(())
}

/// The one-line error for a feature wasnap cannot snapshot.
fn refusal(feature: &str, detail: &str) -> String {
    format!("unsupported feature: {feature} cannot be snapshotted by wasnap ({detail})")
}

fn refuse_gc(offset: usize) -> anyhow::Error {
    anyhow!(refusal(
        "GC types",
        &format!("a struct, array or recursive type at offset {offset:#x}")
    ))
}

fn read_names(
    names: wasmparser::NameSectionReader<'_>,
    functions: &mut BTreeMap<u32, String>,
    globals: &mut HashMap<u32, String>,
) {
    // A malformed name section is not worth failing over: names only
    // decorate errors and inspection.
    for name in names.into_iter().flatten() {
        let (map, target): (_, &mut dyn FnMut(u32, String)) = match name {
            Name::Function(map) => (map, &mut |i, n| {
                functions.insert(i, n);
            }),
            Name::Global(map) => (map, &mut |i, n| {
                globals.insert(i, n);
            }),
            _ => continue,
        };
        for naming in map.into_iter().flatten() {
            target(naming.index, naming.name.to_string());
        }
    }
}

/// The shadow-stack pointer: the global named `__stack_pointer`, else, by
/// the LLVM convention, global 0 when it is a defined mutable `i32`.
fn find_stack_pointer(module: &Analysis, global_names: &HashMap<u32, String>) -> Option<u32> {
    if let Some((&index, _)) = global_names.iter().find(|(_, n)| *n == "__stack_pointer") {
        return Some(index);
    }
    let first = module.globals.first()?;
    (module.imported_globals == 0
        && first.mutable
        && first.content_type == wasmparser::ValType::I32)
        .then_some(0)
}

/// Direct calls, indirect-call signatures and references, per function.
#[derive(Default)]
struct CallGraph {
    /// For each callee, the functions that call it directly.
    callers: HashMap<u32, Vec<u32>>,
    /// For each signature (type index) and table (`None` for `call_ref`),
    /// the functions that call through it indirectly.
    indirect_callers: HashMap<u32, HashMap<Option<u32>, Vec<u32>>>,
    /// Functions whose reference the program can take.
    referenceable: HashSet<u32>,
    /// The functions each table's active element segments place in it.
    table_members: HashMap<u32, HashSet<u32>>,
    /// Tables that can hold any referenceable function: imported,
    /// exported or written at run time.
    open_tables: HashSet<u32>,
    /// The first function using a feature that cannot be snapshotted.
    unsupported: Vec<(u32, &'static str)>,
    /// Whether any function writes a table.
    writes_tables: bool,
}

impl CallGraph {
    /// Records the functions of an element segment, placed in `table` when
    /// the segment is active.
    fn add_element_items(&mut self, table: Option<u32>, items: ElementItems<'_>) -> Result<()> {
        let mut functions = Vec::new();
        match items {
            ElementItems::Functions(reader) => {
                for function in reader {
                    functions.push(function?);
                }
            }
            ElementItems::Expressions(_, expressions) => {
                for expression in expressions {
                    for op in expression?.get_operators_reader() {
                        if let Operator::RefFunc { function_index } = op? {
                            functions.push(function_index);
                        }
                    }
                }
            }
        }
        self.referenceable.extend(&functions);
        if let Some(table) = table {
            self.table_members
                .entry(table)
                .or_default()
                .extend(functions);
        }
        Ok(())
    }

    fn scan_body(&mut self, function: u32, body: &FunctionBody<'_>) -> Result<()> {
        let mut nesting = 0usize;
        for op in body.get_operators_reader()? {
            let op = op?;
            nesting = nested_after(nesting, &op);
            if nesting > MAX_NESTING {
                bail!(
                    "function {function} nests blocks more than {MAX_NESTING} deep: wasnap instruments functions nested at most that deep"
                );
            }
            match op {
                Operator::Call { function_index } | Operator::ReturnCall { function_index } => self
                    .callers
                    .entry(function_index)
                    .or_default()
                    .push(function),
                Operator::CallIndirect {
                    type_index,
                    table_index,
                }
                | Operator::ReturnCallIndirect {
                    type_index,
                    table_index,
                } => self.add_indirect_caller(function, type_index, Some(table_index)),
                Operator::CallRef { type_index } | Operator::ReturnCallRef { type_index } => {
                    self.add_indirect_caller(function, type_index, None)
                }
                Operator::RefFunc { function_index } => {
                    self.referenceable.insert(function_index);
                }
                Operator::TableSet { table }
                | Operator::TableGrow { table }
                | Operator::TableFill { table }
                | Operator::TableInit { table, .. }
                | Operator::TableCopy {
                    dst_table: table, ..
                } => {
                    self.writes_tables = true;
                    self.open_tables.insert(table);
                }
                _ => {}
            }
            if self.unsupported.is_empty()
                && let Some(feature) = unsupported_feature(&op)
            {
                self.unsupported.push((function, feature));
            }
        }
        Ok(())
    }

    fn add_indirect_caller(&mut self, caller: u32, type_index: u32, table: Option<u32>) {
        let by_table = self.indirect_callers.entry(type_index).or_default();
        by_table.entry(table).or_default().push(caller);
    }

    /// Whether an indirect call on `table` (`None`: `call_ref`) can reach
    /// `function`, signatures aside.
    fn reaches(&self, table: Option<u32>, function: u32) -> bool {
        let referenceable = self.referenceable.contains(&function);
        match table {
            None => referenceable,
            Some(table) => {
                (referenceable && self.open_tables.contains(&table))
                    || self
                        .table_members
                        .get(&table)
                        .is_some_and(|members| members.contains(&function))
            }
        }
    }

    /// Marks every function that can reach a suspending import, and every
    /// indirect-call target (signature and table) through which a call can. Defined functions
    /// `allowed` refuses are never marked, and nothing propagates through
    /// them.
    fn propagate(
        &self,
        module: &Analysis,
        suspending_imports: &[bool],
        allowed: impl Fn(u32) -> bool,
    ) -> (Vec<bool>, HashSet<IndirectTarget>) {
        let mut can_suspend = vec![false; module.func_types.len()];
        let mut targets: HashSet<IndirectTarget> = HashSet::new();
        let mut work: Vec<u32> = Vec::new();
        for (index, &suspends) in suspending_imports.iter().enumerate() {
            if suspends {
                can_suspend[index] = true;
                work.push(index as u32);
            }
        }
        // Indirect callers are grouped by their type index; signatures are
        // compared structurally, so group the type indices by signature.
        let mut types_by_signature: HashMap<&FuncType, Vec<u32>> = HashMap::new();
        for (index, ty) in module.types.iter().enumerate() {
            if let Some(ty) = ty {
                types_by_signature.entry(ty).or_default().push(index as u32);
            }
        }
        let mark = |f: u32, work: &mut Vec<u32>, can_suspend: &mut Vec<bool>| {
            if !can_suspend[f as usize] && allowed(f) {
                can_suspend[f as usize] = true;
                work.push(f);
            }
        };
        while let Some(callee) = work.pop() {
            for &caller in self.callers.get(&callee).into_iter().flatten() {
                mark(caller, &mut work, &mut can_suspend);
            }
            if !self.referenceable.contains(&callee) {
                continue;
            }
            let signature = module.func_type(callee);
            for type_index in &types_by_signature[signature] {
                let Some(by_table) = self.indirect_callers.get(type_index) else {
                    continue;
                };
                for (&table, callers) in by_table {
                    if !self.reaches(table, callee) {
                        continue;
                    }
                    // Each target's callers need marking once.
                    let target = IndirectTarget {
                        signature: signature.clone(),
                        table,
                    };
                    if !targets.insert(target) {
                        continue;
                    }
                    for &caller in callers {
                        mark(caller, &mut work, &mut can_suspend);
                    }
                }
            }
        }
        (can_suspend, targets)
    }
}

/// Names the proposal of `op` when wasnap cannot snapshot code using it.
fn unsupported_feature(op: &Operator) -> Option<&'static str> {
    macro_rules! proposal_of {
        ($(@$proposal:ident $op:ident $({ $($arg:ident: $argty:ty),* })? => $visit:ident ($($ann:tt)*))*) => {
            match op {
                $(Operator::$op { .. } => stringify!($proposal),)*
                _ => "",
            }
        };
    }
    let proposal: &str = wasmparser::for_each_operator!(proposal_of);
    match proposal {
        "exceptions" | "legacy_exceptions" => Some("exception handling"),
        "gc" => Some("GC types"),
        "threads" | "shared_everything_threads" => Some("threads"),
        "stack_switching" => Some("stack switching"),
        _ => None,
    }
}
