//! The control channel between `burro-shim` and the server.
//!
//! The server writes a [`ShimSpec`] as one JSON line to the shim's standard
//! input. The shim then connects to the server's control socket and both
//! sides exchange text frames, one per line: a keyword, a space, and the
//! rest. Job message lines travel as raw bytes after a short prefix, so the
//! shim never parses or re-encodes the job's JSON.
//!
//! Every frame the shim sends after `HELLO` carries a sequence number. The
//! server acknowledges the numbers it has processed, and the shim keeps
//! unacknowledged frames so they can be replayed after a reconnect.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Version of the control protocol spoken by this build.
pub const CONTROL_VERSION: u32 = 1;

/// Everything a shim needs to run one attempt of one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimSpec {
    pub version: u32,
    pub job_id: String,
    pub job_name: String,
    /// Secret the shim presents on the control socket. It never appears on
    /// a command line or in the job's environment.
    pub token: String,
    pub attempt: u32,
    pub command: String,
    pub args: Vec<String>,
    pub cwd: Option<String>,
    /// The job's complete environment; the shim clears its own first.
    pub env: Vec<(String, String)>,
    /// The enqueued data, copied into the payload line unchanged.
    pub data: Box<RawValue>,
    pub transport: TransportSpec,
    /// Path of the server's control socket.
    pub control_socket: String,
    /// Per-attempt time limit enforced by the shim, in milliseconds.
    pub timeout_ms: Option<u64>,
    pub kill_grace_ms: u64,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    /// A job connection on which no line arrives for this long is closed.
    pub idle_timeout_ms: u64,
    /// Offer an inherited pipe as `BURRO_MESSAGE_FD`.
    pub message_fd: bool,
    /// Maximum stdout or stderr line kept whole. Longer lines are split.
    pub max_log_line: usize,
    /// How long a shim whose job has exited waits for an absent server.
    pub linger_ms: u64,
    /// Directory where the shim writes an exit record when the server does
    /// not return within the linger time. Absent in specs of older servers.
    #[serde(default)]
    pub exit_dir: Option<String>,
    /// Run `command` through `/bin/sh -c`; `args` become `$0`, `$1`, ...
    #[serde(default)]
    pub shell: bool,
    /// Resource limits applied to the job process.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// User and group the job runs as; the shim itself keeps its identity.
    #[serde(default)]
    pub run_as: Option<RunAs>,
}

/// `setrlimit` values for the job; `None` leaves a limit as inherited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimits {
    /// `RLIMIT_AS`, in bytes.
    pub address_space: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// `RLIMIT_CPU`, in seconds.
    pub cpu_seconds: Option<u64>,
}

/// Identity the job process takes before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// First line of an exit record file; the frames the server never
/// acknowledged follow, one per line, exactly as they would have been sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecordHeader {
    pub version: u32,
    pub job_id: String,
    pub token: String,
    pub attempt: u32,
}

/// Returns the file name of a job's exit record.
pub fn exit_record_name(job_id: &str) -> String {
    format!("{job_id}.exit")
}

/// Transport of the job socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TransportSpec {
    /// A Unix socket at `path`, created by the shim with mode 0600.
    Unix { path: String },
    /// A TCP listener on 127.0.0.1 with a free port from the range.
    Tcp { port_low: u16, port_high: u16 },
}

/// First frame of a shim connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub version: u32,
    pub job_id: String,
    pub token: String,
    pub attempt: u32,
    pub shim_pid: u32,
    /// Pid of the job process; absent when it could not be started.
    pub child_pid: Option<u32>,
    /// Start time of the job process after boot, in clock ticks (field 22 of
    /// `/proc/PID/stat`). With the pid it names that process even after the
    /// pid is reused. Absent from shims older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_start_ticks: Option<u64>,
    /// Address of the job socket: a path or `tcp://127.0.0.1:PORT`.
    pub address: String,
}

