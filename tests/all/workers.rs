//! The load test's smoke run: worker processes share out instances on one
//! database and step each exactly once, also when one of them is killed
//! (the workload and its checks are `benches/workers/load.rs`, whose full
//! run is `cargo bench --bench workers`).

use std::path::Path;
use std::process::{Child, Command, Stdio};

#[path = "../../benches/workers/load.rs"]
mod load;

use crate::backends::{TestDb, on_both_backends};
use load::Load;

const LOAD: Load = Load {
    instances: 6,
    steps: 5,
    pages: 4,
};

fn spawn_worker(db: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "workers::worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WASNAP_TEST_WORKER_DB", db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

on_both_backends! {
fn two_workers_do_every_step_once(backend: Backend) {
    let db = TestDb::new(backend);
    let location = db.location().to_str().unwrap();
    load::prepare(location, &LOAD).unwrap();
    let measure = load::drive(2, &|| spawn_worker(db.location()), None).unwrap();
    load::check(location, &LOAD).unwrap();
    assert_eq!(measure.steps, (LOAD.instances * LOAD.steps) as usize);
}
}

on_both_backends! {
/// A worker killed with SIGKILL, most likely in the middle of a step,
/// loses nothing: the other finishes every instance, the one the killed
/// worker held once its lease is free (its process is gone on SQLite, its
/// lease expired on PostgreSQL), and no step is done twice.
fn a_killed_workers_instances_are_finished_by_another(backend: Backend) {
    let db = TestDb::new(backend);
    let location = db.location().to_str().unwrap();
    load::prepare(location, &LOAD).unwrap();
    load::drive(2, &|| spawn_worker(db.location()), Some(3)).unwrap();
    load::check(location, &LOAD).unwrap();
}
}

/// A worker process of the tests above; does nothing unless run by them.
#[test]
#[ignore = "run as a worker process by the load test's smoke run"]
fn worker() {
    let db = std::env::var("WASNAP_TEST_WORKER_DB").expect("run only by the load tests");
    load::work(&db, wasnap::store::Durability::Process).unwrap();
}
