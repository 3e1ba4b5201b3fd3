//! Listing the files of a data directory the way the server lists them in a base backup's
//! manifest (basebackup.c `sendDir`, 17 and 18), so that a synthesized reference manifest names
//! the same paths a `backup_manifest` of this directory would.
//!
//! Left out, as the server leaves them out: `pg_wal/`; the contents of `pg_stat_tmp`,
//! `pg_replslot`, `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_subtrans`; the
//! files `postgresql.auto.conf.tmp`, `current_logfiles.tmp`, `pg_internal.init*`,
//! `backup_label`, `tablespace_map`, `backup_manifest`, `postmaster.pid`, `postmaster.opts`;
//! names starting with `pgsql_tmp`; `.DS_Store`; the in-place writer's temporary files (names
//! ending in [`TEMP_SUFFIX`], left by an interrupted refresh); every fork but the init fork of an unlogged
//! relation; temporary relations (`t<backend>_<relnumber>...`) in database directories;
//! symbolic links and special files, except the tablespace links in `pg_tblspc`, which are
//! followed. Tablespace files are named `pg_tblspc/<oid>/<path inside the tablespace>`, as in
//! the server's manifests. `global/pg_control` is listed (the server sends it last, but lists
//! it like any file).

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::sink::inplace::TEMP_SUFFIX;

/// Directories whose contents the server never backs up (`excludeDirContents`).
const EXCLUDED_DIR_CONTENTS: [&str; 7] = [
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files the server never backs up, in any directory (`excludeFiles`).
const EXCLUDED_FILES: [&str; 7] = [
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];

/// Name prefixes the server never backs up.
const EXCLUDED_PREFIXES: [&str; 2] = ["pg_internal.init", "pgsql_tmp"];

/// The relation fork suffixes after `_` (`forkNames` but `main`).
const FORK_NAMES: [&str; 3] = ["fsm", "vm", "init"];

/// One regular file of the data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFile {
    /// The path as a manifest names it (`/`-separated, relative to the data directory).
    pub path: Vec<u8>,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub modified: SystemTime,
    /// Whether the server treats it as a relation file (a relation file name in `global`, a
    /// database directory of `base`, or of a tablespace), which it may send incrementally.
    pub relation: bool,
}

/// A directory or file of the data directory that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("could not read \"{}\"", path.display())]
pub struct WalkError {
    /// What could not be read.
    pub path: PathBuf,
    /// The system error.
    #[source]
    pub source: io::Error,
}

/// Every file of `data_dir` a base backup of it would list, sorted by path.
pub fn list_data_files(data_dir: &Path) -> Result<Vec<DataFile>, WalkError> {
    let mut files = Vec::new();
    walk(data_dir, &[], &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// What kind of directory `rel` (its path inside the data directory) is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DirKind {
    /// `global`: relation files, no temporary relations.
    Global,
    /// `base/<oid>` or `pg_tblspc/<oid>/<version dir>/<oid>`: relation files of a database.
    Database,
    /// The data directory itself.
    Root,
    /// Anything else.
    Other,
}

fn dir_kind(rel: &[u8]) -> DirKind {
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    let all_digits = |p: &[u8]| !p.is_empty() && p.iter().all(u8::is_ascii_digit);
    match parts.as_slice() {
        [b""] => DirKind::Root,
        [b"global"] => DirKind::Global,
        [b"base", db] if all_digits(db) => DirKind::Database,
        [b"pg_tblspc", _, version, db] if version.starts_with(b"PG_") && all_digits(db) => {
            DirKind::Database
        }
        _ => DirKind::Other,
    }
}

fn walk(dir: &Path, rel: &[u8], files: &mut Vec<DataFile>) -> Result<(), WalkError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| WalkError { path, source }
    };
    let kind = dir_kind(rel);
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let name = entry.file_name();
        let name = name.as_bytes();
        let relation_dir = matches!(kind, DirKind::Global | DirKind::Database);
        if is_excluded_name(name) || (relation_dir && is_skipped_relation(dir, name, kind)) {
            continue;
        }
        let path = entry.path();
        let child_rel = if rel.is_empty() {
            name.to_vec()
        } else {
            [rel, b"/", name].concat()
        };
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Gone while we looked: the server skips it too.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&path)(e)),
        };
        let in_tblspc = rel == b"pg_tblspc";
        if meta.is_dir() || (in_tblspc && meta.file_type().is_symlink()) {
            let skip_contents = EXCLUDED_DIR_CONTENTS.iter().any(|d| d.as_bytes() == name)
                || (kind == DirKind::Root && name == b"pg_wal");
            if !skip_contents {
                walk(&path, &child_rel, files)?;
            }
        } else if meta.is_file() {
            files.push(DataFile {
                path: child_rel,
                size: meta.len(),
                modified: meta.modified().map_err(read_err(&path))?,
                relation: relation_dir && parse_relation_file(name).is_some(),
            });
        }
    }
    Ok(())
}

fn is_excluded_name(name: &[u8]) -> bool {
    name == b".DS_Store"
        || name.ends_with(TEMP_SUFFIX.as_bytes())
        || EXCLUDED_FILES.iter().any(|f| f.as_bytes() == name)
        || EXCLUDED_PREFIXES
            .iter()
            .any(|p| name.starts_with(p.as_bytes()))
}

