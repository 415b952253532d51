//! Snapshot (capture + encode) and restore (decode + instantiate + rewind),
//! each measured next to its reference in the same run:
//!
//! - snapshot: `wasnap` is `Workflow::snapshot` + `snapshot::file::encode`;
//!   `reference` is a memcpy of the same non-zero pages out of a buffer laid
//!   out like the guest's memory, plus zstd level 1 of those bytes.
//! - restore: `wasnap` is `snapshot::file::decode` + `Engine::restore` +
//!   `Workflow::run` until the guest, rewound into its `yield`, yields
//!   again; `reference` is a plain `Engine::start` (instantiation) of the
//!   same compiled module.
//!
//! The breakdown benches (`capture`, `encode`, `decode`, `restore_run`)
//! show where the time goes; restores are measured filling the memory
//! eagerly and lazily (`MemoryRestore`).
//!
//! Memories of 1, 16, 64 and 256 MiB with 0%, 1%, 25% and 100% non-zero
//! pages. By default a reduced matrix runs; `WASNAP_BENCH_FULL=1` runs all
//! sixteen. Besides criterion's medians, `paired` measures each ratio in
//! `WASNAP_BENCH_ROUNDS` paired rounds (see `paired.rs`), written with the
//! file sizes to `target/bench-snapshot/paired.tsv`. `scripts/bench-ratios`
//! turns both into the tables of docs/PERFORMANCE.md.

#[path = "paired.rs"]
mod paired;

#[path = "load/guest.rs"]
mod paged;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wasnap::runtime::MemoryRestore;
use wasnap::snapshot::{PAGE_SIZE, file};
use wasnap::{Engine, Module, Settings, Snapshot, Step, Workflow};

/// (MiB, percent of pages written) measured by default.
const REDUCED: &[(u32, u32)] = &[
    (1, 0),
    (1, 100),
    (16, 0),
    (16, 1),
    (16, 25),
    (16, 100),
    (64, 0),
    (64, 1),
];

fn matrix() -> Vec<(u32, u32)> {
    if std::env::var_os("WASNAP_BENCH_FULL").is_some() {
        let mut all = Vec::new();
        for mib in [1, 16, 64, 256] {
            for percent in [0, 1, 25, 100] {
                all.push((mib, percent));
            }
        }
        all
    } else {
        REDUCED.to_vec()
    }
}

/// How many of `pages` pages the guest writes for `percent`: rounded up, so
/// that 1% of a small memory is still one page.
fn written_pages(pages: u32, percent: u32) -> u32 {
    (pages * percent).div_ceil(100)
}

/// A guest that grows its memory to `mib` MiB, fills `percent`% of its pages
/// (spread evenly) with the half-compressible pattern of [`paged::FILL`]
/// (unseeded), then yields forever.
fn guest(mib: u32, percent: u32) -> Vec<u8> {
    let pages = mib * 16;
    let count = written_pages(pages, percent);
    let wat = format!(
        r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory 1)
  {fill}
  (func (export "run")
    (local $i i32)
    (drop (memory.grow (i32.const {grow})))
    (block $done
      (loop $pages
        (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
        (call $fill
          (i32.div_u (i32.mul (local.get $i) (i32.const {pages})) (i32.const {count}))
          (i64.const 0))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $pages)))
    (loop $forever
      (drop (call $yield (i32.const 0) (i32.const 0)))
      (br $forever))))
"#,
        fill = paged::FILL,
        grow = pages - 1,
    );
    wat::parse_str(&wat).expect("the bench guest is valid WAT")
}

/// A workflow suspended at its first yield, its module and its snapshot.
struct Suspended {
    engine: Engine,
    module: Module,
    workflow: Workflow,
    snapshot: Snapshot,
}

fn suspended(mib: u32, percent: u32) -> Suspended {
    let engine = Engine::new().unwrap();
    let module = engine.load(&guest(mib, percent)).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    let snapshot = workflow.snapshot().unwrap();
    let pages = &snapshot.memories[0].pages;
    assert_eq!(pages.len() as u32, written_pages(mib * 16, percent));
    Suspended {
        engine,
        module,
        workflow,
        snapshot,
    }
}

/// The reference's source: a buffer laid out like the guest's memory, and
/// the indices of its non-zero pages.
fn mirror(snapshot: &Snapshot) -> (Vec<u8>, Vec<usize>) {
    let image = &snapshot.memories[0];
    let mut memory = vec![0u8; image.page_count as usize * PAGE_SIZE];
    for page in &image.pages {
        let start = page.index as usize * PAGE_SIZE;
        memory[start..start + PAGE_SIZE].copy_from_slice(page.data.bytes().unwrap());
    }
    let indices = image.pages.iter().map(|p| p.index as usize).collect();
    (memory, indices)
}

/// memcpy of the non-zero pages, then zstd level 1 of them.
fn reference_snapshot(memory: &[u8], indices: &[usize]) -> Vec<u8> {
    let mut copy = Vec::with_capacity(indices.len() * PAGE_SIZE);
    for &index in indices {
        copy.extend_from_slice(&memory[index * PAGE_SIZE..(index + 1) * PAGE_SIZE]);
    }
    zstd::bulk::compress(&copy, 1).unwrap()
}

fn label(mib: u32, percent: u32) -> String {
    format!("{mib}MiB-{percent}pct")
}

