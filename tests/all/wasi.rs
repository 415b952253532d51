//! WASI preview 1 through wasnap: a flags argument with bits WASI does not
//! define gets an errno, never a trap that would end the workflow.

use wasnap::{Engine, Settings, Step};

/// Opens `hello.txt` in directory fd 3 with the given `oflags` and rights
/// and yields the errno `path_open` returned, as one byte.
fn path_open_errno(oflags: i32, rights: i64, grant: Option<&std::path::Path>) -> u8 {
    let wasm = wat::parse_str(format!(
        r#"(module
             (import "wasi_snapshot_preview1" "path_open"
               (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
             (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "hello.txt")
             (func (export "run")
               (i32.store8 (i32.const 0)
                 (call $path_open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 9)
                   (i32.const {oflags}) (i64.const {rights}) (i64.const {rights})
                   (i32.const 0) (i32.const 32)))
               (drop (call $yield (i32.const 0) (i32.const 1)))))"#
    ))
    .unwrap();
    let engine = Engine::new().unwrap();
    let module = engine.load(&wasm).unwrap();
    let mut settings = Settings::default();
    if let Some(dir) = grant {
        settings = settings.directory(dir, "/data");
    }
    let mut workflow = engine.start(&module, settings).unwrap();
    match workflow.run().unwrap() {
        Step::Yielded(value) => value[0],
        other => panic!("{other:?}"),
    }
}

const BADF: u8 = 8;
const INVAL: u8 = 28;

#[test]
fn path_open_with_every_rights_bit_returns_an_errno() {
    // No directory granted: fd 3 is not open.
    assert_eq!(path_open_errno(0, -1, None), BADF);
    // Granted: "all rights" opens the file like the rights that exist.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi").unwrap();
    assert_eq!(path_open_errno(0, -1, Some(dir.path())), 0);
    let read = 1 << 1;
    assert_eq!(path_open_errno(0, read, Some(dir.path())), 0);
}

#[test]
fn path_open_with_undefined_open_flags_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi").unwrap();
    assert_eq!(path_open_errno(0xffff, 2, Some(dir.path())), INVAL);
    assert_eq!(path_open_errno(1 << 9, 2, Some(dir.path())), INVAL);
}
