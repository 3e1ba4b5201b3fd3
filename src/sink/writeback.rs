//! Early writeback of what pgclone writes: as a file grows, each finished stretch of it is
//! handed to a helper thread that asks the kernel to start writing it to disk
//! (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`). The writer never waits for the device
//! queue, and the final fsync finds little left to write. A hint only: failures are ignored,
//! the final fsync is what makes the copy durable.
//!
//! The queue to the helper is bounded: when the disk cannot keep up, the writer waits here,
//! which slows the socket rather than filling memory with dirty pages.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::unix::io::AsRawFd;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A stretch of this many bytes is handed over as soon as it is written.
pub const STEP: u64 = 8 << 20;

/// Stretches queued for the helper at most.
const QUEUE: usize = 32;

struct Range {
    file: File,
    offset: u64,
    len: u64,
}

/// The helper thread and its queue.
#[derive(Debug)]
pub struct Writeback {
    tx: Option<SyncSender<Range>>,
    thread: Option<JoinHandle<()>>,
}

impl Writeback {
    /// Starts the helper thread; `None` if it cannot be started (writeback then happens at
    /// the final fsync, as without this module).
    pub fn start() -> Option<Self> {
        let (tx, rx) = sync_channel::<Range>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("pgclone-writeback".into())
            .spawn(move || {
                while let Ok(r) = rx.recv() {
                    start(&r.file, r.offset, r.len);
                }
            })
            .ok()?;
        Some(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn hand_over(&self, file: &File, offset: u64, len: u64) {
        let (Some(tx), Ok(file)) = (&self.tx, file.try_clone()) else {
            return;
        };
        let _ = tx.send(Range { file, offset, len });
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How much of one file was written and how much of it was handed over.
#[derive(Debug, Default)]
pub struct FileProgress {
    written: u64,
    handed: u64,
}

impl FileProgress {
    /// Records `n` more bytes written to `file`; hands over a full stretch once there is one.
    pub fn wrote(&mut self, wb: Option<&Writeback>, file: &File, n: u64) {
        self.written += n;
        if self.written - self.handed >= STEP {
            self.flush(wb, file);
        }
    }

    /// Hands over whatever was written and not yet handed over (the file is complete).
    pub fn flush(&mut self, wb: Option<&Writeback>, file: &File) {
        if let Some(wb) = wb {
            if self.written > self.handed {
                wb.hand_over(file, self.handed, self.written - self.handed);
            }
        }
        self.handed = self.written;
    }
}

/// A file written front to back whose stretches are handed over as they are written (tar
/// archives, which may be written from a compression thread).
#[derive(Debug)]
pub struct TrackedFile {
    file: File,
    progress: FileProgress,
    writeback: Arc<Writeback>,
}

impl TrackedFile {
    /// Wraps `file`, which must be written sequentially from its start.
    pub fn new(file: File, writeback: Arc<Writeback>) -> Self {
        Self {
            file,
            progress: FileProgress::default(),
            writeback,
        }
    }
}

impl Write for TrackedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.progress
            .wrote(Some(&self.writeback), &self.file, n as u64);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.progress
            .wrote(Some(&self.writeback), &self.file, n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TrackedFile {
    fn drop(&mut self) {
        self.progress.flush(Some(&self.writeback), &self.file);
    }
}

fn start(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call, which only schedules
    // writeback of the file's dirty pages in the range.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn tracked_file_writes_every_byte_across_handed_over_stretches() {
        let dir = std::env::temp_dir().join(format!("pgclone-wb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("f");
        let wb = Arc::new(Writeback::start().expect("helper thread"));
        let expected: Vec<u8> = (0..(2 * STEP + 12_345)).map(|i| (i % 251) as u8).collect();
        {
            let file = File::create(&path).expect("create");
            let mut t = TrackedFile::new(file, Arc::clone(&wb));
            let (a, rest) = expected.split_at(1000);
            t.write_all(a).expect("write");
            let mut slices: Vec<IoSlice<'_>> = rest.chunks(3 << 20).map(IoSlice::new).collect();
            let mut slices = slices.as_mut_slice();
            while !slices.is_empty() {
                let n = t.write_vectored(slices).expect("writev");
                IoSlice::advance_slices(&mut slices, n);
            }
            assert_eq!(t.progress.written, expected.len() as u64);
            let p = &t.progress;
            assert!(p.handed >= 2 * STEP, "two stretches handed over");
            assert!(p.written - p.handed < STEP, "less than a stretch left");
        }
        drop(wb);
        let mut got = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut got))
            .expect("read back");
        assert!(got == expected, "contents differ");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
