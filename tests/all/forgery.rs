//! Forged snapshots: real snapshots of the demo workflows, edited field by
//! field (coroutines, frames, memories, globals, host state), written as
//! files with a fresh checksum, and restored.
//!
//! What "works" means: a forged snapshot is either refused, with a
//! one-line error, before anything of it runs, or it is a state the module
//! can really be in, and the restored workflow is in exactly that state.
//! The second is checked by rewinding the restored workflow into the call
//! it is suspended in and suspending it there again at once
//! (`Workflow::rewind_and_suspend_again`): the snapshot then taken must be
//! the one restored. A rewind that traps, stops elsewhere, or leaves
//! anything different is a forged state that got through. Then the
//! workflow runs on under a time limit, which it may end in any way except
//! a panic.
//!
//! The cargo-fuzz target `forgery` (in `fuzz/`) draws the edits from
//! libFuzzer's bytes; the test here from a fixed seed, for
//! `WASNAP_FORGERY_CASES` cases (300 by default).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use arbitrary::{Result as Drawn, Unstructured};
use wasmparser::ValType;
use wasnap::instrument::{FRAME_HEADER_SIZE, Metadata};
use wasnap::runtime::Captured;
use wasnap::snapshot::{CoroutineState, GlobalValue, PAGE_SIZE, Page, TableImage, file};
use wasnap::{Engine, Module, Output, Settings, Snapshot, Step};

/// A module and every snapshot of one run of it, to forge from.
pub struct Subject {
    pub name: String,
    pub module: Module,
    pub snapshots: Vec<Snapshot>,
}

/// The demo workflows: written in WAT (no build needed), and, where
/// `guest-workflows/build` made them, compiled from C and Rust, whose
/// frames are deeper and whose stacks are shadow stacks in memory. The
/// greenlet demo has coroutines, the approval demo replies, the deploy
/// workflow calls through more functions.
pub fn subjects(engine: &Engine) -> Vec<Subject> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut subjects = Vec::new();
    for demo in ["greenlet", "approval", "deploy"] {
        let path = format!("{root}/guest-workflows/wat/{demo}.wat");
        subjects.push(subject(
            engine,
            format!("wat/{demo}"),
            &wat::parse_file(path).unwrap(),
        ));
        for language in ["c", "rust"] {
            let path = format!("{root}/guest-workflows/out/{language}/{demo}.wasm");
            if let Ok(wasm) = std::fs::read(&path) {
                subjects.push(subject(engine, format!("{language}/{demo}"), &wasm));
            }
        }
    }
    subjects
}

/// Runs `wasm` to its end, answering "true", keeping every snapshot.
pub fn subject(engine: &Engine, name: String, wasm: &[u8]) -> Subject {
    let module = engine.load(wasm).unwrap();
    let settings = Settings::default().stdout(Output::Capture(Captured::default()));
    let mut workflow = engine.start(&module, settings).unwrap();
    let mut snapshots = vec![workflow.snapshot().unwrap()];
    while let Step::Yielded(_) = workflow.run().unwrap() {
        snapshots.push(workflow.snapshot().unwrap());
        workflow.send(b"true");
    }
    Subject {
        name,
        module,
        snapshots,
    }
}

/// What became of one forged snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The edits left a snapshot that cannot be encoded (the encoder
    /// checks memories too).
    NotEncodable,
    /// Refused by decoding or restoring, with this one-line error.
    Refused(String),
    /// Restored, and the rewind reached exactly the state it holds.
    Faithful,
}

