//! Which of a function's locals are live after each suspending call.
//!
//! Only those are saved when the call unwinds and restored when it
//! rewinds. This matters for speed more than for frame size: code that
//! reads every local on its unwind path keeps every local alive across
//! every call, and a compiler then spills them all.
//!
//! The analysis is the textbook one on the function's control-flow graph:
//! a local is live at a point when some path from there reads it before
//! writing it. Wasm's structured control flow makes the graph easy to
//! build in one pass: `block` and `if` jump forward to their `end`, `loop`
//! back to its header. Unreachable code gets blocks with no predecessors,
//! which cannot make anything live elsewhere.

use std::collections::HashMap;

use wasmparser::Operator;

/// A set of local indices.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct LocalSet(Vec<u64>);

impl LocalSet {
    pub fn new(locals: usize) -> Self {
        LocalSet(vec![0; locals.div_ceil(64)])
    }

    pub fn insert(&mut self, local: u32) {
        self.0[local as usize / 64] |= 1 << (local % 64);
    }

    pub fn contains(&self, local: u32) -> bool {
        self.0[local as usize / 64] & (1 << (local % 64)) != 0
    }

    pub fn union_with(&mut self, other: &LocalSet) {
        for (word, other) in self.0.iter_mut().zip(&other.0) {
            *word |= other;
        }
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |bit| word & (1 << bit) != 0)
                .map(move |bit| (w * 64 + bit) as u32)
        })
    }
}

/// A straight run of operators and the blocks control can go to next.
struct BasicBlock {
    /// Locals read before being written in this block.
    uses: LocalSet,
    /// Locals written in this block.
    defs: LocalSet,
    successors: Vec<usize>,
}

/// An open `block`, `loop`, `if` or the function body.
struct Construct {
    /// Where a branch to this construct's label goes.
    branch_target: usize,
    /// The block after its `end`.
    after: usize,
    /// For an `if` whose `else` has not been seen: the block that tests
    /// the condition, which also goes to the `else` arm (or past `end`).
    condition: Option<usize>,
}

struct Graph {
    blocks: Vec<BasicBlock>,
    locals: usize,
}

impl Graph {
    fn new_block(&mut self) -> usize {
        self.blocks.push(BasicBlock {
            uses: LocalSet::new(self.locals),
            defs: LocalSet::new(self.locals),
            successors: Vec::new(),
        });
        self.blocks.len() - 1
    }

    fn edge(&mut self, from: usize, to: usize) {
        self.blocks[from].successors.push(to);
    }
}

/// For each operator index in `sites` (calls), the locals live right after
/// it, in increasing order. `locals` counts parameters and locals.
pub(crate) fn live_after(
    ops: &[(Operator, usize)],
    sites: &[usize],
    locals: usize,
) -> HashMap<usize, Vec<u32>> {
    let mut graph = Graph {
        blocks: Vec::new(),
        locals,
    };
    let mut current = graph.new_block();
    let exit = graph.new_block();
    let mut constructs = vec![Construct {
        branch_target: exit,
        after: exit,
        condition: None,
    }];
    let mut site_blocks: HashMap<usize, usize> = HashMap::new();
    let mut sites = sites.iter().peekable();
    let target = |constructs: &[Construct], depth: u32| {
        constructs[constructs.len() - 1 - depth as usize].branch_target
    };

    for (i, (op, _)) in ops.iter().enumerate() {
        match op {
            Operator::LocalGet { local_index } => {
                let block = &mut graph.blocks[current];
                if !block.defs.contains(*local_index) {
                    block.uses.insert(*local_index);
                }
            }
            Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                graph.blocks[current].defs.insert(*local_index);
            }
            Operator::Block { .. } => {
                let after = graph.new_block();
                constructs.push(Construct {
                    branch_target: after,
                    after,
                    condition: None,
                });
            }
            Operator::Loop { .. } => {
                let header = graph.new_block();
                graph.edge(current, header);
                current = header;
                let after = graph.new_block();
                constructs.push(Construct {
                    branch_target: header,
                    after,
                    condition: None,
                });
            }
            Operator::If { .. } => {
                let then = graph.new_block();
                let after = graph.new_block();
                graph.edge(current, then);
                constructs.push(Construct {
                    branch_target: after,
                    after,
                    condition: Some(current),
                });
                current = then;
            }
            Operator::Else => {
                let construct = constructs.last_mut().expect("validated nesting");
                let (after, condition) = (construct.after, construct.condition.take());
                graph.edge(current, after);
                current = graph.new_block();
                if let Some(condition) = condition {
                    graph.edge(condition, current);
                }
            }
            Operator::End => {
                let construct = constructs.pop().expect("validated nesting");
                if let Some(condition) = construct.condition {
                    graph.edge(condition, construct.after);
                }
                graph.edge(current, construct.after);
                current = construct.after;
            }
            Operator::Br { relative_depth } => {
                let to = target(&constructs, *relative_depth);
                graph.edge(current, to);
                current = graph.new_block();
            }
            Operator::BrIf { relative_depth }
            | Operator::BrOnNull { relative_depth }
            | Operator::BrOnNonNull { relative_depth } => {
                let to = target(&constructs, *relative_depth);
                graph.edge(current, to);
                let next = graph.new_block();
                graph.edge(current, next);
                current = next;
            }
            Operator::BrTable { targets } => {
                let depths = targets.targets().flatten().chain([targets.default()]);
                for depth in depths.collect::<Vec<_>>() {
                    let to = target(&constructs, depth);
                    graph.edge(current, to);
                }
                current = graph.new_block();
            }
            Operator::Return
            | Operator::Unreachable
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => current = graph.new_block(),
            _ => {}
        }
        if sites.next_if(|&&site| site == i).is_some() {
            // End the block at the call, so that what is live after the
            // call is what is live out of this block.
            site_blocks.insert(i, current);
            let next = graph.new_block();
            graph.edge(current, next);
            current = next;
        }
    }

    let live_out = solve(&graph);
    site_blocks
        .into_iter()
        .map(|(site, block)| (site, live_out[block].iter().collect()))
        .collect()
}

