//! The store, on SQLite and on PostgreSQL: versions, dedup, leases,
//! crashes, errors, and copies between the two.
//!
//! Crash and lease tests run this test binary again as a child process (the
//! ignored test `child_process`, driven by environment variables) and kill
//! it with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::backends::{Backend, TestDb, on_both_backends};
use wasnap::Policy;
use wasnap::snapshot::{
    Coroutine, CoroutineState, GlobalValue, HostSide, MemoryImage, PAGE_SIZE, Page, PageData,
    PageList, Snapshot, TableImage,
};
use wasnap::store::{
    ArtifactKey, Database, Durability, GcReport, InstanceState, Lease, Outcome, Request,
    SCHEMA_VERSION, VersionKind,
};

const MODULE: &[u8] = b"\0asm\x01\0\0\0";
const PAGES: u32 = 16;

/// Incompressible contents for each page, so that sizes tell pages apart.
fn base_pages() -> &'static [Vec<u8>] {
    static BASE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..PAGES)
            .map(|_| {
                (0..PAGE_SIZE)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            })
            .collect()
    })
}

/// The snapshot of step `n` of a 1 MiB workflow: every page holds data,
/// and step `n` rewrites page `n % 16` with its number.
fn step(n: u32) -> Snapshot {
    let pages: PageList = (0..PAGES)
        .map(|index| {
            let mut data = base_pages()[index as usize].clone();
            if index == n % PAGES {
                data[8..12].copy_from_slice(&n.to_le_bytes());
                data[PAGE_SIZE - 4..].copy_from_slice(&n.to_le_bytes());
            }
            Page {
                index,
                data: data.into(),
            }
        })
        .collect();
    Snapshot {
        module_hash: *blake3::hash(MODULE).as_bytes(),
        instrumenter_version: 1,
        memories: vec![MemoryImage {
            page_count: u64::from(PAGES) + 4,
            pages,
        }],
        globals: vec![GlobalValue::I32(n), GlobalValue::F64(f64::NAN.to_bits())],
        tables: vec![TableImage {
            elements: vec![None, Some(n)],
        }],
        coroutines: vec![Coroutine {
            id: 0,
            parent: 0,
            state: CoroutineState::Suspended,
            entry_function: 0,
            entry_argument: 0,
            stack_pointer: 1024,
            stack: n.to_le_bytes().repeat(8),
            resume_value: 0,
        }],
        host: HostSide {
            current: 0,
            next_coroutine_id: 1,
            suspended_in: "wasnap.yield".into(),
            yielded: format!("step {n}").into_bytes(),
            reply: Vec::new(),
            args: vec!["wf.wasm".into()],
            env: Vec::new(),
            stdin: Default::default(),
        },
    }
}

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasnap.db");
    (dir, path)
}

/// A store with one instance of [`MODULE`].
fn store_with_instance(backend: Backend) -> (TestDb, Database, u64) {
    let dir = TestDb::new(backend);
    let store = Database::open(dir.location()).unwrap();
    let hash = store.put_module(MODULE).unwrap();
    let id = store
        .create_instance(&hash, &["wf.wasm".into()], &Policy::default())
        .unwrap();
    (dir, store, id)
}

/// `count` new instances of the test module.
fn new_instances(store: &Database, count: usize) -> Vec<u64> {
    let hash = store.put_module(MODULE).unwrap();
    (0..count)
        .map(|_| {
            store
                .create_instance(&hash, &["wf.wasm".into()], &Policy::default())
                .unwrap()
        })
        .collect()
}

fn commit_chain(store: &Database, id: u64, steps: std::ops::RangeInclusive<u32>) {
    commit_chain_with(store, &store.lease(id).unwrap(), steps);
}

fn commit_chain_with(store: &Database, lease: &Lease, steps: std::ops::RangeInclusive<u32>) {
    for n in steps {
        let parent = (n > 1).then(|| n - 1);
        commit_as(
            store,
            lease,
            parent,
            &Outcome::Suspended(&step(n)),
            b"go",
            n,
        );
    }
}

/// Commits `outcome`, the answer to `reply`, after `parent`, and checks
/// that it is numbered `number`.
fn commit_as(
    store: &Database,
    lease: &Lease,
    parent: Option<u32>,
    outcome: &Outcome,
    reply: &[u8],
    number: u32,
) {
    let committed = store.commit_version(lease, parent, outcome, reply).unwrap();
    assert_eq!(committed, number, "the version committed after {parent:?}");
}

on_both_backends! {
fn versions_round_trip_and_branch(backend: Backend) {
    let (_dir, store, id) = store_with_instance(backend);
    commit_chain(&store, id, 1..=3);
    let lease = store.lease(id).unwrap();
    // Resuming version 1 again starts a branch.
    commit_as(&store, &lease, Some(1), &Outcome::Suspended(&step(4)), b"again", 4);
    for n in 1..=4 {
        assert_eq!(store.load_version(id, n).unwrap(), step(n));
    }
    let tree: Vec<_> = store
        .versions(id)
        .unwrap()
        .iter()
        .map(|v| (v.number, v.parent, v.reply.clone()))
        .collect();
    assert_eq!(
        tree,
        vec![
            (1, None, b"go".to_vec()),
            (2, Some(1), b"go".to_vec()),
            (3, Some(2), b"go".to_vec()),
            (4, Some(1), b"again".to_vec()),
        ]
    );
    let info = store.instance(id).unwrap();
    assert_eq!(info.head, Some(4));
    assert_eq!(info.state, InstanceState::Suspended);
    assert_eq!(info.last_value.as_deref(), Some(&b"step 4"[..]));
    assert_eq!(info.args, vec!["wf.wasm".to_string()]);
    assert_eq!(info.leased_by, Some(std::process::id()));
    drop(lease);
    assert_eq!(store.instance(id).unwrap().leased_by, None);
}
}

