//! The last steps of a refresh, once every archive is applied and the WAL is streamed: what
//! the primary no longer has removed, `backup_label` without its `INCREMENTAL FROM` lines, a
//! `backup_manifest` that describes the directory as it now is, the `-R` settings, fsync, the
//! new `global/pg_control`, and finally the marker removed.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::clone::refresh::marker::{Marker, MARKER};
use crate::error::Error;
use crate::manifest::{Checksum, ChecksumAlgorithm, Manifest, ManifestFile, ManifestWriter};
use crate::recovery::{self, PrimaryConnInfo};
use crate::refresh::label::BACKUP_LABEL;
use crate::sink::durable;
use crate::sink::fs::{self as sinkfs, Modes};
use crate::sink::inplace::{Applied, KeepEntry, KeepList};
use crate::sink::journal;
use crate::sink::MANIFEST_TMP;
use pgclone_proto::incremental::INCREMENTAL_PREFIX;
use pgclone_proto::ServerVersion;

/// What the last steps need besides the applied archives.
#[derive(Debug)]
pub struct Ending {
    /// The data directory.
    pub dest: PathBuf,
    /// Not `-N`.
    pub sync: bool,
    /// `-R`: the primary's connection settings, the slot and the server's version.
    pub recovery: Option<(PrimaryConnInfo, Option<String>, ServerVersion)>,
    /// The tablespace directories written (synced with the rest).
    pub tablespace_dirs: Vec<PathBuf>,
    /// Modes of what the refresh creates (from the server's `data_directory_mode`).
    pub modes: Modes,
}

