//! Tar-format output (`-F t`): each archive the server sends becomes `<name>` (plus the client
//! compression's suffix) in the destination, or the base archive goes to standard output
//! (`-D -`). Written by the task that reads the socket, chunk by chunk ([`Inline`]); client
//! compression runs on its own worker threads.
//!
//! Archives pass through untouched unless something must be changed inside them:
//! - the two closing zero blocks are added to archives from 10–14 servers, which omit them;
//! - with `-R`, the base archive is rewritten member by member (the recovery injector): the
//!   server's `standby.signal`/`recovery.conf` are dropped, the settings are appended to
//!   `postgresql.auto.conf` (12+), and `standby.signal` or `recovery.conf` is added;
//! - on standard output, the manifest is added to the base archive as `backup_manifest`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pgclone_proto::tar::{build_header, Member, MemberKind, TarEvent, TarSplitter, BLOCK};

use crate::sink::codec::{self, ArchiveWriter, ClientSpec, Method};
use crate::error::Error;
use crate::manifest::check::Verifier;
use crate::manifest::ChecksumAlgorithm;
use crate::sink::plain::{Chunk, Stats, MANIFEST_TMP};
use crate::sink::writeback::{TrackedFile, Writeback};

/// Largest `postgresql.auto.conf` the injector buffers.
const MAX_AUTO_CONF: usize = 16 << 20;

/// What `-R` adds to the base archive.
#[derive(Debug, Clone)]
pub struct RecoveryFiles {
    /// The settings text (from [`crate::recovery::settings`]).
    pub settings: String,
    /// 12+: `postgresql.auto.conf` + `standby.signal`; older: `recovery.conf`.
    pub signal_file: bool,
}

/// Where and how tar output is written.
#[derive(Debug, Clone)]
pub struct TarLayout {
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
}

/// The tar writer driven on the caller's thread, chunk by chunk (no thread hand-off between
/// the socket and the files; compression runs on its own worker threads).
pub struct Inline(Writer);

impl Inline {
    /// A writer for `layout`.
    pub fn new(layout: TarLayout) -> Self {
        let writeback = (layout.sync && layout.dir.is_some())
            .then(Writeback::start)
            .flatten()
            .map(Arc::new);
        Self(Writer {
            writeback,
            verifier: layout.verify.map(Verifier::new),
            layout,
            current: None,
            stdout_base: None,
            manifest: None,
            stats: Stats::default(),
        })
    }

    /// Writes one chunk (blocking I/O).
    pub fn handle(&mut self, chunk: Chunk) -> Result<(), Error> {
        self.0.handle(chunk)
    }

    /// Completes the base archive on standard output once the manifest (if any) is in;
    /// returns what was written.
    pub fn finish(self) -> Result<Stats, Error> {
        let mut w = self.0;
        if let Some(base) = w.stdout_base.take() {
            let manifest = w.manifest.take().map(|m| m.bytes);
            base.close(manifest.as_deref())?;
        }
        Ok(w.stats)
    }
}

struct ManifestOut {
    file: Option<(File, PathBuf)>,
    bytes: Vec<u8>,
}

struct Writer {
    /// Early writeback of the archive files as they grow.
    writeback: Option<Arc<Writeback>>,
    layout: TarLayout,
    verifier: Option<Verifier>,
    current: Option<ArchiveOut>,
    /// The base archive on standard output, kept open for the manifest.
    stdout_base: Option<ArchiveOut>,
    manifest: Option<ManifestOut>,
    stats: Stats,
}