on_both_backends! {
fn ends_are_versions_without_snapshots(backend: Backend) {
    let (_dir, store, id) = store_with_instance(backend);
    commit_chain(&store, id, 1..=1);
    let lease = store.lease(id).unwrap();
    let finished = Outcome::Finished {
        exit_status: Some(0),
        result: b"done",
    };
    commit_as(&store, &lease, Some(1), &finished, b"yes", 2);
    let failed = Outcome::Failed {
        message: "wasm trap: unreachable",
    };
    commit_as(&store, &lease, Some(1), &failed, b"no", 3);
    assert_eq!(store.instance(id).unwrap().state, InstanceState::Failed);
    let v2 = store.version(id, 2).unwrap();
    assert_eq!(
        (v2.kind, v2.value.as_slice(), v2.exit_status),
        (VersionKind::Finished, &b"done"[..], Some(0))
    );
    let v3 = store.version(id, 3).unwrap();
    assert_eq!(v3.message.as_deref(), Some("wasm trap: unreachable"));
    assert_eq!(
        store.load_version(id, 2).unwrap_err().to_string(),
        "version 2 of instance 1 is the end of a run (finished); it has no snapshot"
    );
    let err = store
        .commit_version(&lease, Some(2), &Outcome::Suspended(&step(5)), b"")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "version 2 of instance 1 is the end of a run (finished); it cannot be resumed"
    );
}
}

on_both_backends! {
/// 100 versions that each change one page cost about 100 pages, not 100
/// memories.
fn a_version_costs_what_changed(backend: Backend) {
    let (_dir, store, id) = store_with_instance(backend);
    commit_chain(&store, id, 1..=100);
    let stats = store.stats().unwrap();
    // Step 1 stores 16 pages; step 2 restores page 1 to its base form (a
    // new page) and stamps page 2; every later step stamps one new page.
    assert_eq!(stats.pages, u64::from(PAGES) + 100);
    // Each version changes 2 pages from its parent: its list is those
    // changes, until they would add up to more than the 16
    // rows of a full list, which version 1 and then one version in 9 keep.
    assert_eq!(stats.page_refs, 12 * u64::from(PAGES) + 88 * 2);
    let versions = store.versions(id).unwrap();
    let first = versions[0].stored_bytes;
    let later = versions[50].stored_bytes;
    assert!(
        later * 10 < first,
        "version 51 stored {later} bytes, version 1 {first}"
    );
    assert_eq!(
        versions[50].memory_bytes,
        u64::from(PAGES + 4) * PAGE_SIZE as u64
    );
}
}

/// A workflow that writes page `step % 4` of its four pages before each
/// yield.
const STAMPING: &str = r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory 4)
  (func (export "run")
    (local $step i32)
    (loop $steps
      (i32.store (i32.mul (i32.rem_u (local.get $step) (i32.const 4)) (i32.const 65536))
                 (i32.add (local.get $step) (i32.const 1)))
      (drop (call $yield (i32.const 0) (i32.const 0)))
      (local.set $step (i32.add (local.get $step) (i32.const 1)))
      (br $steps))))
"#;

on_both_backends! {
/// Successive snapshots share the pages that did not change, a restored
/// workflow shares them with the version it was loaded from, and the store
/// names shared pages without hashing them: whatever it skips, what it
/// stores and loads back is exact.
fn unchanged_pages_are_shared_and_versions_exact(backend: Backend) {
    use wasnap::{Engine, Settings, Step};

    let wasm = wat::parse_str(STAMPING).unwrap();
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let db = TestDb::new(backend);
    let path = db.location();
    let store = Database::open(path).unwrap();
    let hash = store.put_module(&wasm).unwrap();
    let id = store
        .create_instance(&hash, &["wf".into()], &Policy::default())
        .unwrap();
    let lease = store.lease(id).unwrap();

    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    let mut snapshots = Vec::new();
    let mut head = None;
    for _ in 0..3 {
        assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
        let s = workflow.snapshot().unwrap();
        head = Some(
            store
                .commit_version(&lease, head, &Outcome::Suspended(&s), b"")
                .unwrap(),
        );
        snapshots.push(s);
    }
    // Step 3 wrote page 2 only: pages 0 and 1 are the very ones of step 2.
    let (before, after) = (&snapshots[1].memories[0], &snapshots[2].memories[0]);
    assert_eq!(after.pages.len(), 3);
    assert!(before.pages[0].data.same(&after.pages[0].data));
    assert!(before.pages[1].data.same(&after.pages[1].data));

    // Restore the head from the store and step on: the pages it did not
    // write are shared with the loaded version.
    let loaded = store.load_version(id, 3).unwrap();
    assert_eq!(loaded, snapshots[2]);
    let mut workflow = engine.restore(&module, &loaded).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    let s = workflow.snapshot().unwrap();
    assert_eq!(s.memories[0].pages.len(), 4);
    for (old, new) in loaded.memories[0].pages.iter().zip(&s.memories[0].pages) {
        assert!(old.data.same(&new.data));
    }
    let v4 = store
        .commit_version(&lease, Some(3), &Outcome::Suspended(&s), b"")
        .unwrap();
    // A branch from version 1 starts from pages the cache did not name last.
    let old = store.load_version(id, 1).unwrap();
    let mut branch = engine.restore(&module, &old).unwrap();
    assert_eq!(branch.run().unwrap(), Step::Yielded(Vec::new()));
    let b = branch.snapshot().unwrap();
    let v5 = store
        .commit_version(&lease, Some(1), &Outcome::Suspended(&b), b"")
        .unwrap();
    drop(lease);
    // Read back by another handle, with nothing cached.
    let other = Database::open(path).unwrap();
    assert_eq!(other.load_version(id, v4).unwrap(), s);
    assert_eq!(other.load_version(id, v5).unwrap(), b);
    assert_eq!(b.memories[0].pages.len(), 2);
}
}

