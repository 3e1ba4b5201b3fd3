//! Making the clone durable: fsync every file and directory written, like `fsync_pgdata`.
//!
//! The walk does not follow symbolic links; the caller passes the tablespace directories and
//! the WAL directory as extra roots. Memory is bounded by the directory depth, not the number
//! of files.

use std::fs::{self, File};
use std::path::Path;

use crate::error::Error;

/// fsyncs every regular file under `root`, then every directory (children before parents), then
/// `root` itself.
pub fn sync_tree(root: &Path) -> Result<(), Error> {
    let meta = fs::symlink_metadata(root).map_err(Error::fs("stat", root))?;
    if meta.is_dir() {
        for entry in fs::read_dir(root).map_err(Error::fs("read directory", root))? {
            let entry = entry.map_err(Error::fs("read directory", root))?;
            let kind = entry.file_type().map_err(Error::fs("stat", entry.path()))?;
            if kind.is_dir() {
                sync_tree(&entry.path())?;
            } else if kind.is_file() {
                sync_path(&entry.path())?;
            }
        }
    }
    sync_path(root)
}

/// fsyncs one file or directory.
pub fn sync_path(path: &Path) -> Result<(), Error> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::fs("fsync", path))
}

/// Renames `from` to `to` durably: fsync the file, rename, fsync the directory.
pub fn durable_rename(from: &Path, to: &Path, sync: bool) -> Result<(), Error> {
    if sync {
        sync_path(from)?;
    }
    fs::rename(from, to).map_err(Error::fs("rename", from))?;
    if sync {
        if let Some(dir) = to.parent() {
            sync_path(dir)?;
        }
    }
    Ok(())
}