fn snapshot_and_restore(c: &mut Criterion) {
    for (mib, percent) in matrix() {
        let mut s = suspended(mib, percent);
        let (memory, indices) = mirror(&s.snapshot);
        let bytes = file::encode(&s.snapshot, None).unwrap();
        let reference = reference_snapshot(&memory, &indices);
        eprintln!(
            "{}: snapshot file {} bytes, reference (zstd-1) {} bytes",
            label(mib, percent),
            bytes.len(),
            reference.len()
        );
        let id = |name: &str| BenchmarkId::new(name, label(mib, percent));

        let mut group = c.benchmark_group("snapshot");
        group.bench_function(id("wasnap"), |b| {
            b.iter(|| {
                let snapshot = s.workflow.snapshot().unwrap();
                black_box(file::encode(&snapshot, None).unwrap())
            })
        });
        group.bench_function(id("reference"), |b| {
            b.iter(|| black_box(reference_snapshot(&memory, &indices)))
        });
        group.bench_function(id("capture"), |b| {
            b.iter(|| black_box(s.workflow.snapshot().unwrap()))
        });
        group.bench_function(id("encode"), |b| {
            b.iter(|| black_box(file::encode(&s.snapshot, None).unwrap()))
        });
        group.finish();

        let mut group = c.benchmark_group("restore");
        group.bench_function(id("wasnap"), |b| {
            b.iter(|| {
                let (snapshot, _) = file::decode(&bytes).unwrap();
                let mut workflow = s.engine.restore(&s.module, &snapshot).unwrap();
                assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
                black_box(workflow)
            })
        });
        group.bench_function(id("reference"), |b| {
            b.iter(|| black_box(s.engine.start(&s.module, Settings::default()).unwrap()))
        });
        group.bench_function(id("decode"), |b| {
            b.iter(|| black_box(file::decode(&bytes).unwrap()))
        });
        group.bench_function(id("restore_run"), |b| {
            b.iter(|| black_box(restore_and_run(&s, MemoryRestore::Eager)))
        });
        if wasnap::runtime::support().fill_on_demand {
            group.bench_function(id("restore_run_lazy"), |b| {
                b.iter(|| black_box(restore_and_run(&s, MemoryRestore::Lazy)))
            });
        }
        group.finish();
    }
}

/// Restores the suspended workflow, filling its memory as `how` says, and
/// runs it to its next yield.
fn restore_and_run(s: &Suspended, how: MemoryRestore) -> Workflow {
    let settings = Settings::default().memory_restore(how);
    let mut workflow = s
        .engine
        .restore_with(&s.module, &s.snapshot, settings)
        .unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    workflow
}

/// Each case's ratios in paired rounds: snapshot against memcpy + zstd-1,
/// and restore (eager and lazy) against instantiation.
fn paired_rounds(_: &mut Criterion) {
    if !paired::selected("paired") {
        return;
    }
    let rounds = paired::rounds();
    let lazy = wasnap::runtime::support().fill_on_demand;
    let mut rows = Vec::new();
    for (mib, percent) in matrix() {
        let mut s = suspended(mib, percent);
        let (memory, indices) = mirror(&s.snapshot);
        let file_bytes = file::encode(&s.snapshot, None).unwrap().len();
        let reference_bytes = reference_snapshot(&memory, &indices).len();
        let t = {
            let workflow = &mut s.workflow;
            let mut wasnap = || {
                let snapshot = workflow.snapshot().unwrap();
                black_box(file::encode(&snapshot, None).unwrap());
            };
            let mut reference = || {
                black_box(reference_snapshot(&memory, &indices));
            };
            paired::run(rounds, &mut [&mut wasnap, &mut reference])
        };
        let case = label(mib, percent);
        let row = paired::line(&format!("snapshot/{case}"), &t[0], &t[1]);
        eprintln!("{row}\t{file_bytes}\t{reference_bytes}");
        rows.push(format!("{row}\t{file_bytes}\t{reference_bytes}"));

        let mut eager = || drop(black_box(restore_and_run(&s, MemoryRestore::Eager)));
        let mut instantiate = || {
            drop(black_box(
                s.engine.start(&s.module, Settings::default()).unwrap(),
            ))
        };
        let t = if lazy {
            let mut lazy = || drop(black_box(restore_and_run(&s, MemoryRestore::Lazy)));
            paired::run(rounds, &mut [&mut eager, &mut instantiate, &mut lazy])
        } else {
            paired::run(rounds, &mut [&mut eager, &mut instantiate])
        };
        for (name, times) in [
            ("restore", &t[0]),
            ("restore-lazy", t.get(2).unwrap_or(&t[0])),
        ] {
            if name == "restore-lazy" && !lazy {
                continue;
            }
            let row = paired::line(&format!("{name}/{case}"), times, &t[1]);
            eprintln!("{row}");
            rows.push(format!("{row}\t\t"));
        }
    }
    let header = format!("case\t{}\tfile_bytes\treference_bytes", paired::COLUMNS);
    paired::write("bench-snapshot", "paired.tsv", &header, &rows);
}

fn config() -> Criterion {
    // A shared two-core machine: short runs, compared as ratios.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = snapshot_and_restore, paired_rounds
}
criterion_main!(benches);
