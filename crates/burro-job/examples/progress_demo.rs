//! A blocking job that reports progress step by step.
//!
//! Data: `steps` (default 10) and `delay` in seconds between steps (default
//! 0.3). Each step sends `progress` and an `info` log line. A cancel stops
//! the loop early. The result is `{"steps": <steps done>, "language": "rust"}`.

use serde_json::json;
use std::time::Duration;

fn main() {
    burro_job::run_job_blocking(|job| {
        let steps = job.data()["steps"].as_u64().unwrap_or(10);
        let delay = job.data()["delay"].as_f64().unwrap_or(0.3);
        let delay = Duration::try_from_secs_f64(delay).unwrap_or(Duration::ZERO);
        let mut done = 0;
        for step in 1..=steps {
            // Doubles as the step's sleep, cut short by a cancel.
            if job.wait_cancelled(delay) {
                job.warn(&format!("cancelled after {done} of {steps} steps"))?;
                break;
            }
            let percent = step as f64 * 100.0 / steps as f64;
            job.progress(percent, Some(&format!("step {step} of {steps}")))?;
            job.info(&format!("finished step {step}"))?;
            done = step;
        }
        Ok::<_, burro_job::Error>(json!({ "steps": done, "language": "rust" }))
    })
}