/// The server's reply to an accepted `HELLO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    pub version: u32,
    /// Highest sequence number the server has already processed; the shim
    /// replays everything after it.
    pub acked_seq: u64,
}

/// End of the job process, as observed by the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExitReport {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the shim terminated the job itself: `timeout`, or the
    /// reason of the server's `KILL`.
    pub reason: Option<String>,
    /// Set when the command could not be started at all.
    pub spawn_error: Option<String>,
    /// Attempt run time in milliseconds, measured by the shim.
    pub elapsed_ms: u64,
    /// Length of the first message line over the size limit, if the job
    /// sent one. The server acknowledges a `DROP` frame like any other, so
    /// a server started after it learns of that line from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oversize: Option<usize>,
}

/// A frame from the shim to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimFrame {
    Hello(Hello),
    /// A job message line received on connection `conn` (0 is the pipe).
    Message { seq: u64, conn: u64, line: Vec<u8> },
    /// A line the job wrote to standard output.
    Stdout { seq: u64, line: Vec<u8> },
    /// A line the job wrote to standard error.
    Stderr { seq: u64, line: Vec<u8> },
    /// A message line over the size limit; its connection was closed.
    Oversize { seq: u64, conn: u64, len: usize },
    /// The job's main process has exited and every message before it was sent.
    Exit { seq: u64, report: ExitReport },
}

impl ShimFrame {
    /// Returns the sequence number, or 0 for `HELLO`.
    pub fn seq(&self) -> u64 {
        match self {
            ShimFrame::Hello(_) => 0,
            ShimFrame::Message { seq, .. }
            | ShimFrame::Stdout { seq, .. }
            | ShimFrame::Stderr { seq, .. }
            | ShimFrame::Oversize { seq, .. }
            | ShimFrame::Exit { seq, .. } => *seq,
        }
    }

    /// Appends the frame and its newline to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            ShimFrame::Hello(hello) => {
                out.extend_from_slice(b"HELLO ");
                out.extend_from_slice(&serde_json::to_vec(hello).expect("hello serializes"));
            }
            ShimFrame::Message { seq, conn, line } => {
                out.extend_from_slice(format!("MSG {seq} {conn} ").as_bytes());
                out.extend_from_slice(line);
            }
            ShimFrame::Stdout { seq, line } => {
                out.extend_from_slice(format!("OUT {seq} ").as_bytes());
                out.extend_from_slice(line);
            }
            ShimFrame::Stderr { seq, line } => {
                out.extend_from_slice(format!("ERR {seq} ").as_bytes());
                out.extend_from_slice(line);
            }
            ShimFrame::Oversize { seq, conn, len } => {
                out.extend_from_slice(format!("DROP {seq} {conn} {len}").as_bytes());
            }
            ShimFrame::Exit { seq, report } => {
                out.extend_from_slice(format!("EXIT {seq} ").as_bytes());
                out.extend_from_slice(&serde_json::to_vec(report).expect("exit report serializes"));
            }
        }
        out.push(b'\n');
    }

    /// Encodes the frame as one line ending in `\n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes one frame line (without its newline).
    ///
    /// # Errors
    ///
    /// Returns a description of the first malformed part.
    pub fn decode(line: &[u8]) -> Result<Self, String> {
        if let Some(header) = payload_header(line)? {
            let payload = line[header.start..].to_vec();
            return Ok(header.frame(payload));
        }
        let (keyword, rest) = split_word(line);
        match keyword {
            b"HELLO" => serde_json::from_slice(rest)
                .map(ShimFrame::Hello)
                .map_err(|e| format!("invalid HELLO frame: {e}")),
            b"DROP" => {
                let (seq, rest) = number_field(rest, "DROP", "sequence number")?;
                let (conn, rest) = number_field(rest, "DROP", "connection id")?;
                let (len, _) = number_field(rest, "DROP", "length")?;
                Ok(ShimFrame::Oversize { seq, conn, len: len as usize })
            }
            b"EXIT" => {
                let (seq, rest) = number_field(rest, "EXIT", "sequence number")?;
                let report = serde_json::from_slice(rest).map_err(|e| format!("invalid EXIT frame: {e}"))?;
                Ok(ShimFrame::Exit { seq, report })
            }
            other => Err(format!("unknown shim frame {:?}", String::from_utf8_lossy(other))),
        }
    }
}