/// Forges a snapshot of one of `subjects` as `u` draws it, and checks what
/// the engine makes of it. `Err` describes a forged state that got
/// through, or a panic.
pub fn forge_and_check(
    engine: &Engine,
    subjects: &[Subject],
    u: &mut Unstructured,
) -> Result<Verdict, String> {
    let Ok(subject) = u.choose(subjects) else {
        return Ok(Verdict::NotEncodable);
    };
    let Ok(original) = u.choose(&subject.snapshots) else {
        return Ok(Verdict::NotEncodable);
    };
    let mut forged = original.clone();
    let mut edits = Vec::new();
    for _ in 0..u.int_in_range(1..=3).unwrap_or(1) {
        match edit(&mut forged, &subject.snapshots, u) {
            Ok(what) => edits.push(what),
            Err(_) => break,
        }
    }
    let context = || format!("{} snapshot, edits {edits:?}", subject.name);
    let checked = catch_unwind(AssertUnwindSafe(|| check(engine, &subject.module, &forged)));
    match checked {
        Ok(Ok(verdict)) => Ok(verdict),
        Ok(Err(problem)) => Err(format!("{}: {problem}", context())),
        Err(panic) => Err(format!("{}: panicked: {panic:?}", context())),
    }
}

/// The file round trip, the restore and the rewind check.
fn check(engine: &Engine, module: &Module, forged: &Snapshot) -> Result<Verdict, String> {
    let Ok(bytes) = file::encode(forged, None) else {
        return Ok(Verdict::NotEncodable);
    };
    let refused = |error: anyhow::Error| {
        let line = format!("{error:#}");
        if line.contains('\n') {
            Err(format!("refused in more than one line: {line}"))
        } else {
            Ok(Verdict::Refused(line))
        }
    };
    let snapshot = match file::decode(&bytes) {
        Ok((snapshot, _)) => snapshot,
        Err(error) => return refused(error),
    };
    let settings = Settings::default()
        .stdout(Output::Capture(Captured::default()))
        .time_limit(Duration::from_secs(2));
    let mut workflow = match engine.restore_with(module, &snapshot, settings) {
        Ok(workflow) => workflow,
        Err(error) => return refused(error),
    };
    let again = workflow
        .rewind_and_suspend_again()
        .map_err(|e| format!("accepted, but the rewind failed: {e:#}"))?;
    let metadata = module.metadata();
    let differences = differences(
        &same_state(&snapshot, metadata),
        &same_state(&again, metadata),
    );
    if !differences.is_empty() {
        return Err(format!(
            "accepted, but the rewind ended in another state: {}",
            differences.join("; ")
        ));
    }
    // It may go on to finish, trap or run out of time: anything but panic.
    workflow.send(b"true");
    let _ = workflow.run();
    Ok(Verdict::Faithful)
}

/// A snapshot as the state it describes: a page of zeros listed or left
/// out is the same memory, and a frame's bytes that hold none of its call
/// site's values (a function's frames are as large as its largest call
/// site's) are no state at all.
fn same_state(snapshot: &Snapshot, metadata: &Metadata) -> Snapshot {
    let mut normal = snapshot.clone();
    for memory in &mut normal.memories {
        memory
            .pages
            .edit(|pages| pages.retain(|page| page.data.bytes().unwrap().iter().any(|&b| b != 0)));
    }
    for coroutine in &mut normal.coroutines {
        let Ok(frames) = metadata.saved_frames(&coroutine.stack) else {
            continue;
        };
        let base = coroutine.stack.as_ptr() as usize;
        let mut unused = Vec::new();
        for frame in frames {
            let start = frame.bytes.as_ptr() as usize - base;
            let mut used = vec![false; frame.bytes.len()];
            for value in &frame.site.saved {
                let at = value.offset as usize;
                let end = (at + value_size(value.ty)).min(used.len());
                used[at.min(end)..end].fill(true);
            }
            unused.extend((0..used.len()).filter(|&i| !used[i]).map(|i| start + i));
        }
        for at in unused {
            coroutine.stack[at] = 0;
        }
    }
    normal
}

/// Bytes a saved value of type `ty` takes in a frame.
fn value_size(ty: ValType) -> usize {
    match ty {
        ValType::I32 | ValType::F32 => 4,
        ValType::V128 => 16,
        _ => 8,
    }
}

