//! Ends a job process whose shim died without reporting the job's exit.
//!
//! The shim owns the job's socket and reaps the job, so a job whose shim
//! was killed runs on, and nothing reads its messages, enforces its timeout
//! or cancels it. The shim's `HELLO` gives the job's pid and the start time
//! of that process in clock ticks after boot. Together they name one
//! process: the server signals the pid only after it has opened a pidfd for
//! it and found the same start time in `/proc`, so a pid the kernel has
//! given to another process is never signalled.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The result of [`terminate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The job process had exited already, or its pid now names another
    /// process.
    Gone,
    /// SIGTERM went to the job process and the `signalled - 1` other
    /// members of its process group. `killed` of them were still running
    /// after the grace period and got SIGKILL.
    Terminated { signalled: usize, killed: usize },
}

impl Outcome {
    /// Describes the outcome for the job's log.
    pub fn describe(&self, pid: u32, grace: Duration) -> String {
        match self {
            Outcome::Gone => format!("the job process {pid} had exited already"),
            Outcome::Terminated { signalled, killed } => {
                let processes = if *signalled == 1 { "1 process".to_string() } else { format!("{signalled} processes") };
                let ending = match killed {
                    0 => format!("none still ran after {} ms", grace.as_millis()),
                    killed => format!("{killed} still ran after {} ms and got SIGKILL", grace.as_millis()),
                };
                format!("sent SIGTERM to the job process {pid} and its process group ({processes}); {ending}")
            }
        }
    }
}

/// Sends SIGTERM to the job process `pid` and the members of its process
/// group, and SIGKILL after `grace` to those still running. Nothing is
/// signalled unless the process started at `start_ticks`.
pub(crate) async fn terminate(job_id: String, pid: u32, start_ticks: u64, grace: Duration) -> Outcome {
    let Some(leader) = Process::open(pid, Some(start_ticks)) else {
        tracing::debug!(job_id = %job_id, pid, "the job process of the dead shim is gone already");
        return Outcome::Gone;
    };
    // While the leader runs, its group id cannot be given to another group,
    // so every process in that group belongs to the job. The group is
    // checked again once a pidfd pins each member's pid.
    let mut members = vec![];
    if leader.group_leader {
        members = group_members(pid)
            .into_iter()
            .filter_map(|member| Process::open(member, None))
            .filter(|member| member.pgrp == pid)
            .collect();
    }
    tracing::warn!(job_id = %job_id, pid, group = members.len(), "terminating the job process that the job's dead shim left running");
    if !leader.send(libc::SIGTERM) {
        return Outcome::Gone;
    }
    // Members started after the scan get the signal through the group.
    // SAFETY: kill with a negative pid signals that process group.
    unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGTERM) };
    for member in &members {
        member.send(libc::SIGTERM);
    }

    tokio::time::sleep(grace).await;
    let mut killed = 0;
    if leader.running() {
        killed += 1;
        leader.send(libc::SIGKILL);
        // SAFETY: as above. The leader still runs, so the group id is its own.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    }
    for member in &members {
        if member.running() {
            killed += 1;
            member.send(libc::SIGKILL);
        }
    }
    if killed > 0 {
        tracing::warn!(job_id = %job_id, pid, killed, "job processes ignored SIGTERM for {} ms; sent SIGKILL", grace.as_millis());
    }
    Outcome::Terminated {
        signalled: members.len() + 1,
        killed,
    }
}

/// A process held by a pidfd, so its pid cannot be reused while it is held.
struct Process {
    pid: u32,
    pidfd: OwnedFd,
    pgrp: u32,
    /// True when the process leads its own process group.
    group_leader: bool,
}

impl Process {
    /// Opens process `pid` when it exists and, if `start_ticks` is given,
    /// started at that time.
    fn open(pid: u32, start_ticks: Option<u64>) -> Option<Process> {
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
        if start_ticks.is_some_and(|ticks| ticks != stat.start_ticks) || stat.state == 'Z' {
            return None;
        }
        Some(Process {
            pid,
            pidfd,
            pgrp: stat.pgrp,
            group_leader: stat.pgrp == pid,
        })
    }

    /// Returns true while the process runs: it exists and is not a zombie.
    fn running(&self) -> bool {
        self.send(0) && ProcStat::read(self.pid).is_some_and(|stat| stat.state != 'Z')
    }

    fn send(&self, signal: libc::c_int) -> bool {
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

/// Returns the pids in process group `pgrp` other than `pgrp` itself, from
/// a scan of `/proc`.
fn group_members(pgrp: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != pgrp && ProcStat::read(*pid).is_some_and(|stat| stat.pgrp == pgrp))
        .collect()
}

/// The fields of `/proc/PID/stat` used here.
struct ProcStat {
    state: char,
    pgrp: u32,
    /// Start time after boot, in clock ticks.
    start_ticks: u64,
}

impl ProcStat {
    fn read(pid: u32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&text)
    }
}

/// Parses `/proc/PID/stat`. The command name, field 2, is in parentheses
/// and may contain spaces and parentheses, so the fields are counted from
/// the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is fields[0], field 5 (pgrp) is
    // fields[2] and field 22 (starttime) is fields[19].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 123456 2002944 224 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_ticks, 123456);
        assert!(parse_stat("4242 (short) S 1").is_none());
    }

    #[test]
    fn open_checks_the_start_time() {
        let own = std::process::id();
        let ticks = ProcStat::read(own).unwrap().start_ticks;
        assert!(Process::open(own, Some(ticks)).is_some());
        assert!(Process::open(own, None).is_some());
        assert!(Process::open(own, Some(ticks + 1)).is_none(), "another start time names another process");
    }

    #[test]
    fn outcome_descriptions_name_the_pid() {
        let grace = Duration::from_millis(500);
        assert_eq!(Outcome::Gone.describe(7, grace), "the job process 7 had exited already");
        let none = Outcome::Terminated { signalled: 1, killed: 0 }.describe(7, grace);
        assert!(none.contains("(1 process); none still ran after 500 ms"), "{none}");
        let some = Outcome::Terminated { signalled: 3, killed: 2 }.describe(7, grace);
        assert!(some.contains("2 still ran after 500 ms and got SIGKILL"), "{some}");
    }
}
