//! A blocking job that waits for the server's cancel message.
//!
//! It reports progress 1, waits until `cancel` arrives, writes `cancel seen`
//! to the file named by `data.markerFile`, and returns `{"cancelled": true}`.

use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    marker_file: String,
}

fn main() {
    burro_job::run_job_blocking(|job| -> Result<_, Box<dyn std::error::Error>> {
        let data: Data = job.data_as()?;
        job.progress(1.0, Some("waiting for cancel"))?;
        while !job.wait_cancelled(Duration::from_secs(1)) {}
        std::fs::write(&data.marker_file, "cancel seen")?;
        Ok(json!({ "cancelled": true }))
    })
}
