//! Resuming an interrupted clone: the reference of a directory that holds a resume journal
//! (`pgclone_journal`, written by a clone run with `--keep-partial` or `--no-clean`,
//! [`crate::sink::journal`]).
//!
//! # The reference point
//! A clone's files are copies taken while the primary ran, somewhere between the backup's
//! start and its (never reached) end: like a copy never started (docs/incremental-notes.md
//! §8.2), its reference starts at the backup's start LSN on its timeline (the journal's header)
//! and ends there too. Every block the primary changed since that start is in the WAL
//! summaries from there on, hence in the incremental backup, so a block copied before or after
//! it changed is overwritten either way; a block not changed since is the same in the copy.
//!
//! # The listed files
//! Exactly the journal's complete files that are still regular files in the directory (their
//! size as found there; the journal's CRC-32C when the size is the journal's). A file cut off
//! mid-way or never started is not listed, so the server sends it whole. A journal file
//! missing from the directory is not listed either: a listed file comes as its changed blocks
//! only, which need the rest of it on disk.
//!
//! # Which reference a directory gets
//! A journal wins over everything else in the directory: `pg_control` arrives last in a clone,
//! so a journal beside it means that the archive was received but the clone failed after, and
//! a `backup_label` beside it is the same clone's. It also wins over the marker of a refresh
//! that resumed it and was interrupted: that refresh's files are the journal's or newer, so the
//! journal's point and list describe them too, whereas listing every file on disk would list
//! the clone's partial ones. The refresh removes the journal only once it is complete.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pgclone_proto::{Lsn, TimelineId};

use crate::manifest::{ChecksumAlgorithm, ManifestFile, ManifestWriter};
use crate::refresh::ReferencePoint;
use crate::sink::journal::{self, Journal, JournalError, JOURNAL_FILE};

/// Why a journal gives no reference.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// The journal could not be read or parsed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Its header lacks what the reference needs.
    #[error("the journal's header has no usable {0} (the clone failed before the backup started)")]
    Header(&'static str),
    /// This run would write a tablespace elsewhere than the clone did.
    #[error(
        "the interrupted clone put tablespace {oid} (\"{location}\" on the server) in \"{dir}\", \
         this run would write it to \"{now}\": give the clone's -T \"{location}={dir}\" again"
    )]
    TablespaceMoved {
        /// The tablespace's oid.
        oid: u32,
        /// Its location on the server.
        location: String,
        /// Where the clone put it.
        dir: PathBuf,
        /// Where this run would put it.
        now: PathBuf,
    },
    /// Stat of a listed file failed for another reason than its absence.
    #[error("could not read \"{path}\"")]
    Stat {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An interrupted clone to resume: the journal and the reference point it gives.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The point: the clone's backup start, on its timeline, as start and end.
    pub point: ReferencePoint,
    /// The major version the clone was taken from.
    pub major: u32,
    /// The journal as read.
    pub journal: Journal,
}

/// The resume journal of `dir`, if it has one (`None` when there is no journal file).
pub fn read(dir: &Path) -> Result<Option<Resume>, ResumeError> {
    match std::fs::symlink_metadata(dir.join(JOURNAL_FILE)) {
        Ok(_) => Resume::from_journal(journal::read(dir)?).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ResumeError::Stat {
            path: dir.join(JOURNAL_FILE),
            source,
        }),
    }
}

impl Resume {
    /// The reference point of `journal`: its header's system identifier, timeline and start
    /// LSN, which is also the end.
    pub fn from_journal(journal: Journal) -> Result<Self, ResumeError> {
        let h = &journal.header;
        let system_identifier = h
            .system_identifier
            .parse::<u64>()
            .map_err(|_| ResumeError::Header("system identifier"))?;
        let start = h
            .start_lsn
            .parse::<Lsn>()
            .ok()
            .filter(|l| *l != Lsn::INVALID)
            .ok_or(ResumeError::Header("start LSN"))?;
        if h.timeline == 0 {
            return Err(ResumeError::Header("timeline"));
        }
        Ok(Self {
            point: ReferencePoint {
                system_identifier,
                timeline: TimelineId(h.timeline),
                start,
                end: start,
            },
            major: h.major,
            journal,
        })
    }

    /// Refuses a run whose `-T` mapping (`place`: a server location → the directory this run
    /// writes it to) would put a tablespace with an absolute location elsewhere than the clone
    /// did: the journal's files there would be missed, and the server's own directory might be
    /// written.
    pub fn check_tablespaces(&self, place: impl Fn(&Path) -> PathBuf) -> Result<(), ResumeError> {
        for ts in &self.journal.header.tablespaces {
            let location = Path::new(&ts.location);
            if !location.is_absolute() {
                continue;
            }
            let now = place(location);
            if now != ts.dir {
                return Err(ResumeError::TablespaceMoved {
                    oid: ts.oid,
                    location: ts.location.clone(),
                    dir: ts.dir.clone(),
                    now,
                });
            }
        }
        Ok(())
    }

