//! Fuzzes `LineBuffer` with arbitrary chunks. The first byte sets the maximum
//! line size, the second the chunk sizes, and the rest is the stream. The
//! lines and overflows must not depend on how the stream is cut.
#![no_main]

use burro_protocol::{LineBuffer, LineEvent};
use libfuzzer_sys::fuzz_target;

fn feed(stream: &[u8], max_line: usize, chunk_seed: u8) -> Vec<LineEvent> {
    let mut buffer = LineBuffer::new(max_line);
    let mut events = Vec::new();
    let mut rest = stream;
    let mut step = 0usize;
    while !rest.is_empty() {
        // Chunk sizes run from 1 to 32 bytes and vary with the seed and the
        // step. A seed of 0 feeds the whole stream at once.
        let size = if chunk_seed == 0 {
            rest.len()
        } else {
            1 + (usize::from(chunk_seed).wrapping_mul(step + 7) % 32)
        };
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        step += 1;
        buffer.push(chunk);
        while let Some(event) = buffer.next_event() {
            events.push(event);
        }
        assert!(
            buffer.buffered() <= max_line,
            "{} bytes buffered over {max_line}",
            buffer.buffered()
        );
    }
    events.extend(buffer.finish());
    assert_eq!(buffer.buffered(), 0);
    for event in &events {
        match event {
            LineEvent::Line(line) => {
                assert!(line.len() <= max_line);
                assert!(!line.contains(&b'\n'));
            }
            LineEvent::Overflow { len } => assert!(*len > max_line),
        }
    }
    events
}

/// Drops overflow lengths, because they depend on where the chunks were cut.
fn normalised(events: Vec<LineEvent>) -> Vec<Option<Vec<u8>>> {
    events
        .into_iter()
        .map(|event| match event {
            LineEvent::Line(line) => Some(line),
            LineEvent::Overflow { .. } => None,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let [max_byte, chunk_seed, stream @ ..] = data else {
        return;
    };
    let max_line = 1 + usize::from(*max_byte % 64);
    let chunked = normalised(feed(stream, max_line, *chunk_seed));
    let whole = normalised(feed(stream, max_line, 0));
    assert_eq!(chunked, whole);
    let bytewise = normalised(feed(stream, max_line, 32));
    assert_eq!(bytewise, whole);
});
