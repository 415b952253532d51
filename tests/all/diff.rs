//! `wasnap diff`: what changed between two versions, by memory range,
//! global, coroutine and frame.

use crate::cli::{ok, scratch};
use crate::guests::built;

#[test]
fn diff_names_changed_memory_and_frames() {
    let (_dir, db) = scratch();
    ok(&db, &["run", &built("c", "deploy")]);
    ok(&db, &["update", "1", "machines", "--arg", "5"]);
    ok(&db, &["resume", "1", "--send", "yes"]);
    ok(&db, &["resume", "1", "--now"]);
    let update = ok(&db, &["diff", "1@1", "1@2"]);
    assert!(update.starts_with("--- 1@1\n+++ 1@2\n"), "{update}");
    assert!(
        update.contains("memory 0: ") && update.contains(" changed ("),
        "{update}"
    );
    assert!(update.contains("  bytes 0x"), "{update}");
    assert!(
        !update.contains("coroutine"),
        "an update changes no frame: {update}"
    );
    let step = ok(&db, &["diff", "1@3", "1@4"]);
    assert!(
        step.contains("value: \"\" -> \"deploying to machine-1\""),
        "{step}"
    );
    assert!(step.contains("coroutine 0\n  frame "), "{step}");
    assert!(step.contains(" -> "), "{step}");
    assert_eq!(
        ok(&db, &["diff", "1@2", "1@2"]),
        "--- 1@2\n+++ 1@2\nno differences\n"
    );
}
