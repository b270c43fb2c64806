//! Fuzzes `ShimFrame::decode` and `ServerFrame::decode` with arbitrary
//! bytes. A frame decoded from one line must encode to one line that decodes
//! to the same frame, except that CR and LF in `REJECT` and `KILL` reasons
//! become spaces.
#![no_main]

use burro_protocol::control::{ServerFrame, ShimFrame};
use libfuzzer_sys::fuzz_target;

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

fn single_line(encoded: &[u8]) -> &[u8] {
    let (last, line) = encoded.split_last().expect("a frame is never empty");
    assert_eq!(*last, b'\n');
    assert!(
        !line.contains(&b'\n'),
        "frame spans lines: {:?}",
        String::from_utf8_lossy(encoded)
    );
    line
}

fuzz_target!(|data: &[u8]| {
    let shim = ShimFrame::decode(data);
    let server = ServerFrame::decode(data);
    if data.contains(&b'\n') {
        return;
    }
    if let Ok(frame) = shim {
        let encoded = frame.encode();
        assert_eq!(ShimFrame::decode(single_line(&encoded)), Ok(frame));
    }
    if let Ok(frame) = server {
        let encoded = frame.encode();
        let expected = match frame {
            ServerFrame::Reject(reason) => ServerFrame::Reject(one_line(&reason)),
            ServerFrame::Kill(reason) => ServerFrame::Kill(one_line(&reason)),
            other => other,
        };
        assert_eq!(ServerFrame::decode(single_line(&encoded)), Ok(expected));
    }
});
