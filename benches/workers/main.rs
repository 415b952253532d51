//! The load test: many worker processes stepping workflow instances on one
//! PostgreSQL database, against one worker on SQLite (see `load.rs` for the
//! workload and what is checked).
//!
//! ```text
//! cargo bench --bench workers -- [--instances 200] [--steps 20] [--pages 16]
//!                                [--workers 1,2,4] [--db postgres://...]
//! ```
//!
//! Without `--db` it starts a throwaway PostgreSQL 15 server listening on
//! 127.0.0.1 only (`tests/support/postgres.rs`), with a real server's
//! durability (its log flushed at every commit), stopped and deleted when
//! the command ends; each round runs on a fresh database of it (with
//! `--db`, on fresh databases of that server, whose URL's database may
//! create others). The command ends by itself once every round's workers
//! finished; it prints one line per round, as a Markdown table.

#[path = "../../tests/support/postgres.rs"]
mod postgres_server;

mod load;

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use load::{Load, Measure};
use postgres_server::{Listen, Server};
use wasnap::store::Durability;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(db) = value(&args, "--worker") {
        let durability = match args.iter().any(|a| a == "--power") {
            true => Durability::Power,
            false => Durability::Process,
        };
        return load::work(&db, durability);
    }
    let load = Load {
        instances: number(&args, "--instances", 200)?,
        steps: number(&args, "--steps", 20)?,
        pages: number(&args, "--pages", 16)?,
    };
    let workers: Vec<usize> = value(&args, "--workers")
        .unwrap_or_else(|| "1,2,4".into())
        .split(',')
        .map(|w| {
            w.parse()
                .context("--workers takes numbers separated by commas")
        })
        .collect::<Result<_>>()?;
    let server = match value(&args, "--db") {
        Some(url) => Server::at(&url),
        None => Server::start(Listen::Loopback, true),
    };
    println!(
        "{} instances x {} steps, {} KiB of memory each, on {} cores",
        load.instances,
        load.steps,
        load.pages * 64,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| database | workers | steps/s | p50 step | p99 step |");
    println!("|---|---:|---:|---:|---:|");
    let dir = tempfile::tempdir()?;
    for (name, durability) in [
        ("SQLite", Durability::Process),
        ("SQLite, `Durability::Power`", Durability::Power),
    ] {
        let sqlite = dir.path().join(format!("load-{durability:?}.db"));
        let sqlite = sqlite
            .to_str()
            .context("a temporary path that is not UTF-8")?;
        print_row(name, &round(sqlite, &load, 1, durability)?);
    }
    for &n in &workers {
        let (name, url) = server.create_database();
        let measure = round(&url, &load, n, Durability::Process);
        server.drop_database(&name);
        print_row("PostgreSQL", &measure?);
    }
    Ok(())
}

/// Prepares `db`, runs `workers` workers on it (their commits as durable
/// as `durability` says, on SQLite), checks it.
fn round(db: &str, load: &Load, workers: usize, durability: Durability) -> Result<Measure> {
    load::prepare(db, load)?;
    let exe = std::env::current_exe()?;
    let spawn = || -> Child {
        let mut command = Command::new(&exe);
        command.args(["--worker", db]);
        if durability == Durability::Power {
            command.arg("--power");
        }
        command
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start a worker process")
    };
    let measure = load::drive(workers, &spawn, None)?;
    load::check(db, load)?;
    let expected = (load.instances * load.steps) as usize;
    if measure.steps != expected {
        bail!("{} steps were reported, not {expected}", measure.steps);
    }
    Ok(measure)
}

fn print_row(database: &str, m: &Measure) {
    println!(
        "| {database} | {} | {:.0} | {:.1} ms | {:.1} ms |",
        m.workers,
        m.throughput(),
        m.quantile(0.5).as_secs_f64() * 1e3,
        m.quantile(0.99).as_secs_f64() * 1e3,
    );
}

fn value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn number(args: &[String], name: &str, default: u32) -> Result<u32> {
    match value(args, name) {
        Some(v) => v.parse().with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}
