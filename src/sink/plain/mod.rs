//! Plain-format output: the archives the server streams, unpacked into the data directory and
//! the tablespace directories: written by the reading task itself ([`Writer`]), or, for
//! archives the server compressed, decompressed on a blocking thread fed through a bounded
//! channel ([`run`]).
//!
//! # Security
//! The server's archives are not trusted. Every member name goes through [`path::member_path`]
//! (no absolute paths, no `..`). The only symbolic links written are `pg_tblspc/<oid>` in the
//! base archive, for a tablespace the server listed, pointing where pgclone decided (the
//! tablespace's location or its `-T` mapping), never where the member says; anything beneath
//! such a link is refused. Hard links, devices, FIFOs and other member types are refused.
//! Files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` ([`create_new`]), so an existing file or
//! link is never written through. Modes are applied as sent, without set-id or sticky bits;
//! owners and times are not applied.
//!
//! Memory stays bounded: contents are written as they arrive, never buffered whole.

pub mod path;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pgclone_proto::tar::{Member, MemberKind, TarEvent};
use pgclone_proto::Oid;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::manifest::check::{manifest_name, WriteCheck};
use crate::manifest::{Checksum, ChecksumAlgorithm};
use crate::sink::codec::{self, Method};
use crate::sink::fs::{self as sinkfs, create_new, preallocate, Modes};
use crate::sink::journal::{self, JournalWriter};
use crate::sink::manifest_out::ManifestOut;
use crate::sink::manifest_out::ManifestPart;
use crate::sink::split::{self, ArchiveSplitter};
use crate::sink::writeback::{FileProgress, Writeback};
use crate::sink::{ArchiveRoot, ArchiveSteps, Chunk, Stats};

/// Where plain-format output goes, fixed before the first archive arrives.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The data directory.
    pub dest: PathBuf,
    /// `--waldir`: where `pg_wal`'s contents go (`dest/pg_wal` is a symlink to it).
    pub waldir: Option<PathBuf>,
    /// Modes of what pgclone creates itself (the tablespace directories, created by the clone
    /// run before unpacking; the manifest; the journal). Members get their own mode.
    pub modes: Modes,
    /// Target of the `pg_tblspc/<oid>` symlink for each tablespace outside the data directory.
    pub tablespace_links: HashMap<Oid, PathBuf>,
    /// Directories created before unpacking; a directory member for one of them is not an
    /// error (its mode is applied).
    pub precreated: HashSet<PathBuf>,
    /// Checksum files as they are written and check them against the manifest.
    pub verify: Option<ChecksumAlgorithm>,
    /// Start writeback of what is written as it is written (when the result will be
    /// fsynced), so the final fsync finds little left to write.
    pub start_writeback: bool,
    /// Keep a resume journal ([`journal`]) in `dest`, created when the first archive starts.
    pub journal: Option<journal::Plan>,
}

/// Unpacks chunks from `rx` until the sender is dropped. Blocking: run it on its own thread.
/// Archives the server compressed (`.tar.gz`, `.tar.lz4`, `.tar.zst`) are decompressed on the
/// way.
pub fn run(mut rx: mpsc::Receiver<Chunk>, layout: Layout) -> Result<Stats, Error> {
    let mut w = Unpacker::new(layout);
    while let Some(chunk) = rx.blocking_recv() {
        match chunk {
            Chunk::ArchiveStart { name, root, .. }
                if Method::from_archive_name(&name) != Method::None =>
            {
                w.handle(Chunk::ArchiveStart {
                    name: name.clone(),
                    root,
                    server_terminated: true,
                })?;
                unpack_compressed(&mut w, &mut rx, &name)?;
                w.handle(Chunk::ArchiveEnd)?;
            }
            chunk => w.handle(chunk)?,
        }
    }
    w.finish()
}

