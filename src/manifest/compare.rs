//! How a backup differs from its manifest ([`Problem`]), and the record of what a writer wrote
//! ([`WrittenFiles`]) checked against it.

use std::collections::HashMap;
use std::fmt;

use crate::manifest::{is_ignored, Checksum, ChecksumAlgorithm, Manifest, ManifestFile};

/// One way a backup differs from its manifest. Displays as pg_verifybackup words it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// Listed in the manifest, not written / not on disk.
    Missing {
        /// The path.
        path: Vec<u8>,
    },
    /// Written / on disk, not in the manifest.
    Extra {
        /// The path.
        path: Vec<u8>,
    },
    /// Sizes differ.
    Size {
        /// The path.
        path: Vec<u8>,
        /// What was written / is on disk.
        actual: u64,
        /// What the manifest says.
        expected: u64,
    },
    /// Checksums differ.
    Checksum {
        /// The path.
        path: Vec<u8>,
    },
    /// The checksum computed has another length (so another algorithm) than the manifest's.
    ChecksumLength {
        /// The path.
        path: Vec<u8>,
        /// Digest length in the manifest, in bytes.
        manifest: usize,
        /// Digest length computed, in bytes.
        computed: usize,
    },
    /// The manifest has a checksum for this file but none was computed while writing.
    NotChecksummed {
        /// The path.
        path: Vec<u8>,
        /// The manifest's algorithm.
        algorithm: ChecksumAlgorithm,
    },
}

impl Problem {
    /// The path concerned.
    pub fn path(&self) -> &[u8] {
        match self {
            Self::Missing { path }
            | Self::Extra { path }
            | Self::Size { path, .. }
            | Self::Checksum { path }
            | Self::ChecksumLength { path, .. }
            | Self::NotChecksummed { path, .. } => path,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = String::from_utf8_lossy(self.path());
        match self {
            Self::Missing { .. } => write!(f, "\"{p}\" is present in the manifest but not on disk"),
            Self::Extra { .. } => write!(f, "\"{p}\" is present on disk but not in the manifest"),
            Self::Size {
                actual, expected, ..
            } => write!(
                f,
                "\"{p}\" has size {actual} on disk but size {expected} in the manifest"
            ),
            Self::Checksum { .. } => write!(f, "checksum mismatch for file \"{p}\""),
            Self::ChecksumLength {
                manifest, computed, ..
            } => write!(
                f,
                "file \"{p}\" has checksum of length {manifest}, but expected {computed}"
            ),
            Self::NotChecksummed { algorithm, .. } => write!(
                f,
                "file \"{p}\" has a {algorithm} checksum in the manifest, but none was computed while writing"
            ),
        }
    }
}

/// Compares a checksum computed over a file (`computed`, hex) with the manifest's entry; `None`
/// when they agree or the manifest has no checksum for it.
pub fn compare_checksum(entry: &ManifestFile, computed: Option<&str>) -> Option<Problem> {
    if entry.algorithm == ChecksumAlgorithm::None {
        return None;
    }
    let expected = entry.checksum.as_deref().unwrap_or("");
    let path = || entry.path.clone();
    let Some(computed) = computed else {
        return Some(Problem::NotChecksummed {
            path: path(),
            algorithm: entry.algorithm,
        });
    };
    if computed.len() != expected.len() {
        Some(Problem::ChecksumLength {
            path: path(),
            manifest: expected.len() / 2,
            computed: computed.len() / 2,
        })
    } else if !computed.eq_ignore_ascii_case(expected) {
        Some(Problem::Checksum { path: path() })
    } else {
        None
    }
}

/// What a writer wrote: size and checksum per file, to check against the manifest once it has
/// arrived ("verify while writing", no second read pass). Memory is O(number of files).
///
/// Paths are relative to the data directory, `/`-separated, as the manifest names them: files
/// in a tablespace are `pg_tblspc/<oid>/<path inside the tablespace>`. Record what came out of
/// the archive, before any `-R` changes; paths pg_verifybackup ignores ([`VERIFY_IGNORED`]:
/// `pg_wal/…`, `postgresql.auto.conf`, ...) are skipped by [`WrittenFiles::check`] anyway.
#[derive(Debug, Default)]
pub struct WrittenFiles {
    files: HashMap<Vec<u8>, Written>,
}

#[derive(Debug)]
struct Written {
    size: u64,
    checksum: Option<String>,
}

impl WrittenFiles {
    /// Nothing written yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one file: `size` bytes, `checksum` as [`Checksum::finish`] returned it (`None`
    /// when not computed). Recording a path again replaces the earlier record.
    pub fn record(&mut self, path: impl Into<Vec<u8>>, size: u64, checksum: Option<String>) {
        self.files.insert(path.into(), Written { size, checksum });
    }

    /// Records one file from the [`Checksum`] that saw all its bytes (size = bytes fed).
    pub fn record_checksum(&mut self, path: impl Into<Vec<u8>>, checksum: Checksum) {
        let size = checksum.bytes();
        self.record(path, size, checksum.finish());
    }

    /// How many files were recorded.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Every difference from `manifest`: files listed but not written, written but not listed,
    /// size and checksum mismatches (a checksum is compared only when the size matches and the
    /// manifest has one). Paths under [`VERIFY_IGNORED`] are left out, as pg_verifybackup does.
    /// Problems come in manifest order, then extra files sorted by path. Empty means the
    /// backup matches.
    pub fn check(&self, manifest: &Manifest) -> Vec<Problem> {
        let mut problems = Vec::new();
        for entry in &manifest.files {
            if is_ignored(&entry.path) {
                continue;
            }
            let Some(w) = self.files.get(&entry.path) else {
                problems.push(Problem::Missing {
                    path: entry.path.clone(),
                });
                continue;
            };
            if w.size != entry.size {
                problems.push(Problem::Size {
                    path: entry.path.clone(),
                    actual: w.size,
                    expected: entry.size,
                });
            } else if let Some(p) = compare_checksum(entry, w.checksum.as_deref()) {
                problems.push(p);
            }
        }
        let mut extra: Vec<&Vec<u8>> = self
            .files
            .keys()
            .filter(|p| !is_ignored(p) && manifest.position(p).is_none())
            .collect();
        extra.sort();
        problems.extend(
            extra
                .into_iter()
                .map(|p| Problem::Extra { path: p.clone() }),
        );
        problems
    }
}
