//! Results: the machine description, the printed table and the JSON document.

use crate::Scale;
use serde_json::{json, Value};

/// The machine the benchmarks ran on.
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_kib: u64,
    pub kernel: String,
}

impl Machine {
    /// Reads the core count, CPU model, memory and kernel release.
    pub fn probe() -> Machine {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let kernel = std::process::Command::new("uname")
            .arg("-r")
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|release| !release.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cores,
            cpu,
            memory_kib,
            kernel,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "machine: {} cores ({}), {:.1} GiB memory, Linux {}",
            self.cores,
            self.cpu,
            self.memory_kib as f64 / (1024.0 * 1024.0),
            self.kernel
        )
    }
}

/// The goal for the ratio of burro's median to the limit's median, or for
/// burro's median itself when the metric is absolute.
#[derive(Copy, Clone)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    None,
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::AtMost(value) => format!("<= {value}"),
            Target::AtLeast(value) => format!(">= {value}"),
            Target::None => "-".into(),
        }
    }

    fn met(self, ratio: f64) -> Option<bool> {
        match self {
            Target::AtMost(value) => Some(ratio <= value),
            Target::AtLeast(value) => Some(ratio >= value),
            Target::None => None,
        }
    }
}

/// One measured quantity, with one value per round on each side.
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub target: Target,
    pub burro: Vec<f64>,
    pub limit: Vec<f64>,
    /// True when the target applies to burro's own median and there is no
    /// limit side.
    pub absolute: bool,
}

impl Metric {
    pub fn new(name: &'static str, unit: &'static str, target: Target) -> Metric {
        Metric {
            name,
            unit,
            target,
            burro: Vec::new(),
            limit: Vec::new(),
            absolute: false,
        }
    }

    /// Returns burro's median divided by the limit's median.
    fn ratio(&self) -> f64 {
        median(&self.burro) / median(&self.limit)
    }

    /// Returns whether the target is met: by the ratio, or by burro's median
    /// for an absolute metric.
    fn met(&self) -> Option<bool> {
        if self.absolute {
            self.target.met(median(&self.burro))
        } else {
            self.target.met(self.ratio())
        }
    }
}

pub struct ScenarioResult {
    pub id: &'static str,
    pub title: &'static str,
    pub params: Value,
    pub metrics: Vec<Metric>,
    /// Messages that the burro side did not deliver (S4 and S7).
    pub lost: Option<u64>,
    /// Further figures of the burro side, per round, or null.
    pub extra: Value,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.is_empty() {
        f64::NAN
    } else if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// Formats a value with no decimals from 100 up, one from 10 up and two below.
fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn cell(values: &[f64]) -> String {
    let (min, max) = spread(values);
    format!(
        "{} ({}–{})",
        number(median(values)),
        number(min),
        number(max)
    )
}

/// Returns the results as a Markdown table.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| Scenario | Metric | burro: median (min–max) | limit: median (min–max) | Ratio | Target | Met |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for result in results {
        for metric in &result.metrics {
            let met = match metric.met() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            let (limit, ratio) = if metric.absolute {
                ("-".to_string(), "-".to_string())
            } else {
                (cell(&metric.limit), format!("{:.2}", metric.ratio()))
            };
            out.push_str(&format!(
                "| {} {} | {} ({}) | {} | {} | {} | {} | {} |\n",
                result.id,
                result.title,
                metric.name,
                metric.unit,
                cell(&metric.burro),
                limit,
                ratio,
                metric.target.describe(),
                met
            ));
        }
        if let Some(lost) = result.lost {
            out.push_str(&format!(
                "| {} {} | messages lost | {lost} | - | - | 0 | {} |\n",
                result.id,
                result.title,
                if lost == 0 { "yes" } else { "no" }
            ));
        }
    }
    for result in results {
        if let Some(fields) = result.extra.as_object() {
            for (name, values) in fields {
                out.push_str(&format!("\n{} {name} per round: {values}", result.id));
            }
        }
    }
    out
}

/// Returns the JSON document written by `--json`.
pub fn json(
    command: &str,
    scale: Scale,
    rounds: usize,
    machine: &Machine,
    results: &[ScenarioResult],
) -> Value {
    let scenarios: Vec<Value> = results
        .iter()
        .map(|result| {
            let metrics: Vec<Value> = result
                .metrics
                .iter()
                .map(|metric| {
                    let burro = json!({"median": median(&metric.burro), "min": spread(&metric.burro).0, "max": spread(&metric.burro).1, "rounds": metric.burro});
                    let (limit, ratio) = if metric.absolute {
                        (Value::Null, Value::Null)
                    } else {
                        (
                            json!({"median": median(&metric.limit), "min": spread(&metric.limit).0, "max": spread(&metric.limit).1, "rounds": metric.limit}),
                            json!(metric.ratio()),
                        )
                    };
                    json!({
                        "metric": metric.name,
                        "unit": metric.unit,
                        "burro": burro,
                        "limit": limit,
                        "ratio": ratio,
                        "absolute": metric.absolute,
                        "target": metric.target.describe(),
                        "met": metric.met(),
                    })
                })
                .collect();
            json!({
                "id": result.id,
                "title": result.title,
                "params": result.params,
                "metrics": metrics,
                "lost": result.lost,
                "extra": result.extra,
            })
        })
        .collect();
    json!({
        "command": command,
        "scale": match scale { Scale::Small => "small", Scale::Full => "full" },
        "rounds": rounds,
        "machine": {
            "cores": machine.cores,
            "cpu": machine.cpu,
            "memoryKib": machine.memory_kib,
            "kernel": machine.kernel,
        },
        "scenarios": scenarios,
    })
}
