//! The web app in a real browser: `web-tests/run.mjs` starts two `mmls run`
//! nodes on 127.0.0.1 and drives Debian's headless Chromium with
//! playwright-core (login by one-time link, create a universe, send from the
//! page, the other page receives it live, "received by 1 of 1", no data
//! without the session cookie, script in a text shown as text, CSRF).
//!
//! Needs `node`, `/usr/bin/chromium` (or `$CHROMIUM`) and `npm ci` in
//! `web-tests/`. Without them the test says so and passes, unless
//! `MMLS_REQUIRE_BROWSER=1` (set by `.ci/run`), where it fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn web_app_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("web-tests");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let required = std::env::var("MMLS_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!node_ok).then_some("node"),
        (!Path::new(&chromium).exists()).then_some("chromium"),
        (!dir.join("node_modules/playwright-core").exists())
            .then_some("web-tests/node_modules (run `npm ci` in web-tests/)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        assert!(
            !required,
            "MMLS_REQUIRE_BROWSER=1 but missing: {}",
            missing.join(", ")
        );
        eprintln!(
            "SKIPPED web_app_in_headless_chromium: missing {} (see .ci/run)",
            missing.join(", ")
        );
        return;
    }
    let t0 = Instant::now();
    let out = Command::new("node")
        .arg("run.mjs")
        .current_dir(&dir)
        .env("MMLS_BIN", env!("CARGO_BIN_EXE_mmls"))
        .env("CHROMIUM", &chromium)
        .env("TEST_TIMEOUT_MS", "180000")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser tests failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("received by 1 of 1")
            && stdout.contains("all ")
            && !stdout.contains("not ok"),
        "unexpected report:\n{stdout}"
    );
    assert!(t0.elapsed() < Duration::from_secs(200));
}