/// A capture finds exactly the non-zero pages, whether they were written
/// before the first capture (in pages the memory grew by), after a
/// restore, or zeroed again.
#[test]
fn captures_find_every_written_page() {
    use wasnap::{Engine, Settings, Step};

    // Grows from 1 to 6 pages; step 1 writes pages 2 and 5, step 2 zeroes
    // page 2 and writes page 4.
    let wasm = wat::parse_str(
        r#"
        (module
          (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
          (memory 1)
          (func (export "run")
            (drop (memory.grow (i32.const 5)))
            (i32.store (i32.const 131072) (i32.const 7))
            (i32.store (i32.const 393212) (i32.const 9))
            (drop (call $yield (i32.const 0) (i32.const 0)))
            (i32.store (i32.const 131072) (i32.const 0))
            (i32.store (i32.const 262144) (i32.const 8))
            (drop (call $yield (i32.const 0) (i32.const 0)))))
    "#,
    )
    .unwrap();
    let indices =
        |s: &Snapshot| -> Vec<u32> { s.memories[0].pages.iter().map(|p| p.index).collect() };
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    let first = workflow.snapshot().unwrap();
    assert_eq!(indices(&first), [2, 5]);
    let mut restored = engine.restore(&module, &first).unwrap();
    assert_eq!(indices(&restored.snapshot().unwrap()), [2, 5]);
    assert_eq!(restored.run().unwrap(), Step::Yielded(Vec::new()));
    let second = restored.snapshot().unwrap();
    assert_eq!(indices(&second), [4, 5]);
    assert_eq!(
        &second.memories[0].pages[0].data.bytes().unwrap()[..4],
        &8u32.to_le_bytes()
    );
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    assert_eq!(workflow.snapshot().unwrap().memories, second.memories);
}

on_both_backends! {
fn zero_pages_are_not_stored(backend: Backend) {
    let (_dir, store, id) = store_with_instance(backend);
    let mut s = step(1);
    s.memories[0].pages.edit(|pages| {
        pages.push(Page {
            index: PAGES,
            data: vec![0; PAGE_SIZE].into(),
        })
    });
    let lease = store.lease(id).unwrap();
    store
        .commit_version(&lease, None, &Outcome::Suspended(&s), b"")
        .unwrap();
    assert_eq!(store.stats().unwrap().page_refs, u64::from(PAGES));
    assert_eq!(store.load_version(id, 1).unwrap(), step(1));
}
}

on_both_backends! {
fn gc_and_rm_report_what_they_free(backend: Backend) {
    let (_dir, store, id) = store_with_instance(backend);
    commit_chain(&store, id, 1..=10);
    let hash = store.put_module(MODULE).unwrap();
    let other = store
        .create_instance(&hash, &[], &Policy::default())
        .unwrap();
    commit_chain(&store, other, 1..=1);
    assert_eq!(store.gc().unwrap(), GcReport::default());
    let before = store.stats().unwrap();
    let removed = store.remove_instance(id).unwrap();
    assert_eq!(removed.versions, 10);
    // Full lists for versions 1 and 10, 2 changes for each between.
    assert_eq!(removed.page_refs, 2 * u64::from(PAGES) + 8 * 2);
    assert!(removed.bytes > 0);
    let gc = store.gc().unwrap();
    // `other` holds step 1's 16 pages; steps 2..=10 added the base form of
    // page 1 and one stamped page each.
    assert_eq!(gc.pages, 10);
    assert_eq!(
        gc.bytes,
        before.page_bytes - store.stats().unwrap().page_bytes
    );
    assert_eq!(store.load_version(other, 1).unwrap(), step(1));
    assert_eq!(
        store.instance(id).unwrap_err().to_string(),
        "instance 1 not found"
    );
    // Ids are not reused.
    assert_eq!(
        store
            .create_instance(&hash, &[], &Policy::default())
            .unwrap(),
        3
    );
}
}

#[test]
fn modules_and_compiled_artifacts() {
    let (_dir, path) = temp_db();
    let store = Database::open(&path).unwrap();
    store.set_artifact_key(Some(ArtifactKey::generate().unwrap()));
    let hash = store.put_module(MODULE).unwrap();
    assert_eq!(hash, *blake3::hash(MODULE).as_bytes());
    assert_eq!(store.put_module(MODULE).unwrap(), hash);
    assert_eq!(store.module(&hash).unwrap(), MODULE);
    assert_eq!(store.compiled(&hash, "wasmtime-48/x86_64").unwrap(), None);
    store
        .put_compiled(&hash, "wasmtime-48/x86_64", b"elf")
        .unwrap();
    store
        .put_compiled(&hash, "wasmtime-48/x86_64", b"elf2")
        .unwrap();
    assert_eq!(
        store.compiled(&hash, "wasmtime-48/x86_64").unwrap(),
        Some(b"elf2".to_vec())
    );
    assert_eq!(store.compiled(&hash, "other").unwrap(), None);
    let missing = [7u8; 32];
    let err = store.module(&missing).unwrap_err().to_string();
    assert_eq!(err, format!("module {} not found", "07".repeat(32)));
    assert!(store.put_compiled(&missing, "x", b"").is_err());
    assert!(
        store
            .create_instance(&missing, &[], &Policy::default())
            .is_err()
    );
}

/// The tables whose contents say everything the database holds.
const TABLES: &[&str] = &[
    "modules",
    "compiled",
    "instances",
    "versions",
    "pages",
    "version_pages",
];

/// Everything a SQLite database holds, as text, to compare before and
/// after.
fn dump(path: &Path) -> String {
    TestDb::sqlite_dump(path, TABLES)
}

on_both_backends! {
fn failed_calls_change_nothing(backend: Backend) {
    let (db, store, id) = store_with_instance(backend);
    commit_chain(&store, id, 1..=2);
    let lease = store.lease(id).unwrap();
    let before = db.dump(TABLES);
    let expect = |result: anyhow::Result<()>, message: &str| {
        assert_eq!(result.unwrap_err().to_string(), message);
        assert_eq!(db.dump(TABLES), before, "after: {message}");
    };
    let s = step(3);
    let suspended = Outcome::Suspended(&s);
    expect(store.lease(9).map(drop), "instance 9 not found");
    expect(store.lease(id).map(drop), "instance 1 is busy");
    expect(store.remove_instance(id).map(drop), "instance 1 is busy");
    expect(store.remove_instance(9).map(drop), "instance 9 not found");
    expect(store.load_version(9, 1).map(drop), "instance 9 not found");
    expect(
        store.load_version(id, 7).map(drop),
        "version 7 of instance 1 not found",
    );
    expect(
        store.version(id, 7).map(drop),
        "version 7 of instance 1 not found",
    );
    expect(store.versions(9).map(drop), "instance 9 not found");
    expect(
        store
            .commit_version(&lease, Some(7), &suspended, b"")
            .map(drop),
        "version 7 of instance 1 not found",
    );
    expect(
        store
            .commit_version(&lease, None, &suspended, b"")
            .map(drop),
        "instance 1 has versions already: a new one needs a parent",
    );
    let mut foreign = step(3);
    foreign.module_hash = [1; 32];
    let err = store
        .commit_version(&lease, Some(2), &Outcome::Suspended(&foreign), b"")
        .map(drop);
    assert!(
        err.unwrap_err()
            .to_string()
            .starts_with("the snapshot is of module 0101")
    );
    let mut bad = step(3);
    bad.memories[0].pages.edit(|pages| pages.swap(0, 1));
    let err = store
        .commit_version(&lease, Some(2), &Outcome::Suspended(&bad), b"")
        .map(drop);
    assert!(err.unwrap_err().to_string().contains("out of order"));
    assert_eq!(db.dump(TABLES), before);
    // A page of the wrong size is refused before anything is stored.
    let mut short = step(3);
    let index = short.memories[0].pages[0].index;
    short.memories[0]
        .pages
        .edit(|pages| pages[0].data = PageData::new(vec![1u8; 10]));
    expect(
        store
            .commit_version(&lease, Some(2), &Outcome::Suspended(&short), b"")
            .map(drop),
        &format!("memory 0 cannot be saved: page {index} holds 10 bytes, not 65536"),
    );
    // A lease that another holder has taken over is no good for commits.
    db.execute("UPDATE instances SET lease_token = lease_token + 1");
    let before = db.dump(TABLES);
    let err = store.commit_version(&lease, Some(2), &suspended, b"");
    assert_eq!(
        err.unwrap_err().to_string(),
        "the lease on instance 1 has been lost"
    );
    assert_eq!(db.dump(TABLES), before);
}
}

#[test]
fn a_lease_of_a_dead_process_is_taken_over_on_sqlite() {
    let (_dir, store, id) = store_with_instance(Backend::Sqlite);
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    // A pid that cannot exist, and a live pid whose start time differs (a
    // reused pid): neither holds the lease.
    for (pid, owner) in [(u32::MAX - 1, "x/1"), (std::process::id(), "old-boot/1")] {
        conn.execute(
            "UPDATE instances SET lease_pid = ?2, lease_owner = ?3, lease_token = 5 WHERE id = ?1",
            rusqlite::params![id, pid, owner],
        )
        .unwrap();
        assert_eq!(store.instance(id).unwrap().leased_by, None);
        store.lease(id).unwrap().release().unwrap();
    }
}

/// On PostgreSQL a lease names no process that can be checked: it is held
/// until it expires, and renewed while its holder lives.
#[test]
fn an_expired_lease_is_taken_over_on_postgres() {
    let (db, store, id) = store_with_instance(Backend::Postgres);
    let take = |expires: &str| {
        db.execute(&format!(
            "UPDATE instances SET lease_pid = 1, lease_owner = 'elsewhere', lease_token = 5,
                                  lease_expires = {expires} WHERE id = {id}"
        ))
    };
    take("CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) + 60000");
    assert_eq!(store.instance(id).unwrap().leased_by, Some(1));
    assert_eq!(
        store.lease(id).unwrap_err().to_string(),
        "instance 1 is busy"
    );
    take("CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) - 1");
    assert_eq!(store.instance(id).unwrap().leased_by, None);
    store.lease(id).unwrap().release().unwrap();

    // A live holder renews its lease, however short, for as long as it
    // holds it; another holder cannot take it meanwhile.
    store.set_lease_ttl(Duration::from_secs(1));
    let lease = store.lease(id).unwrap();
    let other = Database::open(db.location()).unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            other.lease(id).unwrap_err().to_string(),
            "instance 1 is busy"
        );
    }
    assert!(!lease.is_lost());
    commit_chain_with(&store, &lease, 1..=1);
    drop(lease);
    other.lease(id).unwrap();
}

