//! The store on the path of a suspension, each measure next to its
//! reference in the same run:
//!
//! - `version` (incremental versions): a workflow whose memory is all
//!   written changes a few pages per step; one step is `Workflow::run` to
//!   the next yield + `Workflow::snapshot` + `Database::commit_version`. The
//!   reference is zstd level 1 of the bytes of the pages that changed (the
//!   least any store of changed pages must do). 16 MiB and 64 MiB memories
//!   change the same 3 pages (1% of 16 MiB) per step, so that the time per
//!   version can be compared across memory sizes.
//! - `growth`: the same workflow stepped `WASNAP_BENCH_STEPS` times (100 by
//!   default, 1,000 for the full measure) on a fresh database: the mean
//!   time per version, and how much the database grew per version against
//!   the zstd-1 size of the changed bytes. Written to
//!   `target/bench-store/growth.tsv` for `scripts/bench-ratios`.
//! - `suspend` (durable suspension throughput): a 1 MiB workflow that
//!   changes one page per step; one step is `run` + `snapshot` +
//!   `commit_version` (durable); the reference is `run` + `snapshot` (an
//!   in-memory snapshot, no store). Also with 10,000 other instances
//!   stored, and with `Durability::Power`.
//! - `inputs` (the replay journal): a workflow that reads the wall clock
//!   1,000 times and draws 16 random bytes 100 times per step; one step is
//!   `run` to the next yield + taking and encoding its recorded inputs, as
//!   the executor does before a commit. The reference is the same step
//!   with recording off (`Settings::recording(false)`).
//! - `detect`: the two ways of finding the changed pages of a 16 MiB memory
//!   without help from the kernel: comparing each page with the copy kept
//!   from the last snapshot (wasnap's fallback), and hashing every page.
//! - `paired_versions`: the time per version of 16, 64 and 256 MiB
//!   memories changing the same 3 pages, in paired rounds (`paired.rs`),
//!   against each other and against the reference; written to
//!   `target/bench-store/versions.tsv`.
//! - `lazy_resume`: a 16 MiB workflow, every page written, loaded from the
//!   store and restored, then run to a yield that rewrites N pages:
//!   restoring its memory lazily against eagerly, in paired rounds, with
//!   the pages each read; written to `target/bench-store/resume.tsv`.

#[path = "paired.rs"]
mod paired;

#[path = "load/guest.rs"]
mod paged;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use paged::{guest, stepping_guest};
use wasnap::runtime::MemoryRestore;
use wasnap::snapshot::{PAGE_SIZE, Page};
use wasnap::store::{Database, Durability, Lease, Outcome, Provenance};
use wasnap::{Engine, Policy, Settings, Snapshot, Step, Workflow};

/// A store in a temporary directory holding one instance of the guest,
/// suspended at its first yield and committed as version 1, with the
/// workflow still live.
struct Stepping {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Database,
    lease: Lease,
    workflow: Workflow,
    /// The version the next step resumes from.
    head: u32,
    /// The snapshot of that version, to find which pages the next step
    /// changes (outside the timed part).
    last: Snapshot,
}

impl Stepping {
    fn new(engine: &Engine, mib: u32, changed: u32, durability: Durability) -> Stepping {
        Self::with_instances(engine, mib, changed, durability, 0)
    }

