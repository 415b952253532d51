//! Durable suspensions per second through `wasnap serve`, and request
//! latency: a bounded load over loopback HTTP.
//!
//! The guest is the store benchmark's 1 MiB workflow with every page
//! written, rewriting one page per step (a new page every time, and no page
//! shared between instances). `WASNAP_LOAD_INSTANCES` instances (64) are
//! started; `WASNAP_LOAD_CONNECTIONS` keep-alive connections (64) resume
//! them in turn, each request answering the version it resumes, for
//! `WASNAP_LOAD_SECONDS` (10) or `WASNAP_LOAD_REQUESTS` (60,000) requests.
//! Every 200 answer is a version committed to SQLite (WAL, `synchronous =
//! NORMAL`: it survives the crash of any process) before the answer is
//! sent. The server runs in this process with `WASNAP_LOAD_WORKERS` run
//! threads (2); the client shares the machine with it.
//!
//! Reference, in the same run: the same steps without HTTP and with one
//! commit per version (`Executor::resume`, the single-process path of
//! `wasnap resume`, but with the workflow kept live), so that the ratio
//! shows what grouping commits buys.
//!
//! Results go to stdout and to `target/bench-serve/result.tsv`.

#[path = "load/mod.rs"]
mod load;

use std::time::{Duration, Instant};

use wasnap::executor::{Executor, RunOptions};
use wasnap::server::{ServeOptions, Server};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; this is not a criterion benchmark.
    let instances = setting("WASNAP_LOAD_INSTANCES", 64);
    let load = load::Load {
        instances,
        connections: setting("WASNAP_LOAD_CONNECTIONS", 64),
        duration: Duration::from_secs(setting("WASNAP_LOAD_SECONDS", 10) as u64),
        max_requests: setting("WASNAP_LOAD_REQUESTS", 60_000),
    };
    let workers = setting("WASNAP_LOAD_WORKERS", 2);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wasnap.db");
    let wasm = load::guest::salted_guest(1, 1);

    let executor = Executor::open(&db).unwrap();
    let options = ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers,
        stdout: wasnap::Output::Inherit,
        ..ServeOptions::default()
    };
    let server = Server::start(executor, options).unwrap();
    let address = server.address();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let started = client.block_on(load::prepare(address, &wasm, instances));
    let measured = client.block_on(load::run(address, started, &load));
    server.shutdown().unwrap();
    let db_bytes = std::fs::metadata(&db).map_or(0, |m| m.len())
        + std::fs::metadata(dir.path().join("wasnap.db-wal")).map_or(0, |m| m.len());

    let reference =
        one_commit_per_version(&wasm, instances, load.duration.min(Duration::from_secs(5)));

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "serve: {} durable suspensions in {:.2} s = {:.0}/s ({} failed); {instances} instances, {} connections, {workers} workers",
        measured.suspensions,
        measured.elapsed.as_secs_f64(),
        measured.per_second(),
        measured.failures,
        load.connections
    );
    println!(
        "serve: request latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(measured.percentile(50.0)),
        ms(measured.percentile(90.0)),
        ms(measured.percentile(99.0)),
        ms(measured.percentile(100.0))
    );
    println!(
        "reference (one commit per version, no HTTP): {:.0}/s; ratio {:.2}x; database {:.1} MB",
        reference,
        measured.per_second() / reference,
        db_bytes as f64 / 1e6
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-serve");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("result.tsv"),
        format!(
            "suspensions\tseconds\tper_second\tfailed\tp50_ms\tp90_ms\tp99_ms\tmax_ms\treference_per_second\n{}\t{:.3}\t{:.0}\t{}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{:.0}\n",
            measured.suspensions,
            measured.elapsed.as_secs_f64(),
            measured.per_second(),
            measured.failures,
            ms(measured.percentile(50.0)),
            ms(measured.percentile(90.0)),
            ms(measured.percentile(99.0)),
            ms(measured.percentile(100.0)),
            reference
        ),
    )
    .unwrap();
    assert_eq!(measured.failures, 0, "some resumes failed");
}

/// The same steps through `Executor::resume`, one transaction per
/// version, for `duration`: durable suspensions per second.
fn one_commit_per_version(wasm: &[u8], instances: usize, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::open(dir.path().join("wasnap.db"))
        .unwrap()
        .keep_live(instances);
    let module = executor.add_module(wasm).unwrap();
    let options = RunOptions::default();
    let mut heads: Vec<_> = (0..instances)
        .map(|_| {
            let report = executor
                .start(&module, &["bench".into()], &options)
                .unwrap();
            (report.instance, report.version)
        })
        .collect();
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < duration {
        for (instance, head) in &mut heads {
            *head = executor
                .resume(*instance, Some(*head), b"go", &options)
                .unwrap()
                .version;
            done += 1;
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}
