//! In-place output: the archives of an incremental backup (17+) applied onto an EXISTING data
//! directory and its tablespace directories, so that they hold what a fresh clone would.
//!
//! Fed the same [`Chunk`]s as the plain writer, member by member:
//! - `INCREMENTAL.<relfile>` (in a tablespace, in `global` or beneath `base/`, where
//!   `pg_combinebackup` looks for them; elsewhere such a name is an ordinary file): the existing
//!   `<relfile>` is rebuilt in place as `pg_combinebackup` rebuilds it
//!   ([`pgclone_proto::incremental`]): cut to the prior blocks that stay, each sent block
//!   written at `number * 8192`, the length set to the reconstructed one. A missing `<relfile>`
//!   is created only when no block of the result would come from it; otherwise the member is
//!   refused (`pg_combinebackup` fails there too). Given the WAL summaries' limit blocks
//!   ([`Layout::limits`]), prior blocks at or beyond a segment's limit are not kept
//!   either but read as zeros unless sent (where `pg_combinebackup` would bring back stale
//!   blocks of a fork truncated and re-extended without WAL: [`Header::plan_limited`]).
//! - any other regular file replaces the old one: written to `<name>`[`TEMP_SUFFIX`] beside it,
//!   renamed over it when complete. A file is thus always a complete old or a complete new
//!   version, never half of each (what a later `--refresh` relies on when it takes the files
//!   on disk as its reference); the price is room for one extra copy of one file (≤ 1 GB).
//! - `global/pg_control` is held back in memory (8 kB) and written only by
//!   [`Applied::write_control`], once the caller knows everything else arrived and is synced;
//!   [`Applier::open`] removes the old one first. An interrupted apply thus leaves a directory
//!   without `pg_control`, which PostgreSQL refuses to start.
//! - directories are created or given the member's mode; `pg_tblspc/<oid>` links point where
//!   the caller said, replacing a link that pointed elsewhere.
//!
//! Every path received is recorded; [`Applied::remove_stale`] then deletes what the archives
//! did not contain, except a caller's [`KeepList`].
//!
//! # Security
//! The member names follow the plain writer's policy ([`path::member_path`]: relative, no
//! `..`); a name after `INCREMENTAL.` must be a relation file name. A file's last component is
//! never followed when it is a symbolic link (files are opened with `O_NOFOLLOW`; renames
//! replace a link, not its target). In the base archive nothing is accepted beneath
//! `pg_tblspc/<oid>` (so in-place tablespaces, a developer option, are refused). Links to
//! directories that the directory already has (`pg_wal` to a `--waldir`) are its owner's and
//! are written through; the server can only add or move `pg_tblspc/<oid>` links, to where the
//! caller said.
//!
//! What it does not do: decompress (server-compressed archives are refused), check files
//! against the server's manifest (that manifest describes the incremental backup, not the
//! directory; it is kept for the caller, [`Applied::server_manifest`]), fsync as it goes
//! ([`Applied::sync`] does it for what was changed).

mod incremental;
mod stale;
mod whole;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pgclone_proto::incremental::{relation_file_name, INCREMENTAL_PREFIX};
use pgclone_proto::relfile::Limits;
use pgclone_proto::tar::{Member, MemberKind, TarEvent};
use pgclone_proto::Oid;

use crate::error::Error;
use crate::sink::codec::Method;
use crate::sink::durable;
use crate::sink::fs::Modes;
use crate::sink::manifest_out::{ManifestOut, ManifestPart};
use crate::sink::plain::{make_dir, path};
use crate::sink::split::{self, ArchiveSplitter};
use crate::sink::{ArchiveRoot, ArchiveSteps, Chunk};

pub use stale::{clear_wal, KeepEntry, KeepList, Removed};
pub use whole::TEMP_SUFFIX;

/// The control file's path in the base archive.
pub const CONTROL_FILE: &str = "global/pg_control";

/// Largest `global/pg_control` accepted (`PG_CONTROL_FILE_SIZE`).
pub const CONTROL_FILE_MAX: u64 = 8192;

