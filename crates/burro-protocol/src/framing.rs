//! Newline framing with a maximum line size.
//!
//! [`LineBuffer`] is fed raw bytes as they arrive and hands out complete
//! lines. It never buffers more than the maximum line size: a longer line is
//! reported as [`LineEvent::Overflow`] and its remaining bytes are skipped
//! up to the next newline, so a peer cannot grow memory without bound.

/// One result of [`LineBuffer::next_event`].
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line without its `\n` (a trailing `\r` is kept).
    Line(Vec<u8>),
    /// A line reached the maximum size. `len` is the number of bytes seen so
    /// far; the rest of that line is discarded.
    Overflow { len: usize },
}

/// One result of [`LineBuffer::next_slice`]: [`LineEvent`] with the line
/// borrowed from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum LineSlice<'a> {
    /// A complete line without its `\n` (a trailing `\r` is kept).
    Line(&'a [u8]),
    /// A line reached the maximum size; see [`LineEvent::Overflow`].
    Overflow { len: usize },
}

/// Accumulates bytes and splits them into lines of at most `max_line` bytes.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    start: usize,
    max_line: usize,
    /// True while the bytes of an overflowed line are being skipped.
    skipping: bool,
    /// Length of the unread part already searched without finding a
    /// newline, so a long line arriving in many pieces is searched once.
    searched: usize,
}

impl LineBuffer {
    /// Creates a buffer that reports lines longer than `max_line` bytes as
    /// overflows.
    ///
    /// # Panics
    ///
    /// Panics if `max_line` is zero, which would make every line an overflow.
    pub fn new(max_line: usize) -> Self {
        assert!(max_line > 0, "LineBuffer::new: max_line must be at least 1");
        Self {
            buf: Vec::new(),
            start: 0,
            max_line,
            skipping: false,
            searched: 0,
        }
    }

    /// Appends bytes read from the peer.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Returns the next complete line or overflow, or `None` when more bytes
    /// are needed.
    pub fn next_event(&mut self) -> Option<LineEvent> {
        let event = match self.next_found()? {
            Found::Line { start, end } => LineEvent::Line(self.buf[start..end].to_vec()),
            Found::Overflow { len } => LineEvent::Overflow { len },
        };
        self.compact();
        Some(event)
    }

    /// Returns the next complete line, borrowed from the buffer, or the next
    /// overflow, or `None` when more bytes are needed. The lines are those of
    /// [`next_event`](Self::next_event), without a copy of each one.
    pub fn next_slice(&mut self) -> Option<LineSlice<'_>> {
        // The line returned last time is no longer borrowed.
        self.compact();
        match self.next_found()? {
            Found::Line { start, end } => Some(LineSlice::Line(&self.buf[start..end])),
            Found::Overflow { len } => Some(LineSlice::Overflow { len }),
        }
    }

    /// Finds the next line or overflow and moves past it.
    fn next_found(&mut self) -> Option<Found> {
        loop {
            let pending = &self.buf[self.start..];
            let found = memchr::memchr(b'\n', &pending[self.searched..]).map(|pos| pos + self.searched);
            self.searched = match found {
                Some(_) => 0,
                None => pending.len(),
            };
            match found {
                Some(pos) if self.skipping => {
                    self.start += pos + 1;
                    self.skipping = false;
                    continue;
                }
                Some(pos) if pos > self.max_line => {
                    self.start += pos + 1;
                    return Some(Found::Overflow { len: pos });
                }
                Some(pos) => {
                    let start = self.start;
                    self.start += pos + 1;
                    return Some(Found::Line { start, end: start + pos });
                }
                None if self.skipping => {
                    self.buf.clear();
                    self.start = 0;
                    self.searched = 0;
                    return None;
                }
                None if pending.len() > self.max_line => {
                    let len = pending.len();
                    self.buf.clear();
                    self.start = 0;
                    self.searched = 0;
                    self.skipping = true;
                    return Some(Found::Overflow { len });
                }
                None => {
                    self.compact();
                    return None;
                }
            }
        }
    }

    /// Returns the bytes of an unterminated last line at end of stream, if
    /// any. A peer that closes without a final newline still sent that line.
    pub fn finish(&mut self) -> Option<LineEvent> {
        if self.skipping {
            self.skipping = false;
            self.buf.clear();
            self.start = 0;
            self.searched = 0;
            return None;
        }
        let rest = &self.buf[self.start..];
        if rest.is_empty() {
            return None;
        }
        let line = rest.to_vec();
        self.buf.clear();
        self.start = 0;
        self.searched = 0;
        Some(LineEvent::Line(line))
    }

    /// Number of buffered bytes not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// The line or overflow found by [`LineBuffer::next_found`], by position