#[test]
fn schema_is_versioned() {
    let (_dir, path) = temp_db();
    drop(Database::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    // 2 = incremental: `gc` can give freed space back to the file system.
    let vacuum: u32 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(vacuum, 2);
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    for err in [
        Database::open(&path).map(drop).unwrap_err(),
        Database::open_read_only(&path).map(drop).unwrap_err(),
    ] {
        assert_eq!(
            err.to_string(),
            format!(
                "database schema version {} is newer than this wasnap supports ({SCHEMA_VERSION})",
                SCHEMA_VERSION + 1
            )
        );
    }
}

#[test]
fn schema_is_versioned_on_postgres() {
    let db = TestDb::new(Backend::Postgres);
    drop(Database::open(db.location()).unwrap());
    let before = db.dump(&["wasnap_schema"]);
    assert_eq!(
        before,
        format!("wasnap_schema: Some(\"{SCHEMA_VERSION}\")\n")
    );
    // Opening it again migrates nothing.
    drop(Database::open(db.location()).unwrap());
    assert_eq!(db.dump(&["wasnap_schema"]), before);
    db.execute(&format!(
        "UPDATE wasnap_schema SET version = {}",
        SCHEMA_VERSION + 1
    ));
    assert_eq!(
        Database::open(db.location())
            .map(drop)
            .unwrap_err()
            .to_string(),
        format!(
            "database schema version {} is newer than this wasnap supports ({SCHEMA_VERSION})",
            SCHEMA_VERSION + 1
        )
    );
}

/// Rewrites a database of instance `id`'s `versions` in the layout of
/// schema version 3: every version lists all its pages, by id, and the
/// columns of later schemas (page list shapes, compressed values, artifact
/// MACs, provenance, timers and requests) do not exist. Values must be ones that were stored uncompressed.
pub(crate) fn downgrade_to_schema_3(path: &Path, id: u64, versions: u32) {
    let store = Database::open(path).unwrap();
    let snapshots: Vec<Snapshot> = (1..=versions)
        .map(|n| store.load_version(id, n).unwrap())
        .collect();
    drop(store);
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "DROP INDEX versions_by_parent;
         DROP TABLE version_pages;
         CREATE TABLE version_pages (
             version    INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
             memory     INTEGER NOT NULL,
             page_index INTEGER NOT NULL,
             page       INTEGER NOT NULL,
             PRIMARY KEY (version, memory, page_index)) WITHOUT ROWID;
         ALTER TABLE versions DROP COLUMN list_depth;
         ALTER TABLE versions DROP COLUMN list_chain_rows;
         ALTER TABLE versions DROP COLUMN value_zstd;
         ALTER TABLE versions DROP COLUMN reply_zstd;
         ALTER TABLE compiled DROP COLUMN mac;
         ALTER TABLE versions DROP COLUMN origin;
         ALTER TABLE versions DROP COLUMN handler;
         ALTER TABLE versions DROP COLUMN result;
         ALTER TABLE versions DROP COLUMN inputs;
         ALTER TABLE versions DROP COLUMN module_hash;
         DROP INDEX instances_by_wake_at;
         DROP TABLE requests;
         ALTER TABLE instances DROP COLUMN wake_at;
         ALTER TABLE instances DROP COLUMN lease_expires;
         ALTER TABLE versions DROP COLUMN wake_at;
         ALTER TABLE versions DROP COLUMN timer;
         ALTER TABLE versions DROP COLUMN woken;",
    )
    .unwrap();
    for (n, snapshot) in (1u32..).zip(&snapshots) {
        for (memory, image) in (0u32..).zip(&snapshot.memories) {
            for page in &image.pages {
                let hash = *blake3::hash(page.data.bytes().unwrap()).as_bytes();
                conn.execute(
                    "INSERT INTO version_pages (version, memory, page_index, page)
                     SELECT v.id, ?3, ?4, p.id FROM versions v, pages p
                     WHERE v.instance = ?1 AND v.number = ?2 AND p.hash = ?5",
                    rusqlite::params![id, n, memory, page.index, hash],
                )
                .unwrap();
            }
        }
    }
    conn.pragma_update(None, "user_version", 3).unwrap();
}