/// Where in-place output goes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The existing data directory.
    pub dest: PathBuf,
    /// Target of the `pg_tblspc/<oid>` link for each tablespace (as for the plain writer). The
    /// tablespace directories themselves (the archives' roots) must exist.
    pub tablespace_links: HashMap<Oid, PathBuf>,
    /// Mode of a tablespace directory the refresh has to create (the server's
    /// `data_directory_mode`: 0700, or 0750 with group access).
    pub dir_mode: u32,
    /// The WAL summaries' limit blocks over the backup's range (the reference start to the
    /// backup's start): a prior block at or beyond its segment's limit is not kept
    /// ([`Header::plan_limited`]). Empty limits rebuild members exactly as `pg_combinebackup`
    /// does.
    ///
    /// [`Header::plan_limited`]: pgclone_proto::incremental::Header::plan_limited
    pub limits: Limits,
}

/// What an apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    /// Regular files written whole (`pg_control` included).
    pub whole_files: u64,
    /// Files rebuilt from an `INCREMENTAL.` member.
    pub incremental_files: u64,
    /// Blocks written into those.
    pub blocks: u64,
    /// Bytes written: whole files' contents and the blocks.
    pub bytes: u64,
}

/// The paths one archive root received, with every ancestor directory.
#[derive(Debug)]
struct RootRecord {
    root: PathBuf,
    base: bool,
    /// The tablespace's oid, for a tablespace archive.
    tablespace: Option<Oid>,
    paths: HashSet<PathBuf>,
}

impl RootRecord {
    fn insert(&mut self, rel: &Path) {
        for p in rel.ancestors() {
            if p.as_os_str().is_empty() || !self.paths.insert(p.to_path_buf()) {
                break;
            }
        }
    }
}

