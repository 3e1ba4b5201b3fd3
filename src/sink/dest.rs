//! Output directories: refusing non-empty ones, creating missing ones, and undoing what pgclone
//! created when the clone fails.
//!
//! The rule (pg_basebackup's, extended to tablespaces and `--waldir`): a directory pgclone
//! created is removed; a directory that existed (empty) is emptied again; `--no-clean` keeps
//! everything. `--keep-partial`, once the journal exists, keeps the data and tablespace
//! directories (with the journal a resume reads) but not the WAL received nor the unfinished
//! manifest ([`trim_partial`]); a `-C` slot is dropped as without it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::sink::fs as sinkfs;
use crate::sink::MANIFEST_TMP;

/// Fails unless `path` is missing or an empty directory.
pub fn check_usable(path: &Path) -> Result<(), Error> {
    match fs::read_dir(path) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(Ok(_)) => Err(Error::NotEmpty(path.to_path_buf())),
            Some(Err(e)) => Err(Error::fs("read directory", path)(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::fs("access directory", path)(e)),
    }
}

#[derive(Debug)]
enum Undo {
    /// Remove this directory and everything in it (pgclone created it).
    Remove { path: PathBuf, what: &'static str },
    /// Remove the contents of this directory (it existed, empty).
    Empty { path: PathBuf, what: &'static str },
}

/// What to undo if the clone fails. Call [`Cleanup::disarm`] on success.
#[derive(Debug, Default)]
pub struct Cleanup {
    undo: Vec<Undo>,
    disarmed: bool,
}

impl Cleanup {
    /// Nothing recorded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `path` an empty directory, creating it (and missing parents) with exactly `mode`
    /// if needed (one that exists keeps its mode, as with pg_basebackup), and records how to
    /// undo that. `what` names it in messages ("data directory").
    pub fn prepare_dir(&mut self, path: &Path, mode: u32, what: &'static str) -> Result<(), Error> {
        check_usable(path)?;
        if path.is_dir() {
            self.undo.push(Undo::Empty {
                path: path.to_path_buf(),
                what,
            });
            return Ok(());
        }
        // The top-most directory that does not exist yet is what we will remove.
        let mut top = path.to_path_buf();
        while let Some(parent) = top.parent() {
            if parent.as_os_str().is_empty() || parent.exists() {
                break;
            }
            top = parent.to_path_buf();
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sinkfs::make_dir_all(parent, mode)?;
        }
        sinkfs::make_dir(path, mode, false)?;
        self.undo.push(Undo::Remove { path: top, what });
        Ok(())
    }

    /// Success: keep everything.
    pub fn disarm(&mut self) {
        self.disarmed = true;
    }

    /// Undoes what was recorded, newest first, unless disarmed or `keep` (for `--no-clean` and
    /// checksum failures). Logs what it does; failures to remove are warnings.
    pub fn run(&mut self, keep: bool) {
        if self.disarmed {
            return;
        }
        self.disarmed = true;
        for undo in self.undo.drain(..).rev() {
            match undo {
                Undo::Remove { path, what } if keep => {
                    tracing::info!(
                        "{what} \"{}\" not removed at user's request",
                        path.display()
                    )
                }
                Undo::Empty { path, what } if keep => {
                    tracing::info!(
                        "contents of {what} \"{}\" not removed at user's request",
                        path.display()
                    )
                }
                Undo::Remove { path, what } => {
                    tracing::info!("removing {what} \"{}\"", path.display());
                    if let Err(e) = fs::remove_dir_all(&path) {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!("could not remove {what} \"{}\": {e}", path.display());
                        }
                    }
                }
                Undo::Empty { path, what } => {
                    tracing::info!("removing contents of {what} \"{}\"", path.display());
                    if let Err(e) = remove_contents(&path) {
                        tracing::warn!(
                            "could not remove contents of {what} \"{}\": {e}",
                            path.display()
                        );
                    }
                }
            }
        }
    }
}

/// `--keep-partial` after a failure: empties the WAL directory (a resume streams its own) and
/// removes [`MANIFEST_TMP`] from `dest`. Failures are warnings.
pub fn trim_partial(dest: &Path, wal_dir: &Path) {
    if wal_dir.is_dir() {
        tracing::info!("removing the WAL received into \"{}\"", wal_dir.display());
        if let Err(e) = remove_contents(wal_dir) {
            tracing::warn!("could not empty \"{}\": {e}", wal_dir.display());
        }
    }
    let manifest = dest.join(MANIFEST_TMP);
    if let Err(e) = fs::remove_file(&manifest) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("could not remove \"{}\": {e}", manifest.display());
        }
    }
}

fn remove_contents(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_directories_are_removed_and_existing_ones_emptied() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let existing = tmp.path().join("existing");
        fs::create_dir(&existing).expect("mkdir");
        let fresh = tmp.path().join("a/b/c");
        let mut c = Cleanup::new();
        c.prepare_dir(&existing, 0o700, "data directory")
            .expect("empty is fine");
        c.prepare_dir(&fresh, 0o700, "tablespace directory")
            .expect("creates");
        fs::write(existing.join("f"), b"x").expect("write");
        fs::create_dir(existing.join("d")).expect("mkdir");
        fs::write(fresh.join("f"), b"x").expect("write");
        c.run(false);
        assert!(existing.is_dir());
        assert_eq!(fs::read_dir(&existing).expect("read").count(), 0);
        assert!(!tmp.path().join("a").exists());
    }

    #[test]
    fn non_empty_directories_are_refused_and_no_clean_keeps() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("f"), b"x").expect("write");
        let mut c = Cleanup::new();
        assert!(matches!(
            c.prepare_dir(tmp.path(), 0o700, "data directory"),
            Err(Error::NotEmpty(_))
        ));
        let fresh = tmp.path().join("new");
        c.prepare_dir(&fresh, 0o700, "data directory")
            .expect("creates");
        c.run(true);
        assert!(fresh.is_dir());
    }

    /// A directory pgclone creates, and each missing parent, gets exactly the mode asked for
    /// (0750 with group access, whatever the umask); one that existed keeps its own.
    #[test]
    fn created_directories_get_the_clone_directory_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode_of = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
        let fresh = tmp.path().join("a/b");
        let mut c = Cleanup::new();
        c.prepare_dir(&fresh, 0o750, "data directory")
            .expect("creates");
        assert_eq!(mode_of(&tmp.path().join("a")), 0o750);
        assert_eq!(mode_of(&fresh), 0o750);
        c.prepare_dir(tmp.path(), 0o750, "WAL directory")
            .expect_err("not empty");
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o700)).expect("chmod");
        c.prepare_dir(&empty, 0o750, "WAL directory")
            .expect("empty is fine");
        assert_eq!(mode_of(&empty), 0o700);
        c.disarm();
    }
}