/// Reads the server-compressed archive `name` from `rx` up to its `ArchiveEnd` and unpacks it
/// decompressed.
fn unpack_compressed(
    w: &mut Unpacker,
    rx: &mut mpsc::Receiver<Chunk>,
    name: &str,
) -> Result<(), Error> {
    let mut reader = ArchiveReader {
        rx,
        current: Bytes::new(),
        queued: std::collections::VecDeque::new(),
        ended: false,
    };
    {
        let method = Method::from_archive_name(name);
        let mut decoder = codec::reader(method, &mut reader).map_err(|e| decode_error(name, e))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = decoder.read(&mut buf).map_err(|e| decode_error(name, e))?;
            if n == 0 {
                break;
            }
            w.handle(Chunk::Data(Bytes::copy_from_slice(
                buf.get(..n).unwrap_or_default(),
            )))?;
        }
    }
    // The decoder may stop at the end of its frame before the archive's end marker has been
    // read: nothing but that marker may follow.
    let mut rest = [0u8; 512];
    if reader.read(&mut rest).map_err(|e| decode_error(name, e))? > 0 {
        return Err(decode_error(
            name,
            io::Error::other("data after the end of the compressed stream"),
        ));
    }
    Ok(())
}

/// The plain-format writer driven on the caller's thread, chunk by chunk: the reading task
/// writes each batch itself, so no thread hand-off sits between the socket and the files.
/// Takes only uncompressed archives; server-compressed ones need [`run`]'s decompressing reader.
pub struct Writer(Unpacker);

impl Writer {
    /// A writer for `layout`.
    pub fn new(layout: Layout) -> Self {
        Self(Unpacker::new(layout))
    }

    /// Writes one chunk (blocking file I/O).
    pub fn handle(&mut self, chunk: Chunk) -> Result<(), Error> {
        if let Chunk::ArchiveStart { name, .. } = &chunk {
            if Method::from_archive_name(name) != Method::None {
                return Err(Error::IncompatibleServer(format!(
                    "the server sent the compressed archive {name} without being asked to compress"
                )));
            }
        }
        self.0.handle(chunk)
    }

    /// Checks that the last archive ended; returns what was written.
    pub fn finish(self) -> Result<Stats, Error> {
        self.0.finish()
    }
}

fn decode_error(archive: &str, e: io::Error) -> Error {
    Error::Fs {
        op: "decompress archive",
        path: PathBuf::from(archive),
        source: e,
    }
}

/// The bytes of one archive, pulled from the channel until its `ArchiveEnd`.
struct ArchiveReader<'a> {
    rx: &'a mut mpsc::Receiver<Chunk>,
    current: Bytes,
    queued: std::collections::VecDeque<Bytes>,
    ended: bool,
}

impl io::Read for ArchiveReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if let Some(next) = self.queued.pop_front() {
                self.current = next;
                continue;
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(d)) => self.current = d,
                Some(Chunk::Batch(pieces)) => self.queued.extend(pieces),
                Some(Chunk::ArchiveEnd) => self.ended = true,
                Some(_) => {
                    return Err(io::Error::other(
                        "unexpected message inside a compressed archive",
                    ))
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backup stream ended",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        let head = self.current.split_to(n);
        if let Some(dst) = buf.get_mut(..n) {
            dst.copy_from_slice(&head);
        }
        Ok(n)
    }
}

struct Archive {
    split: ArchiveSplitter,
    root: PathBuf,
    base: bool,
    oid: Option<Oid>,
}

struct OpenFile {
    file: File,
    path: PathBuf,
    written: FileProgress,
    /// The name the manifest (and the journal) gives it.
    name: Vec<u8>,
    /// Its size in the archive.
    size: u64,
    /// Its CRC-32C for the journal, when the check does not compute that already.
    crc: Option<Checksum>,
}

