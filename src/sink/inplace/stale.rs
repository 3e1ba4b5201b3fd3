//! Removing what the primary no longer has: every regular file under an archive's root that
//! the archive did not contain, directories left empty, links in `pg_tblspc` for tablespaces
//! not sent; except what a [`KeepList`] names.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::sink::durable::sync_path;
use crate::sink::MANIFEST_TMP;

/// One path [`KeepList`] protects, relative to the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepEntry {
    /// This file (or link) only.
    File(PathBuf),
    /// This directory (or link) and everything beneath it.
    Tree(PathBuf),
}

/// What [`super::Applied::remove_stale`] leaves in the data directory although the base
/// archive did not contain it.
///
/// [`KeepList::default`] holds what the server never sends and a refresh still needs there:
/// - `pg_wal/` and all of it: the WAL stage writes it while the base archive arrives (the
///   caller clears the old WAL with [`clear_wal`] before its WAL task starts);
/// - `postmaster.pid`, `postmaster.opts`: PostgreSQL's own bookkeeping (the caller has made sure
///   no postmaster runs; a stale pid file is PostgreSQL's to judge);
/// - `backup_manifest` and its temporary name: the caller writes the new one.
///
/// Everything else a fresh clone would not have goes: the contents of `pg_replslot`,
/// `pg_stat_tmp`, `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_subtrans` (the
/// server sends them empty), `tablespace_map`, `standby.signal` and `recovery.signal` (`-R`
/// writes the latter again), unlogged relations' main forks, temporary files, the server log
/// files the primary does not have, and this writer's own temporary files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepList {
    entries: Vec<KeepEntry>,
}

impl Default for KeepList {
    fn default() -> Self {
        Self::new(vec![
            KeepEntry::Tree("pg_wal".into()),
            KeepEntry::File("postmaster.pid".into()),
            KeepEntry::File("postmaster.opts".into()),
            KeepEntry::File("backup_manifest".into()),
            KeepEntry::File(MANIFEST_TMP.into()),
        ])
    }
}

impl KeepList {
    /// Nothing is kept.
    pub const NONE: Self = Self {
        entries: Vec::new(),
    };

    /// A list of these entries.
    pub fn new(entries: Vec<KeepEntry>) -> Self {
        Self { entries }
    }

    /// The list with one more entry.
    pub fn with(mut self, entry: KeepEntry) -> Self {
        self.entries.push(entry);
        self
    }

    fn keeps(&self, rel: &Path) -> bool {
        self.entries.iter().any(|e| match e {
            KeepEntry::File(p) => rel == p,
            KeepEntry::Tree(p) => rel.starts_with(p),
        })
    }
}

/// What [`super::Applied::remove_stale`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Regular files.
    pub files: u64,
    /// Empty directories.
    pub dirs: u64,
    /// Tablespace links.
    pub links: u64,
}

/// One root's walk.
struct Walk<'a> {
    root: &'a Path,
    base: bool,
    received: &'a HashSet<PathBuf>,
    keep: &'a KeepList,
    removed: &'a mut Removed,
    /// Directories whose entries changed.
    dirs: BTreeSet<PathBuf>,
}

/// Removes the stale entries under `root` (see the module docs); for a tablespace root
/// (`base == false`) only inside the top-level directories that were received. Returns the
/// directories whose entries changed.
pub(super) fn remove_stale(
    root: &Path,
    base: bool,
    received: &HashSet<PathBuf>,
    keep: &KeepList,
    removed: &mut Removed,
) -> Result<BTreeSet<PathBuf>, Error> {
    let mut walk = Walk {
        root,
        base,
        received,
        keep,
        removed,
        dirs: BTreeSet::new(),
    };
    if base {
        walk.dir(Path::new(""))?;
    } else {
        for entry in fs::read_dir(root).map_err(Error::fs("read directory", root))? {
            let entry = entry.map_err(Error::fs("read directory", root))?;
            let rel = PathBuf::from(entry.file_name());
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && received.contains(&rel) {
                walk.dir(&rel)?;
            }
        }
    }
    Ok(walk.dirs)
}

impl Walk<'_> {
    /// Walks directory `rel`; returns whether it is empty afterwards.
    fn dir(&mut self, rel: &Path) -> Result<bool, Error> {
        let dir = self.root.join(rel);
        let mut empty = true;
        for entry in fs::read_dir(&dir).map_err(Error::fs("read directory", &dir))? {
            let entry = entry.map_err(Error::fs("read directory", &dir))?;
            let child = rel.join(entry.file_name());
            let kind = entry.file_type().map_err(Error::fs("stat", entry.path()))?;
            let gone = if self.keep.keeps(&child) {
                false
            } else if kind.is_dir() {
                self.subdir(&child)?
            } else if kind.is_file() || (kind.is_symlink() && self.stale_link(&child)) {
                self.remove_entry(&child, kind.is_file())?
            } else {
                false
            };
            empty &= gone;
        }
        Ok(empty)
    }

    /// A subdirectory: walked, then removed if it was not received and is empty.
    fn subdir(&mut self, rel: &Path) -> Result<bool, Error> {
        if !self.dir(rel)? || self.received.contains(rel) {
            return Ok(false);
        }
        let path = self.root.join(rel);
        fs::remove_dir(&path).map_err(Error::fs("remove directory", &path))?;
        tracing::debug!(path = %path.display(), "removed stale directory");
        self.removed.dirs += 1;
        self.changed(&path);
        Ok(true)
    }

    /// A link in the base archive's `pg_tblspc` that was not received.
    fn stale_link(&self, rel: &Path) -> bool {
        self.base && rel.parent() == Some(Path::new("pg_tblspc")) && !self.received.contains(rel)
    }

    /// Removes a regular file that was not received, or a stale link; returns whether it did.
    fn remove_entry(&mut self, rel: &Path, is_file: bool) -> Result<bool, Error> {
        if is_file && self.received.contains(rel) {
            return Ok(false);
        }
        let path = self.root.join(rel);
        fs::remove_file(&path).map_err(Error::fs("remove file", &path))?;
        tracing::debug!(path = %path.display(), "removed stale entry");
        if is_file {
            self.removed.files += 1;
        } else {
            self.removed.links += 1;
        }
        self.changed(&path);
        Ok(true)
    }

    fn changed(&mut self, path: &Path) {
        if let Some(parent) = path.parent() {
            self.dirs.insert(parent.to_path_buf());
        }
    }
}

/// Removes every regular file beneath the data directory's `pg_wal` (through a `pg_wal` link to
/// a WAL directory), keeping the directories (`archive_status`, `summaries`) and any link: the
/// WAL of a fresh clone is only what its WAL stage writes. Call it before that stage starts;
/// [`KeepList::default`] keeps `pg_wal` for it. With `sync`, the directories whose entries
/// changed are fsynced.
pub fn clear_wal(dest: &Path, sync: bool) -> Result<Removed, Error> {
    let mut removed = Removed::default();
    let mut changed = BTreeSet::new();
    let mut stack = vec![dest.join("pg_wal")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(Error::fs("read directory", &dir))? {
            let entry = entry.map_err(Error::fs("read directory", &dir))?;
            let kind = entry.file_type().map_err(Error::fs("stat", entry.path()))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                fs::remove_file(&path).map_err(Error::fs("remove file", &path))?;
                removed.files += 1;
                changed.insert(dir.clone());
            }
        }
    }
    if sync {
        changed.iter().try_for_each(|d| sync_path(d))?;
    }
    Ok(removed)
}
