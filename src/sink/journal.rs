//! The resume journal: `pgclone_journal` at the top of a plain-format data directory, written
//! while a clone runs with `--keep-partial` or `--no-clean`, so that a clone that fails (cut
//! connection, signal, `kill -9`, full disk) leaves a record of what arrived whole. `--refresh`
//! reads it ([`read`]) to build its reference manifest. A clone that succeeds removes it
//! ([`remove`]) before the final sync and the rename of `backup_manifest`, so neither
//! PostgreSQL nor pg_verifybackup ever sees it on a finished clone (PostgreSQL ignores unknown
//! files at the top of a data directory anyway).
//!
//! # Format
//! JSON lines, append-only, each line one self-contained record ending in `\n`:
//! - first, the header: `{"header":{"format":1,"system_identifier":"…","timeline":1,
//!   "major":16,"start_lsn":"0/2000028","tablespaces":[{"oid":16390,"location":"/srv/ts",
//!   "dir":"/new/ts"}]}}`: the backup's start (BASE_BACKUP's first result set) and where each
//!   tablespace went;
//! - then one line per complete file: `{"file":{"path":"base/5/1259","size":98304,
//!   "crc32c":"…"}}`. Paths are named as the manifest names them (relative to the data
//!   directory, `pg_tblspc/<oid>/…` for a tablespace's files; `encoded_path` in hex for a name
//!   that is not UTF-8); the CRC-32C is printed as the manifest prints it. What pg_verifybackup
//!   ignores (`pg_wal/…`, `postgresql.auto.conf`, …) is not listed.
//!
//! A file is listed only after its last byte was written. A last line without its `\n` (a
//! write cut short) is ignored by the reader; a bad line anywhere else makes the journal
//! unusable.
//!
//! # Durability
//! - `kill -9` of pgclone: the page cache survives, and every line was written after the
//!   bytes of the file it names, so every listed file is complete on disk.
//! - Crash of the operating system or power loss: with syncing on (not `-N`), lines are held
//!   back and committed in groups (every [`COMMIT_BYTES`] of file data or [`COMMIT_INTERVAL`],
//!   whichever comes first, also while a large file is still arriving; at each archive's end;
//!   and when the writer is dropped): first each pending file and its directories are fsynced, then
//!   the lines are appended and the journal fdatasynced. A listed file is therefore durable;
//!   files completed since the last commit are simply not listed (they come again whole). With
//!   `-N` the lines are written at once and nothing is guaranteed after an OS crash: the journal
//!   may list files whose data did not reach the disk.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::manifest::{hex, is_ignored, unhex};
use crate::sink::durable;
use crate::sink::fs::create_new;

/// The journal's file name, at the top of the data directory.
pub const JOURNAL_FILE: &str = "pgclone_journal";

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// With syncing on, pending lines are committed once this much file data completed...
pub const COMMIT_BYTES: u64 = 64 << 20;

/// ... or once the oldest pending line waited this long.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// A journal holds at most this many bytes when read (far above any real cluster's list).
const MAX_JOURNAL_BYTES: u64 = 1 << 30;

/// What the clone was taken from and where its parts went: the journal's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT_VERSION`].
    pub format: u32,
    /// The server's system identifier, as IDENTIFY_SYSTEM prints it.
    pub system_identifier: String,
    /// The timeline the backup started on.
    pub timeline: u32,
    /// The server's major version (10, 11, …, 18).
    pub major: u32,
    /// The backup's start LSN (`X/X`).
    pub start_lsn: String,
    /// Each tablespace the server listed (not the base directory).
    pub tablespaces: Vec<Tablespace>,
}

/// What a writer needs to keep a journal: its header, and whether to sync (not `-N`).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The first line.
    pub header: Header,
    /// Commit lines durably, in groups (see the module documentation).
    pub sync: bool,
}

/// One tablespace of the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// Its oid.
    pub oid: u32,
    /// Its location on the server.
    pub location: String,
    /// Where its contents went here (after `-T`).
    pub dir: PathBuf,
}

