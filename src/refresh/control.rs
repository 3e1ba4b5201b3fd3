//! Reading `global/pg_control` of a PostgreSQL 17 or 18 data directory: the facts a refresh
//! needs (system identifier, versions, state, the last checkpoint or restartpoint, the minimum
//! recovery point, the backup fields, block and segment sizes, data checksums).
//!
//! The layout is `ControlFileData` of `src/include/catalog/pg_control.h` (REL_17_STABLE,
//! `PG_CONTROL_VERSION` 1700, and REL_18_STABLE, 1800) as a little-endian 64-bit machine (x86-64,
//! aarch64) lays it out; 18 adds one `bool` before the authentication nonce, which moves only the
//! CRC. The file is always 8192 bytes; its CRC-32C covers every byte before the CRC field. As
//! the server does, the version is checked before the CRC, so that a file of another major says
//! so instead of "bad CRC". Other majors and big-endian files are refused, not guessed at.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use pgclone_proto::{Lsn, TimelineId, WalSegSize};

/// Size of `global/pg_control` (`PG_CONTROL_FILE_SIZE`).
pub const CONTROL_FILE_SIZE: usize = 8192;

/// The `pg_control_version` values this module reads: PostgreSQL 17 and 18.
pub const SUPPORTED_VERSIONS: [u32; 2] = [1700, 1800];

/// Where the file lives inside a data directory.
pub const CONTROL_FILE_PATH: &str = "global/pg_control";

/// Byte offsets inside `ControlFileData` (17 and 18 agree on all of them but the CRC's).
mod offset {
    pub(super) const SYSTEM_IDENTIFIER: usize = 0;
    pub(super) const CONTROL_VERSION: usize = 8;
    pub(super) const CATALOG_VERSION: usize = 12;
    pub(super) const STATE: usize = 16;
    pub(super) const CHECKPOINT: usize = 32;
    /// `checkPointCopy` starts at 40: `redo`, then `ThisTimeLineID`, `PrevTimeLineID`.
    pub(super) const REDO: usize = 40;
    pub(super) const THIS_TIMELINE: usize = 48;
    pub(super) const PREV_TIMELINE: usize = 52;
    pub(super) const MIN_RECOVERY_POINT: usize = 136;
    pub(super) const MIN_RECOVERY_POINT_TLI: usize = 144;
    pub(super) const BACKUP_START_POINT: usize = 152;
    pub(super) const BACKUP_END_POINT: usize = 160;
    pub(super) const BACKUP_END_REQUIRED: usize = 168;
    pub(super) const BLCKSZ: usize = 216;
    pub(super) const RELSEG_SIZE: usize = 220;
    pub(super) const XLOG_SEG_SIZE: usize = 228;
    pub(super) const DATA_CHECKSUM_VERSION: usize = 252;
    /// `crc` follows the 32-byte nonce: at 256 + 32 on 17, 257 + 32 rounded up to 4 on 18.
    pub(super) const CRC_17: usize = 288;
    pub(super) const CRC_18: usize = 292;
}

/// The cluster state (`DBState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbState {
    /// `starting up`.
    Startup,
    /// `shut down`: a clean shutdown of a server that was not in recovery.
    Shutdowned,
    /// `shut down in recovery`: a clean shutdown of a standby.
    ShutdownedInRecovery,
    /// `shutting down`.
    Shutdowning,
    /// `in crash recovery`.
    InCrashRecovery,
    /// `in archive recovery`: a running standby, or one that crashed or was killed.
    InArchiveRecovery,
    /// `in production`: a running primary, one that crashed, or an online copy of one.
    InProduction,
}

impl DbState {
    fn from_raw(value: u32) -> Option<Self> {
        Some(match value {
            0 => Self::Startup,
            1 => Self::Shutdowned,
            2 => Self::ShutdownedInRecovery,
            3 => Self::Shutdowning,
            4 => Self::InCrashRecovery,
            5 => Self::InArchiveRecovery,
            6 => Self::InProduction,
            _ => return None,
        })
    }

    /// The state as pg_controldata prints it (`Database cluster state`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Startup => "starting up",
            Self::Shutdowned => "shut down",
            Self::ShutdownedInRecovery => "shut down in recovery",
            Self::Shutdowning => "shutting down",
            Self::InCrashRecovery => "in crash recovery",
            Self::InArchiveRecovery => "in archive recovery",
            Self::InProduction => "in production",
        }
    }
}