/// Versions of two instances committed in turn through one handle (as a
/// service does) are each planned against their own parent's list: every
/// version of both loads back as committed.
#[test]
fn versions_of_instances_committed_in_turn_load_as_committed() {
    let (_dir, path) = temp_db();
    let store = Database::open(&path).unwrap();
    let ids = new_instances(&store, 2);
    let leases: Vec<Lease> = ids.iter().map(|&id| store.lease(id).unwrap()).collect();
    // The second instance's steps differ from the first's in every version.
    let snapshot = |k: usize, n: u32| step(n + 100 * k as u32);
    for n in 1..=12u32 {
        for (k, lease) in leases.iter().enumerate() {
            let parent = (n > 1).then(|| n - 1);
            commit_as(
                &store,
                lease,
                parent,
                &Outcome::Suspended(&snapshot(k, n)),
                b"go",
                n,
            );
        }
    }
    drop(leases);
    let reopened = Database::open(&path).unwrap();
    for (k, &id) in ids.iter().enumerate() {
        for n in 1..=12 {
            assert_eq!(
                store.load_version(id, n).unwrap(),
                snapshot(k, n),
                "{id}@{n}"
            );
            assert_eq!(
                reopened.load_version(id, n).unwrap(),
                snapshot(k, n),
                "{id}@{n}"
            );
        }
    }
}

/// A database of schema version 3 (every version listed all its pages) is
/// upgraded when opened: its versions load the same, and new versions
/// keep their lists as differences.
#[test]
fn a_version_3_database_is_upgraded() {
    let (_dir, path) = temp_db();
    let store = Database::open(&path).unwrap();
    let hash = store.put_module(MODULE).unwrap();
    let id = store
        .create_instance(&hash, &["wf.wasm".into()], &Policy::default())
        .unwrap();
    commit_chain(&store, id, 1..=3);
    drop(store);
    downgrade_to_schema_3(&path, id, 3);
    let store = Database::open(&path).unwrap();
    for n in 1..=3 {
        assert_eq!(store.load_version(id, n).unwrap(), step(n));
    }
    assert_eq!(store.stats().unwrap().page_refs, 3 * u64::from(PAGES));
    assert_eq!(store.gc().unwrap(), GcReport::default());
    commit_chain(&store, id, 4..=5);
    assert_eq!(store.load_version(id, 5).unwrap(), step(5));
    assert_eq!(
        store.stats().unwrap().page_refs,
        3 * u64::from(PAGES) + 2 + 2
    );
}

/// A database of schema version 1 (versions referred to pages by hash,
/// instances had no policy) is upgraded when opened, and loads the same
/// versions.
#[test]
fn a_version_1_database_is_upgraded() {
    let (_dir, path) = temp_db();
    let store = Database::open(&path).unwrap();
    let hash = store.put_module(MODULE).unwrap();
    let id = store
        .create_instance(&hash, &["wf.wasm".into()], &Policy::default())
        .unwrap();
    commit_chain(&store, id, 1..=3);
    drop(store);
    downgrade_to_schema_3(&path, id, 3);
    let stats = Database::open_read_only(&path)
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(stats.contains("has schema version 3"), "{stats}");
    // Back to the layout of version 1.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE pages_v1 (
             hash BLOB PRIMARY KEY CHECK (length(hash) = 32),
             data BLOB NOT NULL);
         INSERT INTO pages_v1 SELECT hash, data FROM pages;
         CREATE TABLE version_pages_v1 (
             version    INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
             memory     INTEGER NOT NULL,
             page_index INTEGER NOT NULL,
             hash       BLOB NOT NULL,
             PRIMARY KEY (version, memory, page_index)) WITHOUT ROWID;
         INSERT INTO version_pages_v1
             SELECT vp.version, vp.memory, vp.page_index, p.hash
             FROM version_pages vp JOIN pages p ON p.id = vp.page;
         DROP TABLE version_pages;
         DROP TABLE pages;
         ALTER TABLE pages_v1 RENAME TO pages;
         ALTER TABLE version_pages_v1 RENAME TO version_pages;
         ALTER TABLE instances DROP COLUMN policy;
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    let store = Database::open(&path).unwrap();
    for n in 1..=3 {
        assert_eq!(store.load_version(id, n).unwrap(), step(n));
    }
    assert_eq!(store.stats().unwrap().page_refs, 3 * u64::from(PAGES));
    assert_eq!(store.gc().unwrap(), GcReport::default());
    commit_chain(&store, id, 4..=5);
    assert_eq!(store.load_version(id, 5).unwrap(), step(5));
}

