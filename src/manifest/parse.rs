//! Reading a `backup_manifest`: the JSON into [`Manifest`], and the manifest's own checksum.

use std::collections::HashMap;

use pgclone_proto::{Lsn, TimelineId};
use serde::Deserialize;
use sha2::Digest;

use crate::manifest::checksum::unhex;
use crate::manifest::{hex, ChecksumAlgorithm, Manifest, ManifestError, ManifestFile, WalRange};

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
        for raw_file in raw.files {
            let file = ManifestFile::from_raw(raw_file)?;
            if index.insert(file.path.clone(), files.len()).is_some() {
                return Err(ManifestError::Duplicate(file.display_path()));
            }
            files.push(file);
        }
        let wal_ranges = raw
            .wal_ranges
            .iter()
            .map(WalRange::from_raw)
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
}

fn invalid(what: String) -> ManifestError {
    ManifestError::Invalid(what)
}

impl ManifestFile {
    /// One `Files` entry: exactly one of `Path` and `Encoded-Path`, an algorithm whenever there
    /// is a checksum, the checksum in hex (kept in lowercase).
    fn from_raw(f: RawFile) -> Result<Self, ManifestError> {
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
        Ok(Self {
            path,
            size: f.size,
            algorithm,
            checksum,
        })
    }
}

impl WalRange {
    /// One `WAL-Ranges` entry: a real timeline, two LSNs, the end not before the start.
    fn from_raw(r: &RawWalRange) -> Result<Self, ManifestError> {
        if r.timeline == 0 {
            return Err(invalid("timeline 0 in WAL range".into()));
        }
        let lsn = |text: &str, what: &str| {
            text.parse::<Lsn>()
                .map_err(|_| invalid(format!("could not parse {what} LSN")))
        };
        let range = Self {
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
    }
}