/// What differs between two snapshots, page contents left out.
fn differences(restored: &Snapshot, rewound: &Snapshot) -> Vec<String> {
    let mut found = Vec::new();
    let mut compare = |what: &str, a: String, b: String| {
        if a != b {
            found.push(format!("{what}: restored {a}, rewound {b}"));
        }
    };
    for (index, (a, b)) in restored.memories.iter().zip(&rewound.memories).enumerate() {
        let pages = |m: &wasnap::snapshot::MemoryImage| {
            let indices: Vec<u32> = m.pages.iter().map(|p| p.index).collect();
            format!("{} pages, non-zero {indices:?}", m.page_count)
        };
        compare(&format!("memory {index}"), pages(a), pages(b));
        if a != b && pages(a) == pages(b) {
            compare(
                &format!("memory {index}"),
                "contents".into(),
                "other contents".into(),
            );
        }
    }
    compare(
        "memories",
        restored.memories.len().to_string(),
        rewound.memories.len().to_string(),
    );
    compare(
        "globals",
        format!("{:?}", restored.globals),
        format!("{:?}", rewound.globals),
    );
    compare(
        "tables",
        format!("{:?}", restored.tables),
        format!("{:?}", rewound.tables),
    );
    compare(
        "coroutines",
        format!("{:?}", restored.coroutines),
        format!("{:?}", rewound.coroutines),
    );
    compare(
        "host",
        format!("{:?}", restored.host),
        format!("{:?}", rewound.host),
    );
    found
}

/// One edit of `s`, described.
fn edit(s: &mut Snapshot, others: &[Snapshot], u: &mut Unstructured) -> Drawn<String> {
    Ok(match u.int_in_range(0..=9)? {
        0..=2 => edit_coroutine(s, u)?,
        3..=5 => edit_stack(s, others, u)?,
        6 => edit_host(s, u)?,
        7 => edit_memory(s, u)?,
        8 => edit_globals(s, u)?,
        _ => edit_identity(s, u)?,
    })
}

/// An id that is often one that exists, sometimes one that does not.
fn some_id(s: &Snapshot, u: &mut Unstructured) -> Drawn<u32> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        1 => s
            .host
            .next_coroutine_id
            .wrapping_add(u.int_in_range(0..=2)?),
        _ => u.choose(&s.coroutines)?.id,
    })
}

fn edit_coroutine(s: &mut Snapshot, u: &mut Unstructured) -> Drawn<String> {
    let id = some_id(s, u)?;
    let index = u.choose_index(s.coroutines.len())?;
    let what = u.int_in_range(0..=8)?;
    if what == 7 {
        s.coroutines.remove(index);
        return Ok(format!("remove coroutine #{index}"));
    }
    if what == 8 {
        let mut copy = s.coroutines[index].clone();
        copy.id = id;
        s.coroutines.push(copy);
        return Ok(format!("copy coroutine #{index} as {id}"));
    }
    let c = &mut s.coroutines[index];
    Ok(match what {
        0 => {
            c.parent = id;
            format!("coroutine {}'s parent = {id}", c.id)
        }
        1 => {
            c.state = *u.choose(&[
                CoroutineState::Fresh,
                CoroutineState::Suspended,
                CoroutineState::Finished,
            ])?;
            if u.arbitrary()? {
                c.stack.clear();
            }
            format!(
                "coroutine {} state = {:?}, {} stack bytes",
                c.id,
                c.state,
                c.stack.len()
            )
        }
        2 => {
            c.id = id;
            format!("coroutine #{index}'s id = {id}")
        }
        3 => {
            c.entry_function = u.int_in_range(0..=3)?;
            format!("coroutine {}'s entry = {}", c.id, c.entry_function)
        }
        4 => {
            c.stack_pointer = u.arbitrary()?;
            format!(
                "coroutine {}'s stack pointer = {:#x}",
                c.id, c.stack_pointer
            )
        }
        5 => {
            c.resume_value = u.arbitrary()?;
            format!("coroutine {}'s resume value = {}", c.id, c.resume_value)
        }
        _ => {
            c.entry_argument = u.arbitrary()?;
            format!("coroutine {}'s argument = {}", c.id, c.entry_argument)
        }
    })
}

