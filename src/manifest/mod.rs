//! `backup_manifest` (PostgreSQL 13+): parsing, the manifest's own checksum, per-file checksums
//! computed as bytes stream by, and checking what was written against the manifest.
//!
//! The server writes the manifest (versions 1 on 13–16, 2 with `System-Identifier` on 17+):
//! one JSON object with `Files` (one object per line: `Path` or, for names that are not UTF-8,
//! `Encoded-Path` in hex; `Size`; `Last-Modified`; `Checksum-Algorithm` and `Checksum`, both
//! absent with `NONE`), `WAL-Ranges` (`Timeline`, `Start-LSN`, `End-LSN`) and, on the last
//! line, `Manifest-Checksum`: SHA-256 over every byte before that line.
//!
//! Here: the model ([`Manifest`], [`ManifestFile`], [`WalRange`]), the errors and the ignore
//! list; `parse` reads the JSON and the manifest's own checksum; `checksum` computes per-file
//! checksums; `compare` says how files differ from the manifest ([`Problem`],
//! [`WrittenFiles`]); `check` checks the sinks' output while they write it; `write` writes a
//! version 2 manifest ([`ManifestWriter`]); `verify` is `pgclone verify`.
//!
//! # Verifying while writing
//! ```
//! use pgclone::manifest::{Checksum, Manifest, WrittenFiles};
//! # fn demo(manifest_bytes: &[u8]) -> Result<(), pgclone::manifest::ManifestError> {
//! let mut written = WrittenFiles::new();
//! // For each file, as it is written (the algorithm is the --manifest-checksums value,
//! // CRC32C by default):
//! let mut sum = Checksum::new("CRC32C")?;
//! sum.update(b"15\n");
//! written.record_checksum("PG_VERSION", sum);
//! // Tablespace files are named `pg_tblspc/<oid>/<path inside the tablespace>`.
//! // When the manifest has arrived:
//! Manifest::check_own_checksum(manifest_bytes)?;
//! let manifest = Manifest::parse(manifest_bytes)?;
//! for problem in written.check(&manifest) {
//!     tracing::error!("{problem}");
//! }
//! # Ok(())
//! # }
//! ```

pub mod check;
mod checksum;
mod compare;
mod parse;
pub mod verify;
mod write;

use std::collections::HashMap;

use pgclone_proto::{Lsn, TimelineId};

pub(crate) use checksum::unhex;
pub use checksum::{hex, Checksum, ChecksumAlgorithm};
pub use compare::{compare_checksum, Problem, WrittenFiles};
pub use write::{gmt, ManifestWriter};

/// Paths pg_verifybackup leaves out of every check (and everything beneath them): files the
/// manifest cannot list or that the client may create or change (`-R`).
pub const VERIFY_IGNORED: [&str; 5] = [
    "backup_manifest",
    "pg_wal",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
];

/// Whether `path` is one of `list` or lies beneath one (`aa/bb` covers `aa/bb/cc`, not
/// `aa/bbb`), the way pg_verifybackup matches its ignore list.
pub fn is_ignored_by<S: AsRef<[u8]>>(list: &[S], path: &[u8]) -> bool {
    list.iter().any(|prefix| {
        let prefix = prefix.as_ref();
        path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/'))
    })
}

/// Whether pg_verifybackup skips `path` by default ([`VERIFY_IGNORED`]).
pub fn is_ignored(path: &[u8]) -> bool {
    is_ignored_by(&VERIFY_IGNORED, path)
}

/// Why a manifest is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("could not parse backup manifest")]
    Json(#[source] serde_json::Error),
    /// JSON of the right shape with a value that makes no sense.
    #[error("could not parse backup manifest: {0}")]
    Invalid(String),
    /// The same path listed twice.
    #[error("duplicate path name in backup manifest: \"{0}\"")]
    Duplicate(String),
    /// A checksum algorithm we do not know.
    #[error("unrecognized checksum algorithm: \"{0}\"")]
    UnknownAlgorithm(String),
    /// A file's checksum that is not hex.
    #[error("invalid checksum for file \"{path}\": \"{value}\"")]
    InvalidChecksum {
        /// The file, lossily decoded.
        path: String,
        /// The value as found.
        value: String,
    },
    /// The last line is not the `Manifest-Checksum` line.
    #[error("manifest has no checksum")]
    NoChecksum,
    /// The `Manifest-Checksum` value is not 64 hex digits.
    #[error("invalid manifest checksum: \"{0}\"")]
    InvalidManifestChecksum(String),
    /// The manifest's bytes do not hash to its `Manifest-Checksum`.
    #[error("manifest checksum mismatch")]
    ChecksumMismatch,
}

/// One file the manifest lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the data directory, `/`-separated, as raw bytes (decoded from
    /// `Encoded-Path` when the name is not UTF-8). Tablespace files are
    /// `pg_tblspc/<oid>/<path inside the tablespace>`.
    pub path: Vec<u8>,
    /// Size in bytes.
    pub size: u64,
    /// `Checksum-Algorithm` ([`ChecksumAlgorithm::None`] when absent).
    pub algorithm: ChecksumAlgorithm,
    /// `Checksum` in lowercase hex (`None` when absent).
    pub checksum: Option<String>,
}

impl ManifestFile {
    /// The path for messages (lossily decoded).
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// One `WAL-Ranges` entry: the WAL on `timeline` from `start` to `end` is needed to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    /// The timeline.
    pub timeline: TimelineId,
    /// Where the needed WAL starts.
    pub start: Lsn,
    /// Where it ends.
    pub end: Lsn,
}

/// A parsed `backup_manifest`.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// `PostgreSQL-Backup-Manifest-Version`: 1 (13–16) or 2 (17+).
    pub version: u32,
    /// `System-Identifier` (version 2 only).
    pub system_identifier: Option<u64>,
    /// `Files`, in manifest order.
    pub files: Vec<ManifestFile>,
    /// `WAL-Ranges`, in manifest order (newest timeline first).
    pub wal_ranges: Vec<WalRange>,
    /// `Manifest-Checksum`, lowercase hex.
    pub manifest_checksum: String,
    index: HashMap<Vec<u8>, usize>,
}

impl Manifest {
    /// The position in [`Manifest::files`] of the file with this path.
    pub fn position(&self, path: &[u8]) -> Option<usize> {
        self.index.get(path).copied()
    }

    /// The file with this path.
    pub fn file(&self, path: &[u8]) -> Option<&ManifestFile> {
        self.position(path).map(|i| &self.files[i])
    }
}

#[cfg(test)]
mod tests;