    /// Like [`Stepping::new`], with `others` more suspended instances of
    /// the same guest stored first.
    fn with_instances(
        engine: &Engine,
        mib: u32,
        changed: u32,
        durability: Durability,
        others: u32,
    ) -> Stepping {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wasnap.db");
        let store = Database::open(&path).unwrap();
        store.set_durability(durability).unwrap();
        let wasm = guest(mib, changed);
        let module = engine.load(&wasm).unwrap();
        let hash = store.put_module(&wasm).unwrap();
        let args = vec!["bench".to_string()];
        let mut workflow = engine.start(&module, Settings::default()).unwrap();
        assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
        let first = workflow.snapshot().unwrap();
        if others > 0 {
            let started = Instant::now();
            for _ in 0..others {
                let id = store
                    .create_instance(&hash, &args, &Policy::default())
                    .unwrap();
                let lease = store.lease(id).unwrap();
                store
                    .commit_version(&lease, None, &Outcome::Suspended(&first), &[])
                    .unwrap();
            }
            eprintln!(
                "stored {others} instances in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        let id = store
            .create_instance(&hash, &args, &Policy::default())
            .unwrap();
        let lease = store.lease(id).unwrap();
        let head = store
            .commit_version(&lease, None, &Outcome::Suspended(&first), &[])
            .unwrap();
        Stepping {
            _dir: dir,
            path,
            store,
            lease,
            workflow,
            head,
            last: first,
        }
    }

    /// One durable suspension: resume, run to the next yield, snapshot,
    /// commit.
    fn step(&mut self) -> Snapshot {
        self.workflow.send(b"");
        assert_eq!(self.workflow.run().unwrap(), Step::Yielded(Vec::new()));
        // As the executor commits a run: with the inputs it recorded.
        let inputs = self.workflow.take_inputs().encode();
        let snapshot = self.workflow.snapshot().unwrap();
        let provenance = Provenance {
            inputs: Some(&inputs),
            ..Provenance::UNRECORDED_RUN
        };
        self.head = self
            .store
            .commit_version_from(
                &self.lease,
                Some(self.head),
                &Outcome::Suspended(&snapshot),
                &[],
                &provenance,
            )
            .unwrap();
        snapshot
    }

    /// The same without the store: resume, run, snapshot in memory.
    fn step_in_memory(&mut self) -> Snapshot {
        self.workflow.send(b"");
        assert_eq!(self.workflow.run().unwrap(), Step::Yielded(Vec::new()));
        self.workflow.snapshot().unwrap()
    }

    /// The size of the database with its WAL folded in, in bytes.
    fn database_bytes(&self) -> u64 {
        database_bytes(&self.path)
    }
}

/// Pages of `now` that differ from (or are missing in) `before`, as one
/// buffer: the changed bytes the reference compresses.
fn changed_bytes(before: &Snapshot, now: &Snapshot) -> Vec<u8> {
    let old: std::collections::HashMap<u32, &Page> = before.memories[0]
        .pages
        .iter()
        .map(|p| (p.index, p))
        .collect();
    let mut out = Vec::new();
    for page in &now.memories[0].pages {
        if old.get(&page.index).is_none_or(|o| o.data != page.data) {
            out.extend_from_slice(page.data.bytes().unwrap());
        }
    }
    out
}

/// Checkpoints the WAL into the database file and returns the space its
/// pages use (freelist excluded), so that growth is measured the same way
/// whatever the WAL happens to hold.
fn database_bytes(path: &Path) -> u64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let get = |pragma: &str| -> u64 {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .unwrap()
    };
    (get("page_count") - get("freelist_count")) * get("page_size")
}

/// Memory sizes (MiB) and pages changed per step of the incremental
/// benchmark: 1% of 16 MiB, then the same pages in memories four and
/// sixteen times as large.
const INCREMENTAL: &[(u32, u32)] = &[(16, 3), (64, 3), (256, 3)];

fn label(mib: u32, changed: u32) -> String {
    format!("{mib}MiB-{changed}pages")
}

/// A count from the environment variable `name`, else `default`.
fn env_count(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// How many steps the growth run takes (`WASNAP_BENCH_STEPS`, default 100).
fn steps() -> u32 {
    env_count("WASNAP_BENCH_STEPS", 100)
}

fn incremental_versions(c: &mut Criterion) {
    let engine = Engine::new().unwrap();
    let mut group = c.benchmark_group("version");
    for &(mib, changed) in &INCREMENTAL[..2] {
        let id = |name: &str| BenchmarkId::new(name, label(mib, changed));
        let mut s = Stepping::new(&engine, mib, changed, Durability::Process);
        group.bench_function(id("wasnap"), |b| b.iter(|| black_box(s.step())));
        // The reference compresses what one step changed; which pages those
        // are is found outside the timed part.
        let before = s.step();
        let after = s.step();
        let changed_now = changed_bytes(&before, &after);
        assert_eq!(changed_now.len(), changed as usize * PAGE_SIZE);
        group.bench_function(id("reference"), |b| {
            b.iter(|| black_box(zstd::bulk::compress(&changed_now, 1).unwrap()))
        });
    }
    group.finish();
}

/// Steps a fresh database `WASNAP_BENCH_STEPS` times and records the time
/// and the growth per version next to the reference's.
fn growth(_: &mut Criterion) {
    // Not a criterion benchmark, so criterion's filter does not reach it.
    if !paired::selected("growth") {
        return;
    }
    let engine = Engine::new().unwrap();
    let steps = steps();
    let mut rows = Vec::new();
    for &(mib, changed) in INCREMENTAL {
        let mut s = Stepping::new(&engine, mib, changed, Durability::Process);
        let start_bytes = s.database_bytes();
        let mut wasnap_time = Duration::ZERO;
        let mut reference_time = Duration::ZERO;
        let mut reference_bytes = 0u64;
        for _ in 0..steps {
            let before = std::mem::replace(&mut s.last, empty_snapshot());
            let started = Instant::now();
            let now = s.step();
            wasnap_time += started.elapsed();
            let changed_now = changed_bytes(&before, &now);
            let started = Instant::now();
            let compressed = zstd::bulk::compress(&changed_now, 1).unwrap();
            reference_time += started.elapsed();
            reference_bytes += compressed.len() as u64;
            s.last = now;
        }
        let grown = s.database_bytes() - start_bytes;
        let stored: u64 = s
            .store
            .versions(s.lease.instance())
            .unwrap()
            .iter()
            .skip(1)
            .map(|v| v.stored_bytes)
            .sum();
        let n = f64::from(steps);
        let row = format!(
            "{}\t{steps}\t{:.1}\t{:.1}\t{:.0}\t{:.0}\t{:.0}",
            label(mib, changed),
            wasnap_time.as_secs_f64() * 1e6 / n,
            reference_time.as_secs_f64() * 1e6 / n,
            grown as f64 / n,
            stored as f64 / n,
            reference_bytes as f64 / n,
        );
        eprintln!("growth {row}");
        rows.push(row);
    }
    let dir = Path::new(&std::env::var("CARGO_TARGET_DIR").unwrap_or("target".into()))
        .join("bench-store");
    std::fs::create_dir_all(&dir).unwrap();
    let header = "case\tsteps\twasnap_us\treference_us\tdb_growth\tstored_bytes\treference_bytes";
    std::fs::write(
        dir.join("growth.tsv"),
        format!("{header}\n{}\n", rows.join("\n")),
    )
    .unwrap();
}

fn empty_snapshot() -> Snapshot {
    Snapshot {
        module_hash: [0; 32],
        instrumenter_version: 0,
        memories: Vec::new(),
        globals: Vec::new(),
        tables: Vec::new(),
        coroutines: Vec::new(),
        host: wasnap::snapshot::HostSide {
            current: 0,
            next_coroutine_id: 0,
            suspended_in: String::new(),
            yielded: Vec::new(),
            reply: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: Default::default(),
        },
    }
}

/// How many other instances the crowded throughput case stores
/// (`WASNAP_BENCH_INSTANCES`, default 10,000).
fn instances() -> u32 {
    env_count("WASNAP_BENCH_INSTANCES", 10_000)
}

fn suspension_throughput(c: &mut Criterion) {
    let engine = Engine::new().unwrap();
    let mut group = c.benchmark_group("suspend");
    let crowded = format!("1MiB-{}instances", instances());
    let cases = [
        ("1MiB", Durability::Process, 0),
        (crowded.as_str(), Durability::Process, instances()),
        ("1MiB-power", Durability::Power, 0),
    ];
    for (name, durability, others) in cases {
        let mut s = Stepping::with_instances(&engine, 1, 1, durability, others);
        group.bench_function(BenchmarkId::new("wasnap", name), |b| {
            b.iter(|| black_box(s.step()))
        });
        group.bench_function(BenchmarkId::new("reference", name), |b| {
            b.iter(|| black_box(s.step_in_memory()))
        });
    }
    group.finish();
}

/// Comparing 16 MiB with a kept copy against hashing it, the page loop
/// both ways would run.
fn change_detection(c: &mut Criterion) {
    let memory: Vec<u8> = (0..16usize << 20)
        .map(|i| {
            if i % 2 == 0 {
                (i.wrapping_mul(0x9E37_79B9) >> 13) as u8
            } else {
                0
            }
        })
        .collect();
    let kept: Vec<std::sync::Arc<[u8]>> = memory.chunks_exact(PAGE_SIZE).map(Into::into).collect();
    let mut group = c.benchmark_group("detect");
    group.bench_function("compare/16MiB", |b| {
        b.iter(|| {
            memory
                .chunks_exact(PAGE_SIZE)
                .zip(&kept)
                .filter(|(page, old)| **page != ***old)
                .count()
        })
    });
    group.bench_function("hash/16MiB", |b| {
        b.iter(|| {
            memory
                .chunks_exact(PAGE_SIZE)
                .map(|page| *blake3::hash(page).as_bytes())
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

/// Time per version of each memory size, in paired rounds: each size
/// against 16 MiB (the cost of memory size itself) and against the
/// reference (zstd-1 of the 3 changed pages).
fn paired_versions(_: &mut Criterion) {
    if !paired::selected("paired_versions") {
        return;
    }
    let engine = Engine::new().unwrap();
    let mut steppers: Vec<Stepping> = INCREMENTAL
        .iter()
        .map(|&(mib, changed)| Stepping::new(&engine, mib, changed, Durability::Process))
        .collect();
    let before = steppers[0].step();
    let after = steppers[0].step();
    let changed = changed_bytes(&before, &after);
    let times = {
        let [small, medium, large] = steppers.as_mut_slice() else {
            unreachable!("three sizes");
        };
        let mut small = || drop(black_box(small.step()));
        let mut medium = || drop(black_box(medium.step()));
        let mut large = || drop(black_box(large.step()));
        let mut reference = || drop(black_box(zstd::bulk::compress(&changed, 1).unwrap()));
        paired::run(
            paired::rounds(),
            &mut [&mut small, &mut medium, &mut large, &mut reference],
        )
    };
    let reference = times.last().unwrap();
    let mut rows = Vec::new();
    for (i, &(mib, changed)) in INCREMENTAL.iter().enumerate() {
        let case = label(mib, changed);
        rows.push(paired::line(
            &format!("{case}/reference"),
            &times[i],
            reference,
        ));
        if i > 0 {
            let base = label(INCREMENTAL[0].0, INCREMENTAL[0].1);
            rows.push(paired::line(
                &format!("{case}/{base}"),
                &times[i],
                &times[0],
            ));
        }
    }
    rows.iter().for_each(|r| eprintln!("{r}"));
    paired::write(
        "bench-store",
        "versions.tsv",
        &format!("case\t{}", paired::COLUMNS),
        &rows,
    );
}

/// A guest that grows its memory to `mib` MiB and writes every page, then
/// at each yield rewrites as many pages as its reply has bytes (the next
/// ones, round-robin), with a pattern seeded by the step number.
fn touching_guest(mib: u32) -> Vec<u8> {
    stepping_guest(mib, "(local.get $reply)")
}

/// Pages touched by the run after a resume, in the lazy-resume benchmark.
const TOUCHED: &[usize] = &[1, 10, 32, 64, 128, 256];

/// Resume from the store of a 16 MiB workflow whose every page is
/// written, touching N pages: load + restore + run + snapshot, its memory
/// filled lazily against eagerly, in paired rounds.
fn lazy_resume(_: &mut Criterion) {
    if !paired::selected("lazy_resume") || !wasnap::runtime::support().fill_on_demand {
        return;
    }
    let engine = Engine::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Database::open(dir.path().join("wasnap.db")).unwrap();
    let wasm = touching_guest(16);
    let module = engine.load(&wasm).unwrap();
    let hash = store.put_module(&wasm).unwrap();
    let id = store
        .create_instance(&hash, &["bench".into()], &Policy::default())
        .unwrap();
    let lease = store.lease(id).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    let first = workflow.snapshot().unwrap();
    let head = store
        .commit_version(&lease, None, &Outcome::Suspended(&first), &[])
        .unwrap();
    drop((workflow, first));
    let resume = |touch: usize, how: MemoryRestore| -> usize {
        let snapshot = store.load_version_lazily(&lease, head).unwrap();
        let settings = Settings::default().memory_restore(how);
        let mut workflow = engine.restore_with(&module, &snapshot, settings).unwrap();
        workflow.send(&vec![0; touch]);
        assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
        black_box(workflow.snapshot().unwrap());
        let pages = &snapshot.memories[0].pages;
        pages.iter().filter(|p| p.data.is_loaded()).count()
    };
    let mut rows = Vec::new();
    for &touch in TOUCHED {
        let mut read = 0;
        let times = {
            let mut lazy = || read = resume(touch, MemoryRestore::Lazy);
            let mut eager = || {
                resume(touch, MemoryRestore::Eager);
            };
            paired::run(paired::rounds(), &mut [&mut lazy, &mut eager])
        };
        let row = format!(
            "{}\t{read}",
            paired::line(&format!("{touch}"), &times[0], &times[1])
        );
        eprintln!("lazy/eager, {touch} pages touched: {row}");
        rows.push(row);
    }
    let header = format!("touched\t{}\tpages_read_lazily", paired::COLUMNS);
    paired::write("bench-store", "resume.tsv", &header, &rows);
}

fn config() -> Criterion {
    // A shared two-core machine: short runs, compared as ratios.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// A workflow that, before each yield, reads the wall clock 1,000 times and
/// draws 16 random bytes 100 times.
const INPUT_HEAVY: &str = r#"
(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (local $i i32)
    (loop $steps
      (local.set $i (i32.const 0))
      (loop $reads
        (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 64)))
        (if (i32.eqz (i32.rem_u (local.get $i) (i32.const 10)))
          (then (drop (call $random (i32.const 128) (i32.const 16)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $reads (i32.lt_u (local.get $i) (i32.const 1000))))
      (drop (call $yield (i32.const 0) (i32.const 0)))
      (br $steps))))
"#;

fn input_recording(c: &mut Criterion) {
    let engine = Engine::new().unwrap();
    let module = engine.load(&wat::parse_str(INPUT_HEAVY).unwrap()).unwrap();
    let mut group = c.benchmark_group("inputs");
    for (name, recording) in [("wasnap", true), ("reference", false)] {
        let settings = Settings::default().recording(recording);
        let mut workflow = engine.start(&module, settings).unwrap();
        group.bench_function(BenchmarkId::new(name, "1000-clock-reads"), |b| {
            b.iter(|| {
                assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
                black_box(workflow.take_inputs().encode())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = incremental_versions, growth, suspension_throughput, input_recording,
              change_detection, paired_versions, lazy_resume
}
criterion_main!(benches);