    /// The reference manifest for `dir`: the journal's complete files still on disk (see the
    /// module doc) and the point's one WAL range; returns it with its number of files.
    pub fn manifest(&self, dir: &Path) -> Result<(Vec<u8>, usize), ResumeError> {
        let mut writer = ManifestWriter::new(self.point.system_identifier);
        let mut seen = HashSet::new();
        for record in &self.journal.files {
            if !seen.insert(record.path.as_slice()) {
                continue;
            }
            let path = dir.join(OsStr::from_bytes(&record.path));
            let size = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m.len(),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ResumeError::Stat { path, source }),
            };
            let same = size == record.size;
            let entry = ManifestFile {
                path: record.path.clone(),
                size,
                algorithm: if same {
                    ChecksumAlgorithm::Crc32c
                } else {
                    ChecksumAlgorithm::None
                },
                checksum: same.then(|| record.crc32c.clone()),
            };
            writer.add_file(&entry, None);
        }
        let files = writer.file_count();
        tracing::debug!(
            "reference manifest of {} from its journal: {files} of {} files, timeline {}, at {}",
            dir.display(),
            self.journal.files.len(),
            self.point.timeline,
            self.point.start
        );
        Ok((writer.finish(&[self.point.wal_range()]), files))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs;

    use super::*;
    use crate::manifest::Manifest;
    use crate::sink::journal::{FileRecord, Header, Tablespace};

    fn journal(files: &[(&str, u64)]) -> Journal {
        Journal {
            header: Header {
                format: journal::FORMAT_VERSION,
                system_identifier: "7450000000000000123".into(),
                timeline: 3,
                major: 17,
                start_lsn: "2/5000028".into(),
                tablespaces: vec![Tablespace {
                    oid: 16390,
                    location: "/srv/ts".into(),
                    dir: "/new/ts".into(),
                }],
            },
            files: files
                .iter()
                .map(|(p, size)| FileRecord {
                    path: p.as_bytes().to_vec(),
                    size: *size,
                    crc32c: "0a0b0c0d".into(),
                })
                .collect(),
            torn_tail: false,
        }
    }

    #[test]
    fn the_point_is_the_backup_start_as_start_and_end() {
        let r = Resume::from_journal(journal(&[])).unwrap();
        assert_eq!(
            r.point,
            ReferencePoint {
                system_identifier: 7_450_000_000_000_000_123,
                timeline: TimelineId(3),
                start: Lsn(0x2_0500_0028),
                end: Lsn(0x2_0500_0028),
            }
        );
        assert_eq!(r.major, 17);
    }

    #[test]
    fn a_header_without_start_timeline_or_cluster_is_refused() {
        for (field, edit) in [
            (
                "start LSN",
                (|h: &mut Header| h.start_lsn.clear()) as fn(&mut Header),
            ),
            ("start LSN", |h| h.start_lsn = "0/0".into()),
            ("timeline", |h| h.timeline = 0),
            ("system identifier", |h| h.system_identifier = "x".into()),
        ] {
            let mut j = journal(&[]);
            edit(&mut j.header);
            let err = Resume::from_journal(j).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn lists_exactly_the_complete_files_still_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("base/5")).unwrap();
        fs::create_dir_all(d.join("ts/PG_17_1/5")).unwrap();
        fs::create_dir_all(d.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(d.join("ts"), d.join("pg_tblspc/16390")).unwrap();
        fs::write(d.join("base/5/16384"), vec![0u8; 16384]).unwrap();
        fs::write(d.join("base/5/16385"), vec![0u8; 8192]).unwrap();
        // Partial: on disk but not in the journal.
        fs::write(d.join("base/5/16386"), vec![0u8; 8192]).unwrap();
        fs::write(d.join("ts/PG_17_1/5/16400"), vec![0u8; 8192]).unwrap();
        let j = journal(&[
            ("base/5/16384", 16384),
            ("base/5/16385", 16384),
            ("base/5/gone", 8192),
            ("pg_tblspc/16390/PG_17_1/5/16400", 8192),
            ("base/5/16384", 16384),
        ]);
        let r = Resume::from_journal(j).unwrap();
        let (bytes, files) = r.manifest(d).unwrap();
        Manifest::check_own_checksum(&bytes).unwrap();
        let m = Manifest::parse(&bytes).unwrap();
        assert_eq!(files, 3);
        assert_eq!(m.system_identifier, Some(r.point.system_identifier));
        let listed: Vec<(&[u8], u64, Option<&str>)> = m
            .files
            .iter()
            .map(|f| (f.path.as_slice(), f.size, f.checksum.as_deref()))
            .collect();
        assert_eq!(
            listed,
            [
                (&b"base/5/16384"[..], 16384, Some("0a0b0c0d")),
                (b"base/5/16385", 8192, None),
                (b"pg_tblspc/16390/PG_17_1/5/16400", 8192, Some("0a0b0c0d")),
            ]
        );
        assert_eq!(m.wal_ranges, vec![r.point.wal_range()]);
    }

    #[test]
    fn tablespaces_must_go_where_the_clone_put_them() {
        let r = Resume::from_journal(journal(&[])).unwrap();
        r.check_tablespaces(|_| PathBuf::from("/new/ts")).unwrap();
        let err = r.check_tablespaces(Path::to_path_buf).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the interrupted clone put tablespace 16390 (\"/srv/ts\" on the server) in \
             \"/new/ts\", this run would write it to \"/srv/ts\": give the clone's -T \
             \"/srv/ts=/new/ts\" again"
        );
    }

    #[test]
    fn reads_the_journal_of_a_directory_or_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        fs::write(dir.path().join(JOURNAL_FILE), b"{\"header\":{\"format\":1,").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(ResumeError::Journal(JournalError::NoHeader))
        ));
        let text = concat!(
            "{\"header\":{\"format\":1,\"system_identifier\":\"42\",\"timeline\":1,",
            "\"major\":18,\"start_lsn\":\"0/2000028\",\"tablespaces\":[]}}\n",
            "{\"file\":{\"path\":\"base/1/1259\",\"size\":8192,\"crc32c\":\"00000000\"}}\n"
        );
        fs::write(dir.path().join(JOURNAL_FILE), text).unwrap();
        let r = read(dir.path()).unwrap().unwrap();
        assert_eq!((r.point.start, r.major), (Lsn(0x200_0028), 18));
        assert_eq!(r.journal.files.len(), 1);
    }
}
