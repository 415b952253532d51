//! Finding changed pages and filling restored memories: every way the
//! machine offers gives the same snapshots as the page comparison that
//! works everywhere, writes by the host (system calls into the guest's
//! memory) are seen, and a lazy restore reads only the pages a run
//! touches.

use wasnap::runtime::{ChangeTracking, MemoryRestore, support};
use wasnap::snapshot::{MemoryImage, Snapshot};
use wasnap::store::{Database, Outcome};
use wasnap::{Engine, Module, Settings, Step, Workflow};

/// Every way of tracking writes that this machine offers.
fn trackings() -> Vec<ChangeTracking> {
    let mut all = vec![ChangeTracking::Compare, ChangeTracking::Auto];
    if support().write_protect {
        all.push(ChangeTracking::WriteProtect);
    } else {
        eprintln!("userfaultfd write protection is not available here: not tested");
    }
    all
}

/// Every way of filling a restored memory that this machine offers.
fn restores() -> Vec<MemoryRestore> {
    let mut all = vec![MemoryRestore::Eager, MemoryRestore::Auto];
    if support().fill_on_demand {
        all.push(MemoryRestore::Lazy);
    } else {
        eprintln!("lazy restore is not available here: not tested");
    }
    all
}

/// Writes pages 2 and 3 and yields; then reads `msg.txt` from its
/// preopened directory into page 9 (a page it never touched: the host's
/// system call writes there first), writes page 5 and yields; then grows
/// its memory by 3 pages, writes the last one and yields.
const READER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory (export "memory") 16)
  (data (i32.const 16) "msg.txt")
  (func (export "run")
    (i32.store (i32.const 131072) (i32.const 1))
    (i32.store (i32.const 196608) (i32.const 2))
    (drop (call $yield (i32.const 0) (i32.const 0)))
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 0)
                    (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32))
      (then unreachable))
    (i32.store (i32.const 48) (i32.const 589924))
    (i32.store (i32.const 52) (i32.const 64))
    (if (call $read (i32.load (i32.const 32)) (i32.const 48) (i32.const 1) (i32.const 56))
      (then unreachable))
    (i32.store (i32.const 327680) (i32.const 5))
    (drop (call $yield (i32.const 0) (i32.const 0)))
    (drop (memory.grow (i32.const 3)))
    (i32.store (i32.const 1245180) (i32.const 7))
    (drop (call $yield (i32.const 0) (i32.const 0)))))
"#;

const MESSAGE: &[u8] = b"written by the host into a page the guest never touched";

fn indices(m: &MemoryImage) -> Vec<u32> {
    m.pages.iter().map(|p| p.index).collect()
}

fn yields(workflow: &mut Workflow) -> Snapshot {
    assert_eq!(workflow.run().unwrap(), Step::Yielded(Vec::new()));
    workflow.snapshot().unwrap()
}

#[test]
fn every_way_finds_the_same_pages_host_writes_included() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("msg.txt"), MESSAGE).unwrap();
    let engine = Engine::new().unwrap();
    let module = engine.load(&wat::parse_str(READER).unwrap()).unwrap();
    let settings = |tracking| {
        Settings::default()
            .directory(dir.path(), "/data")
            .change_tracking(tracking)
    };
    // The reference: page comparison, one workflow throughout.
    let mut reference = engine
        .start(&module, settings(ChangeTracking::Compare))
        .unwrap();
    let expected: Vec<Snapshot> = (0..3).map(|_| yields(&mut reference)).collect();
    assert_eq!(indices(&expected[0].memories[0]), [0, 2, 3]);
    assert_eq!(indices(&expected[1].memories[0]), [0, 2, 3, 5, 9]);
    assert_eq!(indices(&expected[2].memories[0]), [0, 2, 3, 5, 9, 18]);
    let page9 = expected[1].memories[0].pages[4].data.bytes().unwrap();
    assert_eq!(&page9[100..100 + MESSAGE.len()], MESSAGE);

    for tracking in trackings() {
        let mut workflow = engine.start(&module, settings(tracking)).unwrap();
        for (n, want) in expected.iter().enumerate() {
            assert_eq!(
                yields(&mut workflow).memories,
                want.memories,
                "{tracking:?}, yield {n}"
            );
            // Nothing was written since: the same pages, not read again.
            let again = workflow.snapshot().unwrap();
            assert_eq!(again.memories, want.memories, "{tracking:?}, again");
        }
        for restore in restores() {
            let what = format!("{tracking:?}, restored {restore:?}");
            let mut restored = engine
                .restore_with(
                    &module,
                    &expected[0],
                    settings(tracking).memory_restore(restore),
                )
                .unwrap();
            assert_eq!(
                restored.snapshot().unwrap().memories,
                expected[0].memories,
                "{what}"
            );
            assert_eq!(
                yields(&mut restored).memories,
                expected[1].memories,
                "{what}"
            );
            assert_eq!(
                yields(&mut restored).memories,
                expected[2].memories,
                "{what}"
            );
        }
    }
}