on_both_backends! {
/// Page lists kept as differences: long chains (past the bound on their
/// length), branches, and pages that become zeros and come back all load
/// exactly, and the lists cost rows per change, not per page.
fn page_lists_are_differences_that_load_exactly(backend: Backend) {
    let (_db, store, id) = store_with_instance(backend);
    commit_chain(&store, id, 1..=150);
    let lease = store.lease(id).unwrap();
    // Branches from old versions: 151 from 10, then 152 from 151.
    store
        .commit_version(&lease, Some(10), &Outcome::Suspended(&step(151)), b"")
        .unwrap();
    store
        .commit_version(&lease, Some(151), &Outcome::Suspended(&step(152)), b"")
        .unwrap();
    // Page 3 becomes zeros, then comes back.
    let mut holes = step(153);
    holes.memories[0].pages.edit(|pages| pages.remove(3));
    store
        .commit_version(&lease, Some(152), &Outcome::Suspended(&holes), b"")
        .unwrap();
    store
        .commit_version(&lease, Some(153), &Outcome::Suspended(&step(154)), b"")
        .unwrap();
    drop(lease);
    // Another handle, with nothing cached, reads every version back.
    let other = Database::open(store.path()).unwrap();
    for n in (1..=152).chain([154]) {
        assert_eq!(other.load_version(id, n).unwrap(), step(n), "version {n}");
    }
    assert_eq!(other.load_version(id, 153).unwrap(), holes);
    // Full lists of 16 rows whenever the changes since the last one (2
    // rows a version) would pass 16: one version in 9.
    let rows = other.stats().unwrap().page_refs;
    assert!(rows < 154 * u64::from(PAGES) / 4, "{rows} rows");
    assert_eq!(other.gc().unwrap(), GcReport::default());
}
}

on_both_backends! {
/// `gc` frees the pages no version holds any more, with lists that say a
/// page became zeros.
fn gc_frees_pages_with_zeroed_places_listed(backend: Backend) {
    let (_db, store, id) = store_with_instance(backend);
    commit_chain(&store, id, 1..=1);
    let lease = store.lease(id).unwrap();
    let mut holes = step(2);
    holes.memories[0].pages.edit(|pages| pages.remove(5));
    store
        .commit_version(&lease, Some(1), &Outcome::Suspended(&holes), b"")
        .unwrap();
    drop(lease);
    let hash = store.put_module(MODULE).unwrap();
    let other = store
        .create_instance(&hash, &[], &Policy::default())
        .unwrap();
    commit_chain(&store, other, 1..=3);
    store.remove_instance(other).unwrap();
    // Of instance 2's pages only step 3's stamped page 3 is held by no
    // version of instance 1. (Instance 1's list of version 2 says that
    // page 5 became zeros: a NULL that must not make `gc` free nothing.)
    let gc = store.gc().unwrap();
    assert_eq!(gc.pages, 1);
    assert_eq!(store.load_version(id, 2).unwrap(), holes);
}
}

#[test]
fn a_file_that_is_not_sqlite_is_named() {
    let (_dir, path) = temp_db();
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let err = Database::open(&path).map(drop).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{} is not a wasnap database (not SQLite)", path.display())
    );
    assert_eq!(std::fs::read(&path).unwrap(), vec![b'x'; 8192]);
}

#[test]
fn a_read_only_database_says_so() {
    let (_dir, path) = temp_db();
    let store = Database::open(&path).unwrap();
    let hash = store.put_module(MODULE).unwrap();
    let id = store
        .create_instance(&hash, &[], &Policy::default())
        .unwrap();
    commit_chain(&store, id, 1..=1);
    let ro = Database::open_read_only(&path).unwrap();
    assert_eq!(ro.load_version(id, 1).unwrap(), step(1));
    assert_eq!(ro.instances().unwrap().len(), 1);
    let read_only = format!("database {} is read-only", path.display());
    let before = dump(&path);
    assert_eq!(ro.put_module(b"other").unwrap_err().to_string(), read_only);
    assert_eq!(ro.lease(id).unwrap_err().to_string(), read_only);
    assert_eq!(ro.gc().unwrap_err().to_string(), read_only);
    assert_eq!(dump(&path), before);
}

on_both_backends! {
fn durability_can_be_raised(backend: Backend) {
    let (_dir, store, id) = store_with_instance(backend);
    store.set_durability(Durability::Power).unwrap();
    commit_chain(&store, id, 1..=2);
    assert_eq!(store.load_version(id, 2).unwrap(), step(2));
}
}

/// How many versions each process of the test below commits.
const CHAIN: u32 = 24;

/// Several processes commit versions of their own instances at the same
/// time, storing the same pages (the steps of every instance are alike)
/// while `gc` runs again and again: on PostgreSQL nothing serialises these
/// commits but row locks, unique keys and the lock between commits and
/// `gc`. Every version is whole afterwards, and every page stored once.
#[test]
fn concurrent_commits_and_gc_on_postgres() {
    let db = TestDb::new(Backend::Postgres);
    let store = Database::open(db.location()).unwrap();
    let ids = new_instances(&store, 4);
    let mut children: Vec<Child> = ids
        .iter()
        .map(|id| spawn_child(db.location(), &format!("chain:{id}")))
        .collect();
    let mut collected = 0;
    let done = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            for child in &mut children {
                wait_for(child, "chain:", 1);
                assert!(child.wait().unwrap().success());
            }
        });
        while !waiting.is_finished() {
            collected += store.gc().unwrap().pages;
        }
        waiting.join()
    });
    done.unwrap();
    // Nothing was left for `gc`: every page stored was referred to.
    assert_eq!(collected, 0);
    for &id in &ids {
        for n in 1..=CHAIN {
            assert_eq!(store.load_version(id, n).unwrap(), step(n));
        }
    }
    let stats = store.stats().unwrap();
    assert_eq!(stats.versions, 4 * u64::from(CHAIN));
    assert_eq!(stats.pages, u64::from(PAGES + CHAIN));
}

// ---------------------------------------------------------------------
// Copies between databases.

/// An instance as listed, without who holds its lease.
fn listed(store: &Database) -> Vec<wasnap::store::InstanceInfo> {
    let mut list = store.instances().unwrap();
    for info in &mut list {
        info.leased_by = None;
    }
    list
}

/// Everything about every instance that a copy must keep: the listing,
/// every version's row, and every suspension's snapshot.
fn everything(store: &Database) -> String {
    let mut out = format!("{:?}\n", listed(store));
    for info in store.instances().unwrap() {
        for v in store.versions(info.id).unwrap() {
            out += &format!("{v:?}\n");
            if v.kind == VersionKind::Suspended {
                out += &format!("{:?}\n", store.load_version(info.id, v.number).unwrap());
            }
        }
    }
    out
}

