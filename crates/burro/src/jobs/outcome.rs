//! The end of an attempt and the decision that follows. Pure functions, so every
//! rule of the exit table can be tested without processes.

use crate::config::RetryBackoff;
use burro_protocol::control::ExitReport;
use rand::Rng;
use serde_json::Value;
use std::time::Duration;

/// The terminal message a job sent, if any.
#[derive(Debug, Clone, PartialEq)]
pub enum Terminal {
    Completed(Option<Value>),
    Failed { error: String, stack: Option<String> },
}

/// Reason the server requested the shim to terminate the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    Cancel,
    HeartbeatTimeout,
    /// The job sent its terminal message but did not exit within the grace.
    Finished,
    /// Other nodes rescued the job while this node had lost its lease.
    Fenced,
}

impl KillReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::Cancel => "cancel",
            KillReason::HeartbeatTimeout => "heartbeat timeout",
            KillReason::Finished => "finished",
            KillReason::Fenced => "rescued by another node",
        }
    }
}

/// Everything known about an external attempt once its process is gone.
#[derive(Debug, Clone, Default)]
pub struct ExitSummary {
    /// The shim's report; `None` when the shim vanished without one.
    pub report: Option<ExitReport>,
    pub terminal: Option<Terminal>,
    /// True when the terminal message arrived after a cancel request.
    pub terminal_after_cancel: bool,
    pub cancel_requested: bool,
    pub kill_reason: Option<KillReason>,
    /// Size of a message line that exceeded the limit.
    pub oversize: Option<usize>,
    pub timeout_ms: Option<u64>,
    /// Set when the attempt is lost: why, as the job's error.
    pub lost: Option<String>,
}

/// The end of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(Option<Value>),
    Failed {
        error: String,
        stack: Option<String>,
    },
    Cancelled,
}

/// Applies the exit rules of the protocol to an external attempt.
pub fn external_outcome(summary: &ExitSummary) -> Outcome {
    let terminal_stands = summary.terminal.is_some() && !summary.terminal_after_cancel;
    if summary.cancel_requested && !terminal_stands {
        return Outcome::Cancelled;
    }
    match &summary.terminal {
        Some(Terminal::Completed(result)) => return Outcome::Completed(result.clone()),
        Some(Terminal::Failed { error, stack }) => {
            return Outcome::Failed {
                error: error.clone(),
                stack: stack.clone(),
            }
        }
        None => {}
    }
    let failed = |error: String| Outcome::Failed { error, stack: None };
    if let Some(reason) = &summary.lost {
        return failed(reason.clone());
    }
    let Some(report) = &summary.report else {
        return failed("job lost: its shim exited without reporting the job's exit".into());
    };
    if let Some(error) = &report.spawn_error {
        return failed(error.clone());
    }
    if summary.kill_reason == Some(KillReason::HeartbeatTimeout) {
        return failed("heartbeat timeout".into());
    }
    if report.reason.as_deref() == Some("timeout") {
        let limit = summary.timeout_ms.unwrap_or(report.elapsed_ms);
        return failed(format!("timed out after {limit} ms"));
    }
    match (report.code, report.signal) {
        (Some(0), _) => match summary.oversize {
            Some(len) => failed(format!("message over the size limit ({len} bytes)")),
            None => Outcome::Completed(None),
        },
        (Some(code), _) => failed(format!("process exited with code {code}")),
        (None, Some(signal)) => failed(format!("process killed by signal {}", signal_name(signal))),
        (None, None) => failed("process ended without an exit status".into()),
    }
}

/// Returns the conventional name of a signal number, such as `SIGKILL`.
pub fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(sig) => sig.as_str().to_string(),
        Err(_) => format!("signal {signal}"),
    }
}

/// Decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    Retry { after: Duration },
    Fail,
}

/// Decides whether attempt number `attempt` (1-based) is retried.
pub fn retry_decision(attempt: u32, max_attempts: u32, backoff: RetryBackoff) -> RetryDecision {
    if attempt >= max_attempts {
        return RetryDecision::Fail;
    }
    RetryDecision::Retry {
        after: backoff_delay(attempt, backoff, rand::thread_rng().gen_range(0.0..=1.0)),
    }
}

