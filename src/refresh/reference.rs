//! The reference manifest of a refresh: a `backup_manifest` synthesized from a stopped standby's
//! own data directory, for `UPLOAD_MANIFEST` before `BASE_BACKUP (INCREMENTAL)`.
//!
//! # What the server takes from it (basebackup_incremental.c, 17 and 18)
//! The server parses the uploaded manifest with its common parser, which requires version 2 (1
//! is refused for incremental backups), the cluster's `System-Identifier`, a `Path` (or
//! `Encoded-Path`) and `Size` per file (`Last-Modified` and the checksum keys are optional and
//! ignored), `Timeline`/`Start-LSN`/`End-LSN` per WAL range, and a correct `Manifest-Checksum`.
//! Of the files it keeps only the paths: a relation file that is not listed is sent whole; a
//! listed one is sent as the blocks the WAL summaries mark as changed since the reference LSN
//! (or whole: FSM forks, odd sizes, files of databases created since, mostly-changed files).
//! Of the WAL ranges: the earliest range's start is the reference LSN; each timeline must be in
//! the server's history, the earliest range must not start before its timeline began, and the
//! final range must not end after the new backup's start LSN. WAL summaries must cover the
//! reference LSN up to the new backup's start.
//!
//! # The reference point ([`ReferencePoint`])
//! - **Start**: `checkPointCopy.redo` of pg_control, on `checkPointCopy.ThisTimeLineID`: the
//!   REDO point of the standby's last restartpoint. A restartpoint writes out every buffer
//!   dirtied by WAL replayed before it started, which includes all WAL before its REDO point;
//!   pg_control is updated only after that (a crash in between leaves the previous, still valid
//!   one). So every block the primary changed before the REDO point is on the standby's disk as
//!   the primary has it, and every block changed at or after it (including pages torn by a crash,
//!   which were being written because WAL after the REDO point touched them) is in the
//!   summaries from there on, hence in the incremental backup.
//! - **End**: the newest WAL position any page on disk may reflect: `minRecoveryPoint` for a
//!   standby (recovery advances it before flushing a page, and keeps it after a clean shutdown
//!   in recovery or a crash), the last checkpoint record for a cleanly shut down server that
//!   was not in recovery. The server refuses the reference if this is after the new backup's
//!   start: a directory that has seen WAL the new backup's start does not cover (a source that
//!   is behind it) would otherwise end up with pages newer than the backup it claims to be. (An
//!   End-LSN equal to the start is accepted too, but checks nothing.)
//! - **A standby still recovering from its base backup** (`backupStartPoint` set, or
//!   `backupEndRequired`): start at `min(redo, backupStartPoint)`, the backup's own start, where
//!   the online copy is sound; end at the largest of `minRecoveryPoint` and `backupEndPoint`
//!   (a copy from a primary has pages up to its unknown backup end: the end check is weaker).
//! - **A copy never started** (`backup_label` present): pg_control was copied last and may name
//!   a checkpoint later than the backup's start, so the label's `START WAL LOCATION` and
//!   `START TIMELINE` are the start, and the end (unknown here) is the start.
//!
//! # Refused
//! - a `backup_label` with `INCREMENTAL FROM LSN`: an incremental backup never combined, or a
//!   refresh of pgclone's that did not finish (its journal is the reference then);
//! - a server that is running, crashed outside archive recovery, or an online copy of a primary
//!   without its label (`in production`, `in crash recovery`, `starting up`, `shutting down`):
//!   the WAL position its pages may reflect is not in pg_control;
//! - a standby without a minimum recovery point, or whose minimum recovery point is on another
//!   timeline than its last restartpoint (a timeline switch replayed since): one WAL range
//!   cannot describe it.
//!
//! Accepted although it ran as a primary: a **cleanly shut down** server (`shut down`), whose
//! pages reflect no WAL after its shutdown checkpoint; the history check below tells a
//! switchover's old primary (fine) from one that kept writing after the failover (refused).
//!
//! Not checked here (the caller's job): that no postmaster runs on the directory, that the
//! primary's system identifier is the directory's, and that the directory's timeline has not
//! left the primary's history (the server checks that the timeline is in its history, but not
//! that the directory's end is before the primary switched away from it; see
//! [`ReferencePoint::check_history`]).
//!
//! # Listed files
//! Every file a base backup of the directory would list (`walk`), except relation files whose
//! size is not a multiple of the block size (cut off by a crash mid-extension): unlisted, they
//! are sent whole.

