//! Runs the built `burro-bench` at the small scale and checks its JSON.
//! `burro-shim` and `burro` must be built with the same profile first, for
//! example by `cargo build --workspace`. S3 needs Node.js with npm, Redis on
//! 127.0.0.1:6379 and PostgreSQL (`BURRO_BENCH_POSTGRES_URL`), as
//! `./scripts/test` provides.

use std::path::Path;
use std::process::Command;

#[test]
fn small_scale_writes_every_scenario() {
    let exe = Path::new(env!("CARGO_BIN_EXE_burro-bench"));
    let shim = exe.with_file_name("burro-shim");
    assert!(
        shim.exists(),
        "burro-shim not found at {}: run `cargo build -p burro-shim` first",
        shim.display()
    );
    let burro = exe.with_file_name("burro");
    assert!(
        burro.exists(),
        "burro not found at {}: run `cargo build -p burro-cli` first",
        burro.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");

    let output = Command::new(exe)
        .args(["--scale", "small", "--rounds", "1", "--json"])
        .arg(&json_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "burro-bench failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let text = std::fs::read_to_string(&json_path).unwrap();
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(document["machine"]["cores"].as_u64().unwrap() > 0);
    assert!(!document["machine"]["kernel"].as_str().unwrap().is_empty());
    let scenarios = document["scenarios"].as_array().unwrap();
    let ids: Vec<&str> = scenarios
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["S1", "S2", "S3", "S4", "S5", "S6", "S7"]);
    for scenario in scenarios {
        let metrics = scenario["metrics"].as_array().unwrap();
        assert!(!metrics.is_empty(), "{} has no metrics", scenario["id"]);
        for metric in metrics.iter().filter(|metric| metric["absolute"] == false) {
            for side in ["burro", "limit"] {
                let median = metric[side]["median"].as_f64().unwrap();
                assert!(
                    median.is_finite(),
                    "{} {side} median is {median}",
                    scenario["id"]
                );
                assert!(median > 0.0, "{} {side} median is {median}", scenario["id"]);
            }
            assert!(metric["ratio"].as_f64().unwrap().is_finite());
        }
    }
    let by_id = |id: &str| scenarios.iter().find(|s| s["id"] == id).unwrap();
    let s4 = by_id("S4");
    assert_eq!(s4["lost"].as_u64(), Some(0), "S4 lost messages");
    let s5 = by_id("S5");
    let s5_metric = |name: &str| {
        let metric = s5["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == name).unwrap();
        metric["burro"]["median"].as_f64().unwrap()
    };
    assert_eq!(s5_metric("clients that missed a terminal event"), 0.0, "S5 terminal events");
    let delivered = s5_metric("progress delivered to the slowest client");
    assert!(delivered > 0.0, "S5 delivered {delivered} % of progress");
    assert!(delivered <= 100.0, "S5 delivered {delivered} % of progress");
    let s6 = by_id("S6");
    assert_eq!(s6["extra"]["falseStaleEvents"][0], 0, "S6 false stale reports");
    assert_eq!(s6["extra"]["jobsNotCompleted"][0], 0, "every S6 job completed");
    let s7 = by_id("S7");
    assert_eq!(s7["lost"].as_u64(), Some(0), "S7 lost messages");
    let reconnected = s7["metrics"][0]["burro"]["median"].as_f64().unwrap();
    assert!(reconnected.is_finite(), "S7 reconnect time is {reconnected}");
}