/// Delay before the attempt after `attempt`: `base * 2^(attempt-1)` capped
/// at `max`, minus up to 25 % jitter (`jitter` in 0..=1), so retries of many
/// jobs that failed together spread out.
pub fn backoff_delay(attempt: u32, backoff: RetryBackoff, jitter: f64) -> Duration {
    match backoff {
        RetryBackoff::Disabled => Duration::ZERO,
        RetryBackoff::Exponential { base, max } => {
            let exponent = attempt.saturating_sub(1).min(40);
            let raw = base.as_secs_f64() * 2f64.powi(exponent as i32);
            let capped = raw.min(max.as_secs_f64());
            Duration::from_secs_f64(capped * (1.0 - 0.25 * jitter.clamp(0.0, 1.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exited(code: i32) -> ExitSummary {
        ExitSummary {
            report: Some(ExitReport { code: Some(code), ..Default::default() }),
            ..Default::default()
        }
    }

    fn failed(error: &str) -> Outcome {
        Outcome::Failed { error: error.into(), stack: None }
    }

    #[test]
    fn exit_table() {
        assert_eq!(external_outcome(&exited(0)), Outcome::Completed(None));
        assert_eq!(external_outcome(&exited(3)), failed("process exited with code 3"));
        let signalled = ExitSummary {
            report: Some(ExitReport { signal: Some(9), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(external_outcome(&signalled), failed("process killed by signal SIGKILL"));
    }

    #[test]
    fn terminal_message_stands_over_exit() {
        let mut summary = exited(1);
        summary.terminal = Some(Terminal::Completed(Some(json!({"ok": true}))));
        assert_eq!(external_outcome(&summary), Outcome::Completed(Some(json!({"ok": true}))));
        let mut summary = exited(0);
        summary.terminal = Some(Terminal::Failed { error: "bad".into(), stack: Some("s".into()) });
        assert_eq!(external_outcome(&summary), Outcome::Failed { error: "bad".into(), stack: Some("s".into()) });
    }

    #[test]
    fn cancel_wins_unless_terminal_came_first() {
        let mut summary = exited(0);
        summary.cancel_requested = true;
        assert_eq!(external_outcome(&summary), Outcome::Cancelled);
        summary.terminal = Some(Terminal::Completed(None));
        summary.terminal_after_cancel = true;
        assert_eq!(external_outcome(&summary), Outcome::Cancelled);
        summary.terminal_after_cancel = false;
        assert_eq!(external_outcome(&summary), Outcome::Completed(None));
    }

    #[test]
    fn kills_and_limits() {
        let mut summary = exited(0);
        summary.report.as_mut().unwrap().code = None;
        summary.report.as_mut().unwrap().signal = Some(15);
        summary.kill_reason = Some(KillReason::HeartbeatTimeout);
        assert_eq!(external_outcome(&summary), failed("heartbeat timeout"));

        let mut summary = exited(0);
        summary.report.as_mut().unwrap().reason = Some("timeout".into());
        summary.timeout_ms = Some(500);
        assert_eq!(external_outcome(&summary), failed("timed out after 500 ms"));

        let mut summary = exited(0);
        summary.oversize = Some(2048);
        assert_eq!(external_outcome(&summary), failed("message over the size limit (2048 bytes)"));

        let lost = ExitSummary::default();
        assert!(matches!(external_outcome(&lost), Outcome::Failed { error, .. } if error.starts_with("job lost")));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let backoff = RetryBackoff::Exponential { base: Duration::from_secs(1), max: Duration::from_secs(5) };
        assert_eq!(backoff_delay(1, backoff, 0.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(2, backoff, 0.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(3, backoff, 0.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(4, backoff, 0.0), Duration::from_secs(5));
        assert_eq!(backoff_delay(60, backoff, 0.0), Duration::from_secs(5));
        assert_eq!(backoff_delay(2, backoff, 1.0), Duration::from_millis(1500));
        assert_eq!(backoff_delay(2, RetryBackoff::Disabled, 0.5), Duration::ZERO);
    }

    #[test]
    fn max_attempts_counts_first_run() {
        let backoff = RetryBackoff::Disabled;
        assert_eq!(retry_decision(1, 1, backoff), RetryDecision::Fail);
        assert_eq!(retry_decision(1, 3, backoff), RetryDecision::Retry { after: Duration::ZERO });
        assert_eq!(retry_decision(3, 3, backoff), RetryDecision::Fail);
    }
}