use std::path::Path;

use pgclone_proto::{Lsn, TimelineId};

use crate::manifest::{ChecksumAlgorithm, ManifestFile, ManifestWriter, WalRange};
use crate::refresh::control::{ControlError, ControlFile, DbState};
use crate::refresh::label::{BackupLabel, LabelError};
use crate::refresh::walk::{list_data_files, WalkError};

/// Why no reference manifest can be built from a data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// `global/pg_control` is missing, unreadable or not a 17/18 control file.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A file or directory could not be read.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// `backup_label` could not be read.
    #[error(transparent)]
    Label(#[from] LabelError),
    /// `backup_label` is an incremental backup's.
    #[error(
        "the data directory's backup_label is an incremental backup's (from {from}): combine it \
         with pg_combinebackup, finish the refresh that left it, or make a full clone"
    )]
    IncrementalLabel {
        /// `INCREMENTAL FROM LSN`.
        from: Lsn,
    },
    /// A state whose WAL extent pg_control does not record.
    #[error(
        "the data directory's state is \"{0}\": only a standby (running until it was stopped \
         or killed) or a cleanly shut down server can be refreshed; make a full clone"
    )]
    State(DbState),
    /// A standby without a usable minimum recovery point.
    #[error(
        "the standby's minimum recovery point {point} on timeline {point_timeline} does not \
         follow its last restartpoint on timeline {timeline}: start it until it makes a \
         restartpoint, or make a full clone"
    )]
    RecoveryPoint {
        /// `minRecoveryPoint`.
        point: Lsn,
        /// `minRecoveryPointTLI`.
        point_timeline: u32,
        /// `checkPointCopy.ThisTimeLineID`.
        timeline: TimelineId,
    },
}

/// The WAL range a reference manifest names: the directory holds every block as of `start` on
/// `timeline`, and no page newer than `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReferencePoint {
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The timeline of the last checkpoint or restartpoint.
    pub timeline: TimelineId,
    /// Its REDO point: the reference LSN.
    pub start: Lsn,
    /// The newest WAL position a page on disk may reflect.
    pub end: Lsn,
}

impl ReferencePoint {
    /// The reference point of a data directory with this control file and, when it has one,
    /// this `backup_label` (a copy never started), or why there is none.
    pub fn new(control: &ControlFile, label: Option<&BackupLabel>) -> Result<Self, ReferenceError> {
        match label {
            Some(label) => Self::from_label(control, label),
            None => Self::from_control(control),
        }
    }

    /// The point of a copy never started: its label's start, ending there.
    pub fn from_label(control: &ControlFile, label: &BackupLabel) -> Result<Self, ReferenceError> {
        if let Some(from) = label.incremental_from {
            return Err(ReferenceError::IncrementalLabel { from });
        }
        Ok(Self {
            system_identifier: control.system_identifier,
            timeline: label.timeline,
            start: label.start,
            end: label.start,
        })
    }