/// in the buffer.
enum Found {
    Line { start: usize, end: usize },
    Overflow { len: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(buffer: &mut LineBuffer) -> Vec<LineEvent> {
        std::iter::from_fn(|| buffer.next_event()).collect()
    }

    #[test]
    fn splits_lines_across_pushes() {
        let mut buffer = LineBuffer::new(100);
        buffer.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(drain(&mut buffer), vec![LineEvent::Line(b"{\"a\":1}".to_vec())]);
        buffer.push(b":2}\n\n");
        assert_eq!(
            drain(&mut buffer),
            vec![LineEvent::Line(b"{\"b\":2}".to_vec()), LineEvent::Line(Vec::new())]
        );
        assert_eq!(buffer.buffered(), 0);
    }

    #[test]
    fn overflow_without_newline_is_reported_once() {
        let mut buffer = LineBuffer::new(8);
        buffer.push(b"0123456789");
        assert_eq!(drain(&mut buffer), vec![LineEvent::Overflow { len: 10 }]);
        buffer.push(b"abcdefghijklmn");
        assert_eq!(drain(&mut buffer), vec![]);
        buffer.push(b"xyz\nok\n");
        assert_eq!(drain(&mut buffer), vec![LineEvent::Line(b"ok".to_vec())]);
        assert!(buffer.buffered() < 8);
    }

    #[test]
    fn overflow_with_newline_in_same_chunk() {
        let mut buffer = LineBuffer::new(4);
        buffer.push(b"abcdefgh\nabc\n");
        assert_eq!(
            drain(&mut buffer),
            vec![LineEvent::Overflow { len: 8 }, LineEvent::Line(b"abc".to_vec())]
        );
    }

    #[test]
    fn line_of_exactly_max_bytes_is_accepted() {
        let mut buffer = LineBuffer::new(4);
        buffer.push(b"abcd\n");
        assert_eq!(drain(&mut buffer), vec![LineEvent::Line(b"abcd".to_vec())]);
    }

    #[test]
    fn finish_returns_unterminated_line() {
        let mut buffer = LineBuffer::new(16);
        buffer.push(b"tail");
        assert_eq!(drain(&mut buffer), vec![]);
        assert_eq!(buffer.finish(), Some(LineEvent::Line(b"tail".to_vec())));
        assert_eq!(buffer.finish(), None);
    }

    #[test]
    fn borrowed_lines_survive_compaction() {
        // Lines of 1000 bytes with their newline, pushed 500 bytes first and
        // then 1000 at a time: every push ends mid-line, so the buffer is
        // never cleared and is compacted as it passes 64 KiB.
        let lines: Vec<Vec<u8>> = (0..300).map(|i| format!("{i:06}{}", "x".repeat(993)).into_bytes()).collect();
        let stream: Vec<u8> = lines.iter().flat_map(|line| line.iter().copied().chain([b'\n'])).collect();
        let mut buffer = LineBuffer::new(2048);
        let mut seen = 0;
        let mut pushes = vec![&stream[..500]];
        pushes.extend(stream[500..].chunks(1000));
        for chunk in pushes {
            buffer.push(chunk);
            while let Some(slice) = buffer.next_slice() {
                assert_eq!(slice, LineSlice::Line(&lines[seen]), "line {seen}");
                seen += 1;
            }
            assert!(buffer.buf.len() < 132 * 1024, "the buffer grew to {} bytes", buffer.buf.len());
        }
        assert_eq!(seen, lines.len());
        assert_eq!(buffer.buffered(), 0);
    }
}