/// Whether `name` in the relation directory `dir` is a fork of an unlogged relation other than
/// its init fork, or (in a database directory) a temporary relation.
fn is_skipped_relation(dir: &Path, name: &[u8], kind: DirKind) -> bool {
    if let Some((relnumber, fork)) = parse_relation_file(name) {
        if fork != Some("init") && dir.join(format!("{relnumber}_init")).exists() {
            return true;
        }
    }
    kind == DirKind::Database && looks_like_temp_relation(name)
}

/// A relation file name `<relnumber>[_<fork>][.<segment>]` (no leading zeros, numbers within
/// 32 bits): the relation number and the fork (`None` for the main fork).
pub fn parse_relation_file(name: &[u8]) -> Option<(u32, Option<&'static str>)> {
    let name = std::str::from_utf8(name).ok()?;
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) => (stem, Some(seg)),
        None => (name, None),
    };
    if let Some(seg) = segment {
        positive_u32(seg)?;
    }
    let (number, fork) = match stem.split_once('_') {
        Some((number, fork)) => (number, Some(*FORK_NAMES.iter().find(|f| **f == fork)?)),
        None => (stem, None),
    };
    Some((positive_u32(number)?, fork))
}

/// A decimal number from 1 to `u32::MAX` without a leading zero or sign.
fn positive_u32(text: &str) -> Option<u32> {
    let first = text.bytes().next()?;
    if !(b'1'..=b'9').contains(&first) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether `name` is a temporary relation's file: `t<digits>_<digits>[_<fork>][.<digits>]`.
fn looks_like_temp_relation(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b"t") else {
        return false;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return false;
    };
    let (stem, segment) = match rest.split_once('.') {
        Some((stem, seg)) => (stem, Some(seg)),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if segment.is_some_and(|s| !digits(s)) {
        return false;
    }
    let mut parts = stem.splitn(3, '_');
    let (Some(backend), Some(number)) = (parts.next(), parts.next()) else {
        return false;
    };
    digits(backend) && digits(number) && parts.next().is_none_or(|f| FORK_NAMES.contains(&f))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn relation_names_parse_like_the_server() {
        assert_eq!(parse_relation_file(b"16384"), Some((16384, None)));
        assert_eq!(parse_relation_file(b"16384_vm"), Some((16384, Some("vm"))));
        assert_eq!(
            parse_relation_file(b"16384_init.2"),
            Some((16384, Some("init")))
        );
        assert_eq!(parse_relation_file(b"16384.1"), Some((16384, None)));
        for bad in [
            &b"016384"[..],
            b"16384.01",
            b"16384_main",
            b"16384_vmx",
            b"0",
            b"4294967296",
            b"16384.",
            b"PG_VERSION",
            b"t3_16384",
        ] {
            assert_eq!(
                parse_relation_file(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(looks_like_temp_relation(b"t3_16384"));
        assert!(looks_like_temp_relation(b"t3_16384_fsm.12"));
        assert!(!looks_like_temp_relation(b"t3_16384_x"));
        assert!(!looks_like_temp_relation(b"t_16384"));
        assert!(!looks_like_temp_relation(b"t3_"));
    }

    #[test]
    fn lists_what_a_base_backup_would() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tblspc = tempfile::tempdir().unwrap();
        for sub in [
            "global",
            "base/5",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_tblspc",
            "pg_logical/snapshots",
        ] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        fs::create_dir_all(tblspc.path().join("PG_17_202406281/5")).unwrap();
        std::os::unix::fs::symlink(tblspc.path(), d.join("pg_tblspc/16400")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.join("a_link")).unwrap();
        for (file, len) in [
            ("PG_VERSION", 3),
            ("postmaster.pid", 10),
            ("backup_label", 10),
            ("global/pg_control", 8192),
            ("global/pg_internal.init", 5),
            ("base/5/16384", 8192),
            ("base/5/16384_vm", 8192),
            ("base/5/16390", 8192),
            ("base/5/16390_init", 0),
            ("base/5/t3_16395", 8192),
            ("base/5/pgsql_tmp", 1),
            ("pg_wal/000000010000000000000001", 16),
            ("pg_stat_tmp/global.stat", 4),
            ("pg_logical/replorigin_checkpoint", 8),
            ("pg_tblspc/16400/PG_17_202406281/5/16401", 16384),
        ] {
            fs::write(d.join(file), vec![0u8; len]).unwrap();
        }
        let listed: Vec<(String, u64, bool)> = list_data_files(d)
            .unwrap()
            .into_iter()
            .map(|f| (String::from_utf8(f.path).unwrap(), f.size, f.relation))
            .collect();
        let want: Vec<(String, u64, bool)> = [
            ("PG_VERSION", 3, false),
            ("base/5/16384", 8192, true),
            ("base/5/16384_vm", 8192, true),
            ("base/5/16390_init", 0, true),
            ("global/pg_control", 8192, false),
            ("pg_logical/replorigin_checkpoint", 8, false),
            ("pg_tblspc/16400/PG_17_202406281/5/16401", 16384, true),
        ]
        .into_iter()
        .map(|(p, s, r)| (p.to_owned(), s, r))
        .collect();
        assert_eq!(listed, want);
    }
}
