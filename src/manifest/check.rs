//! Verify while writing: every file's size and checksum are computed as its bytes go to disk
//! (plain format) or into a tar file, and checked against the manifest when it arrives, with
//! the manifest's own checksum. No second read of the backup.
//!
//! Files are named as the manifest names them: the path inside the base archive, or
//! `pg_tblspc/<oid>/<path>` for a tablespace's. What pg_verifybackup ignores (`pg_wal`,
//! `postgresql.auto.conf`, the signal files) is ignored here too.

use pgclone_proto::Oid;

use crate::error::Error;
use crate::manifest::{Checksum, ChecksumAlgorithm, Manifest, WrittenFiles};

/// The name the manifest gives the archive member `name` (a trailing `/` dropped): the path
/// inside the base archive, or `pg_tblspc/<oid>/<path>` inside a tablespace's.
pub fn manifest_name(tablespace: Option<Oid>, name: &[u8]) -> Vec<u8> {
    let mut path = tablespace
        .map(|oid| format!("pg_tblspc/{oid}/").into_bytes())
        .unwrap_or_default();
    path.extend_from_slice(name.strip_suffix(b"/").unwrap_or(name));
    path
}

/// The check while writing: records each file's size and checksum as the sink writes it, and
/// compares them with the manifest once it has arrived.
#[derive(Debug)]
pub struct WriteCheck {
    algorithm: ChecksumAlgorithm,
    prefix: Vec<u8>,
    written: WrittenFiles,
    current: Option<(Vec<u8>, Checksum)>,
    manifest: Vec<u8>,
    disabled: Option<&'static str>,
    /// Files that matched, once the manifest was checked without a difference.
    matched: Option<u64>,
}

impl WriteCheck {
    /// A check computing `algorithm` (the `--manifest-checksums` value; CRC32C by default).
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        Self {
            algorithm,
            prefix: Vec::new(),
            written: WrittenFiles::new(),
            current: None,
            manifest: Vec::new(),
            disabled: None,
            matched: None,
        }
    }

    /// How many files matched the manifest; `None` until it was checked without a difference.
    pub fn matched(&self) -> Option<u64> {
        self.matched
    }

    /// The algorithm it computes.
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        self.algorithm
    }

    /// Files that follow belong to the base archive (`None`) or a tablespace's.
    pub fn start_archive(&mut self, tablespace: Option<Oid>) {
        self.prefix = manifest_name(tablespace, b"");
    }

    /// Gives up verifying (an archive whose contents pgclone does not see, such as a
    /// server-compressed archive stored as is).
    pub fn disable(&mut self, why: &'static str) {
        self.disabled.get_or_insert(why);
    }

    /// A regular file member starts; `name` is its path inside the archive.
    pub fn begin_file(&mut self, name: &[u8]) {
        let mut path = self.prefix.clone();
        path.extend_from_slice(name.strip_suffix(b"/").unwrap_or(name));
        self.current = Some((path, Checksum::with_algorithm(self.algorithm)));
    }

    /// Contents of the current file.
    pub fn data(&mut self, bytes: &[u8]) {
        if let Some((_, sum)) = self.current.as_mut() {
            sum.update(bytes);
        }
    }

    /// The current file is complete; returns its checksum in hex (`None` for NONE).
    pub fn end_file(&mut self) -> Option<String> {
        let (path, sum) = self.current.take()?;
        let size = sum.bytes();
        let hex = sum.finish();
        self.written.record(path, size, hex.clone());
        hex
    }

    /// Manifest bytes as they arrive.
    pub fn manifest_data(&mut self, bytes: &[u8]) {
        self.manifest.extend_from_slice(bytes);
    }

    /// The manifest is complete: checks its own checksum and every written file against it,
    /// reporting each difference on stderr.
    pub fn finish_manifest(&mut self) -> Result<(), Error> {
        if let Some(why) = self.disabled {
            tracing::info!("not verifying the backup against its manifest while writing: {why}");
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.manifest);
        Manifest::check_own_checksum(&bytes)?;
        let manifest = Manifest::parse(&bytes)?;
        let problems = self.written.check(&manifest);
        for p in &problems {
            tracing::error!("{p}");
        }
        if problems.is_empty() {
            tracing::info!("{} files match the backup manifest", self.written.len());
            self.matched = Some(self.written.len() as u64);
            Ok(())
        } else {
            Err(Error::ManifestMismatch(problems.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tablespace_files_as_the_manifest_does() {
        let mut v = WriteCheck::new(ChecksumAlgorithm::Crc32c);
        v.start_archive(Some(Oid(16400)));
        v.begin_file(b"PG_16_202307071/5/16401");
        v.data(b"x");
        v.end_file();
        v.start_archive(None);
        v.begin_file(b"PG_VERSION");
        v.data(b"15\n");
        v.end_file();
        assert_eq!(v.written.len(), 2);
    }
}