impl Writer {
    fn handle(&mut self, chunk: Chunk) -> Result<(), Error> {
        match chunk {
            Chunk::ArchiveStart {
                name,
                root,
                server_terminated,
            } => {
                let (base, oid) = match root {
                    crate::sink::plain::ArchiveRoot::Base => (true, None),
                    crate::sink::plain::ArchiveRoot::Tablespace { oid, .. } => (false, Some(oid)),
                };
                let archive = self.open(name, base, server_terminated)?;
                if let Some(v) = self.verifier.as_mut() {
                    v.start_archive(oid);
                    if archive.inspect.is_none() {
                        v.disable("the server compressed the archives");
                    }
                }
                self.current = Some(archive);
            }
            Chunk::Batch(pieces) => match self.current.as_mut() {
                // Passed through untouched: verify, then one vectored write.
                Some(a) if a.rewrite.is_none() => {
                    for data in &pieces {
                        self.stats.bytes += data.len() as u64;
                        if let (Some(v), Some(inspect)) =
                            (self.verifier.as_mut(), a.inspect.as_mut())
                        {
                            inspect_members(inspect, data.clone(), v).map_err(|source| {
                                Error::Tar {
                                    archive: a.name.clone(),
                                    source,
                                }
                            })?;
                        }
                    }
                    a.writer
                        .write_batch(&pieces)
                        .map_err(Error::fs("write to file", a.path.clone()))?;
                }
                _ => {
                    for data in pieces {
                        self.handle(Chunk::Data(data))?;
                    }
                }
            },
            Chunk::Data(data) => {
                if let Some(a) = self.current.as_mut() {
                    self.stats.bytes += data.len() as u64;
                    if let (Some(v), Some(inspect)) = (self.verifier.as_mut(), a.inspect.as_mut()) {
                        inspect_members(inspect, data.clone(), v).map_err(|source| Error::Tar {
                            archive: a.name.clone(),
                            source,
                        })?;
                    }
                    a.write(data)?;
                }
            }
            Chunk::ArchiveEnd => {
                if let Some(a) = self.current.take() {
                    self.stats.files += 1;
                    if self.layout.dir.is_none() {
                        self.stdout_base = Some(a);
                    } else {
                        a.close(None)?;
                    }
                }
            }
            Chunk::ManifestStart => {
                let file = match &self.layout.dir {
                    Some(dir) => {
                        let path = dir.join(MANIFEST_TMP);
                        Some((create(&path)?, path))
                    }
                    None => None,
                };
                self.manifest = Some(ManifestOut {
                    file,
                    bytes: Vec::new(),
                });
            }
            Chunk::ManifestData(data) => {
                if let Some(v) = self.verifier.as_mut() {
                    v.manifest_data(&data);
                }
                if let Some(m) = self.manifest.as_mut() {
                    match &mut m.file {
                        Some((f, path)) => f
                            .write_all(&data)
                            .map_err(Error::fs("write to file", path.clone()))?,
                        None => m.bytes.extend_from_slice(&data),
                    }
                }
            }
            Chunk::ManifestEnd => {
                if self.layout.dir.is_some() {
                    self.manifest = None;
                }
                if let Some(v) = self.verifier.as_mut() {
                    v.finish_manifest()?;
                }
            }
        }
        Ok(())
    }