/// A SQLite store copied to PostgreSQL and back: every instance, its
/// arguments and policy, every version of its tree (branches, ends,
/// failures) with its number, times and snapshot, and ids that go on
/// where they left off.
#[test]
fn a_store_is_copied_to_postgres_and_back_whole() {
    let sqlite = TestDb::new(Backend::Sqlite);
    let source = Database::open(sqlite.location()).unwrap();
    let hash = source.put_module(MODULE).unwrap();
    let policy = Policy {
        time_limit: Some(Duration::from_secs(3)),
        env: vec![("MODE".into(), "copy".into())],
        ..Policy::default()
    };
    let first = source
        .create_instance(&hash, &["wf.wasm".into(), "-v".into()], &policy)
        .unwrap();
    commit_chain(&source, first, 1..=4);
    {
        let lease = source.lease(first).unwrap();
        let branch = Outcome::Suspended(&step(9));
        commit_as(&source, &lease, Some(2), &branch, b"other", 5);
        let done = Outcome::Finished {
            exit_status: Some(3),
            result: b"all done",
        };
        commit_as(&source, &lease, Some(5), &done, b"fin", 6);
        let failed = Outcome::Failed {
            message: "wasm trap: unreachable",
        };
        commit_as(&source, &lease, Some(4), &failed, b"x", 7);
    }
    let removed = source
        .create_instance(&hash, &[], &Policy::default())
        .unwrap();
    source.remove_instance(removed).unwrap();
    let empty = source
        .create_instance(&hash, &[], &Policy::default())
        .unwrap();
    let third = source
        .create_instance(&hash, &["third".into()], &Policy::default())
        .unwrap();
    commit_chain(&source, third, 1..=2);
    assert_eq!((first, empty, third), (1, 3, 4));
    // Runs a service was asked for and had not done yet go along.
    let answer = Request {
        version: Some(2),
        reply: b"go on".to_vec(),
        wake: false,
    };
    source.request(empty, &Request::default(), false).unwrap();
    source.request(third, &answer, false).unwrap();
    let pending = |db: &Database| [first, empty, third].map(|id| db.pending_request(id).unwrap());
    assert_eq!(
        pending(&source),
        [None, Some(Request::default()), Some(answer)]
    );

    let postgres = TestDb::new(Backend::Postgres);
    let target = Database::open(postgres.location()).unwrap();
    let report = target.copy_from(&source).unwrap();
    assert_eq!(
        (report.instances, report.versions, report.present),
        (3, 9, 0)
    );
    assert_eq!(everything(&target), everything(&source));
    assert_eq!(pending(&target), pending(&source));
    // Pages are stored once in the target too.
    assert_eq!(target.stats().unwrap(), source.stats().unwrap());

    // Again: nothing to do.
    let again = target.copy_from(&source).unwrap();
    assert_eq!((again.instances, again.present), (0, 3));
    assert_eq!(everything(&target), everything(&source));

    // New instances take ids after the copied ones; copied ones go on.
    assert_eq!(
        target
            .create_instance(&hash, &[], &Policy::default())
            .unwrap(),
        5
    );
    commit_chain_with(&target, &target.lease(third).unwrap(), 3..=3);
    assert_eq!(target.load_version(third, 3).unwrap(), step(3));

    // And back, into a new SQLite file.
    let back = TestDb::new(Backend::Sqlite);
    let returned = Database::open(back.location()).unwrap();
    returned.copy_from(&target).unwrap();
    assert_eq!(everything(&returned), everything(&target));
    assert_eq!(pending(&returned), pending(&target));
}

/// An instance whose id the target holds already for another instance
/// is an error naming it, and the target is left as it was.
#[test]
fn a_copy_onto_another_instance_changes_nothing() {
    let (_a, source, id) = store_with_instance(Backend::Sqlite);
    commit_chain(&source, id, 1..=2);
    let (db, target, _) = store_with_instance(Backend::Postgres);
    let before = db.dump(TABLES);
    let err = target.copy_from(&source).unwrap_err().to_string();
    assert!(err.starts_with("instance 1 exists in postgres://"), "{err}");
    let tail = format!("already, and differs from the one in {}", source.location());
    assert!(err.ends_with(&tail), "{err}");
    assert_eq!(db.dump(TABLES), before);
    assert_eq!(
        source.copy_from(&source).unwrap_err().to_string(),
        format!("cannot copy database {} into itself", source.location())
    );
}

// ---------------------------------------------------------------------
// Child processes: crashes and competing leases.