/// The files and directories changed (for [`Applied::sync`]).
#[derive(Debug, Default)]
struct Touched {
    files: Vec<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl Touched {
    fn file(&mut self, path: PathBuf) {
        if let Some(dir) = path.parent() {
            self.dirs.insert(dir.to_path_buf());
        }
        self.files.push(path);
    }
}

struct Archive {
    split: ArchiveSplitter,
    record: usize,
}

/// The member being written.
enum Current {
    Whole(whole::WholeFile),
    Incremental(Box<incremental::IncrementalFile>),
    Control { data: Vec<u8>, mode: u32 },
}

/// Applies archives onto an existing directory, chunk by chunk (blocking file I/O: run it where
/// the plain writer would run).
pub struct Applier {
    layout: Layout,
    archive: Option<Archive>,
    current: Option<Current>,
    records: Vec<RootRecord>,
    control: Option<(Vec<u8>, u32)>,
    saw_base: bool,
    touched: Touched,
    stats: ApplyStats,
    manifest: ManifestOut,
    limits: Limits,
}

impl Applier {
    /// An applier for `layout`. Removes `global/pg_control` first (durably), so that from here
    /// on an interrupted apply leaves a directory PostgreSQL refuses to start.
    pub fn open(mut layout: Layout) -> Result<Self, Error> {
        let limits = std::mem::take(&mut layout.limits);
        let control = layout.dest.join(CONTROL_FILE);
        match fs::remove_file(&control) {
            Ok(()) => {
                if let Some(dir) = control.parent() {
                    durable::sync_path(dir)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::fs("remove file", &control)(e)),
        }
        Ok(Self {
            layout,
            archive: None,
            current: None,
            records: Vec::new(),
            control: None,
            saw_base: false,
            touched: Touched::default(),
            stats: ApplyStats::default(),
            // Kept in memory (the refresh writes the directory's own): no file, no mode.
            manifest: ManifestOut::new(None, Modes::PRIVATE.file),
            limits,
        })
    }

    /// Applies one chunk.
    pub fn handle(&mut self, chunk: Chunk) -> Result<(), Error> {
        self.route(chunk)
    }

    /// Checks that the last archive ended and that the base archive held `pg_control`.
    pub fn finish(mut self) -> Result<Applied, Error> {
        if let Some(a) = &self.archive {
            return Err(Error::Internal(format!(
                "archive {} was not finished",
                a.split.name
            )));
        }
        if self.saw_base && self.control.is_none() {
            return Err(Error::IncompatibleServer(format!(
                "the base archive did not contain {CONTROL_FILE}"
            )));
        }
        Ok(Applied {
            dest: self.layout.dest,
            records: self.records,
            control: self.control,
            touched: self.touched,
            stats: self.stats,
            server_manifest: self.manifest.take_memory(),
        })
    }

    /// Contents of the current member.
    fn member_data(&mut self, data: Bytes) -> Result<(), Error> {
        match self.current.as_mut() {
            Some(Current::Whole(w)) => {
                self.stats.bytes += data.len() as u64;
                w.write(&data)
            }
            Some(Current::Incremental(f)) => {
                let (blocks, bytes) = f.data(data)?;
                self.stats.blocks += blocks;
                self.stats.bytes += bytes;
                Ok(())
            }
            Some(Current::Control { data: held, .. }) => {
                self.stats.bytes += data.len() as u64;
                held.extend_from_slice(&data);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The current member is complete: a whole file replaces the old one, an incremental one
    /// gets its final length, `pg_control` is kept for [`Applied::write_control`].
    fn end_member(&mut self) -> Result<(), Error> {
        match self.current.take() {
            Some(Current::Whole(w)) => {
                self.touched.file(w.commit()?);
                self.stats.whole_files += 1;
            }
            Some(Current::Incremental(f)) => {
                self.touched.file(f.finish()?);
                self.stats.incremental_files += 1;
            }
            Some(Current::Control { data, mode }) => {
                self.control = Some((data, mode));
                self.stats.whole_files += 1;
            }
            None => {}
        }
        Ok(())
    }

    /// A member starts: its name is checked, then its directory, link or file is set up and
    /// recorded as received.
    fn begin_member(&mut self, m: &Member) -> Result<(), Error> {
        let Some(archive) = self.archive.as_ref() else {
            return Ok(());
        };
        let archive_name = archive.split.name.clone();
        let record = archive.record;
        let refuse = |reason: &str| Error::UnsafeMember {
            archive: archive_name.clone(),
            member: String::from_utf8_lossy(&m.name).into_owned(),
            reason: reason.to_owned(),
        };
        let rel = path::member_path(&m.name).map_err(|e| refuse(&e.to_string()))?;
        let Some(rec) = self.records.get(record) else {
            return Err(Error::Internal("archive without a record".into()));
        };
        let base = rec.base;
        let tablespace = rec.tablespace;
        if base && beneath_tablespace_link(&rel) {
            return Err(refuse("it lies beneath a tablespace link in pg_tblspc"));
        }
        let path = rec.root.join(&rel);
        let mode = m.mode & 0o777;
        let received = match m.kind {
            MemberKind::Directory => {
                apply_dir(&path, mode)?;
                self.touched
                    .dirs
                    .insert(path.parent().unwrap_or(&path).into());
                rel
            }
            MemberKind::Symlink => {
                let target = path::tablespace_oid(&rel)
                    .filter(|_| base)
                    .and_then(|oid| self.layout.tablespace_links.get(&oid))
                    .ok_or_else(|| {
                        refuse("symbolic links are only accepted for listed tablespaces")
                    })?;
                replace_link(&path, target, &refuse)?;
                self.touched
                    .dirs
                    .insert(path.parent().unwrap_or(&path).into());
                rel
            }
            MemberKind::File => {
                let file = NewFile {
                    rel,
                    path,
                    mode,
                    size: m.size,
                    tablespace,
                };
                self.begin_file(file, &refuse)?
            }
            MemberKind::Other(t) => {
                return Err(refuse(&format!(
                    "unsupported member type '{}'",
                    char::from(t).escape_default()
                )))
            }
        };
        if let Some(rec) = self.records.get_mut(record) {
            rec.insert(&received);
        }
        Ok(())
    }

    /// A regular file starts: an incremental member, `pg_control` (held back) or a whole file.
    /// Returns the path it stands for, relative to the archive root.
    fn begin_file(
        &mut self,
        file: NewFile,
        refuse: &dyn Fn(&str) -> Error,
    ) -> Result<PathBuf, Error> {
        let NewFile {
            rel,
            path,
            mode,
            size,
            tablespace,
        } = file;
        let base = tablespace.is_none();
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(INCREMENTAL_PREFIX) && incremental_dir(&rel, base) {
            let bare = relation_file_name(name)
                .ok_or_else(|| refuse("an INCREMENTAL. member that is not a relation file"))?;
            let target = rel.with_file_name(bare);
            let limit = self.segment_limit(&target, tablespace);
            let target_path = path.with_file_name(bare);
            let file = incremental::IncrementalFile::new(path, target_path, mode, size, limit);
            self.current = Some(Current::Incremental(Box::new(file)));
            return Ok(target);
        }
        if base && rel == Path::new(CONTROL_FILE) {
            if size > CONTROL_FILE_MAX {
                return Err(refuse("a control file larger than 8 kB"));
            }
            self.current = Some(Current::Control {
                data: Vec::with_capacity(usize::try_from(size).unwrap_or_default()),
                mode,
            });
            return Ok(rel);
        }
        self.current = Some(Current::Whole(whole::WholeFile::create(path, mode, size)?));
        Ok(rel)
    }

    /// The limit block of the relation segment file `rel` (relative to its archive's root,
    /// `tablespace`'s for a tablespace archive), as the data directory names it.
    fn segment_limit(&self, rel: &Path, tablespace: Option<Oid>) -> Option<u32> {
        if self.limits.is_empty() {
            return None;
        }
        let rel = rel.to_str()?;
        match tablespace {
            None => self.limits.path_limit(rel),
            Some(oid) => self.limits.path_limit(&format!("pg_tblspc/{oid}/{rel}")),
        }
    }
}

impl ArchiveSteps for Applier {
    fn start_archive(&mut self, name: String, root: ArchiveRoot) -> Result<(), Error> {
        if Method::from_archive_name(&name) != Method::None {
            return Err(Error::IncompatibleServer(format!(
                "the server sent the compressed archive {name}, which cannot be applied in place"
            )));
        }
        let (root, tablespace) = match root {
            ArchiveRoot::Base => (self.layout.dest.clone(), None),
            ArchiveRoot::Tablespace { dir, oid } => (dir, Some(oid)),
        };
        let base = tablespace.is_none();
        self.saw_base |= base;
        self.records.push(RootRecord {
            root,
            base,
            tablespace,
            paths: HashSet::new(),
        });
        self.archive = Some(Archive {
            split: ArchiveSplitter::new(name),
            record: self.records.len() - 1,
        });
        Ok(())
    }

    fn end_archive(&mut self) -> Result<(), Error> {
        split::end(self.archive.take().map(|a| a.split))
    }

    fn archive_data(&mut self, pieces: impl IntoIterator<Item = Bytes>) -> Result<(), Error> {
        split::feed(self.archive.as_mut().map(|a| &mut a.split), pieces)?;
        while let Some(event) = self.archive.as_mut().and_then(|a| a.split.poll_event()) {
            match event {
                TarEvent::Member(m) => self.begin_member(&m)?,
                TarEvent::Data(data) => self.member_data(data)?,
                TarEvent::MemberEnd => self.end_member()?,
            }
        }
        Ok(())
    }

    fn manifest(&mut self, part: ManifestPart) -> Result<(), Error> {
        self.manifest.handle(part, None)
    }
}

/// A regular file member about to be written.
struct NewFile {
    /// Its path relative to the archive's root.
    rel: PathBuf,
    /// Where it goes.
    path: PathBuf,
    mode: u32,
    size: u64,
    /// The archive's tablespace (`None`: the base archive).
    tablespace: Option<Oid>,
}

/// Whether an `INCREMENTAL.` name in the directory of `rel` is an incremental member, as
/// `pg_combinebackup` decides: anywhere in a tablespace's archive; in the base archive only in
/// `global` and beneath `base/`. Elsewhere such a name is an ordinary file.
fn incremental_dir(rel: &Path, base: bool) -> bool {
    let Some(dir) = rel.parent() else {
        return false;
    };
    !base || dir == Path::new("global") || (dir.starts_with("base") && dir != Path::new("base"))
}

/// `pg_tblspc/<x>/...`: beneath where a tablespace link is.
fn beneath_tablespace_link(rel: &Path) -> bool {
    rel.strip_prefix("pg_tblspc")
        .is_ok_and(|inner| inner.components().count() > 1)
}

/// A directory member: created, or an existing one given `mode`. An existing link to a
/// directory (`pg_wal` to a `--waldir`, or any link the directory's owner made) is kept as it is
/// and written through; anything else there is an error.
fn apply_dir(path: &Path, mode: u32) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() && path.is_dir() => Ok(()),
        Ok(m) if !m.is_dir() => Err(Error::fs("create directory", path)(io::Error::from(
            io::ErrorKind::AlreadyExists,
        ))),
        _ => make_dir(path, mode, true),
    }
}

/// Makes `path` a symbolic link to `target`: kept if it already is one, a link elsewhere is
/// replaced; anything else there is refused (never removed).
fn replace_link(path: &Path, target: &Path, refuse: &dyn Fn(&str) -> Error) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            if fs::read_link(path).is_ok_and(|t| t == target) {
                return Ok(());
            }
            fs::remove_file(path).map_err(Error::fs("remove symbolic link", path))?;
        }
        Ok(_) => return Err(refuse("something other than a link is where the link goes")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::fs("stat", path)(e)),
    }
    std::os::unix::fs::symlink(target, path).map_err(Error::fs("create symbolic link", path))
}