    fn open(&self, name: String, base: bool, server_terminated: bool) -> Result<ArchiveOut, Error> {
        let server_compressed = Method::from_archive_name(&name) != Method::None;
        let spec = if server_compressed {
            ClientSpec::NONE
        } else {
            self.layout.compression
        };
        let (sink, file, path): (Box<dyn Write + Send>, Option<File>, String) =
            match &self.layout.dir {
                Some(dir) => {
                    let path = dir.join(format!("{name}{}", spec.method.suffix()));
                    let f = create(&path)?;
                    let clone = f.try_clone().map_err(Error::fs("open", path.clone()))?;
                    let sink: Box<dyn Write + Send> = match &self.writeback {
                        Some(wb) => Box::new(TrackedFile::new(f, Arc::clone(wb))),
                        None => Box::new(f),
                    };
                    let clone = self.layout.sync.then_some(clone);
                    (sink, clone, path.display().to_string())
                }
                None => (Box::new(std::io::stdout()), None, "standard output".into()),
            };
        let writer =
            codec::writer(spec, sink).map_err(Error::fs("start compressing", path.clone()))?;
        let rewrite = (!server_compressed
            && base
            && (self.layout.recovery.is_some() || self.layout.dir.is_none()))
        .then(|| Rewriter::new(self.layout.recovery.clone().filter(|_| base)));
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
}

fn create(path: &std::path::Path) -> Result<File, Error> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(Error::fs("create file", path))
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

/// Feeds archive bytes to the verifier, member by member.
fn inspect_members(
    inspect: &mut Inspect,
    data: Bytes,
    v: &mut Verifier,
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
                .write_all(&[0u8; 2 * BLOCK])
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

enum Current {
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
    current: Option<Current>,
    saw_auto_conf: bool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

fn emit(w: &mut dyn Write, name: &str, mode: u32, contents: &[u8]) -> std::io::Result<()> {
    let h = build_header(name, MemberKind::File, mode, contents.len() as u64, now());
    w.write_all(h.as_bytes())?;
    w.write_all(contents)?;
    w.write_all(&[0u8; BLOCK][..padding(contents.len() as u64)])
}

impl Rewriter {
    fn new(recovery: Option<RecoveryFiles>) -> Self {
        Self {
            splitter: TarSplitter::new(),
            recovery,
            current: None,
            saw_auto_conf: false,
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
                            Current::Skip
                        }
                        (b"postgresql.auto.conf", Some(true)) => {
                            self.saw_auto_conf = true;
                            Current::AutoConf(m, Vec::new())
                        }
                        _ => {
                            w.write_all(&m.raw_header)?;
                            Current::Pass(m.size)
                        }
                    });
                }
                TarEvent::Data(d) => match self.current.as_mut() {
                    Some(Current::Pass(_)) => w.write_all(&d)?,
                    Some(Current::AutoConf(_, buf)) => {
                        if buf.len() + d.len() > MAX_AUTO_CONF {
                            return Err(RewriteError::TooLarge);
                        }
                        buf.extend_from_slice(&d);
                    }
                    Some(Current::Skip) | None => {}
                },
                TarEvent::MemberEnd => match self.current.take() {
                    Some(Current::Pass(size)) => w.write_all(&[0u8; BLOCK][..padding(size)])?,
                    Some(Current::AutoConf(m, mut buf)) => {
                        if let Some(r) = &self.recovery {
                            buf.extend_from_slice(r.settings.as_bytes());
                        }
                        let name = String::from_utf8_lossy(&m.name).into_owned();
                        emit(w, &name, m.mode, &buf)?;
                    }
                    Some(Current::Skip) | None => {}
                },
            }
        }
        Ok(())
    }

    fn finish(mut self, w: &mut dyn Write, manifest: Option<&[u8]>) -> Result<(), RewriteError> {
        self.splitter.finish().map_err(RewriteError::Tar)?;
        if let Some(r) = &self.recovery {
            if r.signal_file {
                if !self.saw_auto_conf {
                    emit(w, "postgresql.auto.conf", 0o600, r.settings.as_bytes())?;
                }
                emit(w, "standby.signal", 0o600, b"")?;
            } else {
                emit(w, "recovery.conf", 0o600, r.settings.as_bytes())?;
            }
        }
        if let Some(m) = manifest {
            emit(w, "backup_manifest", 0o600, m)?;
        }
        w.write_all(&[0u8; 2 * BLOCK])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, &[u8])], terminated: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            emit(&mut out, name, 0o600, data).expect("emit");
        }
        if terminated {
            out.extend([0u8; 2 * BLOCK]);
        }
        out
    }

    fn members(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut t = TarSplitter::new();
        t.handle_data(Bytes::copy_from_slice(bytes)).expect("parse");
        t.finish().expect("complete");
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        while let Some(e) = t.poll_event() {
            match e {
                TarEvent::Member(m) => {
                    out.push((String::from_utf8_lossy(&m.name).into_owned(), Vec::new()))
                }
                TarEvent::Data(d) => out.last_mut().expect("member").1.extend_from_slice(&d),
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
            let mut r = Rewriter::new(Some(RecoveryFiles {
                settings: "primary_conninfo = 'x'\n".into(),
                signal_file: true,
            }));
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
        let mut r = Rewriter::new(Some(RecoveryFiles {
            settings: "standby_mode = 'on'\n".into(),
            signal_file: false,
        }));
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
}