/// Edits of an unwound stack: of a frame's header (function, call index),
/// of its values, of its length, or another stack altogether.
fn edit_stack(s: &mut Snapshot, others: &[Snapshot], u: &mut Unstructured) -> Drawn<String> {
    let index = u.choose_index(s.coroutines.len())?;
    let id = s.coroutines[index].id;
    let donor = u.choose(others)?;
    let stack = &mut s.coroutines[index].stack;
    let header = FRAME_HEADER_SIZE as usize;
    Ok(match u.int_in_range(0..=6)? {
        0 | 1 if stack.len() >= header => {
            // The last frame's header is the stack's last 8 bytes; others
            // are found by trying offsets.
            let at = if u.arbitrary()? {
                stack.len() - header
            } else {
                u.choose_index(stack.len() - 3)? & !3
            };
            let word = u32::from_le_bytes(stack[at..at + 4].try_into().unwrap());
            let new = match u.int_in_range(0..=2)? {
                0 => word.wrapping_add(1),
                1 => word.wrapping_sub(1),
                _ => u.int_in_range(0..=8)?,
            };
            stack[at..at + 4].copy_from_slice(&new.to_le_bytes());
            format!("coroutine {id}: stack word at {at} {word} -> {new}")
        }
        2 if !stack.is_empty() => {
            let at = u.choose_index(stack.len())?;
            stack[at] ^= u.int_in_range(1..=255)?;
            format!("coroutine {id}: stack byte {at} flipped")
        }
        3 => {
            let len = u.int_in_range(0..=stack.len())?;
            stack.truncate(len);
            format!("coroutine {id}: stack truncated to {len}")
        }
        4 => {
            let extra: Vec<u8> = (0..u.int_in_range(1..=16)?)
                .map(|_| u.arbitrary())
                .collect::<Drawn<_>>()?;
            let at = u.int_in_range(0..=stack.len())?;
            stack.splice(at..at, extra.iter().copied());
            format!("coroutine {id}: {} bytes inserted at {at}", extra.len())
        }
        _ => {
            let from = u.choose(&donor.coroutines)?;
            *stack = from.stack.clone();
            format!(
                "coroutine {id}: stack of another snapshot's coroutine {}",
                from.id
            )
        }
    })
}

fn edit_host(s: &mut Snapshot, u: &mut Unstructured) -> Drawn<String> {
    let id = some_id(s, u)?;
    let host = &mut s.host;
    Ok(match u.int_in_range(0..=4)? {
        0 => {
            host.current = id;
            format!("current = {id}")
        }
        1 => {
            host.next_coroutine_id = *u.choose(&[0, 1, 2, 3, u32::MAX])?;
            format!("next coroutine id = {}", host.next_coroutine_id)
        }
        2 => {
            host.suspended_in = u
                .choose(&[
                    "",
                    "wasnap.yield",
                    "wasnap.switch",
                    "wasnap.spawn",
                    "other.wait",
                ])?
                .to_string();
            format!("suspended in {:?}", host.suspended_in)
        }
        3 => {
            host.yielded = u.arbitrary()?;
            host.reply = u.arbitrary()?;
            "yielded value and reply".to_string()
        }
        _ => {
            host.args = u.arbitrary()?;
            host.env = u.arbitrary()?;
            "arguments and environment".to_string()
        }
    })
}

