//! Tar-format output (`-F t`): each archive the server sends becomes `<name>` (plus the client
//! compression's suffix) in the destination, or the base archive goes to standard output
//! (`-D -`). Written by the task that reads the socket, chunk by chunk ([`Writer`]); client
//! compression runs on its own worker threads.
//!
//! Archives pass through untouched unless something must be changed inside them:
//! - the two closing zero blocks are added to archives from 10–14 servers, which omit them;
//! - with `-R`, the base archive is rewritten member by member (the recovery injector): the
//!   server's `standby.signal`/`recovery.conf` are dropped, the settings are appended to
//!   `postgresql.auto.conf` (12+), and `standby.signal` or `recovery.conf` is added;
//! - on standard output, the manifest is added to the base archive as `backup_manifest`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use pgclone_proto::tar::{Member, MemberKind, TarEvent, TarSplitter};

use crate::error::Error;
use crate::manifest::check::WriteCheck;
use crate::manifest::ChecksumAlgorithm;
use crate::sink::codec::{self, ArchiveWriter, ClientSpec, Method};
use crate::sink::fs::{self, Modes, TAR_END};
use crate::sink::manifest_out::ManifestOut;
use crate::sink::writeback::{TrackedFile, Writeback};
use crate::sink::{ArchiveRoot, Chunk, Stats};

/// Largest `postgresql.auto.conf` the injector buffers.
const MAX_AUTO_CONF: usize = 16 << 20;

/// What `-R` adds to the base archive.
#[derive(Debug, Clone)]
pub struct RecoveryFiles {
    /// The settings text (what `recovery::settings` builds).
    pub settings: String,
    /// 12+: `postgresql.auto.conf` + `standby.signal`; older: `recovery.conf`.
    pub signal_file: bool,
    /// The mode of the member holding the settings (`recovery::settings_mode`: owner-only when
    /// they hold a password); `standby.signal` and the rest take the clone's file mode.
    pub settings_mode: u32,
}

/// Where and how tar output is written.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The destination directory; `None` for standard output (base archive only).
    pub dir: Option<PathBuf>,
    /// Client-side compression.
    pub compression: ClientSpec,
    /// `-R`.
    pub recovery: Option<RecoveryFiles>,
    /// Checksum members as they pass and check them against the manifest.
    pub verify: Option<ChecksumAlgorithm>,
    /// fsync each archive when it is complete, and start its writeback as it grows (not with
    /// `--no-sync`).
    pub sync: bool,
    /// Modes of the files pgclone creates: the archives, the manifest, and the members it
    /// adds (`-R`'s files, the manifest on standard output).
    pub modes: Modes,
}

/// The tar writer, driven on the caller's thread chunk by chunk (no thread hand-off between
/// the socket and the files; compression runs on its own worker threads).
pub struct Writer {
    /// Early writeback of the archive files as they grow.
    writeback: Option<Arc<Writeback>>,
    layout: Layout,
    check: Option<WriteCheck>,
    current: Option<ArchiveOut>,
    /// The base archive on standard output, kept open for the manifest.
    stdout_base: Option<ArchiveOut>,
    manifest: ManifestOut,
    stats: Stats,
}

impl Writer {
    /// A writer for `layout`.
    pub fn new(layout: Layout) -> Self {
        let writeback = (layout.sync && layout.dir.is_some())
            .then(Writeback::start)
            .flatten()
            .map(Arc::new);
        Self {
            writeback,
            check: layout.verify.map(WriteCheck::new),
            manifest: ManifestOut::new(layout.dir.clone(), layout.modes.file),
            layout,
            current: None,
            stdout_base: None,
            stats: Stats::default(),
        }
    }

    /// Writes one chunk (blocking I/O).
    pub fn handle(&mut self, chunk: Chunk) -> Result<(), Error> {
        match chunk {
            Chunk::ArchiveStart {
                name,
                root,
                server_terminated,
            } => self.start_archive(name, root, server_terminated)?,
            Chunk::Batch(pieces) => self.write_batch(pieces)?,
            Chunk::Data(data) => self.write_data(data)?,
            Chunk::ArchiveEnd => self.end_archive()?,
            Chunk::ManifestStart => self.manifest.start()?,
            Chunk::ManifestData(data) => self.manifest.data(&data, self.check.as_mut())?,
            Chunk::ManifestEnd => self.manifest.end(self.check.as_mut())?,
        }
        Ok(())
    }