fn spawn_child(db: &Path, mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "store::child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WASNAP_TEST_CHILD_DB", db)
        .env("WASNAP_TEST_CHILD_MODE", mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads the child's stdout until a line holding `prefix` has been
/// seen `count` times; returns that line from `prefix` on.
fn wait_for(child: &mut Child, prefix: &str, count: usize) -> String {
    let out = child.stdout.as_mut().unwrap();
    let mut seen = 0;
    for line in BufReader::new(out).lines() {
        // The harness writes "test child_process ... " before the child's
        // first line, on the same line.
        let line = line.unwrap();
        if let Some(at) = line.find(prefix) {
            seen += 1;
            if seen == count {
                return line[at..].to_string();
            }
        }
    }
    panic!("the child ended before saying {prefix:?} {count} times");
}

/// How long the leases of child processes last on PostgreSQL: what the
/// tests wait after killing one.
const CHILD_LEASE_TTL: Duration = Duration::from_secs(2);

/// The lease on `id`, once whoever held it is gone: at once on SQLite (the
/// holder's process is checked), once its lease expired on PostgreSQL.
fn lease_when_free(store: &Database, id: u64) -> Lease {
    let deadline = Instant::now() + CHILD_LEASE_TTL * 20;
    loop {
        match store.lease(id) {
            Ok(lease) => return lease,
            Err(e) if Instant::now() < deadline && e.to_string().ends_with("is busy") => {
                std::thread::sleep(CHILD_LEASE_TTL / 5)
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Every version in the database loads and equals what was committed, the
/// head is the last one, nothing half-written is left, and the instance
/// can go on.
fn check_after_crash(db: &TestDb, at_least: u32) -> u32 {
    let store = Database::open(db.location()).unwrap();
    let versions = store.versions(1).unwrap();
    let count = versions.len() as u32;
    assert!(
        count >= at_least,
        "{count} versions, {at_least} were committed"
    );
    for (v, n) in versions.iter().zip(1..) {
        assert_eq!(v.number, n);
        assert_eq!(store.load_version(1, n).unwrap(), step(n));
    }
    assert_eq!(store.instance(1).unwrap().head, Some(count));
    assert_eq!(store.gc().unwrap(), GcReport::default(), "orphan pages");
    if db.backend() == Backend::Sqlite {
        let conn = rusqlite::Connection::open(db.location()).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    let lease = lease_when_free(&store, 1);
    commit_chain_with(&store, &lease, count + 1..=count + 1);
    count
}

on_both_backends! {
fn a_killed_process_loses_no_committed_version(backend: Backend) {
    let db = TestDb::new(backend);
    // Kill the loop at several points; each run continues the last.
    for kill_after in [1, 7, 20] {
        let mut child = spawn_child(db.location(), "commit-loop");
        let line = wait_for(&mut child, "committed", kill_after);
        child.kill().unwrap();
        child.wait().unwrap();
        let committed: u32 = line["committed ".len()..].parse().unwrap();
        check_after_crash(&db, committed);
    }
}
}

on_both_backends! {
fn a_process_killed_mid_commit_leaves_no_half_version(backend: Backend) {
    for stage in ["begin", "pages", "version", "before-commit"] {
        let db = TestDb::new(backend);
        let mut child = spawn_child(db.location(), &format!("kill-at:{stage}:5"));
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was to be killed at {stage}");
        // The fifth commit never happened; the first four are whole.
        assert_eq!(check_after_crash(&db, 4), 4, "killed at {stage}");
    }
}
}

on_both_backends! {
fn of_two_processes_one_gets_the_lease(backend: Backend) {
    let db = TestDb::new(backend);
    let store = Database::open(db.location()).unwrap();
    let hash = store.put_module(MODULE).unwrap();
    store
        .create_instance(&hash, &[], &Policy::default())
        .unwrap();
    let mut children = [
        spawn_child(db.location(), "race"),
        spawn_child(db.location(), "race"),
    ];
    let lines: Vec<String> = children
        .iter_mut()
        .map(|c| wait_for(c, "lease:", 1))
        .collect();
    children.iter_mut().for_each(|c| {
        c.wait().unwrap();
    });
    let mut lines = lines;
    lines.sort();
    assert_eq!(lines, ["lease: instance 1 is busy", "lease: taken"]);
    assert!(store.versions(1).unwrap().len() == 1);
}
}

on_both_backends! {
fn a_lease_held_by_a_killed_process_is_freed(backend: Backend) {
    let db = TestDb::new(backend);
    let store = Database::open(db.location()).unwrap();
    let hash = store.put_module(MODULE).unwrap();
    store
        .create_instance(&hash, &[], &Policy::default())
        .unwrap();
    let mut child = spawn_child(db.location(), "hold");
    wait_for(&mut child, "lease:", 1);
    assert_eq!(
        store.lease(1).unwrap_err().to_string(),
        "instance 1 is busy"
    );
    // Held longer than its lease lasts: the child renews it.
    std::thread::sleep(CHILD_LEASE_TTL * 2);
    assert_eq!(
        store.lease(1).unwrap_err().to_string(),
        "instance 1 is busy"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    lease_when_free(&store, 1);
    if backend == Backend::Postgres {
        // Not before the lease expired (it was renewed a third of the way
        // in, at the latest).
        assert!(killed.elapsed() >= CHILD_LEASE_TTL / 2, "{:?}", killed.elapsed());
    }
}
}

static KILL_STAGE: OnceLock<(String, u32)> = OnceLock::new();
static STAGE_SEEN: AtomicU32 = AtomicU32::new(0);

/// Kills this process with SIGKILL when the chosen commit stage is reached
/// for the chosen time.
fn kill_hook(stage: &str) {
    let Some((target, nth)) = KILL_STAGE.get() else {
        return;
    };
    if stage == target && STAGE_SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        let pid = std::process::id().to_string();
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        std::thread::sleep(std::time::Duration::from_secs(60));
        unreachable!("SIGKILL did not arrive");
    }
}

/// The child process of the tests above; does nothing unless run by them.
#[test]
#[ignore = "run as a child process by the crash and lease tests"]
fn child_process() {
    let (Ok(db), Ok(mode)) = (
        std::env::var("WASNAP_TEST_CHILD_DB"),
        std::env::var("WASNAP_TEST_CHILD_MODE"),
    ) else {
        panic!("run only by the crash and lease tests");
    };
    let store = Database::open(&db).unwrap();
    store.set_lease_ttl(CHILD_LEASE_TTL);
    let hash = store.put_module(MODULE).unwrap();
    if store.instances().unwrap().is_empty() {
        store
            .create_instance(&hash, &["wf.wasm".into()], &Policy::default())
            .unwrap();
    }
    if let Some(spec) = mode.strip_prefix("kill-at:") {
        let (stage, nth) = spec.split_once(':').unwrap();
        KILL_STAGE
            .set((stage.to_string(), nth.parse().unwrap()))
            .unwrap();
        store.set_commit_hook(Some(kill_hook));
    }
    if let Some(instance) = mode.strip_prefix("chain:") {
        commit_chain(&store, instance.parse().unwrap(), 1..=CHAIN);
        println!("chain: done");
        return;
    }
    match mode.as_str() {
        "race" | "hold" => hold_lease(&store, mode == "race"),
        _ => commit_forever(&store),
    }
}

fn hold_lease(store: &Database, commit: bool) {
    match store.lease(1) {
        Ok(lease) => {
            println!("lease: taken");
            if commit {
                store
                    .commit_version(&lease, None, &Outcome::Suspended(&step(1)), b"")
                    .unwrap();
            }
            std::thread::sleep(std::time::Duration::from_secs(if commit { 3 } else { 600 }));
        }
        Err(e) => println!("lease: {e}"),
    }
}

fn commit_forever(store: &Database) {
    let lease = store.lease(1).unwrap();
    let mut n = store.instance(1).unwrap().head.unwrap_or(0);
    loop {
        n += 1;
        let parent = (n > 1).then(|| n - 1);
        store
            .commit_version(&lease, parent, &Outcome::Suspended(&step(n)), b"go")
            .unwrap();
        println!("committed {n}");
    }
}