    /// The point of a directory without `backup_label`, from its control file alone.
    pub fn from_control(control: &ControlFile) -> Result<Self, ReferenceError> {
        let in_backup = control.backup_in_progress();
        let mut start = control.redo;
        if in_backup && control.backup_start_point != Lsn::INVALID {
            start = start.min(control.backup_start_point);
        }
        let end = match control.state {
            DbState::ShutdownedInRecovery | DbState::InArchiveRecovery => {
                let point = control.min_recovery_point;
                let usable = if point == Lsn::INVALID {
                    in_backup
                } else {
                    control.min_recovery_point_timeline == control.timeline.0
                };
                if !usable {
                    return Err(ReferenceError::RecoveryPoint {
                        point,
                        point_timeline: control.min_recovery_point_timeline,
                        timeline: control.timeline,
                    });
                }
                point.max(control.backup_end_point)
            }
            DbState::Shutdowned if !in_backup => control.checkpoint,
            other => return Err(ReferenceError::State(other)),
        };
        Ok(Self {
            system_identifier: control.system_identifier,
            timeline: control.timeline,
            start,
            end: end.max(start),
        })
    }

    /// The manifest's one WAL range.
    pub fn wal_range(&self) -> WalRange {
        WalRange {
            timeline: self.timeline,
            start: self.start,
            end: self.end,
        }
    }
}

/// A synthesized reference manifest and what it was made from.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The directory's control file.
    pub control: ControlFile,
    /// The WAL range written.
    pub point: ReferencePoint,
    /// How many files the manifest lists.
    pub files: usize,
    /// The manifest, ready for `UPLOAD_MANIFEST`.
    pub manifest: Vec<u8>,
}

/// Builds the reference manifest of the stopped data directory `data_dir`: its
/// [`ReferencePoint`] (from pg_control, or `backup_label` when there is one) as the WAL range,
/// and every file a base backup of it would list but partial relation files, with size and
/// modification time (no per-file checksums: the server does not use them).
pub fn synthesize(data_dir: &Path) -> Result<Reference, ReferenceError> {
    let control = ControlFile::read_data_dir(data_dir)?;
    let label = BackupLabel::read_data_dir(data_dir)?;
    let point = ReferencePoint::new(&control, label.as_ref())?;
    let (manifest, files) = manifest_at(data_dir, &point, control.block_size)?;
    Ok(Reference {
        control,
        point,
        files,
        manifest,
    })
}

