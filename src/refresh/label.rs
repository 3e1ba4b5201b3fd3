//! The `backup_label` of a data directory that was never started since it was copied: where its
//! backup started (`START WAL LOCATION`, `START TIMELINE`) and whether it is an incremental
//! backup (`INCREMENTAL FROM LSN`), which pgclone's own unfinished refresh also leaves behind.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use pgclone_proto::{Lsn, TimelineId};

/// The name of the file inside a data directory.
pub const BACKUP_LABEL: &str = "backup_label";

/// What a `backup_label` says about where its backup starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`.
    pub start: Lsn,
    /// `START TIMELINE`.
    pub timeline: TimelineId,
    /// `INCREMENTAL FROM LSN`, when the backup is an incremental one.
    pub incremental_from: Option<Lsn>,
}

/// Why a `backup_label` could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// The file exists but could not be read.
    #[error("could not read \"{}\"", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A line that is needed is missing or malformed.
    #[error("invalid \"{}\": no valid {what} line", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line, e.g. `START WAL LOCATION`.
        what: &'static str,
    },
}

impl BackupLabel {
    /// Reads `backup_label` in `data_dir`; `None` when there is none.
    pub fn read_data_dir(data_dir: &Path) -> Result<Option<Self>, LabelError> {
        let path = data_dir.join(BACKUP_LABEL);
        match fs::read(&path) {
            Ok(bytes) => Self::parse(&bytes, &path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LabelError::Read { path, source }),
        }
    }

    /// Parses a label's text; `path` is only for messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, LabelError> {
        let text = String::from_utf8_lossy(bytes);
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
        };
        let invalid = |what| LabelError::Invalid {
            path: path.to_owned(),
            what,
        };
        let lsn = |key, what| -> Result<Option<Lsn>, LabelError> {
            value(key)
                .map(|v| v.parse::<Lsn>().map_err(|_| invalid(what)))
                .transpose()
        };
        let start = lsn("START WAL LOCATION: ", "START WAL LOCATION")?
            .ok_or_else(|| invalid("START WAL LOCATION"))?;
        let timeline = value("START TIMELINE: ")
            .and_then(|v| v.parse::<TimelineId>().ok())
            .ok_or_else(|| invalid("START TIMELINE"))?;
        Ok(Self {
            start,
            timeline,
            incremental_from: lsn("INCREMENTAL FROM LSN: ", "INCREMENTAL FROM LSN")?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_start_timeline_and_incremental_lines() {
        let p = Path::new("backup_label");
        let full = b"START WAL LOCATION: 0/7000028 (file 000000010000000000000007)\n\
                     CHECKPOINT LOCATION: 0/7000080\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-12-01 16:24:57 UTC\n\
                     LABEL: pgclone base backup\nSTART TIMELINE: 2\n";
        let label = BackupLabel::parse(full, p).unwrap();
        assert_eq!(label.start, Lsn(0x700_0028));
        assert_eq!(label.timeline, TimelineId(2));
        assert_eq!(label.incremental_from, None);
        let inc = [
            &full[..],
            b"INCREMENTAL FROM LSN: 0/5000028\nINCREMENTAL FROM TLI: 1\n",
        ]
        .concat();
        let label = BackupLabel::parse(&inc, p).unwrap();
        assert_eq!(label.incremental_from, Some(Lsn(0x500_0028)));
        let err = BackupLabel::parse(b"START TIMELINE: 1\n", p).unwrap_err();
        assert!(err.to_string().contains("START WAL LOCATION"), "{err}");
        let err = BackupLabel::parse(b"START WAL LOCATION: 0/1 (file x)\n", p).unwrap_err();
        assert!(err.to_string().contains("START TIMELINE"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BackupLabel::read_data_dir(dir.path()).unwrap(), None);
    }
}