/// A shim frame whose payload, if it has one, is borrowed: from the line it
/// was decoded from, or from a [`ShimFrame`]. The server reads the `MSG`,
/// `OUT` and `ERR` frames of a job this way, so a message is not copied out
/// of the read buffer before it is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimFrameRef<'a> {
    /// A job message line received on connection `conn` (0 is the pipe).
    Message { seq: u64, conn: u64, line: &'a [u8] },
    /// A line the job wrote to standard output.
    Stdout { seq: u64, line: &'a [u8] },
    /// A line the job wrote to standard error.
    Stderr { seq: u64, line: &'a [u8] },
    /// Any other frame: `HELLO`, `DROP` or `EXIT`.
    Other(ShimFrame),
}

impl<'a> ShimFrameRef<'a> {
    /// Decodes one frame line (without its newline) like
    /// [`ShimFrame::decode`], but borrows the payload from `line`.
    ///
    /// # Errors
    ///
    /// Returns a description of the first malformed part.
    pub fn decode(line: &'a [u8]) -> Result<Self, String> {
        match payload_header(line)? {
            Some(header) => {
                let (seq, payload) = (header.seq, &line[header.start..]);
                Ok(match header.keyword {
                    "MSG" => ShimFrameRef::Message { seq, conn: header.conn, line: payload },
                    "OUT" => ShimFrameRef::Stdout { seq, line: payload },
                    _ => ShimFrameRef::Stderr { seq, line: payload },
                })
            }
            None => ShimFrame::decode(line).map(ShimFrameRef::Other),
        }
    }

    /// Returns the sequence number, or 0 for `HELLO`.
    pub fn seq(&self) -> u64 {
        match self {
            ShimFrameRef::Message { seq, .. } | ShimFrameRef::Stdout { seq, .. } | ShimFrameRef::Stderr { seq, .. } => *seq,
            ShimFrameRef::Other(frame) => frame.seq(),
        }
    }
}

impl<'a> From<&'a ShimFrame> for ShimFrameRef<'a> {
    /// Borrows the payload of `frame`. A frame without one is cloned.
    fn from(frame: &'a ShimFrame) -> Self {
        match frame {
            ShimFrame::Message { seq, conn, line } => ShimFrameRef::Message { seq: *seq, conn: *conn, line },
            ShimFrame::Stdout { seq, line } => ShimFrameRef::Stdout { seq: *seq, line },
            ShimFrame::Stderr { seq, line } => ShimFrameRef::Stderr { seq: *seq, line },
            other => ShimFrameRef::Other(other.clone()),
        }
    }
}

/// A frame from the server to the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Welcome(Welcome),
    /// The handshake was rejected, with the reason.
    Reject(String),
    /// Every frame up to and including this sequence number is processed.
    Ack(u64),
    /// Terminate the job: SIGTERM to its process group now, SIGKILL after
    /// the kill grace. The reason is echoed in the exit report.
    Kill(String),
    /// Write `line` to job connection `conn` (protocol 2 connections only).
    Send { conn: u64, line: Vec<u8> },
    /// The server has recorded the exit; the shim may clean up and leave.
    Bye,
}

