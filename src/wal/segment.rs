//! Streamed WAL on disk: one file per segment, named as PostgreSQL names them, preallocated to
//! the full segment size, fsynced and marked `.done` in `archive_status` when complete.
//!
//! Like pg_basebackup (and unlike pg_receivewal), the last, incomplete segment keeps its final
//! name: the clone needs it under that name to start.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pgclone_proto::replication::WalChunk;
use pgclone_proto::{Lsn, SegNo, TimelineId, WalSegSize};

use super::WalSink;
use crate::error::Error;
use crate::sink::fs::{self, Existing};

struct OpenSegment {
    segno: SegNo,
    file: File,
    path: PathBuf,
}

/// Writes WAL chunks into segment files under one directory (`pg_wal` or `--waldir`).
pub struct SegmentWriter {
    dir: PathBuf,
    seg_size: WalSegSize,
    timeline: TimelineId,
    sync: bool,
    /// Mode of the files it creates (the clone's file mode).
    mode: u32,
    current: Option<OpenSegment>,
    written: Lsn,
    flushed: Lsn,
    completed: u64,
}

impl SegmentWriter {
    /// A writer into `dir` (which must exist, with `archive_status` inside) of files of `mode`;
    /// `sync` fsyncs each segment as it completes and on [`WalSink::flush`].
    pub fn new(
        dir: PathBuf,
        seg_size: WalSegSize,
        timeline: TimelineId,
        sync: bool,
        mode: u32,
    ) -> Self {
        Self {
            dir,
            seg_size,
            timeline,
            sync,
            mode,
            current: None,
            written: Lsn::INVALID,
            flushed: Lsn::INVALID,
            completed: 0,
        }
    }

    fn write_piece(&mut self, segno: SegNo, offset: u64, bytes: &Bytes) -> Result<(), Error> {
        if self.current.as_ref().map(|s| s.segno) != Some(segno) {
            self.current = Some(self.open(segno)?);
        }
        let Some(seg) = self.current.as_ref() else {
            return Err(Error::Internal("no open WAL segment".into()));
        };
        seg.file
            .write_all_at(bytes, offset)
            .map_err(Error::fs("write to file", &seg.path))?;
        let seg_bytes = u64::from(self.seg_size.bytes());
        if offset + bytes.len() as u64 == seg_bytes {
            self.complete()?;
        }
        Ok(())
    }

    fn open(&mut self, segno: SegNo) -> Result<OpenSegment, Error> {
        let name = segno.file_name(self.timeline, self.seg_size);
        let path = self.dir.join(&name);
        let size = u64::from(self.seg_size.bytes());
        let file = fs::open(&path, Existing::Keep, self.mode)
            .map_err(Error::fs("open WAL segment", &path))?;
        let existing = file.metadata().map_err(Error::fs("stat", &path))?.len();
        match existing {
            0 => full_size(&file, size).map_err(Error::fs("preallocate WAL segment", &path))?,
            n if n == size => {}
            n => {
                return Err(Error::Fs {
                    op: "reuse WAL segment",
                    path,
                    source: io::Error::other(format!("it has {n} bytes, expected 0 or {size}")),
                })
            }
        }
        Ok(OpenSegment { segno, file, path })
    }

    fn complete(&mut self) -> Result<(), Error> {
        let Some(seg) = self.current.take() else {
            return Ok(());
        };
        if self.sync {
            seg.file.sync_all().map_err(Error::fs("fsync", &seg.path))?;
        }
        let name = seg
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        mark_done(&self.dir, &name, self.mode)?;
        self.completed += 1;
        let seg_end = seg
            .segno
            .start_lsn(self.seg_size)
            .checked_add(u64::from(self.seg_size.bytes()));
        self.flushed = seg_end.unwrap_or(self.written);
        Ok(())
    }
}

impl WalSink for SegmentWriter {
    /// Starts (or continues, after a timeline switch) streaming on `timeline` from `start`,
    /// a segment boundary; the open segment of the previous timeline is flushed and closed.
    fn set_timeline(&mut self, timeline: TimelineId, start: Lsn) -> Result<(), Error> {
        if self.current.is_some() {
            self.flush()?;
            self.current = None;
        }
        self.timeline = timeline;
        self.written = start;
        self.flushed = start;
        Ok(())
    }

    /// Appends a chunk (the receiver guarantees chunks are contiguous).
    fn write(&mut self, chunk: WalChunk) -> Result<(), Error> {
        let end = chunk.end();
        for (segno, offset, bytes) in chunk.split_at_segments(self.seg_size) {
            self.write_piece(segno, offset, &bytes)?;
        }
        self.written = end;
        Ok(())
    }

    /// Makes everything written so far durable (fsyncs the open segment).
    fn flush(&mut self) -> Result<Lsn, Error> {
        if let (Some(seg), true) = (self.current.as_ref(), self.sync) {
            seg.file.sync_all().map_err(Error::fs("fsync", &seg.path))?;
        }
        self.flushed = self.written;
        Ok(self.flushed)
    }

