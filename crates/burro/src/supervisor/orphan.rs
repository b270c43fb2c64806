//! Ends a job process whose shim died without reporting the job's exit.
//!
//! The shim owns the job's socket and reaps the job, so a job whose shim
//! was killed runs on, and nothing reads its messages, enforces its timeout
//! or cancels it. The server has the job's pid from the shim's `HELLO`.
//! Before it signals anything it opens a pidfd for that pid and checks that
//! the process started no later than that `HELLO`. A pid reused by an
//! unrelated process fails that check, unless the reuse came within the
//! two seconds of slack, which would take the kernel handing out every
//! other pid in between.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Slack allowed when comparing the process's start time with the moment
/// its pid was reported: the kernel gives the boot time in whole seconds.
const START_TIME_SLACK_MS: i64 = 2000;

/// Sends SIGTERM to the job process `pid` and its process group, and
/// SIGKILL after `grace` if the process is still there. `reported_ms` is
/// when the shim reported the pid, in epoch milliseconds.
pub(crate) async fn terminate(job_id: String, pid: u32, reported_ms: i64, grace: Duration) {
    let Some(process) = Process::open(pid, reported_ms) else {
        tracing::debug!(job_id = %job_id, pid, "the job process of the dead shim is gone already");
        return;
    };
    tracing::warn!(job_id = %job_id, pid, "the job's shim died; terminating the job process it left running");
    process.signal(libc::SIGTERM);
    tokio::time::sleep(grace).await;
    if process.alive() {
        tracing::warn!(job_id = %job_id, pid, "the job process ignored SIGTERM for {} ms; sending SIGKILL", grace.as_millis());
        process.signal(libc::SIGKILL);
    }
}

/// A process held by a pidfd, so its pid cannot be reused while it is held.
struct Process {
    pid: u32,
    pidfd: OwnedFd,
    /// True when the process leads its own process group.
    group_leader: bool,
}

impl Process {
    /// Opens the process `pid` when it exists and started no later than
    /// `reported_ms`.
    fn open(pid: u32, reported_ms: i64) -> Option<Process> {
        let pid_t = libc::pid_t::try_from(pid).ok().filter(|pid| *pid > 1)?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1; it touches no memory of this process.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the descriptor was just returned by pidfd_open and is
        // owned by nothing else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // The pidfd pins the pid, so /proc describes the process the pidfd
        // refers to from now on, if it is still running.
        let stat = ProcStat::read(pid)?;
        if stat.started_ms()? > reported_ms + START_TIME_SLACK_MS {
            return None;
        }
        Some(Process {
            pid,
            pidfd,
            group_leader: stat.pgrp == pid_t,
        })
    }

    /// Sends `signal` to the process, and to its process group when it
    /// leads one. While the leader exists, its group id cannot be reused.
    fn signal(&self, signal: libc::c_int) {
        if !self.send(signal) {
            return;
        }
        if self.group_leader {
            // SAFETY: kill with a negative pid signals that process group.
            unsafe { libc::kill(-(self.pid as libc::pid_t), signal) };
        }
    }

    /// Returns true while the process can still be signalled.
    fn alive(&self) -> bool {
        self.send(0)
    }

    fn send(&self, signal: libc::c_int) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal reads only the descriptor and the
        // signal number; the siginfo pointer is null, which it allows.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        sent == 0
    }
}

/// The fields of `/proc/PID/stat` used here.
struct ProcStat {
    pgrp: libc::pid_t,
    /// Start time after boot, in clock ticks.
    start_ticks: u64,
}

impl ProcStat {
    fn read(pid: u32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&text)
    }

    /// Returns the start time in epoch milliseconds.
    fn started_ms(&self) -> Option<i64> {
        let boot_seconds = boot_time_seconds()?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks_per_second <= 0 {
            return None;
        }
        let after_boot_ms = self.start_ticks.saturating_mul(1000) / ticks_per_second as u64;
        Some(boot_seconds.saturating_mul(1000).saturating_add(i64::try_from(after_boot_ms).ok()?))
    }
}

/// Parses `/proc/PID/stat`. The command name, field 2, is in parentheses
/// and may contain spaces and parentheses, so the fields are counted from
/// the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 (state) is fields[0], field 5 (pgrp) is
    // fields[2], field 22 (starttime) is fields[19].
    Some(ProcStat {
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Reads the boot time, in epoch seconds, from `/proc/stat`.
fn boot_time_seconds() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 123456 2002944 224 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_ticks, 123456);
        assert!(parse_stat("4242 (short) S 1").is_none());
    }

    #[test]
    fn this_process_started_before_now() {
        let stat = ProcStat::read(std::process::id()).unwrap();
        let started = stat.started_ms().unwrap();
        let now = crate::clock::now_ms();
        assert!(started <= now + START_TIME_SLACK_MS, "started {started}, now {now}");
        assert!(started > now - 86_400_000 * 365, "started {started}, now {now}");
    }

    #[test]
    fn open_rejects_a_process_started_after_the_report() {
        let own = std::process::id();
        assert!(Process::open(own, crate::clock::now_ms()).is_some());
        assert!(Process::open(own, 0).is_none(), "this process started after 1970");
    }
}