/// Unpacks uncompressed archives member by member; what [`Writer`] and [`run`] drive.
struct Unpacker {
    layout: Layout,
    check: Option<WriteCheck>,
    archive: Option<Archive>,
    file: Option<OpenFile>,
    manifest: ManifestOut,
    /// Symlinks created, relative to the base archive root.
    links: HashSet<PathBuf>,
    stats: Stats,
    /// Early writeback of finished stretches (when the result will be fsynced).
    writeback: Option<Writeback>,
    /// The resume journal, once the first archive started.
    journal: Option<JournalWriter>,
}

impl Unpacker {
    fn new(layout: Layout) -> Self {
        let layout_writeback = if layout.start_writeback {
            Writeback::start()
        } else {
            None
        };
        Self {
            check: layout.verify.map(WriteCheck::new),
            manifest: ManifestOut::new(Some(layout.dest.clone()), layout.modes.file),
            layout,
            archive: None,
            file: None,
            links: HashSet::new(),
            stats: Stats::default(),
            writeback: layout_writeback,
            journal: None,
        }
    }

    fn finish(self) -> Result<Stats, Error> {
        if let Some(a) = &self.archive {
            return Err(Error::Internal(format!(
                "archive {} was not finished",
                a.split.name
            )));
        }
        let checked = self.check.as_ref().and_then(WriteCheck::matched);
        Ok(Stats {
            checked,
            ..self.stats
        })
    }

    fn handle(&mut self, chunk: Chunk) -> Result<(), Error> {
        self.route(chunk)
    }

    /// Applies the splitter's events; consecutive contents of a file go out in one `writev`.
    fn drain(&mut self) -> Result<(), Error> {
        let mut contents: Vec<Bytes> = Vec::new();
        while let Some(event) = self.archive.as_mut().and_then(|a| a.split.poll_event()) {
            if let TarEvent::Data(data) = event {
                contents.push(data);
                continue;
            }
            self.write_contents(&mut contents)?;
            match event {
                TarEvent::Member(m) => self.begin_member(&m)?,
                TarEvent::Data(_) => {}
                TarEvent::MemberEnd => self.end_file()?,
            }
        }
        self.write_contents(&mut contents)
    }

    /// The current file's last byte was written: it is handed to writeback, the check and the
    /// journal.
    fn end_file(&mut self) -> Result<(), Error> {
        let Some(mut done) = self.file.take() else {
            return Ok(());
        };
        done.written.flush(self.writeback.as_ref(), &done.file);
        self.stats.files += 1;
        let checked = self.check.as_mut().and_then(WriteCheck::end_file);
        let Some(journal) = self.journal.as_mut() else {
            return Ok(());
        };
        match done.crc.map_or(checked, Checksum::finish) {
            Some(crc) => journal.file_done(&done.path, &done.name, done.size, &crc),
            None => Ok(()),
        }
    }

    fn write_contents(&mut self, contents: &mut Vec<Bytes>) -> Result<(), Error> {
        if contents.is_empty() {
            return Ok(());
        }
        if let Some(f) = self.file.as_mut() {
            codec::write_all_vectored(&mut f.file, contents)
                .map_err(Error::fs("write to file", &f.path))?;
            let mut n = 0;
            for data in contents.iter() {
                n += data.len() as u64;
                if let Some(v) = self.check.as_mut() {
                    v.data(data);
                }
                if let Some(sum) = f.crc.as_mut() {
                    sum.update(data);
                }
            }
            self.stats.bytes += n;
            f.written.wrote(self.writeback.as_ref(), &f.file, n);
        }
        contents.clear();
        match self.journal.as_mut() {
            Some(j) => j.commit_if_due(),
            None => Ok(()),
        }
    }

