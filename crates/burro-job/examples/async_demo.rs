//! The async form: counts to `data.count` (default 5) with a pause of
//! `data.delay` seconds (default 0.1), stopping early on cancel.

use serde_json::json;
use std::time::Duration;

fn main() {
    burro_job::run_job(|job| async move {
        let count = job.data()["count"].as_u64().unwrap_or(5);
        let delay = Duration::try_from_secs_f64(job.data()["delay"].as_f64().unwrap_or(0.1)).unwrap_or(Duration::ZERO);
        let mut done = 0;
        for step in 1..=count {
            tokio::select! {
                () = job.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            job.progress(step as f64 * 100.0 / count as f64, None).await?;
            done = step;
        }
        job.info("counting finished").await?;
        Ok::<_, burro_job::Error>(json!({ "counted": done }))
    })
}