fn edit_memory(s: &mut Snapshot, u: &mut Unstructured) -> Drawn<String> {
    if s.memories.is_empty() || u.ratio(1, 8)? {
        s.memories
            .push(
                s.memories
                    .first()
                    .cloned()
                    .unwrap_or_else(|| wasnap::snapshot::MemoryImage {
                        page_count: 1,
                        pages: Default::default(),
                    }),
            );
        return Ok("one memory more".to_string());
    }
    let index = u.choose_index(s.memories.len())?;
    let memory = &mut s.memories[index];
    Ok(match u.int_in_range(0..=4)? {
        0 => {
            memory.page_count = *u.choose(&[
                0,
                memory.page_count.saturating_sub(1),
                memory.page_count.saturating_add(1),
                65536,
                65537,
                1 << 40,
            ])?;
            format!("memory {index} has {} pages", memory.page_count)
        }
        1 if !memory.pages.is_empty() => {
            let page = u.choose_index(memory.pages.len())?;
            let mut data = memory.pages[page].data.bytes().unwrap().to_vec();
            let at = u.choose_index(PAGE_SIZE)?;
            data[at] ^= u.int_in_range(1..=255)?;
            memory.pages.edit(|pages| pages[page].data = data.into());
            format!("memory {index}: a byte of page {page} flipped")
        }
        2 => {
            let page_index = u.int_in_range(0..=(memory.page_count as u32).saturating_add(1))?;
            let fill: u8 = u.arbitrary()?;
            memory.pages.edit(|pages| {
                pages.retain(|p| p.index != page_index);
                let at = pages.partition_point(|p| p.index < page_index);
                let data = vec![fill; PAGE_SIZE].into();
                pages.insert(
                    at,
                    Page {
                        index: page_index,
                        data,
                    },
                );
            });
            format!("memory {index}: page {page_index} filled with {fill}")
        }
        _ => {
            s.memories.remove(index);
            format!("memory {index} removed")
        }
    })
}

fn edit_globals(s: &mut Snapshot, u: &mut Unstructured) -> Drawn<String> {
    if s.globals.is_empty() || u.ratio(1, 6)? {
        s.globals.push(GlobalValue::I32(u.arbitrary()?));
        return Ok("one global more".to_string());
    }
    let index = u.choose_index(s.globals.len())?;
    let value = match u.int_in_range(0..=6)? {
        0 => GlobalValue::I32(u.arbitrary()?),
        1 => GlobalValue::I64(u.arbitrary()?),
        2 => GlobalValue::F32(u.arbitrary()?),
        3 => GlobalValue::F64(u.arbitrary()?),
        4 => GlobalValue::V128(u.arbitrary()?),
        5 => GlobalValue::NullRef,
        _ => GlobalValue::FuncRef(u.arbitrary()?),
    };
    s.globals[index] = value;
    Ok(format!("global {index} = {value:?}"))
}

fn edit_identity(s: &mut Snapshot, u: &mut Unstructured) -> Drawn<String> {
    Ok(match u.int_in_range(0..=2)? {
        0 => {
            s.module_hash[u.choose_index(32)?] ^= 1;
            "module hash".to_string()
        }
        1 => {
            s.instrumenter_version ^= 1;
            "instrumenter version".to_string()
        }
        _ => {
            s.tables.push(TableImage {
                elements: vec![None, Some(u.arbitrary()?)],
            });
            "a table more".to_string()
        }
    })
}

fn cases() -> usize {
    std::env::var("WASNAP_FORGERY_CASES").ok().map_or(300, |v| {
        v.parse().expect("WASNAP_FORGERY_CASES is a number")
    })
}

#[test]
fn forged_snapshots_are_refused_or_restored_faithfully() {
    let engine = Engine::new().unwrap();
    let subjects = subjects(&engine);
    // The compiled guests are part of the suite (.ci/run builds them).
    crate::guests::built("c", "greenlet");
    assert_eq!(subjects.len(), 9);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut refused = 0;
    let mut faithful = 0;
    let mut failures = Vec::new();
    for case in 0..cases() {
        let bytes: Vec<u8> = (0..256)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        match forge_and_check(&engine, &subjects, &mut Unstructured::new(&bytes)) {
            Ok(Verdict::Refused(_)) => refused += 1,
            Ok(Verdict::Faithful) => faithful += 1,
            Ok(Verdict::NotEncodable) => {}
            Err(problem) => failures.push(format!("case {case}: {problem}")),
        }
    }
    eprintln!(
        "forged snapshots: {} cases, {refused} refused, {faithful} restored faithfully, {} failed",
        cases(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Both outcomes must occur, or the edits test too little.
    assert!(
        refused > cases() / 4 && faithful > cases() / 20,
        "{refused} {faithful}"
    );
}