    /// Completes the base archive on standard output once the manifest (if any) is in;
    /// returns what was written.
    pub fn finish(mut self) -> Result<Stats, Error> {
        if let Some(base) = self.stdout_base.take() {
            let manifest = self.manifest.take_memory();
            base.close(manifest.as_deref())?;
        }
        let checked = self.check.as_ref().and_then(WriteCheck::matched);
        Ok(Stats {
            checked,
            ..self.stats
        })
    }

    /// Opens the archive's output and tells the check which archive it is (verification is
    /// off for archives the server compressed).
    fn start_archive(
        &mut self,
        name: String,
        root: ArchiveRoot,
        server_terminated: bool,
    ) -> Result<(), Error> {
        let (base, oid) = match root {
            ArchiveRoot::Base => (true, None),
            ArchiveRoot::Tablespace { oid, .. } => (false, Some(oid)),
        };
        let archive = self.open(name, base, server_terminated)?;
        if let Some(v) = self.check.as_mut() {
            v.start_archive(oid);
            if archive.inspect.is_none() {
                v.disable("the server compressed the archives");
            }
        }
        self.current = Some(archive);
        Ok(())
    }

    /// Several pieces: passed through untouched, they are verified, then written in one
    /// vectored write; an archive being rewritten takes them one by one.
    fn write_batch(&mut self, pieces: Vec<Bytes>) -> Result<(), Error> {
        match self.current.as_mut() {
            Some(a) if a.rewrite.is_none() => {
                for data in &pieces {
                    self.stats.bytes += data.len() as u64;
                    a.inspect(self.check.as_mut(), data)?;
                }
                a.writer
                    .write_batch(&pieces)
                    .map_err(Error::fs("write to file", a.path.clone()))
            }
            _ => pieces
                .into_iter()
                .try_for_each(|data| self.write_data(data)),
        }
    }

    /// One piece: verified, then written (through the rewriter, if any).
    fn write_data(&mut self, data: Bytes) -> Result<(), Error> {
        if let Some(a) = self.current.as_mut() {
            self.stats.bytes += data.len() as u64;
            a.inspect(self.check.as_mut(), &data)?;
            a.write(data)?;
        }
        Ok(())
    }

    /// The archive is complete: closed now, or on standard output kept open until
    /// [`Self::finish`] for the manifest.
    fn end_archive(&mut self) -> Result<(), Error> {
        if let Some(a) = self.current.take() {
            self.stats.files += 1;
            if self.layout.dir.is_none() {
                self.stdout_base = Some(a);
            } else {
                a.close(None)?;
            }
        }
        Ok(())
    }

    /// Opens the output of archive `name`: its file (compressed unless the server did) or
    /// standard output, with the rewriter when `-R` or standard output needs one.
    fn open(&self, name: String, base: bool, server_terminated: bool) -> Result<ArchiveOut, Error> {
        let server_compressed = Method::from_archive_name(&name) != Method::None;
        let spec = if server_compressed {
            ClientSpec::NONE
        } else {
            self.layout.compression
        };
        let Destination { sink, file, path } = match &self.layout.dir {
            Some(dir) => {
                self.create_archive_file(&dir.join(format!("{name}{}", spec.method.suffix())))?
            }
            None => Destination {
                sink: Box::new(std::io::stdout()),
                file: None,
                path: "standard output".into(),
            },
        };
        let writer =
            codec::writer(spec, sink).map_err(Error::fs("start compressing", path.clone()))?;
        let rewrite = (!server_compressed
            && base
            && (self.layout.recovery.is_some() || self.layout.dir.is_none()))
        .then(|| {
            Rewriter::new(
                self.layout.recovery.clone().filter(|_| base),
                self.layout.modes.file,
            )
        });
        Ok(ArchiveOut {
            name,
            path,
            writer,
            file,
            rewrite,
            inspect: (!server_compressed).then(Inspect::default),
            server_terminated: server_terminated || server_compressed,
        })
    }