impl ServerFrame {
    /// Encodes the frame as one line ending in `\n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = match self {
            ServerFrame::Welcome(welcome) => {
                let mut out = b"WELCOME ".to_vec();
                out.extend_from_slice(&serde_json::to_vec(welcome).expect("welcome serializes"));
                out
            }
            ServerFrame::Reject(reason) => format!("REJECT {}", one_line(reason)).into_bytes(),
            ServerFrame::Ack(seq) => format!("ACK {seq}").into_bytes(),
            ServerFrame::Kill(reason) => format!("KILL {}", one_line(reason)).into_bytes(),
            ServerFrame::Send { conn, line } => {
                let mut out = format!("SEND {conn} ").into_bytes();
                out.extend_from_slice(line);
                out
            }
            ServerFrame::Bye => b"BYE".to_vec(),
        };
        out.push(b'\n');
        out
    }

    /// Decodes one frame line (without its newline).
    ///
    /// # Errors
    ///
    /// Returns a description of the first malformed part.
    pub fn decode(line: &[u8]) -> Result<Self, String> {
        let (keyword, rest) = split_word(line);
        match keyword {
            b"WELCOME" => serde_json::from_slice(rest)
                .map(ServerFrame::Welcome)
                .map_err(|e| format!("invalid WELCOME frame: {e}")),
            b"REJECT" => Ok(ServerFrame::Reject(String::from_utf8_lossy(rest).into_owned())),
            b"ACK" => number_field(rest, "ACK", "sequence number").map(|(seq, _)| ServerFrame::Ack(seq)),
            b"KILL" => Ok(ServerFrame::Kill(String::from_utf8_lossy(rest).into_owned())),
            b"SEND" => {
                let (conn, line) = number_field(rest, "SEND", "connection id")?;
                Ok(ServerFrame::Send { conn, line: line.to_vec() })
            }
            b"BYE" => Ok(ServerFrame::Bye),
            other => Err(format!("unknown server frame {:?}", String::from_utf8_lossy(other))),
        }
    }
}

/// The header of a `MSG`, `OUT` or `ERR` frame.
struct PayloadHeader {
    keyword: &'static str,
    seq: u64,
    /// The connection of a `MSG` frame; 0 for output.
    conn: u64,
    /// Offset of the payload in the line.
    start: usize,
}

impl PayloadHeader {
    fn frame(self, line: Vec<u8>) -> ShimFrame {
        let seq = self.seq;
        match self.keyword {
            "MSG" => ShimFrame::Message { seq, conn: self.conn, line },
            "OUT" => ShimFrame::Stdout { seq, line },
            _ => ShimFrame::Stderr { seq, line },
        }
    }
}

/// Reads the header of a frame that carries a payload; `None` for the
/// other frames.
fn payload_header(line: &[u8]) -> Result<Option<PayloadHeader>, String> {
    let (keyword, rest) = split_word(line);
    let keyword = match keyword {
        b"MSG" => "MSG",
        b"OUT" => "OUT",
        b"ERR" => "ERR",
        _ => return Ok(None),
    };
    let (seq, rest) = number_field(rest, keyword, "sequence number")?;
    let (conn, payload) = if keyword == "MSG" { number_field(rest, keyword, "connection id")? } else { (0, rest) };
    Ok(Some(PayloadHeader {
        keyword,
        seq,
        conn,
        start: line.len() - payload.len(),
    }))
}

fn split_word(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(pos) => (&line[..pos], &line[pos + 1..]),
        None => (line, &[]),
    }
}

