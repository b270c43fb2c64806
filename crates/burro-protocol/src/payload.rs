//! The payload line written to a job's standard input.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The single line a job process reads on standard input before EOF.
///
/// Field order is fixed: `jobId`, `name`, `data`, `socketPath`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    pub job_id: &'a str,
    pub name: &'a str,
    /// The enqueued JSON value, passed through unchanged.
    pub data: &'a RawValue,
    /// A Unix socket path, or `tcp://127.0.0.1:PORT` with the TCP transport.
    pub socket_path: &'a str,
}

impl Payload<'_> {
    /// Encodes the payload as one JSON line ending in `\n`.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing borrowed strings and a RawValue cannot fail.
        let mut line = serde_json::to_vec(self).expect("payload serializes");
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_line_has_fixed_field_order() {
        let data = RawValue::from_string(r#"{"videoId":"abc"}"#.to_string()).unwrap();
        let payload = Payload {
            job_id: "j1",
            name: "video",
            data: &data,
            socket_path: "/tmp/burro-0/job_j1.sock",
        };
        assert_eq!(
            String::from_utf8(payload.to_line()).unwrap(),
            "{\"jobId\":\"j1\",\"name\":\"video\",\"data\":{\"videoId\":\"abc\"},\"socketPath\":\"/tmp/burro-0/job_j1.sock\"}\n"
        );
    }
}