    fn written(&self) -> Lsn {
        self.written
    }

    /// End of WAL made durable (or, without sync, written and closed or flushed).
    fn flushed(&self) -> Lsn {
        self.flushed
    }

    fn completed(&self) -> u64 {
        self.completed
    }

    fn write_history(&mut self, name: &str, content: &[u8]) -> Result<(), Error> {
        write_history(&self.dir, name, content, self.mode)
    }

    fn finish(&mut self) -> Result<(), Error> {
        self.flush().map(drop)
    }
}

/// Creates `archive_status/<name>.done` (emptied if it exists) with `mode`, so the clone does
/// not archive what it received.
pub fn mark_done(dir: &Path, name: &str, mode: u32) -> Result<(), Error> {
    let path = dir.join("archive_status").join(format!("{name}.done"));
    fs::open(&path, Existing::Truncate, mode)
        .map(drop)
        .map_err(Error::fs("create file", &path))
}

/// Gives a new segment file its full `size` in real (zeroed) blocks: preallocated where the
/// file system can ([`fs::preallocate`]), else by writing zeros, so that the last, incomplete
/// segment has its full size too.
fn full_size(file: &File, size: u64) -> io::Result<()> {
    if fs::preallocate(file, size)? {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(zeros.len() as u64) as usize;
        file.write_all_at(zeros.get(..n).unwrap_or_default(), done)?;
        done += n as u64;
    }
    Ok(())
}

/// Writes a timeline history file of `mode` (replacing one that exists) and marks it done.
pub fn write_history(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<(), Error> {
    let path = dir.join(name);
    fs::open(&path, Existing::Truncate, mode)
        .and_then(|mut f| f.write_all(content))
        .map_err(Error::fs("write", &path))?;
    mark_done(dir, name, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_segments_across_boundaries_and_marks_them_done() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(tmp.path().join("archive_status")).expect("mkdir");
        let seg = WalSegSize::from_bytes(1 << 20).expect("1MB");
        let mut w = SegmentWriter::new(tmp.path().to_path_buf(), seg, TimelineId(1), true, 0o640);
        let start = Lsn(3 << 20);
        w.set_timeline(TimelineId(1), start).expect("tli");
        let first = vec![1u8; (1 << 20) - 100];
        w.write(WalChunk {
            start,
            data: Bytes::from(first),
        })
        .expect("write");
        assert_eq!(w.completed(), 0);
        w.write(WalChunk {
            start: Lsn(start.0 + (1 << 20) - 100),
            data: Bytes::from(vec![2u8; 300]),
        })
        .expect("write");
        assert_eq!(w.completed(), 1);
        assert_eq!(w.flushed(), Lsn(4 << 20));
        assert_eq!(w.written(), Lsn((4 << 20) + 200));
        let full = tmp.path().join("000000010000000000000003");
        let partial = tmp.path().join("000000010000000000000004");
        assert_eq!(std::fs::metadata(&full).expect("full").len(), 1 << 20);
        assert_eq!(
            std::fs::metadata(&partial).expect("partial").len(),
            1 << 20,
            "preallocated"
        );
        assert!(tmp
            .path()
            .join("archive_status/000000010000000000000003.done")
            .exists());
        assert!(!tmp
            .path()
            .join("archive_status/000000010000000000000004.done")
            .exists());
        let done = tmp
            .path()
            .join("archive_status/000000010000000000000003.done");
        for file in [&full, &partial, &done] {
            let mode = std::fs::metadata(file).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o640, "the clone's file mode: {}", file.display());
        }
        w.write_history("00000002.history", b"1\t0/3000000\tx\n")
            .expect("history");
        for name in ["00000002.history", "archive_status/00000002.history.done"] {
            let path = tmp.path().join(name);
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o640, "{name}");
        }
        let bytes = std::fs::read(&partial).expect("read");
        assert_eq!(&bytes[..200], &[2u8; 200][..]);
        assert!(bytes[200..].iter().all(|&b| b == 0));
        assert_eq!(w.flush().expect("flush"), Lsn((4 << 20) + 200));
    }

    #[test]
    fn refuses_a_segment_of_the_wrong_size() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(tmp.path().join("archive_status")).expect("mkdir");
        std::fs::write(tmp.path().join("000000010000000000000001"), b"short").expect("write");
        let seg = WalSegSize::from_bytes(1 << 20).expect("1MB");
        let mut w = SegmentWriter::new(tmp.path().to_path_buf(), seg, TimelineId(1), false, 0o600);
        let err = w
            .write(WalChunk {
                start: Lsn(1 << 20),
                data: Bytes::from_static(b"x"),
            })
            .expect_err("wrong size");
        assert!(matches!(
            err,
            Error::Fs {
                op: "reuse WAL segment",
                ..
            }
        ));
    }
}