    /// Creates an archive file (which must not exist).
    fn create_archive_file(&self, path: &Path) -> Result<Destination, Error> {
        let f = fs::create_new(path, self.layout.modes.file)?;
        let clone = f.try_clone().map_err(Error::fs("open", path))?;
        let sink: Box<dyn Write + Send> = match &self.writeback {
            Some(wb) => Box::new(TrackedFile::new(f, Arc::clone(wb))),
            None => Box::new(f),
        };
        Ok(Destination {
            sink,
            file: self.layout.sync.then_some(clone),
            path: path.display().to_string(),
        })
    }
}

/// Where an archive's bytes go before compression.
struct Destination {
    /// The file (tracked for early writeback when syncing) or standard output.
    sink: Box<dyn Write + Send>,
    /// The file to fsync at the end (with sync).
    file: Option<File>,
    /// Its name for messages.
    path: String,
}

struct ArchiveOut {
    name: String,
    path: String,
    writer: Box<dyn ArchiveWriter>,
    /// fsynced at the end (none on standard output or with `--no-sync`).
    file: Option<File>,
    rewrite: Option<Rewriter>,
    /// Splits the archive as it passes, for verification (none for server-compressed ones).
    inspect: Option<Inspect>,
    server_terminated: bool,
}

/// The member structure of an archive passing through, for verification.
#[derive(Default)]
struct Inspect {
    splitter: TarSplitter,
    /// Whether the current member is a regular file.
    in_file: bool,
}

/// Feeds archive bytes to the check, member by member.
fn inspect_members(
    inspect: &mut Inspect,
    data: Bytes,
    v: &mut WriteCheck,
) -> Result<(), pgclone_proto::tar::TarError> {
    inspect.splitter.handle_data(data)?;
    while let Some(event) = inspect.splitter.poll_event() {
        match event {
            TarEvent::Member(m) => {
                inspect.in_file = m.kind == MemberKind::File;
                if inspect.in_file {
                    v.begin_file(&m.name);
                }
            }
            TarEvent::Data(d) if inspect.in_file => v.data(&d),
            TarEvent::Data(_) => {}
            TarEvent::MemberEnd => {
                if inspect.in_file {
                    v.end_file();
                }
                inspect.in_file = false;
            }
        }
    }
    Ok(())
}

