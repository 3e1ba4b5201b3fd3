//! Streamed WAL into `pg_wal.tar` (tar format): one member per segment, named relative to
//! `pg_wal` as pg_basebackup names them, each declared at the full segment size (the last one
//! padded with zeros at the end), `archive_status/<segment>.done` after each complete segment,
//! history files with their `.done`, and the closing zero blocks. Gzip applies when the client
//! compresses with gzip (`pg_wal.tar.gz`), as in pg_basebackup.
//!
//! The archive and its members have the clone's file mode (pg_basebackup 18 gives the members
//! 0600 even with group access; 0640 lets a group member read the WAL unpacked from it, as
//! everything else in the clone).
//!
//! The tar is only valid once finished, so flushing reports what was written: a crash before
//! the end voids the backup anyway.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use pgclone_proto::replication::WalChunk;
use pgclone_proto::{Lsn, SegNo, TimelineId, WalSegSize};

use super::WalSink;
use crate::error::Error;
use crate::sink::codec::{self, ArchiveWriter, ClientSpec};
use crate::sink::fs;

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
    /// Mode of the archive and of its members (the clone's file mode).
    mode: u32,
    written: Lsn,
    completed: u64,
}

impl TarWalWriter {
    /// Creates `path` (which must not exist) with `mode`, the mode of its members too,
    /// compressed as `spec` says.
    pub fn create(
        path: PathBuf,
        spec: ClientSpec,
        seg_size: WalSegSize,
        timeline: TimelineId,
        sync: bool,
        mode: u32,
    ) -> Result<Self, Error> {
        let file = fs::create_new(&path, mode)?;
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
            mode,
        })
    }

    /// Writes through `write` to the archive (an error once it is finished).
    fn with_out(
        &mut self,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        match self.out.as_mut() {
            Some(out) => write(&mut **out).map_err(Error::fs("write to file", &self.path)),
            None => Err(Error::Internal("pg_wal.tar already finished".into())),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.with_out(|w| w.write_all(bytes))
    }

    /// A whole member.
    fn member(&mut self, name: &str, contents: &[u8]) -> Result<(), Error> {
        let mode = self.mode;
        self.with_out(|w| fs::write_tar_member(w, name, mode, contents))
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
                self.put(&fs::tar_file_header(&name, self.mode, size))?;
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
        self.put(&fs::TAR_END)?;
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
