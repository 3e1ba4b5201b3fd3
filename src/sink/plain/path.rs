//! Member names from the server, turned into safe relative paths.
//!
//! A name is accepted only if it is relative and stays inside the archive's root: no leading
//! `/`, no `..` component, no NUL. PostgreSQL's two quirks are tolerated: a trailing `/` on
//! directories and links, and a leading `./` on `./pg_wal/archive_status/` and
//! `./pg_wal/summaries/`. `.` components are dropped. [`tablespace_oid`] recognizes the one
//! place a symbolic link is accepted.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pgclone_proto::Oid;

/// Why a member name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `/etc/passwd`
    #[error("absolute path")]
    Absolute,
    /// `a/../../b`
    #[error("path contains \"..\"")]
    ParentDir,
    /// A NUL byte (cannot come from a tar name field, but from elsewhere).
    #[error("path contains a NUL byte")]
    Nul,
    /// Nothing left after stripping.
    #[error("empty path")]
    Empty,
}

/// The relative path a member name stands for.
pub fn member_path(name: &[u8]) -> Result<PathBuf, PathError> {
    if name.contains(&0) {
        return Err(PathError::Nul);
    }
    if name.first() == Some(&b'/') {
        return Err(PathError::Absolute);
    }
    let mut out = PathBuf::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(PathError::ParentDir),
            part => out.push(OsStr::from_bytes(part)),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    Ok(out)
}

/// `pg_tblspc/<oid>` → the oid: the only path where a symbolic link member is accepted.
pub fn tablespace_oid(rel: &Path) -> Option<Oid> {
    let inner = rel.strip_prefix("pg_tblspc").ok()?;
    let s = inner.to_str()?;
    if s.contains('/') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_postgres_sends() {
        for (name, want) in [
            (&b"backup_label"[..], "backup_label"),
            (b"global/", "global"),
            (b"./pg_wal/archive_status/", "pg_wal/archive_status"),
            (b"pg_tblspc/16388/", "pg_tblspc/16388"),
            (b"base/1/1259", "base/1/1259"),
            (b"a//b", "a/b"),
        ] {
            assert_eq!(member_path(name), Ok(PathBuf::from(want)));
        }
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(member_path(b"/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(member_path(b"../x"), Err(PathError::ParentDir));
        assert_eq!(member_path(b"a/../../x"), Err(PathError::ParentDir));
        assert_eq!(member_path(b"a/.."), Err(PathError::ParentDir));
        assert_eq!(member_path(b"a\0b"), Err(PathError::Nul));
        assert_eq!(member_path(b"./"), Err(PathError::Empty));
        assert_eq!(member_path(b""), Err(PathError::Empty));
    }
}
