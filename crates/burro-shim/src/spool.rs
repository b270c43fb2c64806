//! The spool file: frames waiting for the server beyond the memory limit.
//!
//! The queue of unacknowledged frames keeps its oldest frames in memory and
//! its newest in an append-only file, so every spooled frame is newer than
//! every frame in memory. As the server acknowledges frames, memory is
//! refilled from the file in order. A shim whose server is away for a long
//! time therefore keeps reading its job without growing its memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Size at which buffered appends are written to the file.
const WRITE_BLOCK: usize = 64 * 1024;

/// Frames waiting in a file, read back in order.
pub struct Spool {
    path: PathBuf,
    file: Option<File>,
    /// Offset of the first frame not yet read back.
    read_offset: u64,
    /// Length of the file.
    write_offset: u64,
    /// Appended frames not yet written to the file, after `write_offset`.
    /// Appends are written in blocks of [`WRITE_BLOCK`] instead of one
    /// system call per frame.
    unwritten: Vec<u8>,
    /// Bytes read from the file but not yet returned as whole frames.
    partial: Vec<u8>,
}

impl Spool {
    /// Uses `path` for spooled frames; the file is created on first use.
    pub fn new(path: PathBuf) -> Self {
        Spool {
            path,
            file: None,
            read_offset: 0,
            write_offset: 0,
            unwritten: Vec::new(),
            partial: Vec::new(),
        }
    }

    /// Returns the number of spooled bytes not yet read back.
    pub fn pending(&self) -> u64 {
        self.write_offset - self.read_offset + self.unwritten.len() as u64 + self.partial.len() as u64
    }

    /// Appends one encoded frame (ending in a newline).
    ///
    /// # Errors
    ///
    /// Returns the I/O error of creating or writing the file.
    pub fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&self.path)?;
            self.file = Some(file);
        }
        let before = self.unwritten.len();
        self.unwritten.extend_from_slice(frame);
        if self.unwritten.len() >= WRITE_BLOCK {
            if let Err(err) = self.write_unwritten() {
                // The caller keeps this frame elsewhere, so it leaves the buffer.
                self.unwritten.truncate(before);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Writes the buffered appends to the end of the file.
    fn write_unwritten(&mut self) -> io::Result<()> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        file.seek(SeekFrom::Start(self.write_offset))?;
        file.write_all(&self.unwritten)?;
        self.write_offset += self.unwritten.len() as u64;
        self.unwritten.clear();
        Ok(())
    }

    /// Reads back whole frames, oldest first, until about `budget` bytes.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of reading the file.
    pub fn take(&mut self, budget: usize) -> io::Result<Vec<Vec<u8>>> {
        self.write_unwritten()?;
        let mut frames = Vec::new();
        let mut taken_bytes = 0;
        // Frames are cut from `partial` by position, and the bytes already
        // returned are removed once per read, not once per frame.
        let mut consumed = 0;
        // Bytes after `consumed` already searched for a newline, so a frame
        // longer than one read is searched once.
        let mut searched = 0;
        while taken_bytes < budget {
            if let Some(len) = self.partial[consumed + searched..].iter().position(|&b| b == b'\n') {
                let end = consumed + searched + len;
                let frame = self.partial[consumed..=end].to_vec();
                consumed = end + 1;
                searched = 0;
                taken_bytes += frame.len();
                frames.push(frame);
                continue;
            }
            searched = self.partial.len() - consumed;
            if self.read_offset == self.write_offset {
                break;
            }
            let Some(file) = self.file.as_mut() else { break };
            self.partial.drain(..consumed);
            consumed = 0;
            let want = (64 * 1024).min((self.write_offset - self.read_offset) as usize);
            let filled = self.partial.len();
            self.partial.resize(filled + want, 0);
            let read = match file.seek(SeekFrom::Start(self.read_offset)).and_then(|_| file.read(&mut self.partial[filled..])) {
                Ok(read) => read,
                Err(err) => {
                    self.partial.truncate(filled);
                    // The frames already cut are returned, and the error
                    // comes back at the next call.
                    if frames.is_empty() {
                        return Err(err);
                    }
                    break;
                }
            };
            self.partial.truncate(filled + read);
            if read == 0 {
                break;
            }
            self.read_offset += read as u64;
        }
        self.partial.drain(..consumed);
        if self.pending() == 0 {
            self.reset();
        }
        Ok(frames)
    }

    /// Reads every spooled frame without consuming it, for an exit record.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of reading the file.
    pub fn peek_all(&mut self) -> io::Result<Vec<u8>> {
        self.write_unwritten()?;
        let mut contents = self.partial.clone();
        if let Some(file) = self.file.as_mut() {
            let mut rest = vec![0u8; (self.write_offset - self.read_offset) as usize];
            file.seek(SeekFrom::Start(self.read_offset))?;
            file.read_exact(&mut rest)?;
            contents.extend_from_slice(&rest);
        }
        Ok(contents)
    }

    /// Empties the spool and removes its file.
    fn reset(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
        self.read_offset = 0;
        self.write_offset = 0;
        self.unwritten.clear();
        self.partial.clear();
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_back_in_order() {
        let dir = std::env::temp_dir().join(format!("burro-spool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("job.spool");
        let mut spool = Spool::new(path.clone());
        for i in 0..1000 {
            spool.append(format!("MSG {i} 1 {{\"n\":{i}}}\n").as_bytes()).unwrap();
        }
        assert!(path.exists());
        let all = spool.peek_all().unwrap();
        assert_eq!(all.iter().filter(|&&b| b == b'\n').count(), 1000);

        let mut seen = Vec::new();
        loop {
            let frames = spool.take(4096).unwrap();
            if frames.is_empty() {
                break;
            }
            seen.extend(frames);
        }
        assert_eq!(seen.len(), 1000);
        for (i, frame) in seen.iter().enumerate() {
            assert_eq!(frame, format!("MSG {i} 1 {{\"n\":{i}}}\n").as_bytes());
        }
        assert_eq!(spool.pending(), 0);
        assert!(!path.exists(), "an empty spool removes its file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn take_keeps_frames_whole_across_reads() {
        let dir = std::env::temp_dir().join(format!("burro-spool-blocks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut spool = Spool::new(dir.join("job.spool"));
        // Sizes from 1 byte to 100 KiB, so frames straddle the 64 KiB reads
        // and some are larger than a whole read.
        let frames: Vec<Vec<u8>> = (0..300)
            .map(|i: usize| {
                let len = (i * 7919) % 100_000 + 1;
                let mut frame = vec![b'a' + (i % 26) as u8; len];
                frame.push(b'\n');
                frame
            })
            .collect();
        for frame in &frames {
            spool.append(frame).unwrap();
        }
        let mut seen = Vec::new();
        for budget in [1, 10, 70_000, 1].iter().cycle() {
            let frames_taken = spool.take(*budget).unwrap();
            if frames_taken.is_empty() {
                break;
            }
            seen.extend(frames_taken);
        }
        assert_eq!(seen.len(), frames.len());
        assert!(seen == frames, "frames come back whole and in order");
        assert_eq!(spool.pending(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