/// One complete file as the journal lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Path as the manifest names it (raw bytes).
    pub path: Vec<u8>,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32C in lowercase hex, as the manifest prints it.
    pub crc32c: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Header(Header),
    File(FileLine),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoded_path: Option<String>,
    size: u64,
    crc32c: String,
}

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Reading it failed.
    #[error("could not read journal \"{path}\"")]
    Io {
        /// The journal.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Larger than any journal pgclone writes.
    #[error("journal is larger than {MAX_JOURNAL_BYTES} bytes")]
    TooLarge,
    /// No complete header line.
    #[error("journal has no header")]
    NoHeader,
    /// Written by a pgclone with another format.
    #[error(
        "journal format version {0} is not supported (this pgclone reads version {FORMAT_VERSION})"
    )]
    Version(u64),
    /// A complete line that is not a record (1-based).
    #[error("journal line {0} is corrupt")]
    Corrupt(usize),
}

/// A journal as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    /// The header.
    pub header: Header,
    /// The complete files, in the order they were listed.
    pub files: Vec<FileRecord>,
    /// Whether a last line cut short was ignored.
    pub torn_tail: bool,
}

/// Reads `dir/`[`JOURNAL_FILE`].
pub fn read(dir: &Path) -> Result<Journal, JournalError> {
    let path = dir.join(JOURNAL_FILE);
    let io_error = |source| JournalError::Io {
        path: path.clone(),
        source,
    };
    let len = std::fs::metadata(&path).map_err(io_error)?.len();
    if len > MAX_JOURNAL_BYTES {
        return Err(JournalError::TooLarge);
    }
    let bytes = std::fs::read(&path).map_err(io_error)?;
    parse(&bytes)
}

/// Parses a journal's bytes: the header (its format version checked first), then the file
/// lines; a last line without `\n` is ignored.
pub fn parse(bytes: &[u8]) -> Result<Journal, JournalError> {
    let (complete, torn_tail) = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => (&bytes[..end], end + 1 < bytes.len()),
        None => (&bytes[..0], !bytes.is_empty()),
    };
    let mut lines = complete
        .split(|&b| b == b'\n')
        .filter(|_| !complete.is_empty());
    let header = parse_header(lines.next().ok_or(JournalError::NoHeader)?)?;
    let mut files = Vec::new();
    for (i, line) in lines.enumerate() {
        match serde_json::from_slice::<Line>(line) {
            Ok(Line::File(f)) => files.push(file_record(f).ok_or(JournalError::Corrupt(i + 2))?),
            _ => return Err(JournalError::Corrupt(i + 2)),
        }
    }
    Ok(Journal {
        header,
        files,
        torn_tail,
    })
}

/// The header line: its `format` is looked at before anything else, so that a journal of
/// another version is refused as such.
fn parse_header(line: &[u8]) -> Result<Header, JournalError> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|_| JournalError::NoHeader)?;
    let format = value
        .get("header")
        .and_then(|h| h.get("format"))
        .and_then(serde_json::Value::as_u64)
        .ok_or(JournalError::NoHeader)?;
    if format != u64::from(FORMAT_VERSION) {
        return Err(JournalError::Version(format));
    }
    match serde_json::from_value::<Line>(value) {
        Ok(Line::Header(h)) => Ok(h),
        _ => Err(JournalError::Corrupt(1)),
    }
}

fn file_record(f: FileLine) -> Option<FileRecord> {
    let path = match (f.path, f.encoded_path) {
        (Some(p), None) => p.into_bytes(),
        (None, Some(e)) => unhex(&e)?,
        _ => return None,
    };
    let valid_crc = f.crc32c.len() == 8 && f.crc32c.bytes().all(|b| b.is_ascii_hexdigit());
    valid_crc.then_some(FileRecord {
        path,
        size: f.size,
        crc32c: f.crc32c,
    })
}

