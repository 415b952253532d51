//! The web page in a real browser: `tests/browser/demos.mjs` drives
//! headless Chromium (Debian's `chromium`, through Playwright) against a
//! `wasnap serve` process through the approval demo (start, answer "true",
//! branch from version 2 with "false") and the deploy demo (a question
//! with a deadline, a sleep the server ends by itself), and the approval
//! demo as a JavaScript script uploaded through the page. Screenshots of
//! every step are kept in `target/browser-artifacts/`.

use std::path::Path;
use std::process::Command;

use super::guests::built;
use super::serve::Service;

#[test]
fn demos_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser");
    assert!(
        script.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci` in tests/browser (.ci/run does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "Chromium is missing: apt-get install chromium (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&dir.path().join("wasnap.db"));
    let artifacts = root.join("target/browser-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    let output = Command::new("node")
        .current_dir(&script)
        .arg("demos.mjs")
        .arg(format!("http://{}/", service.address))
        .arg(built("c", "approval"))
        .arg(built("c", "deploy"))
        .arg(root.join("guest-workflows/js/approval.js"))
        .arg(&artifacts)
        .output()
        .expect("node runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(said.contains("3 passed, 0 failed"), "{said}");
    let shots = std::fs::read_dir(&artifacts).unwrap().count();
    assert!(shots >= 10, "only {shots} screenshots: {said}");
    let (ok, log) = service.terminate();
    assert!(ok, "{log}");
}
