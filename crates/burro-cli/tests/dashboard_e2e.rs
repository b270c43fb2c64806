//! The web dashboard in a real browser: `burro serve` as a process, driven by
//! tests/e2e/dashboard.mjs through playwright-core and Debian's Chromium.
//!
//! The screenshots land in target/e2e/ (dashboard.png, dashboard-job.png and
//! dashboard-overview.png, or dashboard-failure.png when a step fails).

mod common;

use common::{start, Server};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Upper bound of the browser script; it stops itself earlier on its own limit.
const SCRIPT_LIMIT: Duration = Duration::from_secs(240);
const SETUP_HINT: &str = "run ./scripts/test once, which installs Chromium (apt-get install chromium) \
                          and the browser test's packages (npm ci in tests/e2e); see the README's Tests section";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace().join(dir),
        None => workspace().join("target"),
    }
}

/// Fails with the setup hint when something the browser test needs is missing.
fn require_browser_setup(root: &Path) {
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: {SETUP_HINT}");
    let package = root.join("tests/e2e/node_modules/playwright-core/package.json");
    assert!(package.exists(), "{} is missing: {SETUP_HINT}", package.display());
    let node = Command::new("node").arg("--version").output();
    assert!(matches!(node, Ok(ref output) if output.status.success()), "node does not run ({node:?}): {SETUP_HINT}");
}

/// Starts `burro serve` on a free port with the jobs the browser script enqueues.
fn serve(root: &Path) -> Server {
    let workers = root.join("crates/burro/tests/workers");
    start(|sockets| {
        format!(
            r#"
[server]
bind = "127.0.0.1:0"
data_dir = "state"
[jobs]
retry_backoff = false
[external]
socket_dir = "{sockets}/s"
cancel_grace = "1s"
kill_grace = "1s"
[external_jobs.numbered]
command = "python3"
args = ["{numbered}"]
[external_jobs.sleep]
command = "python3"
args = ["{sleep}"]
"#,
            sockets = sockets.display(),
            numbered = workers.join("numbered.py").display(),
            sleep = workers.join("sleep_long.py").display(),
        )
    })
}

#[test]
fn dashboard_live_progress_and_cancel() {
    let root = workspace();
    require_browser_setup(&root);
    let server = serve(&root);

    let out_dir = target_dir().join("e2e");
    std::fs::create_dir_all(&out_dir).unwrap();
    let screenshot = out_dir.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let log_dir = tempfile::tempdir().unwrap();
    let stdout_path = log_dir.path().join("stdout");
    let stderr_path = log_dir.path().join("stderr");

    let mut script = Command::new("node")
        .arg(root.join("tests/e2e/dashboard.mjs"))
        .arg(&server.url)
        .arg(&screenshot)
        .current_dir(&root)
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = script.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_LIMIT {
            let _ = script.kill();
            let _ = script.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    println!("{stdout}{stderr}");
    let status = status.unwrap_or_else(|| panic!("dashboard.mjs ran longer than {SCRIPT_LIMIT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(status.success(), "dashboard.mjs exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let png = std::fs::read(&screenshot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG file", screenshot.display());
    assert!(png.len() > 1000, "{} has only {} bytes", screenshot.display(), png.len());
}
