//! Prometheus metrics, rendered in the text exposition format at `/metrics`.
//!
//! Counters and histograms are kept in memory per job name. Gauges that come
//! from the store (queue depth by status) are read when the metrics are scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the duration buckets, in seconds.
const DURATION_BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0];
/// Upper bounds of the dispatch latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Job counters by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobCounter {
    Enqueued,
    Started,
    Completed,
    Failed,
    Cancelled,
    Retried,
    Stale,
    Lost,
}

impl JobCounter {
    fn metric(self) -> &'static str {
        match self {
            JobCounter::Enqueued => "burro_jobs_enqueued_total",
            JobCounter::Started => "burro_jobs_started_total",
            JobCounter::Completed => "burro_jobs_completed_total",
            JobCounter::Failed => "burro_jobs_failed_total",
            JobCounter::Cancelled => "burro_jobs_cancelled_total",
            JobCounter::Retried => "burro_jobs_retried_total",
            JobCounter::Stale => "burro_jobs_stale_total",
            JobCounter::Lost => "burro_jobs_lost_total",
        }
    }

    fn help(self) -> &'static str {
        match self {
            JobCounter::Enqueued => "Jobs enqueued.",
            JobCounter::Started => "Job attempts started.",
            JobCounter::Completed => "Jobs completed.",
            JobCounter::Failed => "Jobs failed with no attempt left.",
            JobCounter::Cancelled => "Jobs cancelled.",
            JobCounter::Retried => "Failed attempts scheduled for a retry.",
            JobCounter::Stale => "Times a job went without a message for its heartbeat timeout.",
            JobCounter::Lost => "Attempts lost across a server restart.",
        }
    }

    const ALL: [JobCounter; 8] = [
        JobCounter::Enqueued,
        JobCounter::Started,
        JobCounter::Completed,
        JobCounter::Failed,
        JobCounter::Cancelled,
        JobCounter::Retried,
        JobCounter::Stale,
        JobCounter::Lost,
    ];
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (slot, bound) in self.counts.iter_mut().zip(bounds) {
            if value <= *bound {
                *slot += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let separator = if labels.is_empty() { "" } else { "," };
        for (count, bound) in self.counts.iter().zip(bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct State {
    counters: BTreeMap<(JobCounter, String), u64>,
    durations: BTreeMap<String, Histogram>,
    dispatch_latency: Histogram,
    store_errors: u64,
}

/// The metrics of one server.
#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

/// Values read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Jobs per status, from the store.
    pub by_status: Vec<(String, u64)>,
    pub running: u64,
    pub sse_clients: u64,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("metrics lock")
    }

    /// Adds one to a counter of job `name`.
    pub fn count(&self, counter: JobCounter, name: &str) {
        *self.lock().counters.entry((counter, name.to_string())).or_default() += 1;
    }

    /// Records how long an attempt of job `name` ran.
    pub fn observe_duration(&self, name: &str, seconds: f64) {
        self.lock().durations.entry(name.to_string()).or_default().observe(&DURATION_BUCKETS, seconds);
    }

    /// Records the time from a job being due to its claim.
    pub fn observe_dispatch_latency(&self, seconds: f64) {
        self.lock().dispatch_latency.observe(&LATENCY_BUCKETS, seconds);
    }

    /// Counts a failed store operation.
    pub fn store_error(&self) {
        self.lock().store_errors += 1;
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let state = self.lock();
        let mut out = String::new();
        for counter in JobCounter::ALL {
            let _ = writeln!(out, "# HELP {} {}", counter.metric(), counter.help());
            let _ = writeln!(out, "# TYPE {} counter", counter.metric());
            for ((kind, name), value) in state.counters.range((counter, String::new())..) {
                if *kind != counter {
                    break;
                }
                let _ = writeln!(out, "{}{{name=\"{}\"}} {value}", counter.metric(), escape(name));
            }
        }
        out.push_str("# HELP burro_job_duration_seconds Run time of job attempts.\n# TYPE burro_job_duration_seconds histogram\n");
        for (name, histogram) in &state.durations {
            histogram.render(&mut out, "burro_job_duration_seconds", &format!("name=\"{}\"", escape(name)), &DURATION_BUCKETS);
        }
        out.push_str("# HELP burro_dispatch_latency_seconds Time from a job being due to its claim.\n# TYPE burro_dispatch_latency_seconds histogram\n");
        state.dispatch_latency.render(&mut out, "burro_dispatch_latency_seconds", "", &LATENCY_BUCKETS);
        out.push_str("# HELP burro_jobs Jobs in the store by status.\n# TYPE burro_jobs gauge\n");
        for (status, count) in &snapshot.by_status {
            let _ = writeln!(out, "burro_jobs{{status=\"{status}\"}} {count}");
        }
        let _ = writeln!(out, "# HELP burro_jobs_running Jobs running on this server.\n# TYPE burro_jobs_running gauge\nburro_jobs_running {}", snapshot.running);
        let _ = writeln!(out, "# HELP burro_sse_clients Connected SSE clients.\n# TYPE burro_sse_clients gauge\nburro_sse_clients {}", snapshot.sse_clients);
        let _ = writeln!(out, "# HELP burro_store_errors_total Failed store operations.\n# TYPE burro_store_errors_total counter\nburro_store_errors_total {}", state.store_errors);
        out
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let metrics = Metrics::default();
        metrics.count(JobCounter::Completed, "resize");
        metrics.count(JobCounter::Completed, "resize");
        metrics.count(JobCounter::Failed, "odd\"name");
        metrics.observe_duration("resize", 0.3);
        metrics.observe_dispatch_latency(0.002);
        let text = metrics.render(&Snapshot {
            by_status: vec![("pending".into(), 4)],
            running: 1,
            sse_clients: 2,
        });
        assert!(text.contains("burro_jobs_completed_total{name=\"resize\"} 2\n"), "{text}");
        assert!(text.contains("burro_jobs_failed_total{name=\"odd\\\"name\"} 1\n"), "{text}");
        assert!(text.contains("burro_job_duration_seconds_bucket{name=\"resize\",le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("burro_job_duration_seconds_bucket{name=\"resize\",le=\"0.25\"} 0\n"), "{text}");
        assert!(text.contains("burro_dispatch_latency_seconds_count 1\n"), "{text}");
        assert!(text.contains("burro_jobs{status=\"pending\"} 4\n"), "{text}");
        assert!(text.contains("burro_sse_clients 2\n"), "{text}");
    }
}