    /// A member starts: its name is checked (no escape, nothing beneath a link written), then
    /// its directory, file or tablespace link is made; any other member is refused.
    fn begin_member(&mut self, m: &Member) -> Result<(), Error> {
        let Some(archive) = self.archive.as_ref() else {
            return Ok(());
        };
        let refuse = |reason: String| Error::UnsafeMember {
            archive: archive.split.name.clone(),
            member: String::from_utf8_lossy(&m.name).into_owned(),
            reason,
        };
        let rel = path::member_path(&m.name).map_err(|e| refuse(e.to_string()))?;
        if archive.base {
            if let Some(link) = self.links.iter().find(|l| rel.starts_with(l) && rel != **l) {
                return Err(refuse(format!(
                    "it lies beneath the symbolic link \"{}\"",
                    link.display()
                )));
            }
        }
        let mode = m.mode & 0o777;
        match m.kind {
            MemberKind::Directory => {
                let Some(path) = self.resolve(archive, &rel) else {
                    return Ok(());
                };
                make_dir(&path, mode, self.layout.precreated.contains(&path))
            }
            MemberKind::File => {
                let path = self
                    .resolve(archive, &rel)
                    .ok_or_else(|| refuse("a file where the WAL directory link is".into()))?;
                let name = manifest_name(archive.oid, &m.name);
                self.begin_file(path, name, mode, m)
            }
            MemberKind::Symlink => {
                let target = self.tablespace_link(archive, &rel).ok_or_else(|| {
                    refuse(
                        "symbolic links are only accepted for listed tablespaces in pg_tblspc"
                            .into(),
                    )
                })?;
                let path = archive.root.join(&rel);
                std::os::unix::fs::symlink(target, &path)
                    .map_err(Error::fs("create symbolic link", &path))?;
                self.links.insert(rel);
                Ok(())
            }
            MemberKind::Other(t) => Err(refuse(format!(
                "unsupported member type '{}'",
                char::from(t).escape_default()
            ))),
        }
    }

    /// A regular file starts: created (it must not exist) with its mode, its blocks reserved,
    /// and announced to the check. `name` is its name in the manifest.
    fn begin_file(
        &mut self,
        path: PathBuf,
        name: Vec<u8>,
        mode: u32,
        m: &Member,
    ) -> Result<(), Error> {
        let file = create_file(&path, mode)?;
        preallocate(&file, m.size).map_err(Error::fs("preallocate", &path))?;
        let check_has_crc = self
            .check
            .as_ref()
            .is_some_and(|c| c.algorithm() == ChecksumAlgorithm::Crc32c);
        let crc = (self.journal.is_some() && !check_has_crc)
            .then(|| Checksum::with_algorithm(ChecksumAlgorithm::Crc32c));
        self.file = Some(OpenFile {
            file,
            path,
            written: FileProgress::default(),
            name,
            size: m.size,
            crc,
        });
        if let Some(v) = self.check.as_mut() {
            v.begin_file(&m.name);
        }
        Ok(())
    }

    /// The target pgclone chose for the symbolic link `rel`, if it is `pg_tblspc/<oid>` in the
    /// base archive for a listed tablespace; `None` refuses the link.
    fn tablespace_link(&self, archive: &Archive, rel: &Path) -> Option<&PathBuf> {
        archive
            .base
            .then(|| path::tablespace_oid(rel))
            .flatten()
            .and_then(|oid| self.layout.tablespace_links.get(&oid))
    }

    /// Where a member goes: under the archive root, except `pg_wal` contents with `--waldir`.
    /// `None` for the `pg_wal` directory itself when it is a symlink to `--waldir`.
    fn resolve(&self, archive: &Archive, rel: &Path) -> Option<PathBuf> {
        if archive.base {
            if let Some(waldir) = &self.layout.waldir {
                if rel == Path::new("pg_wal") {
                    return None;
                }
                if let Ok(inner) = rel.strip_prefix("pg_wal") {
                    return Some(waldir.join(inner));
                }
            }
        }
        Some(archive.root.join(rel))
    }
}

