//! A file sent whole, replacing the existing one: written under a temporary name beside it and
//! renamed over it once complete, so the path always holds a complete version.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::sink::durable::durable_rename;
use crate::sink::fs::{create_new, preallocate};

/// Suffix of the temporary name a whole file is written under. One left by an interrupted
/// apply is replaced by the next apply, or removed as stale by it.
pub const TEMP_SUFFIX: &str = ".pgclone-new";

/// A whole file being written.
pub(super) struct WholeFile {
    file: File,
    temp: PathBuf,
    path: PathBuf,
}

/// `dir/name` → `dir/name.pgclone-new`.
fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

impl WholeFile {
    /// Starts the new version of `path` (`size` bytes, `mode`) under its temporary name; a
    /// temporary file left there before is removed first (a link there is removed, not
    /// followed).
    pub(super) fn create(path: PathBuf, mode: u32, size: u64) -> Result<Self, Error> {
        let temp = temp_name(&path);
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::fs("remove file", &temp)(e)),
        }
        let file = create_new(&temp, mode)?;
        preallocate(&file, size).map_err(Error::fs("preallocate", &temp))?;
        Ok(Self { file, temp, path })
    }

    /// Appends contents.
    pub(super) fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.file
            .write_all(data)
            .map_err(Error::fs("write to file", &self.temp))
    }

    /// Renames the complete file over the old one (not synced: the caller syncs what was
    /// touched). Returns its path.
    pub(super) fn commit(self) -> Result<PathBuf, Error> {
        self.commit_durably(false)
    }

    /// Renames the complete file over the old one, fsyncing it and its directory with `sync`.
    pub(super) fn commit_durably(self, sync: bool) -> Result<PathBuf, Error> {
        drop(self.file);
        durable_rename(&self.temp, &self.path, sync)?;
        Ok(self.path)
    }
}
