//! Streamed WAL into `pg_wal.tar` (tar format): one member per segment, named relative to
//! `pg_wal` as pg_basebackup names them, each declared at the full segment size (the last one
//! padded with zeros at the end), `archive_status/<segment>.done` after each complete segment,
//! history files with their `.done`, and the closing zero blocks. Gzip applies when the client
//! compresses with gzip (`pg_wal.tar.gz`), as in pg_basebackup.
//!
//! The tar is only valid once finished, so flushing reports what was written: a crash before
//! the end voids the backup anyway.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use pgclone_proto::replication::WalChunk;
use pgclone_proto::tar::{build_header, MemberKind, BLOCK};
use pgclone_proto::{Lsn, SegNo, TimelineId, WalSegSize};

use super::WalSink;
use crate::sink::codec::{self, ArchiveWriter, ClientSpec};
use crate::error::Error;

/// Writes WAL into one tar archive.
pub struct TarWalWriter {
    path: PathBuf,
    out: Option<Box<dyn ArchiveWriter>>,
    file: File,
    seg_size: WalSegSize,
    timeline: TimelineId,
    /// The open segment member and how many of its bytes are written.
    current: Option<(SegNo, u64)>,
    /// fsync the archive when it is complete (not with `--no-sync`).
    sync: bool,
    written: Lsn,
    completed: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TarWalWriter {
    /// Creates `path` (which must not exist), compressed as `spec` says.
    pub fn create(
        path: PathBuf,
        spec: ClientSpec,
        seg_size: WalSegSize,
        timeline: TimelineId,
        sync: bool,
    ) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(Error::fs("create file", &path))?;
        let clone = file.try_clone().map_err(Error::fs("open", &path))?;
        let out = codec::writer(spec, file).map_err(Error::fs("start compressing", &path))?;
        Ok(Self {
            path,
            out: Some(out),
            file: clone,
            seg_size,
            timeline,
            current: None,
            written: Lsn::INVALID,
            completed: 0,
            sync,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        match self.out.as_mut() {
            Some(out) => out
                .write_all(bytes)
                .map_err(Error::fs("write to file", &self.path)),
            None => Err(Error::Internal("pg_wal.tar already finished".into())),
        }
    }

    fn member(&mut self, name: &str, contents: &[u8]) -> Result<(), Error> {
        let h = build_header(name, MemberKind::File, 0o600, contents.len() as u64, now());
        self.put(h.as_bytes())?;
        self.put(contents)?;
        let pad = (BLOCK - contents.len() % BLOCK) % BLOCK;
        self.put(&[0u8; BLOCK][..pad])
    }

    /// Pads the open segment to its declared size (an incomplete last segment).
    fn close_partial(&mut self) -> Result<(), Error> {
        if let Some((_, done)) = self.current.take() {
            let size = u64::from(self.seg_size.bytes());
            let zeros = vec![0u8; 1 << 16];
            let mut left = size - done;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                self.put(&zeros[..n])?;
                left -= n as u64;
            }
        }
        Ok(())
    }
}

impl WalSink for TarWalWriter {
    fn set_timeline(&mut self, timeline: TimelineId, start: Lsn) -> Result<(), Error> {
        self.close_partial()?;
        self.timeline = timeline;
        self.written = start;
        Ok(())
    }

    fn write(&mut self, chunk: WalChunk) -> Result<(), Error> {
        let end = chunk.end();
        let size = u64::from(self.seg_size.bytes());
        for (segno, offset, bytes) in chunk.split_at_segments(self.seg_size) {
            if self.current.map(|(s, _)| s) != Some(segno) {
                self.close_partial()?;
                if offset != 0 {
                    return Err(Error::Internal(format!(
                        "WAL for a new segment starts at offset {offset}"
                    )));
                }
                let name = segno.file_name(self.timeline, self.seg_size);
                let h = build_header(&name, MemberKind::File, 0o600, size, now());
                self.put(h.as_bytes())?;
                self.current = Some((segno, 0));
            }
            self.put(&bytes)?;
            if let Some((segno, done)) = self.current.as_mut() {
                *done += bytes.len() as u64;
                if *done == size {
                    let name = segno.file_name(self.timeline, self.seg_size);
                    self.current = None;
                    self.member(&format!("archive_status/{name}.done"), b"")?;
                    self.completed += 1;
                }
            }
        }
        self.written = end;
        Ok(())
    }

    fn flush(&mut self) -> Result<Lsn, Error> {
        Ok(self.written)
    }

    fn written(&self) -> Lsn {
        self.written
    }

    fn flushed(&self) -> Lsn {
        self.written
    }

    fn completed(&self) -> u64 {
        self.completed
    }

    fn write_history(&mut self, name: &str, content: &[u8]) -> Result<(), Error> {
        // A history file is fetched between segments, before streaming a timeline.
        self.close_partial()?;
        self.member(name, content)?;
        self.member(&format!("archive_status/{name}.done"), b"")
    }

    fn finish(&mut self) -> Result<(), Error> {
        self.close_partial()?;
        self.put(&[0u8; 2 * BLOCK])?;
        if let Some(out) = self.out.take() {
            out.finish()
                .map_err(Error::fs("finish writing", &self.path))?;
        }
        if self.sync {
            self.file
                .sync_all()
                .map_err(Error::fs("fsync", &self.path))?;
        }
        Ok(())
    }
}