impl ArchiveSteps for Unpacker {
    /// An archive starts: its members go under the data directory or the tablespace's. The
    /// journal, if one is asked for, is created before the first.
    fn start_archive(&mut self, name: String, root: ArchiveRoot) -> Result<(), Error> {
        if let Some(plan) = self.layout.journal.take() {
            self.journal = Some(JournalWriter::create(
                &self.layout.dest,
                &plan.header,
                plan.sync,
                self.layout.modes.file,
            )?);
        }
        let (root, base, oid) = match root {
            ArchiveRoot::Base => (self.layout.dest.clone(), true, None),
            ArchiveRoot::Tablespace { dir, oid } => (dir, false, Some(oid)),
        };
        if let Some(v) = self.check.as_mut() {
            v.start_archive(oid);
        }
        self.archive = Some(Archive {
            split: ArchiveSplitter::new(name),
            root,
            base,
            oid,
        });
        Ok(())
    }

    /// The archive ended: its tar stream must be complete; the journal lists its files.
    fn end_archive(&mut self) -> Result<(), Error> {
        split::end(self.archive.take().map(|a| a.split))?;
        match self.journal.as_mut() {
            Some(j) => j.commit(),
            None => Ok(()),
        }
    }

    fn archive_data(&mut self, pieces: impl IntoIterator<Item = Bytes>) -> Result<(), Error> {
        split::feed(self.archive.as_mut().map(|a| &mut a.split), pieces)?;
        self.drain()
    }

    fn manifest(&mut self, part: ManifestPart) -> Result<(), Error> {
        self.manifest.handle(part, self.check.as_mut())
    }
}

