//! The web dashboard in a real browser: `burro serve` as a process, driven by
//! tests/e2e/dashboard.mjs through playwright-core and Debian's Chromium.
//!
//! The screenshots land in target/e2e/ (dashboard.png, dashboard-job.png and
//! dashboard-overview.png, or dashboard-failure.png when a step fails).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BURRO: &str = env!("CARGO_BIN_EXE_burro");
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

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    _sockets: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `burro serve` on a free port with the jobs the browser script enqueues.
fn serve(root: &Path) -> Server {
    let dir = tempfile::tempdir().unwrap();
    // Socket paths must stay under 107 bytes, so use a short directory.
    let socket_root = tempfile::Builder::new().prefix("bd").tempdir_in("/tmp").unwrap();
    let workers = root.join("crates/burro/tests/workers");
    let config = format!(
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
        sockets = socket_root.path().display(),
        numbered = workers.join("numbered.py").display(),
        sleep = workers.join("sleep_long.py").display(),
    );
    let config_path = dir.path().join("burro.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(BURRO)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("BURRO_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("burro is serving on ") {
                let url = rest.split_whitespace().next().unwrap_or_default().to_string();
                let _ = tx.send(url);
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("burro serve printed its address");
    Server {
        child,
        url,
        _dir: dir,
        _sockets: socket_root,
    }
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