/// Completes the refresh of `ending.dest` (blocking file I/O).
pub fn complete(mut applied: Applied, ending: &Ending) -> Result<(), Error> {
    let dest = &ending.dest;
    // Unlike `KeepList::default`, postmaster.pid and postmaster.opts go too (no postmaster
    // runs, the preflight checked): a fresh clone has neither.
    let keep = KeepList::new(vec![
        KeepEntry::Tree("pg_wal".into()),
        KeepEntry::File("backup_manifest".into()),
        KeepEntry::File(MANIFEST_TMP.into()),
        KeepEntry::File(MARKER.into()),
        KeepEntry::File(journal::JOURNAL_FILE.into()),
    ]);
    let removed = applied.remove_stale(&keep)?;
    tracing::info!(
        "removed what the primary no longer has: {} files, {} directories, {} tablespace links",
        removed.files,
        removed.dirs,
        removed.links
    );
    strip_incremental_lines(&dest.join(BACKUP_LABEL), ending.modes.file)?;
    let server = applied
        .server_manifest()
        .ok_or_else(|| Error::IncompatibleServer("the server sent no backup manifest".into()))?;
    let manifest = directory_manifest(dest, &Manifest::parse(server)?)?;
    let tmp = dest.join(MANIFEST_TMP);
    let mode = ending.modes.file;
    sinkfs::write_file(&tmp, &manifest, mode).map_err(Error::fs("write file", &tmp))?;
    if let Some((primary, slot, version)) = &ending.recovery {
        tracing::info!("writing the standby configuration");
        recovery::write(dest, primary, slot.as_deref(), *version, mode)?;
    }
    if ending.sync {
        tracing::info!("syncing data to disk ...");
        applied.sync()?;
        let wal = dest.join("pg_wal");
        let wal = fs::canonicalize(&wal).map_err(Error::fs("resolve", &wal))?;
        durable::sync_tree(&wal)?;
        for name in [
            BACKUP_LABEL,
            "postgresql.auto.conf",
            "standby.signal",
            "recovery.conf",
        ] {
            match durable::sync_path(&dest.join(name)) {
                Err(Error::Fs { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        for dir in &ending.tablespace_dirs {
            durable::sync_path(dir)?;
        }
        durable::sync_path(dest)?;
    }
    durable::durable_rename(&tmp, &dest.join("backup_manifest"), ending.sync)?;
    applied.write_control(ending.sync)?;
    // The journal of a resumed clone goes before the marker: a directory left with the
    // marker alone is complete (pg_control is written), which the marker's reference covers.
    journal::remove(dest)?;
    Marker::remove(dest, ending.sync)
}

/// Rewrites `backup_label` without its `INCREMENTAL FROM` lines: with them, PostgreSQL
/// refuses to start ("this is an incremental backup, not a data directory").
fn strip_incremental_lines(path: &Path, mode: u32) -> Result<(), Error> {
    let text = fs::read(path).map_err(Error::fs("read file", path))?;
    let kept: Vec<u8> = text
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b"INCREMENTAL FROM "))
        .flatten()
        .copied()
        .collect();
    let tmp = path.with_extension("tmp");
    sinkfs::write_file(&tmp, &kept, mode).map_err(Error::fs("write file", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::fs("rename", &tmp))
}

/// The `backup_manifest` of the refreshed directory, built from the server's manifest of the
/// incremental backup: its System-Identifier and WAL-Ranges; every file it lists, with its
/// size and checksum as the server sent it, except `INCREMENTAL.<name>` members, listed as
/// `<name>` with the size of the file rebuilt in place and no checksum, and `backup_label`
/// (rewritten without its `INCREMENTAL FROM` lines), read back and checksummed again with the
/// server manifest's algorithm. The server sends an `INCREMENTAL.` member for every relation
/// file of the reference, changed or not, so checksumming the rebuilt files would read the
/// whole database again (measured: 3 GB read for a 70 MB refresh, half of its time); without
/// a checksum, `pgclone verify` and pg_verifybackup check their size, as for a backup taken
/// with `--manifest-checksums=none`. `Last-Modified` is left out (no checker uses it).
fn directory_manifest(dest: &Path, server: &Manifest) -> Result<Vec<u8>, Error> {
    let system_identifier = server.system_identifier.ok_or_else(|| {
        Error::IncompatibleServer("the server's manifest has no System-Identifier".into())
    })?;
    let mut writer = ManifestWriter::new(system_identifier);
    for file in &server.files {
        let rebuilt = rebuilt_path(&file.path);
        let entry = match rebuilt {
            Some(path) => sized(dest, path)?,
            None if file.path == BACKUP_LABEL.as_bytes() => {
                checksummed(dest, file.path.clone(), file)?
            }
            None => file.clone(),
        };
        writer.add_file(&entry, None);
    }
    Ok(writer.finish(&server.wal_ranges))
}

/// `dir/INCREMENTAL.<name>` → `dir/<name>`; `None` for any other path.
fn rebuilt_path(path: &[u8]) -> Option<Vec<u8>> {
    let cut = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let (dir, name) = path.split_at(cut);
    let bare = name.strip_prefix(INCREMENTAL_PREFIX.as_bytes())?;
    Some([dir, bare].concat())
}

/// The entry for `path` with its size on disk now and no checksum.
fn sized(dest: &Path, path: Vec<u8>) -> Result<ManifestFile, Error> {
    use std::os::unix::ffi::OsStrExt;
    let full = dest.join(std::ffi::OsStr::from_bytes(&path));
    let meta = fs::metadata(&full).map_err(Error::fs("stat", &full))?;
    Ok(ManifestFile {
        path,
        size: meta.len(),
        algorithm: ChecksumAlgorithm::None,
        checksum: None,
    })
}

/// The entry for `path` as it is on disk now, checksummed like `like`.
fn checksummed(dest: &Path, path: Vec<u8>, like: &ManifestFile) -> Result<ManifestFile, Error> {
    use std::os::unix::ffi::OsStrExt;
    let full = dest.join(std::ffi::OsStr::from_bytes(&path));
    let mut f = fs::File::open(&full).map_err(Error::fs("open file", &full))?;
    let mut sum = Checksum::with_algorithm(like.algorithm);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::fs("read file", &full)(e)),
        };
        sum.update(buf.get(..n).unwrap_or_default());
    }
    Ok(ManifestFile {
        path,
        size: sum.bytes(),
        algorithm: like.algorithm,
        checksum: sum.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_members_name_their_relation_file() {
        assert_eq!(
            rebuilt_path(b"base/5/INCREMENTAL.16384.1"),
            Some(b"base/5/16384.1".to_vec())
        );
        assert_eq!(rebuilt_path(b"INCREMENTAL.x"), Some(b"x".to_vec()));
        assert_eq!(rebuilt_path(b"base/5/16384"), None);
    }

    #[test]
    fn the_label_loses_its_incremental_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(BACKUP_LABEL);
        fs::write(
            &p,
            "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n\
             INCREMENTAL FROM LSN: 0/3000028\nINCREMENTAL FROM TLI: 1\nSTART TIMELINE: 1\n",
        )
        .expect("write");
        strip_incremental_lines(&p, 0o600).expect("strip");
        assert_eq!(
            fs::read_to_string(&p).expect("read"),
            "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\nSTART TIMELINE: 1\n"
        );
    }

    #[test]
    fn the_manifest_lists_rebuilt_files_by_size_and_the_label_with_its_new_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::create_dir_all(d.join("base/5")).expect("mkdir");
        fs::write(d.join("base/5/16384"), vec![7u8; 16384]).expect("write");
        fs::write(d.join(BACKUP_LABEL), "START TIMELINE: 1\n").expect("write");
        let mut server = ManifestWriter::new(42);
        let entry = |path: &str, size| ManifestFile {
            path: path.as_bytes().to_vec(),
            size,
            algorithm: crate::manifest::ChecksumAlgorithm::Crc32c,
            checksum: Some("00000000".into()),
        };
        server.add_file(&entry("base/5/INCREMENTAL.16384", 8204), None);
        server.add_file(&entry("backup_label", 99), None);
        server.add_file(&entry("PG_VERSION", 3), None);
        let range = crate::manifest::WalRange {
            timeline: pgclone_proto::TimelineId(1),
            start: pgclone_proto::Lsn(0x100),
            end: pgclone_proto::Lsn(0x200),
        };
        let server = Manifest::parse(&server.finish(&[range])).expect("parse");
        let ours = directory_manifest(d, &server).expect("manifest");
        Manifest::check_own_checksum(&ours).expect("own checksum");
        let m = Manifest::parse(&ours).expect("parse");
        assert_eq!(m.system_identifier, Some(42));
        assert_eq!(m.wal_ranges, vec![range]);
        let sum = |bytes: &[u8]| {
            let mut c = Checksum::with_algorithm(crate::manifest::ChecksumAlgorithm::Crc32c);
            c.update(bytes);
            c.finish()
        };
        let rel = m.file(b"base/5/16384").expect("rebuilt file listed");
        assert_eq!((rel.size, rel.checksum.clone()), (16384, None));
        let label = m.file(b"backup_label").expect("label");
        assert_eq!(
            (label.size, label.checksum.clone()),
            (18, sum(b"START TIMELINE: 1\n"))
        );
        let kept = m.file(b"PG_VERSION").expect("whole file");
        assert_eq!((kept.size, kept.checksum.as_deref()), (3, Some("00000000")));
    }
}
