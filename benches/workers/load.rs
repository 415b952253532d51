//! The load test of many workers on one database, shared by its command
//! (`benches/workers/main.rs`) and its smoke run in the tests
//! (`tests/all/workers.rs`), which include this file as a module.
//!
//! `instances` instances of a workflow that yields `steps` times are
//! started (each to its first suspension); then worker processes share
//! them out: each worker takes an instance no one holds
//! ([`Database::lease_any`]), resumes its head once and commits the
//! outcome ([`Executor::resume_leased`], which releases it), and takes the next,
//! until every instance has finished. A step is that one resume: `steps`
//! per instance. Afterwards every instance must hold exactly `steps + 1`
//! versions in one line (each the child of the one before, the last
//! finished), each with the value its step yields: no step lost, none done
//! twice, none run from a stale head.
//!
//! The workflow changes two pages of `pages` per step, with contents of its
//! own (the worker's reply is the instance id, which the workflow writes
//! into the page), so every commit stores new pages.

// Each includer uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use wasnap::executor::{Executor, RunOptions};
use wasnap::store::{Database, Durability, InstanceState, VersionKind};

/// The work of one run.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Instances.
    pub instances: u32,
    /// Steps of each (resumes, each committed as a version).
    pub steps: u32,
    /// Memory of the workflow, in 64 KiB pages.
    pub pages: u32,
}

