//! `backup_manifest` (PostgreSQL 13+): parsing, the manifest's own checksum, per-file checksums
//! computed as bytes stream by, and checking what was written against the manifest.
//!
//! The server writes the manifest (versions 1 on 13–16, 2 with `System-Identifier` on 17+):
//! one JSON object with `Files` (one object per line: `Path` or, for names that are not UTF-8,
//! `Encoded-Path` in hex; `Size`; `Last-Modified`; `Checksum-Algorithm` and `Checksum`, both
//! absent with `NONE`), `WAL-Ranges` (`Timeline`, `Start-LSN`, `End-LSN`) and, on the last
//! line, `Manifest-Checksum`: SHA-256 over every byte before that line.
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
//!     eprintln!("pgclone: error: {problem}");
//! }
//! # Ok(())
//! # }
//! ```

pub mod check;
pub mod verify;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use pgclone_proto::{Lsn, TimelineId};
use serde::Deserialize;
use sha2::Digest;

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

/// A per-file checksum algorithm, as `--manifest-checksums` and `Checksum-Algorithm` name it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChecksumAlgorithm {
    /// No checksum.
    None,
    /// CRC-32C (the default).
    Crc32c,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl ChecksumAlgorithm {
    /// Every algorithm, in the order pg_basebackup lists them.
    pub const ALL: [Self; 6] = [
        Self::None,
        Self::Crc32c,
        Self::Sha224,
        Self::Sha256,
        Self::Sha384,
        Self::Sha512,
    ];

    /// The name as the manifest prints it (`CRC32C`, `SHA256`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Crc32c => "CRC32C",
            Self::Sha224 => "SHA224",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
        }
    }

    /// Length of the digest in bytes (0 for NONE).
    pub fn digest_len(self) -> usize {
        match self {
            Self::None => 0,
            Self::Crc32c => 4,
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChecksumAlgorithm {
    type Err = ManifestError;

    /// Parses a name case-insensitively, as PostgreSQL does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ManifestError::UnknownAlgorithm(s.chars().take(64).collect()))
    }
}

/// A file checksum computed incrementally: [`Checksum::new`], [`Checksum::update`] with the
/// bytes in order, [`Checksum::finish`]. Also counts the bytes fed ([`Checksum::bytes`]).
#[derive(Clone)]
pub struct Checksum {
    state: State,
    bytes: u64,
}

#[derive(Clone)]
enum State {
    None,
    Crc32c(u32),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checksum")
            .field("algorithm", &self.algorithm())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Checksum {
    /// A checksum for `algorithm`: `NONE`, `CRC32C`, `SHA224`, `SHA256`, `SHA384` or `SHA512`,
    /// in any case.
    pub fn new(algorithm: &str) -> Result<Self, ManifestError> {
        Ok(Self::with_algorithm(algorithm.parse()?))
    }

    /// A checksum for an already parsed algorithm.
    pub fn with_algorithm(algorithm: ChecksumAlgorithm) -> Self {
        let state = match algorithm {
            ChecksumAlgorithm::None => State::None,
            ChecksumAlgorithm::Crc32c => State::Crc32c(0),
            ChecksumAlgorithm::Sha224 => State::Sha224(sha2::Sha224::new()),
            ChecksumAlgorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            ChecksumAlgorithm::Sha384 => State::Sha384(sha2::Sha384::new()),
            ChecksumAlgorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
        };
        Self { state, bytes: 0 }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        match self.state {
            State::None => ChecksumAlgorithm::None,
            State::Crc32c(_) => ChecksumAlgorithm::Crc32c,
            State::Sha224(_) => ChecksumAlgorithm::Sha224,
            State::Sha256(_) => ChecksumAlgorithm::Sha256,
            State::Sha384(_) => ChecksumAlgorithm::Sha384,
            State::Sha512(_) => ChecksumAlgorithm::Sha512,
        }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        match &mut self.state {
            State::None => {}
            State::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            State::Sha224(h) => h.update(data),
            State::Sha256(h) => h.update(data),
            State::Sha384(h) => h.update(data),
            State::Sha512(h) => h.update(data),
        }
    }

    /// How many bytes were fed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest in lowercase hex, exactly as the manifest prints it; `None` for NONE.
    ///
    /// CRC-32C is shown as the 4 bytes of the `uint32` in memory order, as the server and
    /// pg_verifybackup do (on x86 and ARM: little-endian, so CRC32C(`"15\n"`) = 0x2247748a is
    /// `8a744722`).
    pub fn finish(self) -> Option<String> {
        match self.state {
            State::None => None,
            State::Crc32c(crc) => Some(hex(&crc.to_ne_bytes())),
            State::Sha224(h) => Some(hex(&h.finalize())),
            State::Sha256(h) => Some(hex(&h.finalize())),
            State::Sha384(h) => Some(hex(&h.finalize())),
            State::Sha512(h) => Some(hex(&h.finalize())),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
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

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u64,
    #[serde(rename = "System-Identifier")]
    system_identifier: Option<u64>,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges")]
    wal_ranges: Vec<RawWalRange>,
    #[serde(rename = "Manifest-Checksum")]
    manifest_checksum: String,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
struct RawWalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start: String,
    #[serde(rename = "End-LSN")]
    end: String,
}

#[derive(Deserialize)]
struct ChecksumLine {
    #[serde(rename = "Manifest-Checksum")]
    manifest_checksum: String,
}

const CHECKSUM_KEY: &[u8] = b"\"Manifest-Checksum\"";

impl Manifest {
    /// Parses a whole manifest (versions 1 and 2). Unknown keys (such as `Last-Modified`) are
    /// ignored; the manifest's own checksum is checked separately by
    /// [`Manifest::check_own_checksum`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        let invalid = |what: String| ManifestError::Invalid(what);
        let version = match raw.version {
            1 => 1,
            2 => 2,
            v => return Err(invalid(format!("unexpected manifest version {v}"))),
        };
        if version >= 2 && raw.system_identifier.is_none() {
            return Err(invalid("missing system identifier".into()));
        }
        let mut files = Vec::with_capacity(raw.files.len());
        let mut index = HashMap::with_capacity(raw.files.len());
        for f in raw.files {
            let path = match (f.path, f.encoded_path) {
                (Some(p), None) => p.into_bytes(),
                (None, Some(e)) => {
                    unhex(&e).ok_or_else(|| invalid("could not decode file name".into()))?
                }
                (None, None) => return Err(invalid("missing path name".into())),
                (Some(_), Some(_)) => {
                    return Err(invalid("both path name and encoded path name".into()))
                }
            };
            let algorithm = match &f.algorithm {
                Some(a) => a.parse()?,
                None if f.checksum.is_some() => {
                    return Err(invalid("checksum without algorithm".into()))
                }
                None => ChecksumAlgorithm::None,
            };
            let checksum = match f.checksum {
                Some(c) if unhex(&c).is_some() => Some(c.to_ascii_lowercase()),
                Some(c) => {
                    return Err(ManifestError::InvalidChecksum {
                        path: String::from_utf8_lossy(&path).into_owned(),
                        value: c.chars().take(200).collect(),
                    })
                }
                None => None,
            };
            if index.insert(path.clone(), files.len()).is_some() {
                return Err(ManifestError::Duplicate(
                    String::from_utf8_lossy(&path).into_owned(),
                ));
            }
            files.push(ManifestFile {
                path,
                size: f.size,
                algorithm,
                checksum,
            });
        }
        let wal_ranges = raw
            .wal_ranges
            .into_iter()
            .map(|r| {
                if r.timeline == 0 {
                    return Err(invalid("timeline 0 in WAL range".into()));
                }
                let lsn = |text: &str, what: &str| {
                    text.parse::<Lsn>()
                        .map_err(|_| invalid(format!("could not parse {what} LSN")))
                };
                let range = WalRange {
                    timeline: TimelineId(r.timeline),
                    start: lsn(&r.start, "start")?,
                    end: lsn(&r.end, "end")?,
                };
                if range.end < range.start {
                    return Err(invalid(format!(
                        "WAL range on timeline {} ends at {} before it starts at {}",
                        range.timeline, range.end, range.start
                    )));
                }
                Ok(range)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            version,
            system_identifier: raw.system_identifier,
            files,
            wal_ranges,
            manifest_checksum: raw.manifest_checksum.to_ascii_lowercase(),
            index,
        })
    }

    /// Checks the manifest's own checksum: the last line must start with
    /// `"Manifest-Checksum"` and end with a newline, and its value must be the SHA-256 of every
    /// byte before that line (as pg_verifybackup checks it).
    pub fn check_own_checksum(bytes: &[u8]) -> Result<(), ManifestError> {
        let Some(body) = bytes.strip_suffix(b"\n") else {
            return Err(ManifestError::Invalid(
                "last line not newline-terminated".into(),
            ));
        };
        let Some(line_start) = body.iter().rposition(|&b| b == b'\n').map(|p| p + 1) else {
            return Err(ManifestError::Invalid("expected at least 2 lines".into()));
        };
        let line = &bytes[line_start..];
        if !line.starts_with(CHECKSUM_KEY) {
            return Err(ManifestError::NoChecksum);
        }
        let mut object = Vec::with_capacity(line.len() + 1);
        object.push(b'{');
        object.extend_from_slice(line);
        let parsed: ChecksumLine = serde_json::from_slice(&object).map_err(ManifestError::Json)?;
        let expected = parsed.manifest_checksum;
        if expected.len() != 64 || unhex(&expected).is_none() {
            return Err(ManifestError::InvalidManifestChecksum(
                expected.chars().take(200).collect(),
            ));
        }
        let actual = hex(&sha2::Sha256::digest(&bytes[..line_start]));
        if actual.eq_ignore_ascii_case(&expected) {
            Ok(())
        } else {
            Err(ManifestError::ChecksumMismatch)
        }
    }

    /// The position in [`Manifest::files`] of the file with this path.
    pub fn position(&self, path: &[u8]) -> Option<usize> {
        self.index.get(path).copied()
    }

    /// The file with this path.
    pub fn file(&self, path: &[u8]) -> Option<&ManifestFile> {
        self.position(path).map(|i| &self.files[i])
    }
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sum(alg: &str, data: &[u8]) -> Option<String> {
        let mut c = Checksum::new(alg).unwrap();
        c.update(data);
        c.finish()
    }

    /// A manifest with its Manifest-Checksum line computed here.
    fn with_checksum(body: &str) -> Vec<u8> {
        let digest = hex(&sha2::Sha256::digest(body.as_bytes()));
        format!("{body}\"Manifest-Checksum\": \"{digest}\"}}\n").into_bytes()
    }

    const V1_BODY: &str = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\
\"Files\": [\n\
{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"8a744722\" },\n\
{ \"Encoded-Path\": \"626173652f312f31ff\", \"Size\": 0, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" },\n\
{ \"Path\": \"pg_tblspc/16384/PG_13_202007201/5/16385\", \"Size\": 5, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\" },\n\
{ \"Path\": \"postgresql.auto.conf\", \"Size\": 88, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"01020304\" }\n\
],\n\
\"WAL-Ranges\": [\n\
{ \"Timeline\": 2, \"Start-LSN\": \"0/5000000\", \"End-LSN\": \"0/5000100\" },\n\
{ \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"0/5000000\" }\n\
],\n";

    #[test]
    fn crc32c_is_shown_in_memory_order() {
        let mut c = Checksum::new("CRC32C").unwrap();
        c.update(b"1");
        c.update(b"5\n");
        assert_eq!(c.bytes(), 3);
        let shown = c.finish().unwrap();
        assert_eq!(
            u32::from_ne_bytes(unhex(&shown).unwrap().try_into().unwrap()),
            0x2247_748a
        );
        #[cfg(target_endian = "little")]
        assert_eq!(shown, "8a744722");
        assert_eq!(sum("crc32c", b"").as_deref(), Some("00000000"));
    }

    #[test]
    fn sha_family_and_none() {
        assert_eq!(
            sum("SHA256", b"abc").as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            sum("sha224", b"abc").as_deref(),
            Some("23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7")
        );
        assert_eq!(sum("Sha384", b"abc").unwrap().len(), 96);
        assert_eq!(
            sum("SHA512", b"abc").unwrap()[..16].to_owned(),
            "ddaf35a193617aba"
        );
        assert_eq!(sum("none", b"abc"), None);
        assert!(Checksum::new("MD5").is_err());
        // Streaming gives the same digest as one call.
        let mut c = Checksum::new("SHA256").unwrap();
        c.update(b"a");
        c.update(b"");
        c.update(b"bc");
        assert_eq!(c.finish(), sum("SHA256", b"abc"));
    }

    #[test]
    fn parses_version_1_with_encoded_path_and_wal_ranges() {
        let bytes = with_checksum(V1_BODY);
        Manifest::check_own_checksum(&bytes).unwrap();
        let m = Manifest::parse(&bytes).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.system_identifier, None);
        assert_eq!(m.files.len(), 4);
        assert_eq!(m.files[0].path, b"PG_VERSION");
        assert_eq!(m.files[0].size, 3);
        assert_eq!(m.files[0].algorithm, ChecksumAlgorithm::Crc32c);
        assert_eq!(m.files[0].checksum.as_deref(), Some("8a744722"));
        assert_eq!(m.files[1].path, b"base/1/1\xff");
        assert_eq!(m.files[2].algorithm, ChecksumAlgorithm::None);
        assert_eq!(m.files[2].checksum, None);
        assert_eq!(m.position(b"base/1/1\xff"), Some(1));
        assert_eq!(
            m.wal_ranges,
            vec![
                WalRange {
                    timeline: TimelineId(2),
                    start: Lsn(0x500_0000),
                    end: Lsn(0x500_0100)
                },
                WalRange {
                    timeline: TimelineId(1),
                    start: Lsn(0x400_0028),
                    end: Lsn(0x500_0000)
                },
            ]
        );
    }

    #[test]
    fn parses_version_2_with_system_identifier() {
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\
\"System-Identifier\": 7713394991026530012,\n\
\"Files\": [\n\
{ \"Path\": \"a \\\"q\\\"\", \"Size\": 1, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"CA978112CA1BBDCAFAC231B39A23DC4DA786EFF8147C4E72B9807785AFEE48BB\" }\n\
],\n\
\"WAL-Ranges\": [\n\
{ \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"0/4000100\" }\n\
],\n";
        let bytes = with_checksum(body);
        Manifest::check_own_checksum(&bytes).unwrap();
        let m = Manifest::parse(&bytes).unwrap();
        assert_eq!(m.version, 2);
        assert_eq!(m.system_identifier, Some(7_713_394_991_026_530_012));
        assert_eq!(m.files[0].path, b"a \"q\"");
        // Hex is normalised to lowercase and matches what Checksum prints.
        assert_eq!(m.files[0].checksum, sum("SHA256", b"a"));
        // Version 2 without the system identifier is refused.
        let no_sysid = body.replace("\"System-Identifier\": 7713394991026530012,\n", "");
        assert!(Manifest::parse(&with_checksum(&no_sysid)).is_err());
    }

    #[test]
    fn refuses_bad_manifests() {
        let cases = [
            V1_BODY.replace("Version\": 1", "Version\": 3"),
            V1_BODY.replace("\"Path\": \"PG_VERSION\", ", ""),
            V1_BODY.replace(
                "\"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"8a744722\"",
                "\"Checksum\": \"8a744722\"",
            ),
            V1_BODY.replace("8a744722", "8a74472"),
            V1_BODY.replace("CRC32C\", \"Checksum\": \"8a", "MD5\", \"Checksum\": \"8a"),
            V1_BODY.replace("626173652f312f31ff", "626173652f312f31f"),
            V1_BODY.replace("0/4000028", "0/40000g8"),
            V1_BODY.replace("postgresql.auto.conf", "PG_VERSION"),
            V1_BODY.replace("\"Size\": 3,", "\"Size\": -3,"),
        ];
        for body in cases {
            assert!(
                Manifest::parse(&with_checksum(&body)).is_err(),
                "accepted:\n{body}"
            );
        }
        let e = Manifest::parse(&with_checksum(
            &V1_BODY.replace("postgresql.auto.conf", "PG_VERSION"),
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "duplicate path name in backup manifest: \"PG_VERSION\""
        );
    }

    #[test]
    fn own_checksum_catches_any_changed_byte() {
        let good = with_checksum(V1_BODY);
        Manifest::check_own_checksum(&good).unwrap();
        // A byte changed before the checksum line, JSON still valid.
        let mut bad = good.clone();
        let at = bad.windows(4).position(|w| w == b"2026").unwrap();
        bad[at + 3] = b'7';
        assert!(Manifest::parse(&bad).is_ok());
        assert!(matches!(
            Manifest::check_own_checksum(&bad),
            Err(ManifestError::ChecksumMismatch)
        ));
        // A changed checksum value.
        let text = String::from_utf8(good.clone()).unwrap();
        let digest_at = text.rfind(": \"").unwrap() + 3;
        let mut bad = good.clone();
        bad[digest_at] = if bad[digest_at] == b'0' { b'1' } else { b'0' };
        assert!(matches!(
            Manifest::check_own_checksum(&bad),
            Err(ManifestError::ChecksumMismatch)
        ));
        // Uppercase hex in the checksum line is accepted (PostgreSQL decodes either case).
        let upper = text[..digest_at].to_owned() + &text[digest_at..].to_ascii_uppercase();
        Manifest::check_own_checksum(upper.as_bytes()).unwrap();
        // No final newline, no checksum line, an invalid value.
        assert!(Manifest::check_own_checksum(&good[..good.len() - 1]).is_err());
        assert!(matches!(
            Manifest::check_own_checksum(V1_BODY.as_bytes()),
            Err(ManifestError::NoChecksum)
        ));
        let short = format!("{V1_BODY}\"Manifest-Checksum\": \"abc\"}}\n");
        assert!(matches!(
            Manifest::check_own_checksum(short.as_bytes()),
            Err(ManifestError::InvalidManifestChecksum(_))
        ));
        assert!(Manifest::check_own_checksum(b"").is_err());
    }

    #[test]
    fn ignore_list_matches_whole_components() {
        assert!(is_ignored(b"pg_wal"));
        assert!(is_ignored(b"pg_wal/000000010000000000000001"));
        assert!(is_ignored(b"backup_manifest"));
        assert!(!is_ignored(b"pg_wal2/x"));
        assert!(!is_ignored(b"backup_manifest.tmp"));
        assert!(!is_ignored(b"base/1/postgresql.auto.conf"));
        assert!(is_ignored_by(&["base/1"], b"base/1/2"));
        assert!(!is_ignored_by(&["base/1"], b"base/12"));
    }

    #[test]
    fn written_files_agree_with_the_manifest() {
        let m = Manifest::parse(&with_checksum(V1_BODY)).unwrap();
        let mut w = WrittenFiles::new();
        let mut c = Checksum::new("CRC32C").unwrap();
        c.update(b"15\n");
        w.record_checksum("PG_VERSION", c);
        w.record(b"base/1/1\xff".to_vec(), 0, sum("CRC32C", b""));
        w.record(
            "pg_tblspc/16384/PG_13_202007201/5/16385",
            5,
            sum("CRC32C", b"12345"),
        );
        // Ignored: changed by -R, streamed WAL.
        w.record("postgresql.auto.conf", 120, sum("CRC32C", b"x"));
        w.record("pg_wal/000000010000000000000004", 16 << 20, None);
        w.record("standby.signal", 0, sum("CRC32C", b""));
        assert_eq!(w.check(&m), vec![]);
        assert_eq!(w.len(), 6);
    }

    #[test]
    fn written_files_report_every_kind_of_problem() {
        let m = Manifest::parse(&with_checksum(V1_BODY)).unwrap();
        let mut w = WrittenFiles::new();
        w.record("PG_VERSION", 3, sum("CRC32C", b"16\n"));
        w.record(b"base/1/1\xff".to_vec(), 8192, sum("CRC32C", b""));
        w.record("base/1/99999", 0, sum("CRC32C", b""));
        w.record("base/1/12345", 0, sum("CRC32C", b""));
        let problems = w.check(&m);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "checksum mismatch for file \"PG_VERSION\"",
                "\"base/1/1\u{fffd}\" has size 8192 on disk but size 0 in the manifest",
                "\"pg_tblspc/16384/PG_13_202007201/5/16385\" is present in the manifest but not on disk",
                "\"base/1/12345\" is present on disk but not in the manifest",
                "\"base/1/99999\" is present on disk but not in the manifest",
            ]
        );
        assert_eq!(problems[1].path(), b"base/1/1\xff");

        // Another algorithm, or none, than the manifest's.
        let mut w = WrittenFiles::new();
        w.record("PG_VERSION", 3, sum("SHA256", b"15\n"));
        w.record(b"base/1/1\xff".to_vec(), 0, None);
        w.record("pg_tblspc/16384/PG_13_202007201/5/16385", 5, None);
        let problems = w.check(&m);
        assert_eq!(
            problems,
            vec![
                Problem::ChecksumLength {
                    path: b"PG_VERSION".to_vec(),
                    manifest: 4,
                    computed: 32
                },
                Problem::NotChecksummed {
                    path: b"base/1/1\xff".to_vec(),
                    algorithm: ChecksumAlgorithm::Crc32c
                },
            ]
        );
    }
}