/// Creates the directory of a member with `mode`; one that exists is accepted (and given
/// `mode`) only when `precreated`. Shared with the in-place writer, for which every directory
/// may exist.
pub(crate) fn make_dir(path: &Path, mode: u32, precreated: bool) -> Result<(), Error> {
    if sinkfs::make_dir(path, mode, precreated)? {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(Error::fs("set permissions of directory", path))
}

/// Creates a member's file (it must not exist) with its mode.
fn create_file(path: &Path, mode: u32) -> Result<File, Error> {
    create_new(path, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgclone_proto::testutil::{self, TarMember};

    fn tar(members: &[TarMember<'_>]) -> Bytes {
        Bytes::from(testutil::tar(members, 0o700))
    }

    fn layout(dest: &Path, ts: &[(u32, &Path)]) -> Layout {
        Layout {
            dest: dest.to_path_buf(),
            waldir: None,
            modes: Modes::PRIVATE,
            tablespace_links: ts.iter().map(|(o, p)| (Oid(*o), p.to_path_buf())).collect(),
            precreated: HashSet::new(),
            verify: None,
            start_writeback: false,
            journal: None,
        }
    }

    fn unpack(layout: Layout, archive: Bytes) -> Result<Stats, Error> {
        let (tx, rx) = mpsc::channel(4);
        let h = std::thread::spawn(move || run(rx, layout));
        for c in [
            Chunk::ArchiveStart {
                name: "base.tar".into(),
                root: ArchiveRoot::Base,
                server_terminated: false,
            },
            Chunk::Data(archive),
            Chunk::ArchiveEnd,
        ] {
            if tx.blocking_send(c).is_err() {
                break;
            }
        }
        drop(tx);
        h.join().expect("thread")
    }

    #[test]
    fn writes_files_dirs_and_tablespace_links() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dest = tmp.path().join("d");
        fs::create_dir(&dest).expect("mkdir");
        let ts = tmp.path().join("ts");
        let stats = unpack(
            layout(&dest, &[(16388, &ts)]),
            tar(&[
                ("global/", MemberKind::Directory, b"", None),
                ("global/pg_control", MemberKind::File, b"control", None),
                ("pg_tblspc/", MemberKind::Directory, b"", None),
                (
                    "pg_tblspc/16388/",
                    MemberKind::Symlink,
                    b"",
                    Some("/somewhere/else"),
                ),
            ]),
        )
        .expect("unpacks");
        assert_eq!((stats.files, stats.bytes), (1, 7));
        assert_eq!(
            fs::read(dest.join("global/pg_control")).expect("read"),
            b"control"
        );
        assert_eq!(
            fs::read_link(dest.join("pg_tblspc/16388")).expect("link"),
            ts
        );
    }

    #[test]
    fn lists_complete_files_in_the_journal_with_their_crc32c() {
        let header = journal::Header {
            format: journal::FORMAT_VERSION,
            system_identifier: "1".into(),
            timeline: 1,
            major: 18,
            start_lsn: "0/2000028".into(),
            tablespaces: Vec::new(),
        };
        for verify in [
            None,
            Some(ChecksumAlgorithm::Crc32c),
            Some(ChecksumAlgorithm::Sha256),
        ] {
            let tmp = tempfile::tempdir().expect("tmp");
            let dest = tmp.path().join("d");
            fs::create_dir(&dest).expect("mkdir");
            let mut l = layout(&dest, &[]);
            l.verify = verify;
            l.journal = Some(journal::Plan {
                header: header.clone(),
                sync: true,
            });
            unpack(
                l,
                tar(&[
                    ("PG_VERSION", MemberKind::File, b"15\n", None),
                    ("pg_wal/", MemberKind::Directory, b"", None),
                    (
                        "pg_wal/000000010000000000000002",
                        MemberKind::File,
                        b"w",
                        None,
                    ),
                ]),
            )
            .expect("unpacks");
            let j = journal::read(&dest).expect("journal");
            assert_eq!(j.header, header);
            assert_eq!(
                j.files,
                [journal::FileRecord {
                    path: b"PG_VERSION".to_vec(),
                    size: 3,
                    crc32c: "8a744722".into(),
                }],
                "{verify:?}"
            );
        }
    }

    #[test]
    fn refuses_hostile_members_before_writing_through_them() {
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        let cases: Vec<Vec<TarMember<'_>>> = vec![
            vec![(
                "evil/",
                MemberKind::Symlink,
                b"",
                Some(outside.to_str().expect("utf8")),
            )],
            vec![
                ("pg_tblspc/", MemberKind::Directory, b"", None),
                ("pg_tblspc/999/", MemberKind::Symlink, b"", Some("/tmp")),
            ],
            vec![
                ("pg_tblspc/", MemberKind::Directory, b"", None),
                ("pg_tblspc/16388/", MemberKind::Symlink, b"", Some("/x")),
                ("pg_tblspc/16388/x", MemberKind::File, b"boom", None),
            ],
            vec![("../x", MemberKind::File, b"boom", None)],
            vec![("/x", MemberKind::File, b"boom", None)],
            vec![(
                "hard",
                MemberKind::Other(b'1'),
                b"",
                Some("global/pg_control"),
            )],
            vec![("fifo", MemberKind::Other(b'6'), b"", None)],
            vec![("dev", MemberKind::Other(b'3'), b"", None)],
        ];
        for (i, members) in cases.into_iter().enumerate() {
            let dest = tmp.path().join(format!("d{i}"));
            fs::create_dir(&dest).expect("mkdir");
            let ts = outside.join("ts");
            let err = unpack(layout(&dest, &[(16388, &ts)]), tar(&members)).expect_err("refused");
            assert!(
                matches!(err, Error::UnsafeMember { .. }),
                "case {i}: {err:?}"
            );
            assert_eq!(
                fs::read_dir(&outside).expect("read").count(),
                0,
                "case {i} wrote outside"
            );
        }
    }

    #[test]
    fn never_writes_through_an_existing_symlink() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dest = tmp.path().join("d");
        fs::create_dir(&dest).expect("mkdir");
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep").expect("write");
        std::os::unix::fs::symlink(&victim, dest.join("f")).expect("symlink");
        let err = unpack(
            layout(&dest, &[]),
            tar(&[("f", MemberKind::File, b"boom", None)]),
        )
        .expect_err("refused");
        assert!(matches!(err, Error::Fs { .. }), "{err:?}");
        assert_eq!(fs::read(&victim).expect("read"), b"keep");
    }
}
