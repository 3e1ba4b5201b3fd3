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
//!   pg_control is updated only after that. So every block the primary changed before the REDO
//!   point is on the standby's disk as the primary has it, and every block changed at or after it
//!   is in the summaries from there on, hence in the incremental backup.
//! - **End**: the newest WAL position any page on disk may reflect: `minRecoveryPoint` for a
//!   standby (recovery advances it before flushing a page, and keeps it after a clean shutdown
//!   in recovery; after a crash or kill -9 it still bounds what was flushed), the last
//!   checkpoint record for a cleanly shut down server that was not in recovery. The server
//!   refuses the reference if this is after the new backup's start: a directory that has seen
//!   WAL the new backup's start does not cover (refreshing from a source that is behind) would
//!   otherwise end up with pages newer than the backup it claims to be.
//!
//! # Refused
//! - a backup whose recovery has not reached its end (`backupStartPoint`, `backupEndPoint` or
//!   `backupEndRequired` set): its pages are an online copy, not bounded by pg_control; use the
//!   backup's own `backup_manifest`;
//! - a server that is running, crashed outside recovery, or an online copy never started
//!   (`in production`, `in crash recovery`, `starting up`, `shutting down`): the WAL position
//!   its pages may reflect is not in pg_control;
//! - a standby without a minimum recovery point, or whose minimum recovery point is on another
//!   timeline than its last restartpoint (a timeline switch replayed since): one WAL range
//!   cannot describe it.
//!
//! Not checked here (the caller's job): that no postmaster runs on the directory, that the
//! primary's system identifier is the directory's, and that the directory's timeline has not
//! left the primary's history (the server checks that the timeline is in its history, but not
//! that the directory's end is before the primary switched away from it; see
//! [`ReferencePoint::check_history`]).

use std::path::Path;

use pgclone_proto::{Lsn, TimelineId};

use crate::manifest::{ChecksumAlgorithm, ManifestFile, ManifestWriter, WalRange};
use crate::refresh::control::{ControlError, ControlFile, DbState};
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
    /// Recovery from a base backup has not reached its end.
    #[error(
        "the data directory has not finished recovering from its base backup (backup start \
         {start}, end {end}): use that backup's backup_manifest, or make a full clone"
    )]
    BackupNotFinished {
        /// `backupStartPoint`.
        start: Lsn,
        /// `backupEndPoint`.
        end: Lsn,
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
    /// The reference point of a data directory with this control file, or why there is none.
    pub fn from_control(control: &ControlFile) -> Result<Self, ReferenceError> {
        if control.backup_in_progress() {
            return Err(ReferenceError::BackupNotFinished {
                start: control.backup_start_point,
                end: control.backup_end_point,
            });
        }
        let end = match control.state {
            DbState::ShutdownedInRecovery | DbState::InArchiveRecovery => {
                if control.min_recovery_point == Lsn::INVALID
                    || control.min_recovery_point_timeline != control.timeline.0
                {
                    return Err(ReferenceError::RecoveryPoint {
                        point: control.min_recovery_point,
                        point_timeline: control.min_recovery_point_timeline,
                        timeline: control.timeline,
                    });
                }
                control.min_recovery_point
            }
            DbState::Shutdowned => control.checkpoint,
            other => return Err(ReferenceError::State(other)),
        };
        Ok(Self {
            system_identifier: control.system_identifier,
            timeline: control.timeline,
            start: control.redo,
            end: end.max(control.redo),
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

/// Builds the reference manifest of the stopped data directory `data_dir`: its control file's
/// [`ReferencePoint`] as the WAL range, and every file a base backup of it would list, with
/// size and modification time (no per-file checksums: the server does not use them).
pub fn synthesize(data_dir: &Path) -> Result<Reference, ReferenceError> {
    let control = ControlFile::read_data_dir(data_dir)?;
    let point = ReferencePoint::from_control(&control)?;
    let mut writer = ManifestWriter::new(point.system_identifier);
    for file in list_data_files(data_dir)? {
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
    Ok(Reference {
        control,
        point,
        files,
        manifest: writer.finish(&[point.wal_range()]),
    })
}