fn number_field<'a>(rest: &'a [u8], frame: &str, what: &str) -> Result<(u64, &'a [u8]), String> {
    let (word, rest) = split_word(rest);
    let number = std::str::from_utf8(word)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("invalid {frame} frame: {what} {:?} is not a number", String::from_utf8_lossy(word)))?;
    Ok((number, rest))
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_without_start_ticks_decodes() {
        let line = br#"HELLO {"version":1,"jobId":"j","token":"t","attempt":1,"shimPid":10,"childPid":11,"address":"/s"}"#;
        let ShimFrame::Hello(hello) = ShimFrame::decode(line).unwrap() else { panic!("not a HELLO") };
        assert_eq!(hello.child_pid, Some(11));
        assert_eq!(hello.child_start_ticks, None);
    }

    #[test]
    fn shim_frames_round_trip() {
        let frames = vec![
            ShimFrame::Hello(Hello {
                version: 1,
                job_id: "j".into(),
                token: "t".into(),
                attempt: 2,
                shim_pid: 10,
                child_start_ticks: Some(4242),
                child_pid: Some(11),
                address: "/tmp/s.sock".into(),
            }),
            ShimFrame::Message { seq: 1, conn: 3, line: br#"{"type":"heartbeat","jobId":"j"}"#.to_vec() },
            ShimFrame::Message { seq: 2, conn: 0, line: Vec::new() },
            ShimFrame::Stdout { seq: 3, line: b"hello world \xff".to_vec() },
            ShimFrame::Stderr { seq: 4, line: b"".to_vec() },
            ShimFrame::Oversize { seq: 5, conn: 2, len: 99 },
            ShimFrame::Exit { seq: 6, report: ExitReport { code: Some(3), ..Default::default() } },
        ];
        for frame in frames {
            let encoded = frame.encode();
            assert_eq!(encoded.last(), Some(&b'\n'));
            let decoded = ShimFrame::decode(&encoded[..encoded.len() - 1]).unwrap();
            let borrowed = ShimFrameRef::decode(&encoded[..encoded.len() - 1]).unwrap();
            assert_eq!(borrowed, ShimFrameRef::from(&frame));
            assert_eq!(borrowed.seq(), frame.seq());
            assert_eq!(decoded, frame);
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let frames = vec![
            ServerFrame::Welcome(Welcome { version: 1, acked_seq: 7 }),
            ServerFrame::Reject("unknown job".into()),
            ServerFrame::Ack(42),
            ServerFrame::Kill("cancel".into()),
            ServerFrame::Send { conn: 1, line: br#"{"type":"cancel"}"#.to_vec() },
            ServerFrame::Bye,
        ];
        for frame in frames {
            let encoded = frame.encode();
            let decoded = ServerFrame::decode(&encoded[..encoded.len() - 1]).unwrap();
            assert_eq!(decoded, frame);
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(ShimFrame::decode(b"MSG x 1 {}").unwrap_err().contains("sequence number \"x\""));
        assert!(ShimFrame::decode(b"MSG 1 y {}").unwrap_err().contains("connection id \"y\""));
        assert_eq!(ShimFrame::decode(b"OUT 3 ").unwrap(), ShimFrame::Stdout { seq: 3, line: Vec::new() });
        assert_eq!(ShimFrame::decode(b"ERR 4").unwrap(), ShimFrame::Stderr { seq: 4, line: Vec::new() });
        assert!(ShimFrame::decode(b"NOPE 1").unwrap_err().contains("unknown shim frame"));
        assert!(ShimFrameRef::decode(b"MSG 1 y {}").unwrap_err().contains("connection id \"y\""));
        assert!(ShimFrameRef::decode(b"NOPE 1").unwrap_err().contains("unknown shim frame"));
        assert_eq!(ShimFrameRef::decode(b"ERR 4").unwrap(), ShimFrameRef::Stderr { seq: 4, line: b"" });
        assert!(ServerFrame::decode(b"ACK").is_err());
        assert!(ShimFrame::decode(b"EXIT 1 {").unwrap_err().contains("invalid EXIT frame"));
    }
}

/// One request to `burro-shim --launcher`: start a shim for the spec in
/// `spec_file`, with its diagnostics appended to `log_file`. Sent as one
/// JSON packet on the launcher's sequenced-packet socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchRequest {
    pub spec_file: String,
    pub log_file: String,
}

/// The launcher's reply to one [`LaunchRequest`]. With `pid` set, the
/// packet carries a pidfd of the new shim as `SCM_RIGHTS` ancillary data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchReply {
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub error: Option<String>,
}
