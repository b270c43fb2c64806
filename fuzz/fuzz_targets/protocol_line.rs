//! Fuzzes `parse_line` with arbitrary bytes. It must return a message or an
//! error that names the problem, and a progress percent within 0-100.
#![no_main]

use burro_protocol::{parse_line, JobMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_line(data) {
        Ok(parsed) => {
            if let JobMessage::Progress { percent, .. } = parsed.message {
                assert!(
                    (0.0..=100.0).contains(&percent),
                    "percent {percent} outside 0-100"
                );
                if let Some(raw) = parsed.clamped_percent {
                    assert_ne!(raw, percent);
                }
            }
        }
        Err(err) => {
            let text = err.to_string();
            assert!(
                text.starts_with("invalid JSON: ") || text.starts_with("invalid message: "),
                "{text}"
            );
        }
    }
});