/// The workflow: yields its step number `steps` times, then finishes.
/// Before each yield it writes the step number and the instance's id (the
/// reply to its last yield) into page 0 and into page `n % pages`.
pub fn guest(load: &Load) -> Vec<u8> {
    let wat = format!(
        r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (import "wasnap" "reply" (func $reply (param i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (func (export "run")
    (local $n i32)
    (loop $steps
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (i32.store (i32.const 0) (local.get $n))
      (i64.store offset=64
        (i32.mul (i32.rem_u (local.get $n) (i32.const {pages})) (i32.const 65536))
        (i64.add (i64.mul (i64.load (i32.const 8)) (i64.const 1000003))
                 (i64.extend_i32_u (local.get $n))))
      (drop (call $yield (i32.const 0) (i32.const 4)))
      (drop (call $reply (i32.const 8) (i32.const 8)))
      (br_if $steps (i32.lt_u (local.get $n) (i32.const {steps}))))))
"#,
        pages = load.pages,
        steps = load.steps,
    );
    wat::parse_str(wat).expect("the load test's workflow is valid WAT")
}

/// Stores the workflow in the empty database at `db` and starts its
/// instances, each to its first suspension.
pub fn prepare(db: &str, load: &Load) -> Result<()> {
    let executor = Executor::open(db)?;
    let module = executor.add_module(&guest(load))?;
    for _ in 0..load.instances {
        executor.start(&module, &["load".into()], &RunOptions::default())?;
    }
    Ok(())
}

/// How long a worker's leases last unless renewed: how long the instance
/// of a worker that was killed waits for another.
pub const LEASE_TTL: Duration = Duration::from_secs(2);

/// One worker: takes instances and steps them until every instance has
/// finished. Prints a line `step START END` (microseconds since the Unix
/// epoch) for every step it committed, then `done`. `durability`: how far
/// its commits survive on SQLite (PostgreSQL keeps both promises).
pub fn work(db: &str, durability: Durability) -> Result<()> {
    let executor = Executor::open(db)?;
    let database = executor.database();
    database.set_lease_ttl(LEASE_TTL);
    database.set_durability(durability)?;
    loop {
        let start = micros();
        let Some(lease) = database.lease_any(InstanceState::Suspended)? else {
            if everything_finished(database)? {
                println!("done");
                return Ok(());
            }
            // What is left is held by other workers (or, for a while, by
            // one that died): look again soon.
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let reply = lease.instance().to_le_bytes();
        executor.resume_leased(lease, None, &reply, &RunOptions::default())?;
        println!("step {start} {}", micros());
    }
}

fn everything_finished(database: &Database) -> Result<bool> {
    Ok(database
        .instances()?
        .iter()
        .all(|i| i.state == InstanceState::Finished))
}

fn micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Checks that every step of every instance was done exactly once (see
/// the module's documentation).
pub fn check(db: &str, load: &Load) -> Result<()> {
    let database = Database::open(db)?;
    let instances = database.instances()?;
    ensure!(
        instances.len() == load.instances as usize,
        "{} instances, not {}",
        instances.len(),
        load.instances
    );
    for info in instances {
        let id = info.id;
        let versions = database.versions(id)?;
        ensure!(
            versions.len() == load.steps as usize + 1,
            "instance {id} has {} versions, not {}",
            versions.len(),
            load.steps + 1
        );
        for (v, n) in versions.iter().zip(1u32..) {
            ensure!(
                v.number == n && v.parent == n.checked_sub(1).filter(|&p| p > 0),
                "version {} of instance {id} has parent {:?}: the versions branch",
                v.number,
                v.parent
            );
            let expected = match n <= load.steps {
                true => (VersionKind::Suspended, n.to_le_bytes().to_vec()),
                false => (VersionKind::Finished, Vec::new()),
            };
            ensure!(
                (v.kind, v.value.clone()) == expected,
                "version {n} of instance {id} is {:?} {:?}, not {expected:?}",
                v.kind,
                v.value
            );
        }
    }
    Ok(())
}

/// What one round measured.
#[derive(Clone, Debug)]
pub struct Measure {
    /// Worker processes.
    pub workers: usize,
    /// Steps committed, by all workers.
    pub steps: usize,
    /// From the first step's start to the last step's end.
    pub span: Duration,
    /// Each step's time, from asking for a lease to releasing it, sorted.
    pub latencies: Vec<Duration>,
}

impl Measure {
    /// Steps per second over the span.
    pub fn throughput(&self) -> f64 {
        self.steps as f64 / self.span.as_secs_f64()
    }

    /// The latency below which `q` (0 to 1) of the steps stayed.
    pub fn quantile(&self, q: f64) -> Duration {
        let at = ((self.latencies.len() as f64 * q).ceil() as usize).max(1) - 1;
        self.latencies[at.min(self.latencies.len() - 1)]
    }
}

/// Runs `workers` worker processes (each made by `spawn`, with its stdout
/// piped, running [`work`]) until they all end, and gathers their steps.
/// `kill_one_after`: SIGKILL the first worker once it committed that many
/// steps (the others must then finish its instance after its lease
/// expires). Fails if any worker that was not killed fails.
pub fn drive(
    workers: usize,
    spawn: &dyn Fn() -> Child,
    kill_one_after: Option<usize>,
) -> Result<Measure> {
    let children: Vec<Child> = (0..workers).map(|_| spawn()).collect();
    let gathered = std::thread::scope(|scope| {
        let readers: Vec<_> = children
            .into_iter()
            .enumerate()
            .map(|(i, child)| {
                let kill_after = kill_one_after.filter(|_| i == 0);
                scope.spawn(move || read_worker(child, kill_after))
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().expect("a reader thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    let steps: Vec<(u64, u64)> = gathered.into_iter().flatten().collect();
    ensure!(!steps.is_empty(), "the workers did no step");
    let first = steps.iter().map(|s| s.0).min().unwrap_or(0);
    let last = steps.iter().map(|s| s.1).max().unwrap_or(0);
    let mut latencies: Vec<Duration> = steps
        .iter()
        .map(|&(a, b)| Duration::from_micros(b.saturating_sub(a)))
        .collect();
    latencies.sort();
    Ok(Measure {
        workers,
        steps: steps.len(),
        span: Duration::from_micros(last.saturating_sub(first).max(1)),
        latencies,
    })
}

/// The steps a worker reported; kills it after `kill_after` of them.
fn read_worker(mut child: Child, kill_after: Option<usize>) -> Result<Vec<(u64, u64)>> {
    let started = Instant::now();
    let stdout = child
        .stdout
        .take()
        .context("a worker's stdout is not piped")?;
    let mut steps = Vec::new();
    let mut done = false;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        // A test harness may write before the worker's first line.
        if let Some(at) = line.find("step ") {
            let mut fields = line[at + 5..].split_whitespace().map(str::parse::<u64>);
            if let (Some(Ok(a)), Some(Ok(b))) = (fields.next(), fields.next()) {
                steps.push((a, b));
            }
            if kill_after == Some(steps.len()) {
                // Most likely in the middle of its next step.
                std::thread::sleep(Duration::from_millis(3));
                child.kill()?;
                child.wait()?;
                return Ok(steps);
            }
        } else if line.ends_with("done") {
            done = true;
        }
    }
    let status = child.wait()?;
    if !status.success() || !done {
        bail!(
            "a worker failed ({status}) after {} steps in {:.1} s",
            steps.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(steps)
}