impl ArchiveOut {
    /// Feeds `data` to the check (when verifying and the archive can be split).
    fn inspect(&mut self, check: Option<&mut WriteCheck>, data: &Bytes) -> Result<(), Error> {
        if let (Some(v), Some(inspect)) = (check, self.inspect.as_mut()) {
            inspect_members(inspect, data.clone(), v).map_err(|source| Error::Tar {
                archive: self.name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn write(&mut self, data: Bytes) -> Result<(), Error> {
        match self.rewrite.as_mut() {
            Some(r) => r
                .feed(data, &mut *self.writer)
                .map_err(|e| e.into_error(&self.name, &self.path)),
            None => self
                .writer
                .write_all(&data)
                .map_err(Error::fs("write to file", self.path.clone())),
        }
    }

    /// Ends the archive: the rewriter's additions and trailer, or the missing zero blocks of
    /// a legacy server; then finishes compression and fsyncs.
    fn close(mut self, manifest: Option<&[u8]>) -> Result<(), Error> {
        let path = self.path.clone();
        match self.rewrite.take() {
            Some(r) => r
                .finish(&mut *self.writer, manifest)
                .map_err(|e| e.into_error(&self.name, &path))?,
            None if !self.server_terminated => self
                .writer
                .write_all(&TAR_END)
                .map_err(Error::fs("write to file", path.clone()))?,
            None => {}
        }
        self.writer
            .finish()
            .map_err(Error::fs("finish writing", path.clone()))?;
        if let Some(f) = self.file {
            f.sync_all().map_err(Error::fs("fsync", path))?;
        }
        Ok(())
    }
}

#[derive(Debug)]
enum RewriteError {
    Tar(pgclone_proto::tar::TarError),
    Io(std::io::Error),
    TooLarge,
}

impl RewriteError {
    fn into_error(self, archive: &str, path: &str) -> Error {
        match self {
            Self::Tar(source) => Error::Tar {
                archive: archive.into(),
                source,
            },
            Self::Io(e) => Error::fs("write to file", path)(e),
            Self::TooLarge => Error::UnsafeMember {
                archive: archive.into(),
                member: "postgresql.auto.conf".into(),
                reason: format!("larger than {MAX_AUTO_CONF} bytes"),
            },
        }
    }
}

impl From<std::io::Error> for RewriteError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// What the rewriter does with the member in progress.
enum MemberAction {
    /// Copy the member's contents through.
    Pass(u64),
    /// Drop the member.
    Skip,
    /// Buffer `postgresql.auto.conf` to append the settings.
    AutoConf(Member, Vec<u8>),
}

/// Re-emits a tar stream member by member, applying the recovery injection and appending
/// members at the end.
struct Rewriter {
    splitter: TarSplitter,
    recovery: Option<RecoveryFiles>,
    current: Option<MemberAction>,
    saw_auto_conf: bool,
    /// Mode of the members it adds.
    file_mode: u32,
}

impl Rewriter {
    fn new(recovery: Option<RecoveryFiles>, file_mode: u32) -> Self {
        Self {
            splitter: TarSplitter::new(),
            recovery,
            current: None,
            saw_auto_conf: false,
            file_mode,
        }
    }

    fn feed(&mut self, data: Bytes, w: &mut dyn Write) -> Result<(), RewriteError> {
        self.splitter.handle_data(data).map_err(RewriteError::Tar)?;
        while let Some(event) = self.splitter.poll_event() {
            match event {
                TarEvent::Member(m) => {
                    let name = m.name.strip_suffix(b"/").unwrap_or(&m.name).to_vec();
                    let signal = self.recovery.as_ref().map(|r| r.signal_file);
                    self.current = Some(match (name.as_slice(), signal) {
                        (b"standby.signal", Some(true)) | (b"recovery.conf", Some(false)) => {
                            MemberAction::Skip
                        }
                        (b"postgresql.auto.conf", Some(true)) => {
                            self.saw_auto_conf = true;
                            MemberAction::AutoConf(m, Vec::new())
                        }
                        _ => {
                            w.write_all(&m.raw_header)?;
                            MemberAction::Pass(m.size)
                        }
                    });
                }
                TarEvent::Data(d) => match self.current.as_mut() {
                    Some(MemberAction::Pass(_)) => w.write_all(&d)?,
                    Some(MemberAction::AutoConf(_, buf)) => {
                        if buf.len() + d.len() > MAX_AUTO_CONF {
                            return Err(RewriteError::TooLarge);
                        }
                        buf.extend_from_slice(&d);
                    }
                    Some(MemberAction::Skip) | None => {}
                },
                TarEvent::MemberEnd => match self.current.take() {
                    Some(MemberAction::Pass(size)) => w.write_all(fs::tar_padding(size))?,
                    Some(MemberAction::AutoConf(m, mut buf)) => {
                        if let Some(r) = &self.recovery {
                            buf.extend_from_slice(r.settings.as_bytes());
                        }
                        // The settings hold the password, if any: their mode, as
                        // `recovery::write` gives it in plain format.
                        let name = String::from_utf8_lossy(&m.name).into_owned();
                        let mode = self
                            .recovery
                            .as_ref()
                            .map_or(self.file_mode, |r| r.settings_mode);
                        fs::write_tar_member(w, &name, mode, &buf)?;
                    }
                    Some(MemberAction::Skip) | None => {}
                },
            }
        }
        Ok(())
    }

    fn finish(mut self, w: &mut dyn Write, manifest: Option<&[u8]>) -> Result<(), RewriteError> {
        self.splitter.finish().map_err(RewriteError::Tar)?;
        let mode = self.file_mode;
        if let Some(r) = &self.recovery {
            if r.signal_file {
                if !self.saw_auto_conf {
                    let settings = r.settings.as_bytes();
                    fs::write_tar_member(w, "postgresql.auto.conf", r.settings_mode, settings)?;
                }
                fs::write_tar_member(w, "standby.signal", mode, b"")?;
            } else {
                let settings = r.settings.as_bytes();
                fs::write_tar_member(w, "recovery.conf", r.settings_mode, settings)?;
            }
        }
        if let Some(m) = manifest {
            fs::write_tar_member(w, "backup_manifest", mode, m)?;
        }
        w.write_all(&TAR_END)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, &[u8])], terminated: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            fs::write_tar_member(&mut out, name, 0o600, data).expect("emit");
        }
        if terminated {
            out.extend(TAR_END);
        }
        out
    }

    fn members(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        members_with_modes(bytes)
            .into_iter()
            .map(|(name, _, data)| (name, data))
            .collect()
    }

    fn members_with_modes(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut t = TarSplitter::new();
        t.handle_data(Bytes::copy_from_slice(bytes)).expect("parse");
        t.finish().expect("complete");
        let mut out: Vec<(String, u32, Vec<u8>)> = Vec::new();
        while let Some(e) = t.poll_event() {
            match e {
                TarEvent::Member(m) => out.push((
                    String::from_utf8_lossy(&m.name).into_owned(),
                    m.mode & 0o7777,
                    Vec::new(),
                )),
                TarEvent::Data(d) => out.last_mut().expect("member").2.extend_from_slice(&d),
                TarEvent::MemberEnd => {}
            }
        }
        out
    }

    #[test]
    fn injects_recovery_settings_for_12_and_later() {
        for terminated in [false, true] {
            let input = archive(
                &[
                    ("PG_VERSION", b"16\n"),
                    ("standby.signal", b""),
                    ("postgresql.auto.conf", b"# auto\n"),
                ],
                terminated,
            );
            let mut r = Rewriter::new(
                Some(RecoveryFiles {
                    settings: "primary_conninfo = 'x'\n".into(),
                    signal_file: true,
                    settings_mode: Modes::PRIVATE.file,
                }),
                Modes::PRIVATE.file,
            );
            let mut out = Vec::new();
            for chunk in input.chunks(100) {
                r.feed(Bytes::copy_from_slice(chunk), &mut out)
                    .expect("feed");
            }
            r.finish(&mut out, Some(b"{manifest}")).expect("finish");
            let got = members(&out);
            let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    "PG_VERSION",
                    "postgresql.auto.conf",
                    "standby.signal",
                    "backup_manifest"
                ]
            );
            assert_eq!(got[1].1, b"# auto\nprimary_conninfo = 'x'\n");
            assert_eq!(got[0].1, b"16\n");
            assert!(out.ends_with(&[0u8; 1024]));
        }
    }

    #[test]
    fn injects_recovery_conf_for_10_and_11() {
        let input = archive(&[("PG_VERSION", b"10\n"), ("recovery.conf", b"old")], false);
        let mut r = Rewriter::new(
            Some(RecoveryFiles {
                settings: "standby_mode = 'on'\n".into(),
                signal_file: false,
                settings_mode: Modes::PRIVATE.file,
            }),
            Modes::PRIVATE.file,
        );
        let mut out = Vec::new();
        r.feed(Bytes::from(input), &mut out).expect("feed");
        r.finish(&mut out, None).expect("finish");
        let got = members(&out);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            (
                "recovery.conf".to_string(),
                b"standby_mode = 'on'\n".to_vec()
            )
        );
    }

    /// The members pgclone adds or rewrites (`postgresql.auto.conf`) take the clone's file mode
    /// (0640 with group access); the server's other members keep theirs.
    #[test]
    fn added_members_take_the_clone_file_mode() {
        // Settings without a password take the clone's mode; with one, owner-only.
        for settings_mode in [0o640, 0o600] {
            let mut input = Vec::new();
            fs::write_tar_member(&mut input, "PG_VERSION", 0o644, b"16\n").expect("emit");
            fs::write_tar_member(&mut input, "postgresql.auto.conf", 0o604, b"# a\n")
                .expect("emit");
            let mut r = Rewriter::new(
                Some(RecoveryFiles {
                    settings: "primary_conninfo = 'x'\n".into(),
                    signal_file: true,
                    settings_mode,
                }),
                Modes::GROUP.file,
            );
            let mut out = Vec::new();
            r.feed(Bytes::from(input), &mut out).expect("feed");
            r.finish(&mut out, Some(b"{}")).expect("finish");
            let modes: Vec<(String, u32)> = members_with_modes(&out)
                .into_iter()
                .map(|(name, mode, _)| (name, mode))
                .collect();
            let want = [
                ("PG_VERSION", 0o644),
                ("postgresql.auto.conf", settings_mode),
                ("standby.signal", 0o640),
                ("backup_manifest", 0o640),
            ]
            .map(|(n, m)| (n.to_owned(), m));
            assert_eq!(modes, want);
        }
    }
}