/// One line of JSON with its `\n`.
fn encode(line: &Line) -> Result<Vec<u8>, Error> {
    let mut bytes = serde_json::to_vec(line)
        .map_err(|e| Error::Internal(format!("could not encode a journal line: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// A line waiting for its file to be synced.
struct Pending {
    on_disk: PathBuf,
    line: Vec<u8>,
}

/// Appends to the journal of one clone. Dropping it commits what is pending (best effort).
pub struct JournalWriter {
    file: File,
    path: PathBuf,
    sync: bool,
    pending: Vec<Pending>,
    pending_bytes: u64,
    /// When the oldest pending line was queued.
    pending_since: Option<Instant>,
    /// Directories whose entry in their parent was synced.
    durable_dirs: HashSet<PathBuf>,
}

impl std::fmt::Debug for JournalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalWriter")
            .field("path", &self.path)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl JournalWriter {
    /// Creates `dir/`[`JOURNAL_FILE`] (it must not exist, `mode`: the clone's file mode)
    /// holding `header`; with `sync`, the
    /// journal and `dir` are fsynced and file lines are committed in groups (see the module
    /// documentation).
    pub fn create(dir: &Path, header: &Header, sync: bool, mode: u32) -> Result<Self, Error> {
        let path = dir.join(JOURNAL_FILE);
        let mut file = create_new(&path, mode)?;
        file.write_all(&encode(&Line::Header(header.clone()))?)
            .map_err(Error::fs("write to file", &path))?;
        if sync {
            file.sync_data().map_err(Error::fs("fsync", &path))?;
            durable::sync_path(dir)?;
        }
        Ok(Self {
            file,
            path,
            sync,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
            durable_dirs: HashSet::new(),
        })
    }

    /// The file `name` (named as the manifest names it), written at `on_disk`, is complete:
    /// `size` bytes with CRC-32C `crc32c` (hex, as [`crate::manifest::Checksum::finish`] gives
    /// it). Files pg_verifybackup ignores are not listed.
    pub fn file_done(
        &mut self,
        on_disk: &Path,
        name: &[u8],
        size: u64,
        crc32c: &str,
    ) -> Result<(), Error> {
        if is_ignored(name) {
            return Ok(());
        }
        let (path, encoded_path) = match std::str::from_utf8(name) {
            Ok(p) => (Some(p.to_owned()), None),
            Err(_) => (None, Some(hex(name))),
        };
        let line = encode(&Line::File(FileLine {
            path,
            encoded_path,
            size,
            crc32c: crc32c.to_owned(),
        }))?;
        if !self.sync {
            return self.append(&line);
        }
        self.pending.push(Pending {
            on_disk: on_disk.to_path_buf(),
            line,
        });
        self.pending_bytes += size;
        self.pending_since.get_or_insert_with(Instant::now);
        self.commit_if_due()
    }

    /// Commits the pending lines if [`COMMIT_BYTES`] or [`COMMIT_INTERVAL`] is reached (the
    /// writer also calls this while a large file is arriving, so that the files before it do
    /// not wait for its end).
    pub fn commit_if_due(&mut self) -> Result<(), Error> {
        let due = self.pending_bytes >= COMMIT_BYTES
            || self
                .pending_since
                .is_some_and(|t| t.elapsed() >= COMMIT_INTERVAL);
        if due {
            self.commit()?;
        }
        Ok(())
    }

    /// Makes the pending files durable (each file, then its directories), then appends their
    /// lines and fdatasyncs the journal.
    pub fn commit(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_since = None;
        let mut dirs = BTreeSet::new();
        for p in &pending {
            durable::sync_path(&p.on_disk)?;
            self.directories_to_sync(&p.on_disk, &mut dirs);
        }
        for dir in &dirs {
            durable::sync_path(dir)?;
        }
        let lines: Vec<u8> = pending.into_iter().flat_map(|p| p.line).collect();
        self.append(&lines)?;
        self.file
            .sync_data()
            .map_err(Error::fs("fsync", &self.path))
    }

    /// Adds to `dirs` the directory of `file`, and the parent of each directory above it
    /// whose own entry was not made durable yet (each only once per journal).
    fn directories_to_sync(&mut self, file: &Path, dirs: &mut BTreeSet<PathBuf>) {
        let mut dir = file.parent();
        if let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
        }
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            if !self.durable_dirs.insert(d.to_path_buf()) {
                break;
            }
            dir = d.parent();
            if let Some(parent) = dir.filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(parent.to_path_buf());
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.file
            .write_all(bytes)
            .map_err(Error::fs("write to file", &self.path))
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::warn!(
                "could not complete journal \"{}\": {}",
                self.path.display(),
                crate::error::chain(&e)
            );
        }
    }
}

/// Removes `dir/`[`JOURNAL_FILE`] if it is there (the clone succeeded). The caller's sync of
/// `dir` makes the removal durable.
pub fn remove(dir: &Path) -> Result<(), Error> {
    let path = dir.join(JOURNAL_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::fs("remove file", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT_VERSION,
            system_identifier: "7312345678901234567".into(),
            timeline: 1,
            major: 16,
            start_lsn: "0/2000028".into(),
            tablespaces: vec![Tablespace {
                oid: 16390,
                location: "/srv/ts".into(),
                dir: "/new/ts".into(),
            }],
        }
    }

    fn written(sync: bool, files: &[(&[u8], u64)]) -> (tempfile::TempDir, Vec<u8>) {
        let tmp = tempfile::tempdir().expect("tmp");
        {
            let mut w = JournalWriter::create(tmp.path(), &header(), sync, 0o640).expect("create");
            for (name, size) in files {
                let on_disk = tmp.path().join("data");
                std::fs::write(&on_disk, b"x").expect("write");
                w.file_done(&on_disk, name, *size, "8a744722")
                    .expect("line");
            }
        }
        let bytes = std::fs::read(tmp.path().join(JOURNAL_FILE)).expect("read");
        (tmp, bytes)
    }

    #[test]
    fn round_trips_header_and_files_and_skips_ignored_paths() {
        for sync in [false, true] {
            let (tmp, _) = written(
                sync,
                &[
                    (b"PG_VERSION", 3),
                    (b"pg_wal/000000010000000000000002", 16 << 20),
                    (b"pg_tblspc/16390/PG_16_1/5/16391", 8192),
                    (b"odd\xff", 1),
                ],
            );
            let j = read(tmp.path()).expect("reads");
            assert_eq!(j.header, header());
            assert!(!j.torn_tail);
            let paths: Vec<&[u8]> = j.files.iter().map(|f| f.path.as_slice()).collect();
            assert_eq!(
                paths,
                [
                    &b"PG_VERSION"[..],
                    b"pg_tblspc/16390/PG_16_1/5/16391",
                    b"odd\xff"
                ]
            );
            assert_eq!(
                (j.files[1].size, j.files[1].crc32c.as_str()),
                (8192, "8a744722")
            );
            remove(tmp.path()).expect("removes");
            assert!(!tmp.path().join(JOURNAL_FILE).exists());
        }
    }

    #[test]
    fn a_torn_last_line_is_ignored_at_every_cut() {
        let (_tmp, bytes) = written(false, &[(b"a", 1), (b"b", 2)]);
        let last_start = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("two lines")
            + 1;
        for cut in last_start + 1..bytes.len() {
            let j = parse(&bytes[..cut]).expect("torn tail tolerated");
            assert!(j.torn_tail, "cut at {cut}");
            assert_eq!(j.files.len(), 1, "cut at {cut}");
        }
        let j = parse(&bytes[..last_start]).expect("cut at a line end");
        assert!(!j.torn_tail);
        assert_eq!(j.files.len(), 1);
    }

    #[test]
    fn a_torn_or_missing_header_is_refused() {
        let (_tmp, bytes) = written(false, &[]);
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..cut]), Err(JournalError::NoHeader)),
                "cut at {cut}"
            );
        }
        assert!(parse(&bytes).is_ok());
    }

    #[test]
    fn another_format_version_is_refused() {
        let line = br#"{"header":{"format":2,"anything":"new"}}
"#;
        assert!(matches!(parse(line), Err(JournalError::Version(2))));
    }

    #[test]
    fn a_bad_line_before_the_end_is_corruption() {
        let (_tmp, mut bytes) = written(false, &[(b"a", 1)]);
        let mut bad = bytes.clone();
        bad.extend_from_slice(b"{\"file\":{\"path\":\"b\"}}\n");
        assert!(matches!(parse(&bad), Err(JournalError::Corrupt(3))));
        bytes.extend_from_slice(
            b"\0\0\0\0\n{\"file\":{\"path\":\"c\",\"size\":1,\"crc32c\":\"00000000\"}}\n",
        );
        assert!(matches!(parse(&bytes), Err(JournalError::Corrupt(3))));
    }
}
