//! Writing a `backup_manifest` (version 2, as PostgreSQL 17+ writes it): the same line layout
//! as the server's (one file per line, `",\n"` between them), paths escaped as the server
//! escapes them (`Encoded-Path` in hex for names that are not UTF-8), `Last-Modified` in GMT,
//! the checksum keys only for files that have a checksum, and the `Manifest-Checksum` line: the
//! SHA-256 of every byte before it, which [`Manifest::check_own_checksum`] and the server's
//! parser verify.
//!
//! [`Manifest::check_own_checksum`]: crate::manifest::Manifest::check_own_checksum

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::Digest;

use crate::manifest::{hex, ManifestFile, WalRange};

/// Builds a version 2 manifest in memory: [`ManifestWriter::new`], one
/// [`ManifestWriter::add_file`] per file, then [`ManifestWriter::finish`] with the WAL ranges.
#[derive(Debug)]
pub struct ManifestWriter {
    text: Vec<u8>,
    files: usize,
}

impl ManifestWriter {
    /// The header of a version 2 manifest for the cluster `system_identifier`.
    pub fn new(system_identifier: u64) -> Self {
        let text = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\
             \"System-Identifier\": {system_identifier},\n\"Files\": ["
        )
        .into_bytes();
        Self { text, files: 0 }
    }

    /// Appends one `Files` entry: its path (as `Path`, or `Encoded-Path` when not UTF-8), size,
    /// `Last-Modified` when known, and `Checksum-Algorithm`/`Checksum` when it has a checksum.
    pub fn add_file(&mut self, file: &ManifestFile, last_modified: Option<SystemTime>) {
        self.text
            .extend_from_slice(if self.files == 0 { b"\n" } else { b",\n" });
        self.files += 1;
        let mut line = match std::str::from_utf8(&file.path) {
            Ok(path) => format!("{{ \"Path\": {}, ", json_string(path)),
            Err(_) => format!("{{ \"Encoded-Path\": \"{}\", ", hex(&file.path)),
        };
        line.push_str(&format!("\"Size\": {}", file.size));
        if let Some(time) = last_modified {
            line.push_str(&format!(", \"Last-Modified\": \"{}\"", gmt(time)));
        }
        if let Some(checksum) = &file.checksum {
            line.push_str(&format!(
                ", \"Checksum-Algorithm\": \"{}\", \"Checksum\": \"{checksum}\"",
                file.algorithm
            ));
        }
        line.push_str(" }");
        self.text.extend_from_slice(line.as_bytes());
    }

    /// How many files were added.
    pub fn file_count(&self) -> usize {
        self.files
    }

    /// Closes `Files`, writes `WAL-Ranges` (in the order given: newest timeline first) and the
    /// `Manifest-Checksum` line, and returns the whole manifest.
    pub fn finish(mut self, wal_ranges: &[WalRange]) -> Vec<u8> {
        self.text.extend_from_slice(b"\n],\n\"WAL-Ranges\": [\n");
        for (i, range) in wal_ranges.iter().enumerate() {
            let separator = if i == 0 { "" } else { ",\n" };
            self.text.extend_from_slice(
                format!(
                    "{separator}{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
                    range.timeline, range.start, range.end
                )
                .as_bytes(),
            );
        }
        self.text.extend_from_slice(b"\n],\n");
        let digest = hex(&sha2::Sha256::digest(&self.text));
        self.text
            .extend_from_slice(format!("\"Manifest-Checksum\": \"{digest}\"}}\n").as_bytes());
        self.text
    }
}

/// `text` as a JSON string literal, escaped the way the server's `escape_json` does (`\"`,
/// `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control characters as `\u00XX`).
fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// `time` as the manifest's `Last-Modified` shows it: `YYYY-MM-DD HH:MM:SS GMT` (times before
/// 1970 are shown as the epoch).
pub fn gmt(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} GMT",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (the era arithmetic of Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use pgclone_proto::{Lsn, TimelineId};

    use super::*;
    use crate::manifest::{ChecksumAlgorithm, Manifest};

    fn file(path: &[u8], size: u64, checksum: Option<&str>) -> ManifestFile {
        ManifestFile {
            path: path.to_vec(),
            size,
            algorithm: if checksum.is_some() {
                ChecksumAlgorithm::Crc32c
            } else {
                ChecksumAlgorithm::None
            },
            checksum: checksum.map(str::to_owned),
        }
    }

    #[test]
    fn gmt_matches_the_server_format() {
        let at = |secs| gmt(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00:00 GMT");
        // 2026-11-29 01:10:25 UTC
        assert_eq!(at(1_795_914_625), "2026-11-29 01:10:25 GMT");
        // A leap day and the last second of a year.
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 GMT");
        assert_eq!(at(1_704_067_199), "2023-12-31 23:59:59 GMT");
    }

    #[test]
    fn writes_what_the_parser_and_checksum_check_accept() {
        let mut w = ManifestWriter::new(7_713_394_991_026_530_012);
        let when = Some(UNIX_EPOCH + Duration::from_secs(1_795_914_625));
        w.add_file(&file(b"PG_VERSION", 3, Some("8a744722")), when);
        w.add_file(&file(b"base/1/1\xff", 0, None), None);
        w.add_file(&file(b"odd \"name\"\n\\", 8192, None), when);
        assert_eq!(w.file_count(), 3);
        let range = WalRange {
            timeline: TimelineId(1),
            start: Lsn(0x400_0028),
            end: Lsn(0x400_0100),
        };
        let bytes = w.finish(&[range]);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with(
                "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\
                 \"System-Identifier\": 7713394991026530012,\n\"Files\": [\n\
                 { \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\", \
                 \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"8a744722\" },\n\
                 { \"Encoded-Path\": \"626173652f312f31ff\", \"Size\": 0 },\n\
                 { \"Path\": \"odd \\\"name\\\"\\n\\\\\", \"Size\": 8192, "
            ),
            "{text}"
        );
        assert!(text.contains(
            "],\n\"WAL-Ranges\": [\n\
             { \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"0/4000100\" }\n],\n\
             \"Manifest-Checksum\": \""
        ));
        Manifest::check_own_checksum(&bytes).unwrap();
        let m = Manifest::parse(&bytes).unwrap();
        assert_eq!(m.version, 2);
        assert_eq!(m.system_identifier, Some(7_713_394_991_026_530_012));
        assert_eq!(m.files.len(), 3);
        assert_eq!(m.files[1].path, b"base/1/1\xff");
        assert_eq!(m.files[2].path, b"odd \"name\"\n\\");
        assert_eq!(m.files[0].checksum.as_deref(), Some("8a744722"));
        assert_eq!(m.wal_ranges, vec![range]);
    }

    #[test]
    fn an_empty_file_list_is_still_a_valid_manifest() {
        let bytes = ManifestWriter::new(1).finish(&[]);
        Manifest::check_own_checksum(&bytes).unwrap();
        let m = Manifest::parse(&bytes).unwrap();
        assert!(m.files.is_empty() && m.wal_ranges.is_empty());
    }
}