/// The result of applying every archive: what was received, the held-back control file.
#[derive(Debug)]
pub struct Applied {
    dest: PathBuf,
    records: Vec<RootRecord>,
    control: Option<(Vec<u8>, u32)>,
    touched: Touched,
    stats: ApplyStats,
    server_manifest: Option<Vec<u8>>,
}

impl Applied {
    /// What was written.
    pub fn stats(&self) -> ApplyStats {
        self.stats
    }

    /// The server's `backup_manifest` of the incremental backup, if it sent one (it lists the
    /// `INCREMENTAL.` members, not the rebuilt files).
    pub fn server_manifest(&self) -> Option<&[u8]> {
        self.server_manifest.as_deref()
    }

    /// Whether `rel` (relative to the data directory) was in the base archive; for an
    /// `INCREMENTAL.` member, its relation file counts.
    pub fn received_in_base(&self, rel: &Path) -> bool {
        self.records.iter().any(|r| r.base && r.paths.contains(rel))
    }

    /// Deletes what the archives did not contain: regular files, then directories left empty,
    /// and links in `pg_tblspc` for tablespaces not sent, under the data directory (except
    /// what `keep` names) and under each tablespace directory's version directory that was
    /// sent (a tablespace location may hold other clusters' version directories: those are
    /// never looked at). Symbolic links are never followed. Call it before anything else
    /// (WAL, `backup_label`...) is written that `keep` does not name.
    pub fn remove_stale(&mut self, keep: &KeepList) -> Result<Removed, Error> {
        let mut removed = Removed::default();
        for rec in &self.records {
            let keep_here = if rec.base { keep } else { &KeepList::NONE };
            let dirs =
                stale::remove_stale(&rec.root, rec.base, &rec.paths, keep_here, &mut removed)?;
            self.touched.dirs.extend(dirs);
        }
        Ok(removed)
    }

    /// fsyncs every file written and every directory where entries were created, renamed or
    /// removed.
    pub fn sync(&self) -> Result<(), Error> {
        for f in &self.touched.files {
            durable::sync_path(f)?;
        }
        for d in self.touched.dirs.iter().rev() {
            match durable::sync_path(d) {
                Err(Error::Fs { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Writes the held-back `global/pg_control` (to a temporary name, renamed; with `sync`,
    /// fsynced before and after the rename): the last step of an apply, once everything else
    /// is in place and synced. Fails if no base archive carried it.
    pub fn write_control(self, sync: bool) -> Result<(), Error> {
        let Some((data, mode)) = self.control else {
            return Err(Error::Internal(format!("no {CONTROL_FILE} was received")));
        };
        let mut w =
            whole::WholeFile::create(self.dest.join(CONTROL_FILE), mode, data.len() as u64)?;
        w.write(&data)?;
        w.commit_durably(sync).map(drop)
    }
}

#[cfg(test)]
mod tests;