/// The reference manifest of `data_dir` for a reference point already known (an interrupted
/// refresh's, whose `pg_control` is gone): every file a base backup of it would list but
/// relation files whose size is not a multiple of `block_size`; returns it with its number of
/// files.
pub fn manifest_at(
    data_dir: &Path,
    point: &ReferencePoint,
    block_size: u32,
) -> Result<(Vec<u8>, usize), ReferenceError> {
    let mut writer = ManifestWriter::new(point.system_identifier);
    let block_size = u64::from(block_size.max(1));
    for file in list_data_files(data_dir)? {
        if file.relation && file.size % block_size != 0 {
            continue;
        }
        let entry = ManifestFile {
            path: file.path,
            size: file.size,
            algorithm: ChecksumAlgorithm::None,
            checksum: None,
        };
        writer.add_file(&entry, Some(file.modified));
    }
    let files = writer.file_count();
    tracing::debug!(
        "reference manifest of {}: {files} files, timeline {}, from {} to {}",
        data_dir.display(),
        point.timeline,
        point.start,
        point.end
    );
    Ok((writer.finish(&[point.wal_range()]), files))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs;

    use super::*;
    use crate::manifest::Manifest;
    use crate::refresh::control::sample;

    fn label(incremental_from: Option<Lsn>) -> BackupLabel {
        BackupLabel {
            start: Lsn(0x2_0000_0028),
            timeline: TimelineId(2),
            incremental_from,
        }
    }

    #[test]
    fn a_standby_is_referenced_from_its_restartpoint_to_its_recovery_point() {
        let c = sample(1800);
        let p = ReferencePoint::new(&c, None).unwrap();
        assert_eq!(
            (p.timeline, p.start, p.end),
            (c.timeline, c.redo, c.min_recovery_point)
        );
        let mut killed = c.clone();
        killed.state = DbState::InArchiveRecovery;
        assert_eq!(ReferencePoint::new(&killed, None).unwrap(), p);
        let mut stopped_primary = c.clone();
        stopped_primary.state = DbState::Shutdowned;
        stopped_primary.min_recovery_point = Lsn::INVALID;
        let p = ReferencePoint::new(&stopped_primary, None).unwrap();
        assert_eq!((p.start, p.end), (c.redo, c.checkpoint));
    }

    #[test]
    fn a_backup_still_recovering_starts_at_its_backup_start() {
        let mut c = sample(1700);
        c.backup_start_point = Lsn(0x2_0000_0028);
        c.backup_end_point = Lsn(0x3_0000_0300);
        c.min_recovery_point = Lsn::INVALID;
        c.min_recovery_point_timeline = 0;
        let p = ReferencePoint::new(&c, None).unwrap();
        assert_eq!((p.start, p.end), (c.backup_start_point, c.backup_end_point));
        c.state = DbState::Shutdowned;
        assert!(matches!(
            ReferencePoint::new(&c, None),
            Err(ReferenceError::State(DbState::Shutdowned))
        ));
    }

    #[test]
    fn a_copy_never_started_uses_its_label() {
        let c = sample(1800);
        let p = ReferencePoint::new(&c, Some(&label(None))).unwrap();
        assert_eq!(
            (p.timeline, p.start, p.end),
            (TimelineId(2), Lsn(0x2_0000_0028), p.start)
        );
        let err = ReferencePoint::new(&c, Some(&label(Some(Lsn(0x100))))).unwrap_err();
        assert!(
            err.to_string()
                .contains("incremental backup's (from 0/100)"),
            "{err}"
        );
    }

    #[test]
    fn refuses_what_pg_control_cannot_bound() {
        for state in [
            DbState::InProduction,
            DbState::InCrashRecovery,
            DbState::Startup,
            DbState::Shutdowning,
        ] {
            let mut c = sample(1800);
            c.state = state;
            let err = ReferencePoint::new(&c, None).unwrap_err();
            assert!(err.to_string().contains(&format!("\"{state}\"")), "{err}");
        }
        let mut c = sample(1800);
        c.min_recovery_point_timeline = 3;
        let err = ReferencePoint::new(&c, None).unwrap_err();
        assert!(matches!(err, ReferenceError::RecoveryPoint { .. }), "{err}");
        c.min_recovery_point = Lsn::INVALID;
        assert!(ReferencePoint::new(&c, None).is_err());
    }

    #[test]
    fn synthesizes_a_manifest_without_partial_relation_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("global")).unwrap();
        fs::create_dir_all(d.join("base/5")).unwrap();
        let control = sample(1700);
        fs::write(d.join("global/pg_control"), control.encode()).unwrap();
        fs::write(d.join("base/5/16384"), vec![0u8; 16384]).unwrap();
        fs::write(d.join("base/5/16385"), vec![0u8; 8192 + 100]).unwrap();
        fs::write(d.join("base/5/PG_VERSION"), b"17\n").unwrap();
        let r = synthesize(d).unwrap();
        Manifest::check_own_checksum(&r.manifest).unwrap();
        let m = Manifest::parse(&r.manifest).unwrap();
        assert_eq!(m.system_identifier, Some(control.system_identifier));
        let paths: Vec<&[u8]> = m.files.iter().map(|f| f.path.as_slice()).collect();
        assert_eq!(
            paths,
            [
                &b"base/5/16384"[..],
                b"base/5/PG_VERSION",
                b"global/pg_control"
            ]
        );
        assert_eq!(m.wal_ranges, vec![r.point.wal_range()]);
        assert_eq!(r.files, 3);
        // A label makes it a copy never started.
        fs::write(
            d.join("backup_label"),
            "START WAL LOCATION: 0/5000028 (file 000000020000000000000005)\nSTART TIMELINE: 2\n",
        )
        .unwrap();
        assert_eq!(synthesize(d).unwrap().point.start, Lsn(0x500_0028));
    }
}
