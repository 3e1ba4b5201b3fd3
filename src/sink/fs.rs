//! The file steps every writer shares, each in one place: the modes of what pgclone creates
//! ([`Modes`]), opening a file pgclone writes (never through a symbolic link), creating a
//! directory, reserving a large file's blocks, and emitting a tar member (header, contents,
//! padding) or the end of an archive.
//!
//! Used by the plain and tar writers, the WAL writers (`wal::segment`, `wal::tarwal`) and the
//! `-R` files (`recovery`). Nothing here decides what to write or where.
//!
//! # Modes
//! As pg_basebackup: what pgclone creates gets the modes of the server's data directory, 0700
//! and 0600, or 0750 and 0640 when the server allows group access (`initdb -g`,
//! `data_directory_mode` 0750, 11+). The mode is applied exactly, whatever the umask
//! (pg_basebackup sets its umask to match), so a group-readable clone is group-readable
//! throughout. Files unpacked from the server's archives keep the mode the archive gives them.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use pgclone_proto::tar::{build_header, MemberKind, BLOCK};

use crate::error::Error;

/// The modes of the directories and files pgclone creates itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    /// Directories: 0700 or 0750.
    pub dir: u32,
    /// Files: 0600 or 0640.
    pub file: u32,
}

impl Modes {
    /// Owner only: 0700 and 0600 (servers without group access, and 10, which has none).
    pub const PRIVATE: Self = Self {
        dir: 0o700,
        file: 0o600,
    };
    /// Group-readable: 0750 and 0640.
    pub const GROUP: Self = Self {
        dir: 0o750,
        file: 0o640,
    };

    /// The modes for a server whose `data_directory_mode` is `mode`: group-readable when it
    /// grants the group anything (as PostgreSQL reads it), else owner only.
    pub fn for_data_directory(mode: u32) -> Self {
        if mode & 0o070 != 0 {
            Self::GROUP
        } else {
            Self::PRIVATE
        }
    }
}

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

/// Opens `path` for writing; `existing` says what happens to a file already there. A file it
/// creates gets exactly `mode` (whatever the umask); one that existed keeps its mode. Never
/// follows a symbolic link in the last component. The caller names the operation in its
/// error.
pub fn open(path: &Path, existing: Existing, mode: u32) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW);
    match existing {
        Existing::Refuse => options.create_new(true),
        Existing::Truncate => options.truncate(true),
        Existing::Append => options.append(true),
        Existing::Keep => options.read(true).truncate(false),
    };
    if existing != Existing::Refuse {
        // Open what is there first, so that only a file created here is given `mode`.
        match options.open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            opened => return opened,
        }
        options.create_new(true);
    }
    let file = options.open(path)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

/// Creates a new file (`O_CREAT|O_EXCL|O_NOFOLLOW`) with exactly `mode`; an existing file or
/// link at `path` is an error ("create file").
pub fn create_new(path: &Path, mode: u32) -> Result<File, Error> {
    open(path, Existing::Refuse, mode).map_err(Error::fs("create file", path))
}

/// Makes `bytes` the whole contents of `path` (created, or emptied if it exists; never through
/// a symbolic link), which then has exactly `mode`. The caller names the operation in its
/// error.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = open(path, Existing::Truncate, mode)?;
    f.write_all(bytes)?;
    f.set_permissions(Permissions::from_mode(mode))
}

/// Creates the directory `path` with exactly `mode` (whatever the umask). With `exists_ok`, a
/// directory already there is no error and keeps its mode; returns whether it was created.
pub fn make_dir(path: &Path, mode: u32, exists_ok: bool) -> Result<bool, Error> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && exists_ok && path.is_dir() => {
            return Ok(false)
        }
        Err(e) => return Err(Error::fs("create directory", path)(e)),
    }
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(Error::fs("set permissions of directory", path))?;
    Ok(true)
}

/// Creates `path` and every missing ancestor, each with exactly `mode` (as pg_basebackup's
/// umask makes them); directories already there keep their mode.
pub fn make_dir_all(path: &Path, mode: u32) -> Result<(), Error> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        make_dir_all(parent, mode)?;
    }
    make_dir(path, mode, true).map(drop)
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
            assert!(open(&link, how, 0o600).is_err(), "{how:?}");
        }
        assert!(create_new(&target, 0o600).is_err());
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
    }

    #[test]
    fn small_files_are_not_preallocated() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = create_new(&tmp.path().join("f"), 0o600).expect("create");
        assert!(!preallocate(&f, PREALLOCATE_FROM - 1).expect("small"));
        assert_eq!(f.metadata().expect("stat").len(), 0);
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn modes_follow_the_data_directory_mode() {
        assert_eq!(Modes::for_data_directory(0o700), Modes::PRIVATE);
        assert_eq!(Modes::for_data_directory(0o750), Modes::GROUP);
        assert_eq!(Modes::for_data_directory(0o740), Modes::GROUP);
        assert_eq!(Modes::GROUP.file, 0o640);
        assert_eq!(Modes::PRIVATE.file, 0o600);
    }

    /// A created file or directory gets exactly the mode asked for, whatever the umask (0o666
    /// would be 0o644 under the usual 022); one that existed keeps its own.
    #[test]
    fn created_files_and_directories_get_exactly_their_mode() {
        let tmp = tempfile::tempdir().expect("tmp");
        for (i, how) in [
            Existing::Refuse,
            Existing::Truncate,
            Existing::Append,
            Existing::Keep,
        ]
        .into_iter()
        .enumerate()
        {
            let path = tmp.path().join(format!("new{i}"));
            open(&path, how, 0o666).expect("create");
            assert_eq!(mode_of(&path), 0o666, "{how:?}");
            if how != Existing::Refuse {
                std::fs::set_permissions(&path, Permissions::from_mode(0o604)).expect("chmod");
                open(&path, how, 0o640).expect("reopen");
                assert_eq!(
                    mode_of(&path),
                    0o604,
                    "an existing file keeps its mode: {how:?}"
                );
            }
        }
        let nested = tmp.path().join("a/b/c");
        make_dir_all(&nested, 0o770).expect("mkdir -p");
        for d in [tmp.path().join("a"), tmp.path().join("a/b"), nested.clone()] {
            assert_eq!(mode_of(&d), 0o770, "{}", d.display());
        }
        assert!(!make_dir(&nested, 0o700, true).expect("exists"));
        assert_eq!(mode_of(&nested), 0o770);
        assert!(make_dir(&nested, 0o700, false).is_err());
    }
}