/// Grows its memory to 64 pages and writes every one, then at each yield
/// rewrites as many pages as the reply has bytes, from page 0 on.
const TOUCHING: &str = r#"
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (memory 1)
  (func $fill (param $page i32) (param $seed i32)
    (local $addr i32) (local $end i32)
    (local.set $addr (i32.mul (local.get $page) (i32.const 65536)))
    (local.set $end (i32.add (local.get $addr) (i32.const 65536)))
    (loop $words
      (i32.store (local.get $addr) (i32.add (local.get $addr) (local.get $seed)))
      (br_if $words
        (i32.lt_u (local.tee $addr (i32.add (local.get $addr) (i32.const 4)))
                  (local.get $end)))))
  (func (export "run")
    (local $i i32) (local $n i32) (local $step i32)
    (drop (memory.grow (i32.const 63)))
    (loop $pages
      (call $fill (local.get $i) (i32.const 1))
      (br_if $pages (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1)))
                              (i32.const 64))))
    (loop $steps
      (local.set $n (call $yield (i32.const 0) (i32.const 0)))
      (local.set $step (i32.add (local.get $step) (i32.const 1)))
      (local.set $i (i32.const 0))
      (block $done
        (loop $changes
          (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
          (call $fill (local.get $i) (i32.add (local.get $step) (i32.const 7)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $changes)))
      (br $steps))))
"#;

/// A database holding the touching guest at its first yield, as version 1
/// of instance 1, with the workflow that made it.
fn stored_touching() -> (tempfile::TempDir, Database, Engine, Module, Workflow) {
    let dir = tempfile::tempdir().unwrap();
    let store = Database::open(dir.path().join("wasnap.db")).unwrap();
    let engine = Engine::new().unwrap();
    let wasm = wat::parse_str(TOUCHING).unwrap();
    let module = engine.load(&wasm).unwrap();
    let hash = store.put_module(&wasm).unwrap();
    let id = store
        .create_instance(&hash, &[], &wasnap::Policy::default())
        .unwrap();
    let mut workflow = engine.start(&module, Settings::default()).unwrap();
    let first = yields(&mut workflow);
    let lease = store.lease(id).unwrap();
    store
        .commit_version(&lease, None, &Outcome::Suspended(&first), &[])
        .unwrap();
    (dir, store, engine, module, workflow)
}

fn read_pages(snapshot: &Snapshot) -> usize {
    let pages = snapshot.memories.iter().flat_map(|m| &m.pages);
    pages.filter(|p| p.data.is_loaded()).count()
}

#[test]
fn a_lazy_resume_reads_the_pages_it_touches() {
    if !support().fill_on_demand {
        eprintln!("lazy restore is not available here: not tested");
        return;
    }
    let (_dir, store, engine, module, mut original) = stored_touching();
    let lease = store.lease(1).unwrap();
    let loaded = store.load_version_lazily(&lease, 1).unwrap();
    assert_eq!(read_pages(&loaded), 0);
    let settings = Settings::default().memory_restore(MemoryRestore::Lazy);
    let mut workflow = engine.restore_with(&module, &loaded, settings).unwrap();
    workflow.send(b"abc");
    let after = yields(&mut workflow);
    // Three pages were rewritten, which faulted them in; nothing else of
    // the 64 was read, by the run, the capture or the commit.
    assert_eq!(read_pages(&loaded), 3);
    store
        .commit_version(&lease, Some(1), &Outcome::Suspended(&after), b"abc")
        .unwrap();
    assert_eq!(read_pages(&loaded), 3);
    // What was committed is exactly what the original workflow has.
    original.send(b"abc");
    let expected = yields(&mut original);
    assert_eq!(after.memories, expected.memories);
    assert_eq!(
        store.load_version(1, 2).unwrap().memories,
        expected.memories
    );
    // Version 1 lists its 64 pages; version 2 only the 3 that changed.
    assert_eq!(store.stats().unwrap().page_refs, 64 + 3);
}

#[test]
fn a_page_that_cannot_be_read_stops_the_workflow() {
    let (_dir, store, engine, module, _) = stored_touching();
    // Page 0's row now holds another page's contents.
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    conn.execute(
        "UPDATE pages SET data = (SELECT data FROM pages WHERE id = 2) WHERE id = 1",
        [],
    )
    .unwrap();
    let message = "version 1 of instance 1 is corrupt: page 0 of memory 0: its contents do not match its hash";
    let lease = store.lease(1).unwrap();
    for restore in restores() {
        let loaded = store.load_version_lazily(&lease, 1).unwrap();
        let settings = Settings::default().memory_restore(restore);
        let err = match engine.restore_with(&module, &loaded, settings) {
            Err(e) => e,
            Ok(mut workflow) => {
                workflow.send(b"a");
                let err = workflow.run().unwrap_err();
                assert!(workflow.snapshot().is_err(), "{restore:?}");
                err
            }
        };
        assert_eq!(format!("{err:#}"), message, "{restore:?}");
    }
    let err = store.load_version(1, 1).unwrap_err().to_string();
    assert_eq!(err, message);
}

#[test]
fn asking_for_what_the_machine_lacks_is_an_error() {
    let engine = Engine::new().unwrap();
    let module = engine.load(&wat::parse_str(TOUCHING).unwrap()).unwrap();
    let support = support();
    let start = engine.start(
        &module,
        Settings::default().change_tracking(ChangeTracking::WriteProtect),
    );
    assert_eq!(start.is_ok(), support.write_protect);
    if let Err(e) = start {
        assert!(
            e.to_string()
                .contains("userfaultfd write protection is not available")
        );
    }
    let describe = support.to_string();
    assert!(describe.starts_with("changed pages: "), "{describe}");
}