impl std::fmt::Display for DbState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `global/pg_control` says (the fields a refresh uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFile {
    /// `system_identifier`.
    pub system_identifier: u64,
    /// `pg_control_version` (1700 or 1800).
    pub pg_control_version: u32,
    /// `catalog_version_no`.
    pub catalog_version: u32,
    /// `state`.
    pub state: DbState,
    /// `checkPoint`: where the last checkpoint (or restartpoint) record is.
    pub checkpoint: Lsn,
    /// `checkPointCopy.redo`: the REDO location of that checkpoint.
    pub redo: Lsn,
    /// `checkPointCopy.ThisTimeLineID`.
    pub timeline: TimelineId,
    /// `checkPointCopy.PrevTimeLineID`.
    pub prev_timeline: TimelineId,
    /// `minRecoveryPoint` ([`Lsn::INVALID`] outside archive recovery).
    pub min_recovery_point: Lsn,
    /// `minRecoveryPointTLI` (0 when there is no minimum recovery point).
    pub min_recovery_point_timeline: u32,
    /// `backupStartPoint`: set while recovery from an online backup has not reached its end.
    pub backup_start_point: Lsn,
    /// `backupEndPoint`: the same, for a backup taken from a standby.
    pub backup_end_point: Lsn,
    /// `backupEndRequired`.
    pub backup_end_required: bool,
    /// `blcksz`: the data block size.
    pub block_size: u32,
    /// `relseg_size`: blocks per segment file of a relation.
    pub relation_segment_blocks: u32,
    /// `xlog_seg_size`: the WAL segment size.
    pub wal_segment_size: WalSegSize,
    /// `data_checksum_version` (0: data checksums off).
    pub data_checksum_version: u32,
}

/// Why `global/pg_control` could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The file does not exist: not a data directory.
    #[error("\"{}\" does not exist: not a PostgreSQL data directory", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("could not read \"{}\"", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The file is not `CONTROL_FILE_SIZE` bytes.
    #[error("\"{}\" has {size} bytes, expected {CONTROL_FILE_SIZE}", path.display())]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A `pg_control_version` this module does not read.
    #[error(
        "\"{}\" has pg_control version {version}, but only {} (PostgreSQL 17) and {} \
         (PostgreSQL 18) are supported",
        path.display(), SUPPORTED_VERSIONS[0], SUPPORTED_VERSIONS[1]
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// The CRC does not match the contents.
    #[error(
        "incorrect checksum in \"{}\": stored {stored:08x}, computed {computed:08x}",
        path.display()
    )]
    BadCrc {
        /// The file.
        path: PathBuf,
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the contents.
        computed: u32,
    },
    /// A field with a value PostgreSQL never writes (after a matching CRC).
    #[error("\"{}\" has an invalid {field}: {value}", path.display())]
    InvalidField {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

impl ControlFile {
    /// Reads `global/pg_control` of the data directory `data_dir`.
    pub fn read_data_dir(data_dir: &Path) -> Result<Self, ControlError> {
        Self::read(&data_dir.join(CONTROL_FILE_PATH))
    }

    /// Reads the control file at `path`.
    pub fn read(path: &Path) -> Result<Self, ControlError> {
        let bytes = fs::read(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ControlError::Missing {
                path: path.to_owned(),
            },
            _ => ControlError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses the bytes of a control file; `path` is only for messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, ControlError> {
        let file: &[u8; CONTROL_FILE_SIZE] = bytes.try_into().map_err(|_| ControlError::Size {
            path: path.to_owned(),
            size: bytes.len() as u64,
        })?;
        let version = u32_at(file, offset::CONTROL_VERSION);
        let crc_at = match version {
            1700 => offset::CRC_17,
            1800 => offset::CRC_18,
            _ => {
                return Err(ControlError::UnsupportedVersion {
                    path: path.to_owned(),
                    version,
                })
            }
        };
        let stored = u32_at(file, crc_at);
        let computed = crc32c::crc32c(&file[..crc_at]);
        if stored != computed {
            return Err(ControlError::BadCrc {
                path: path.to_owned(),
                stored,
                computed,
            });
        }
        Self::fields(file, version, path)
    }

    /// The fields of a control file whose version and CRC are right.
    fn fields(
        file: &[u8; CONTROL_FILE_SIZE],
        version: u32,
        path: &Path,
    ) -> Result<Self, ControlError> {
        let invalid = |field: &'static str, value: u64| ControlError::InvalidField {
            path: path.to_owned(),
            field,
            value,
        };
        let state_raw = u32_at(file, offset::STATE);
        let state = DbState::from_raw(state_raw).ok_or(invalid("state", state_raw.into()))?;
        let timeline = |at: usize, field: &'static str| match u32_at(file, at) {
            0 => Err(invalid(field, 0)),
            tli => Ok(TimelineId(tli)),
        };
        let seg_size = u32_at(file, offset::XLOG_SEG_SIZE);
        Ok(Self {
            system_identifier: u64_at(file, offset::SYSTEM_IDENTIFIER),
            pg_control_version: version,
            catalog_version: u32_at(file, offset::CATALOG_VERSION),
            state,
            checkpoint: Lsn(u64_at(file, offset::CHECKPOINT)),
            redo: Lsn(u64_at(file, offset::REDO)),
            timeline: timeline(offset::THIS_TIMELINE, "checkpoint timeline")?,
            prev_timeline: timeline(offset::PREV_TIMELINE, "previous checkpoint timeline")?,
            min_recovery_point: Lsn(u64_at(file, offset::MIN_RECOVERY_POINT)),
            min_recovery_point_timeline: u32_at(file, offset::MIN_RECOVERY_POINT_TLI),
            backup_start_point: Lsn(u64_at(file, offset::BACKUP_START_POINT)),
            backup_end_point: Lsn(u64_at(file, offset::BACKUP_END_POINT)),
            backup_end_required: file[offset::BACKUP_END_REQUIRED] != 0,
            block_size: u32_at(file, offset::BLCKSZ),
            relation_segment_blocks: u32_at(file, offset::RELSEG_SIZE),
            wal_segment_size: WalSegSize::from_bytes(seg_size.into())
                .map_err(|_| invalid("WAL segment size", seg_size.into()))?,
            data_checksum_version: u32_at(file, offset::DATA_CHECKSUM_VERSION),
        })
    }

    /// Whether recovery from an online backup is still under way (`backupStartPoint`,
    /// `backupEndPoint` or `backupEndRequired` set): the directory is not consistent yet.
    pub fn backup_in_progress(&self) -> bool {
        self.backup_start_point != Lsn::INVALID
            || self.backup_end_point != Lsn::INVALID
            || self.backup_end_required
    }
}

/// A control file of `version` as a cleanly stopped standby has it (for tests).
#[cfg(test)]
pub(crate) fn sample(version: u32) -> ControlFile {
    ControlFile {
        system_identifier: 7_450_000_000_000_000_123,
        pg_control_version: version,
        catalog_version: 202_406_281,
        state: DbState::ShutdownedInRecovery,
        checkpoint: Lsn(0x3_0000_0100),
        redo: Lsn(0x3_0000_0028),
        timeline: TimelineId(2),
        prev_timeline: TimelineId(2),
        min_recovery_point: Lsn(0x3_0000_0200),
        min_recovery_point_timeline: 2,
        backup_start_point: Lsn::INVALID,
        backup_end_point: Lsn::INVALID,
        backup_end_required: false,
        block_size: 8192,
        relation_segment_blocks: 131_072,
        wal_segment_size: WalSegSize::DEFAULT,
        data_checksum_version: 1,
    }
}

#[cfg(test)]
impl ControlFile {
    /// The 8192 bytes of this control file, CRC included (the fields this module reads; the
    /// rest zero).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut f = vec![0u8; CONTROL_FILE_SIZE];
        let mut put = |at: usize, bytes: &[u8]| f[at..at + bytes.len()].copy_from_slice(bytes);
        put(
            offset::SYSTEM_IDENTIFIER,
            &self.system_identifier.to_le_bytes(),
        );
        put(
            offset::CONTROL_VERSION,
            &self.pg_control_version.to_le_bytes(),
        );
        put(offset::CATALOG_VERSION, &self.catalog_version.to_le_bytes());
        let state = [
            DbState::Startup,
            DbState::Shutdowned,
            DbState::ShutdownedInRecovery,
            DbState::Shutdowning,
            DbState::InCrashRecovery,
            DbState::InArchiveRecovery,
            DbState::InProduction,
        ]
        .iter()
        .position(|s| *s == self.state)
        .unwrap_or(0) as u32;
        put(offset::STATE, &state.to_le_bytes());
        put(offset::CHECKPOINT, &self.checkpoint.0.to_le_bytes());
        put(offset::REDO, &self.redo.0.to_le_bytes());
        put(offset::THIS_TIMELINE, &self.timeline.0.to_le_bytes());
        put(offset::PREV_TIMELINE, &self.prev_timeline.0.to_le_bytes());
        put(
            offset::MIN_RECOVERY_POINT,
            &self.min_recovery_point.0.to_le_bytes(),
        );
        put(
            offset::MIN_RECOVERY_POINT_TLI,
            &self.min_recovery_point_timeline.to_le_bytes(),
        );
        put(
            offset::BACKUP_START_POINT,
            &self.backup_start_point.0.to_le_bytes(),
        );
        put(
            offset::BACKUP_END_POINT,
            &self.backup_end_point.0.to_le_bytes(),
        );
        put(
            offset::BACKUP_END_REQUIRED,
            &[u8::from(self.backup_end_required)],
        );
        put(offset::BLCKSZ, &self.block_size.to_le_bytes());
        put(
            offset::RELSEG_SIZE,
            &self.relation_segment_blocks.to_le_bytes(),
        );
        put(
            offset::XLOG_SEG_SIZE,
            &self.wal_segment_size.bytes().to_le_bytes(),
        );
        put(
            offset::DATA_CHECKSUM_VERSION,
            &self.data_checksum_version.to_le_bytes(),
        );
        let crc_at = if self.pg_control_version == 1700 {
            offset::CRC_17
        } else {
            offset::CRC_18
        };
        let crc = crc32c::crc32c(&f[..crc_at]);
        f[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        f
    }
}

fn u32_at(file: &[u8; CONTROL_FILE_SIZE], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&file[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(file: &[u8; CONTROL_FILE_SIZE], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&file[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A synthetic control file of `version` with a few fields set and a correct CRC.
    /// (Real files from initdb 17 and 18 are read in tests/refresh_reference.rs.)
    fn synthetic(version: u32) -> Vec<u8> {
        sample(version).encode()
    }
    #[test]
    fn reads_both_layouts() {
        for version in SUPPORTED_VERSIONS {
            let c = ControlFile::parse(&synthetic(version), Path::new("x")).unwrap();
            assert_eq!(c, sample(version));
            assert_eq!(c.pg_control_version, version);
            assert_eq!(c.system_identifier, 7_450_000_000_000_000_123);
            assert_eq!(c.state, DbState::ShutdownedInRecovery);
            assert_eq!(c.redo, Lsn(0x3_0000_0028));
            assert_eq!(c.checkpoint, Lsn(0x3_0000_0100));
            assert_eq!(c.timeline, TimelineId(2));
            assert_eq!(c.min_recovery_point, Lsn(0x3_0000_0200));
            assert_eq!(c.min_recovery_point_timeline, 2);
            assert!(!c.backup_in_progress());
            assert_eq!(c.wal_segment_size, WalSegSize::DEFAULT);
            assert_eq!(c.data_checksum_version, 1);
        }
    }

    #[test]
    fn refuses_wrong_size_version_and_crc() {
        let p = Path::new("global/pg_control");
        let err = ControlFile::parse(&[0; 296], p).unwrap_err();
        assert!(matches!(err, ControlError::Size { size: 296, .. }), "{err}");

        let mut f = synthetic(1700);
        f[offset::CONTROL_VERSION..offset::CONTROL_VERSION + 4]
            .copy_from_slice(&1300u32.to_le_bytes());
        let err = ControlFile::parse(&f, p).unwrap_err();
        assert!(
            err.to_string().contains(
                "pg_control version 1300, but only 1700 (PostgreSQL 17) and 1800 (PostgreSQL 18)"
            ),
            "{err}"
        );

        // 18's CRC position read as 17 (and the reverse) does not match.
        let mut f = synthetic(1800);
        f[offset::CONTROL_VERSION..offset::CONTROL_VERSION + 4]
            .copy_from_slice(&1700u32.to_le_bytes());
        let err = ControlFile::parse(&f, p).unwrap_err();
        assert!(matches!(err, ControlError::BadCrc { .. }), "{err}");

        let mut f = synthetic(1800);
        f[offset::REDO] ^= 1;
        let err = ControlFile::parse(&f, p).unwrap_err();
        assert!(
            err.to_string().starts_with("incorrect checksum in"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_says_not_a_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = ControlFile::read_data_dir(dir.path()).unwrap_err();
        assert!(matches!(err, ControlError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("not a PostgreSQL data directory"));
    }
}