/// Iterates `live_in = uses ∪ (live_out − defs)` to its fixed point and
/// returns every block's `live_out`.
fn solve(graph: &Graph) -> Vec<LocalSet> {
    let empty = LocalSet::new(graph.locals);
    let mut live_in = vec![empty.clone(); graph.blocks.len()];
    let mut live_out = vec![empty; graph.blocks.len()];
    let mut changed = true;
    while changed {
        changed = false;
        // Blocks are numbered roughly in program order: going backwards
        // settles everything but loops in one pass.
        for b in (0..graph.blocks.len()).rev() {
            let block = &graph.blocks[b];
            let mut out = LocalSet::new(graph.locals);
            for &successor in &block.successors {
                out.union_with(&live_in[successor]);
            }
            let mut inn = out.clone();
            for (word, (defs, uses)) in inn.0.iter_mut().zip(block.defs.0.iter().zip(&block.uses.0))
            {
                *word = (*word & !defs) | uses;
            }
            if inn != live_in[b] {
                live_in[b] = inn;
                changed = true;
            }
            live_out[b] = out;
        }
    }
    live_out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the last function body's operators from WAT and returns them
    /// with the indices of its `call` operators.
    fn ops_of(wat: &str) -> (Vec<(Operator<'static>, usize)>, Vec<usize>) {
        let wasm: &'static [u8] = Box::leak(wat::parse_str(wat).unwrap().into_boxed_slice());
        let mut ops = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            if let wasmparser::Payload::CodeSectionEntry(body) = payload.unwrap() {
                // The function under test is the last one.
                ops.clear();
                let mut reader = body.get_operators_reader().unwrap();
                while !reader.eof() {
                    let offset = reader.original_position();
                    ops.push((reader.read().unwrap(), offset));
                }
            }
        }
        let sites = ops
            .iter()
            .enumerate()
            .filter(|(_, (op, _))| matches!(op, Operator::Call { .. }))
            .map(|(i, _)| i)
            .collect();
        (ops, sites)
    }

    fn live(wat: &str, locals: usize) -> Vec<Vec<u32>> {
        let (ops, sites) = ops_of(wat);
        let live = live_after(&ops, &sites, locals);
        sites.iter().map(|site| live[site].clone()).collect()
    }

    #[test]
    fn a_local_written_after_the_call_is_dead() {
        let wat = r#"(module (func $f) (func (param i32) (local i32 i32)
            i32.const 1 local.set 1
            call $f
            i32.const 2 local.set 2
            local.get 1 local.get 2 i32.add local.get 0 i32.add drop))"#;
        assert_eq!(live(wat, 3), [vec![0, 1]]);
    }

    #[test]
    fn a_loop_keeps_alive_what_its_next_iteration_reads() {
        let wat = r#"(module (func $f) (func (local i32 i32)
            loop
              call $f
              local.get 0 i32.const 1 i32.add local.set 0
              local.get 0 br_if 0
            end
            local.get 1 drop))"#;
        assert_eq!(live(wat, 2), [vec![0, 1]]);
    }

    #[test]
    fn both_arms_of_an_if_and_branches_out_of_blocks_count() {
        let wat = r#"(module (func $f) (func (local i32 i32 i32 i32)
            block
              call $f
              local.get 0
              if local.get 1 drop else local.get 2 br 1 end
              local.get 3 drop
            end))"#;
        assert_eq!(live(wat, 4), [vec![0, 1, 2, 3]]);
    }

    #[test]
    fn code_after_an_unconditional_branch_reads_nothing() {
        let wat = r#"(module (func $f) (func (local i32 i32)
            block
              call $f
              br 0
              local.get 0 drop
            end
            local.get 1 drop))"#;
        assert_eq!(live(wat, 2), [vec![1]]);
    }
}
