//! The refresh marker, `pgclone_refresh` in the data directory: written (and fsynced with its
//! directory) once the server has accepted the incremental backup and before the in-place
//! writer removes `global/pg_control`; removed (durably) only after the new `pg_control` is in
//! place. A directory with the marker is a refresh that did not finish: a later `--refresh`
//! takes the marker's reference point again (the directory's own `pg_control` is gone or no
//! longer describes its files) and completes it.
//!
//! The file is JSON: `{"format": 1, "system_identifier": ..., "major": 17, "timeline": 1,
//! "start": "0/5000028", "end": "0/6000100", "block_size": 8192}`.

use std::fs;
use std::io;
use std::path::Path;

use pgclone_proto::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::refresh::ReferencePoint;
use crate::sink::durable;
use crate::sink::fs as sinkfs;

/// The marker's name in the data directory.
pub const MARKER: &str = "pgclone_refresh";

/// The format written today.
const FORMAT: u32 = 1;

/// Largest marker read (it is a few hundred bytes).
const MAX_MARKER_BYTES: u64 = 64 * 1024;

/// What an unfinished refresh recorded: enough to synthesize the same reference again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The reference point the refresh used.
    pub point: ReferencePoint,
    /// The directory's major version (`PG_VERSION`).
    pub major: u32,
    /// The directory's block size.
    pub block_size: u32,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    system_identifier: u64,
    major: u32,
    timeline: u32,
    start: String,
    end: String,
    block_size: u32,
}

impl Marker {
    /// Reads the marker of `dir`: `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, Error> {
        let path = dir.join(MARKER);
        let bytes = match fs::metadata(&path) {
            Ok(m) if m.len() > MAX_MARKER_BYTES => return Err(bad(&path, "too large")),
            Ok(_) => fs::read(&path).map_err(Error::fs("read file", &path))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::fs("read file", &path)(e)),
        };
        let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| bad(&path, &e.to_string()))?;
        if d.format != FORMAT {
            return Err(bad(&path, &format!("unknown format {}", d.format)));
        }
        let lsn = |text: &str| text.parse::<Lsn>().map_err(|e| bad(&path, &e.to_string()));
        Ok(Some(Self {
            point: ReferencePoint {
                system_identifier: d.system_identifier,
                timeline: TimelineId(d.timeline),
                start: lsn(&d.start)?,
                end: lsn(&d.end)?,
            },
            major: d.major,
            block_size: d.block_size,
        }))
    }

    /// Writes the marker into `dir` as a file of `mode`, the clone's file mode (a temporary
    /// name renamed; with `sync`, the file and `dir` fsynced).
    pub fn write(&self, dir: &Path, sync: bool, mode: u32) -> Result<(), Error> {
        let d = OnDisk {
            format: FORMAT,
            system_identifier: self.point.system_identifier,
            major: self.major,
            timeline: self.point.timeline.0,
            start: self.point.start.to_string(),
            end: self.point.end.to_string(),
            block_size: self.block_size,
        };
        let mut text = serde_json::to_vec(&d).map_err(|e| Error::Internal(e.to_string()))?;
        text.push(b'\n');
        let tmp = dir.join(format!("{MARKER}.tmp"));
        sinkfs::write_file(&tmp, &text, mode).map_err(Error::fs("write file", &tmp))?;
        durable::durable_rename(&tmp, &dir.join(MARKER), sync)
    }

    /// Removes the marker of `dir` (with `sync`, durably): the refresh is complete.
    pub fn remove(dir: &Path, sync: bool) -> Result<(), Error> {
        let path = dir.join(MARKER);
        match fs::remove_file(&path) {
            Ok(()) if sync => durable::sync_path(dir),
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::fs("remove file", &path)(e)),
        }
    }
}

fn bad(path: &Path, why: &str) -> Error {
    Error::Refused(format!(
        "the refresh marker \"{}\" is damaged ({why}); take a full clone",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_marker_reads_back_what_was_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Marker::read(dir.path()).expect("read"), None);
        let m = Marker {
            point: ReferencePoint {
                system_identifier: 7_300_000_000_000_000_001,
                timeline: TimelineId(2),
                start: Lsn(0x1_0500_0028),
                end: Lsn(0x1_0600_0100),
            },
            major: 18,
            block_size: 8192,
        };
        m.write(dir.path(), true, 0o640).expect("write");
        let mode = fs::metadata(dir.path().join(MARKER))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "the clone's file mode");
        assert_eq!(Marker::read(dir.path()).expect("read"), Some(m));
        assert!(!dir.path().join(format!("{MARKER}.tmp")).exists());
        Marker::remove(dir.path(), true).expect("remove");
        assert_eq!(Marker::read(dir.path()).expect("read"), None);
        fs::write(dir.path().join(MARKER), b"{").expect("write");
        assert!(Marker::read(dir.path()).is_err());
    }
}
