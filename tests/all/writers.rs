//! Many processes writing one database at once: they wait for each other
//! instead of failing, and a reply addressed to a version is never given
//! to another.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::cli::{guest, ok, scratch};

fn spawn(db: &Path, script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("WASNAP", env!("CARGO_BIN_EXE_wasnap"))
        .env("WASNAP_DB", db)
        .env(
            "XDG_CONFIG_HOME",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/config"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// 16 processes at once, each running a workflow and restoring a snapshot
/// file twice over, into one database that none of them has created yet:
/// 64 commands, and every one succeeds.
#[test]
fn sixteen_processes_run_and_restore_into_one_database_and_none_fails() {
    let (dir, db) = scratch();
    let other = dir.path().join("other.db");
    ok(&other, &["run", &guest("approval")]);
    let file = dir.path().join("v1.wsnap");
    ok(&other, &["snapshot", "1", "-o", file.to_str().unwrap()]);
    let step = format!(
        "\"$WASNAP\" run {} && \"$WASNAP\" restore {}",
        guest("approval"),
        file.display()
    );
    let script = format!("{step} && {step}");
    let children: Vec<Child> = (0..16).map(|_| spawn(&db, &script)).collect();
    let failures: Vec<String> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .filter(|output| !output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    let listing = ok(&db, &["ls", "--json"]);
    assert_eq!(listing.lines().count(), 64, "{listing}");
    assert!(
        listing
            .lines()
            .all(|l| l.contains(r#""state":"suspended""#)),
        "{listing}"
    );
}

/// Runs the approval demo to its question (version 2), then starts 8
/// processes at once that each run `wasnap resume TARGET --send true`, and
/// returns what each printed and how it exited.
fn eight_replies_at_version_2(db: &Path, target: &str) -> Vec<std::process::Output> {
    ok(db, &["run", &guest("approval")]);
    ok(db, &["resume", "1"]);
    let command = format!("\"$WASNAP\" resume {target} --send true");
    let children: Vec<Child> = (0..8).map(|_| spawn(db, &command)).collect();
    children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect()
}

/// 8 processes answer the question of version 2 at once. Each either
/// answers it (a new version whose parent is 2) or finds the instance busy
/// and changes nothing; none answers another version's question.
#[test]
fn replies_to_one_version_all_land_on_that_version() {
    let (_dir, db) = scratch();
    let outputs = eight_replies_at_version_2(&db, "1@2");
    let answered = outputs.iter().filter(|o| o.status.success()).count();
    for output in outputs.iter().filter(|o| !o.status.success()) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("instance 1 is busy"), "{stderr}");
    }
    assert!(answered >= 1);
    let log = ok(&db, &["log", "1", "--json"]);
    let new: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(r#""version":1,"#) && !l.contains(r#""version":2,"#))
        .collect();
    assert_eq!(new.len(), answered, "{log}");
    for version in new {
        assert!(version.contains(r#""parent":2,"#), "{version}");
        assert!(version.contains(r#""reply":"true""#), "{version}");
    }
}

/// The number after `"key":` in one line of `log --json` (`None` for null).
fn number(line: &str, key: &str) -> Option<u32> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// 8 processes reply to the instance's head at once. The head form answers
/// whatever the head is when a process takes the lease, so several may
/// advance the instance one after another, but no question is answered
/// twice: the new versions form one line from version 2, each the only
/// child of the one before. The others find the instance busy, or finished.
#[test]
fn replies_to_the_head_answer_each_question_once() {
    let (_dir, db) = scratch();
    let outputs = eight_replies_at_version_2(&db, "1");
    let answered = outputs.iter().filter(|o| o.status.success()).count();
    for output in outputs.iter().filter(|o| !o.status.success()) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("instance 1 is busy") || stderr.contains("nothing to resume"),
            "{stderr}"
        );
    }
    assert!(answered >= 1);
    let log = ok(&db, &["log", "1", "--json"]);
    let mut new: Vec<(u32, u32)> = log
        .lines()
        .map(|l| (number(l, "version").unwrap(), number(l, "parent")))
        .filter(|(version, _)| *version > 2)
        .map(|(version, parent)| (version, parent.unwrap()))
        .collect();
    new.sort();
    assert_eq!(new.len(), answered, "{log}");
    let mut previous = 2;
    for (version, parent) in new {
        assert_eq!(parent, previous, "version {version} answered again:\n{log}");
        previous = version;
    }
}
