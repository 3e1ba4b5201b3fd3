//! The file steps every writer shares, each in one place: opening a file pgclone writes (never
//! through a symbolic link), reserving a large file's blocks, and emitting a tar member
//! (header, contents, padding) or the end of an archive.
//!
//! Used by the plain and tar writers, the WAL writers (`wal::segment`, `wal::tarwal`) and the
//! `-R` files (`recovery`). Nothing here decides what to write or where.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use pgclone_proto::tar::{build_header, MemberKind, BLOCK};

use crate::error::Error;

/// What [`open`] does with what is already at the path (a symbolic link is never followed:
/// `O_NOFOLLOW` makes the open fail instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse it: the file must be new (`O_CREAT|O_EXCL`). Used for everything unpacked or
    /// archived, so nothing that existed is ever written through.
    Refuse,
    /// Empty it (`O_CREAT|O_TRUNC`): `-R`'s own files, `.done` markers, history files.
    Truncate,
    /// Append to it (`O_CREAT|O_APPEND`): `postgresql.auto.conf` under `-R`.
    Append,
    /// Keep its contents, open for reading and writing (`O_CREAT`): a WAL segment that may be
    /// reused.
    Keep,
}

/// Opens `path` for writing, creating it with mode 0600 (before the umask) if it is missing;
/// `existing` says what happens to a file already there. Never follows a symbolic link in the
/// last component. The caller names the operation in its error.
pub fn open(path: &Path, existing: Existing) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    match existing {
        Existing::Refuse => options.create_new(true),
        Existing::Truncate => options.create(true).truncate(true),
        Existing::Append => options.append(true).create(true),
        Existing::Keep => options.read(true).create(true).truncate(false),
    };
    options.open(path)
}

/// Creates a new file (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600 before the umask); an existing
/// file or link at `path` is an error ("create file").
pub fn create_new(path: &Path) -> Result<File, Error> {
    open(path, Existing::Refuse).map_err(Error::fs("create file", path))
}

/// Files from this size on get their blocks reserved before they are written.
pub const PREALLOCATE_FROM: u64 = 1 << 20;

/// Reserves the blocks of a file that will hold `size` bytes (`fallocate`, which also sets its
/// length), so a full disk shows when the file starts, not halfway through it (measured neutral
/// for speed on ext4). Returns whether it did: files under [`PREALLOCATE_FROM`] are left alone,
/// and a file system that cannot preallocate (`EOPNOTSUPP`, `ENOSYS`, `EINVAL`) is not an
/// error. Any other failure (`ENOSPC`...) is.
pub fn preallocate(file: &File, size: u64) -> io::Result<bool> {
    if size < PREALLOCATE_FROM {
        return Ok(false);
    }
    let Ok(len) = libc::off_t::try_from(size) else {
        return Ok(false);
    };
    // SAFETY: the descriptor is open for the duration of the call; fallocate only changes the
    // file's allocation and length.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(false),
        _ => Err(e),
    }
}

/// The two zero blocks that end a tar archive.
pub const TAR_END: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// Seconds since the epoch (0 if the clock is before it): the time stamp of members pgclone
/// adds to an archive.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The header block of a regular-file member of `size` bytes that pgclone adds, stamped now.
pub fn tar_file_header(name: &str, mode: u32, size: u64) -> [u8; BLOCK] {
    *build_header(name, MemberKind::File, mode, size, now()).as_bytes()
}

/// The zeros that follow `size` bytes of member contents up to the next block boundary.
pub fn tar_padding(size: u64) -> &'static [u8] {
    const ZEROS: [u8; BLOCK] = [0; BLOCK];
    let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    ZEROS.get(..pad as usize).unwrap_or_default()
}

/// Writes a whole regular-file member: header, `contents`, padding.
pub fn write_tar_member(
    w: &mut dyn Write,
    name: &str,
    mode: u32,
    contents: &[u8],
) -> io::Result<()> {
    let size = contents.len() as u64;
    w.write_all(&tar_file_header(name, mode, size))?;
    w.write_all(contents)?;
    w.write_all(tar_padding(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_members_to_whole_blocks() {
        assert_eq!(tar_padding(0).len(), 0);
        assert_eq!(tar_padding(1).len(), BLOCK - 1);
        assert_eq!(tar_padding(BLOCK as u64).len(), 0);
        let mut out = Vec::new();
        write_tar_member(&mut out, "f", 0o600, b"abc").expect("write");
        assert_eq!(out.len(), 2 * BLOCK);
        assert_eq!(&out[BLOCK..BLOCK + 3], b"abc");
    }

    #[test]
    fn never_opens_through_a_symlink_and_refuses_existing_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let target = tmp.path().join("target");
        std::fs::write(&target, b"keep").expect("write");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        for how in [
            Existing::Refuse,
            Existing::Truncate,
            Existing::Append,
            Existing::Keep,
        ] {
            assert!(open(&link, how).is_err(), "{how:?}");
        }
        assert!(create_new(&target).is_err());
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
    }

    #[test]
    fn small_files_are_not_preallocated() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = create_new(&tmp.path().join("f")).expect("create");
        assert!(!preallocate(&f, PREALLOCATE_FROM - 1).expect("small"));
        assert_eq!(f.metadata().expect("stat").len(), 0);
    }
}
