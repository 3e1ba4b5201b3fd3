//! The backup task: sends BASE_BACKUP on the main connection, decodes the response, prepares
//! the tablespace directories once the server lists them, and writes the archives: itself,
//! batch by batch, or (server-compressed archives) through a bounded channel to a
//! decompressing thread. Either way a slow disk slows the socket, not our memory. For
//! `--refresh` the archives are applied in place onto the existing directory
//! ([`Sink::InPlace`]), after a step the caller gives ([`OnStarted`]) has run. When
//! `--compress=auto` asked for lz4 and the server was built without it, the same command
//! goes again uncompressed on the same connection.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pgclone_proto::basebackup::{
    ArchiveInfo, BackupEvent, BaseBackupDecoder, BaseBackupOptions, Dialect, TablespaceInfo,
};
use pgclone_proto::{sqlstate, Lsn, ServerError, TimelineId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clone::progress::{Phase, Reporter};
use crate::conn::server::ServerFacts;
use crate::conn::Connection;
use crate::error::Error;
use crate::options::config::Config;
use crate::options::tablespace::canonicalize;
use crate::sink::codec::Compression;
use crate::sink::dest::Cleanup;
use crate::sink::inplace::{self, Applied, Applier};
use crate::sink::journal;
use crate::sink::plain::{self, Layout};
use crate::sink::tar;
use crate::sink::{ArchiveRoot, Chunk, Stats};

/// Batches in flight to the decompressing thread: 16 × 256 kB ≈ 4 MB.
const CHANNEL_DEPTH: usize = 16;

/// Archive bytes go to the writer in batches of at most about this size, or less when the
/// socket runs dry first (for plain format, one `writev` per batch and file).
const BATCH_BYTES: usize = 256 * 1024;

/// What a finished backup reports.
#[derive(Debug)]
pub struct Outcome {
    /// Start position.
    pub start: Lsn,
    /// End position.
    pub end: Lsn,
    /// Timeline at the end.
    pub timeline: TimelineId,
    /// Where each tablespace went (for the final sync).
    pub tablespace_dirs: Vec<PathBuf>,
    /// Whether the manifest arrived.
    pub manifest: bool,
    /// What the unpacker wrote.
    pub stats: Stats,
    /// Bytes received.
    pub bytes: u64,
    /// What the in-place writer applied ([`Sink::InPlace`]), for the refresh's last steps.
    pub applied: Option<Box<Applied>>,
}

/// How the backup task tells the WAL task where to start and where to stop.
#[derive(Debug)]
pub struct WalLink {
    /// The start position and timeline, sent once the checkpoint is done.
    pub start: Option<oneshot::Sender<(Lsn, TimelineId)>>,
    /// The end position, published when the server reports it.
    pub end: watch::Sender<Option<Lsn>>,
}

/// A step run once the server has accepted BASE_BACKUP and sent its start position, before
/// the WAL task is told to start and before any archive byte is written; it may still adjust
/// the sink, which opens when the tablespace list arrives.
pub type OnStarted = Box<dyn FnOnce(Lsn, TimelineId, &mut Sink) -> Result<(), Error> + Send>;

/// One BASE_BACKUP to run: the options sent, where the archives go, and the link to the WAL
/// task when streaming.
pub struct Job {
    /// The command's options.
    pub options: BaseBackupOptions,
    /// Where the archives go.
    pub sink: Sink,
    /// The WAL task's start and end signals (`-X stream`).
    pub wal: Option<WalLink>,
    /// `--refresh`: what to do to the directory once the server accepted the backup.
    pub on_started: Option<OnStarted>,
    /// Where the phases and the bytes are reported.
    pub progress: Reporter,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("options", &self.options)
            .field("sink", &self.sink)
            .field("wal", &self.wal)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// Runs BASE_BACKUP to the end. Tablespace directories it creates are recorded in `cleanup`.
/// Returns `Cancelled` as soon as `abort` is cancelled (the WAL task failed).
pub async fn run(
    conn: &mut Connection,
    cfg: &Config,
    facts: &ServerFacts,
    job: Job,
    cleanup: &mut Cleanup,
    abort: &CancellationToken,
) -> Result<Outcome, Error> {
    let Job {
        options,
        sink,
        wal,
        on_started,
        progress,
    } = job;
    let fallback = uncompressed_fallback(cfg, &options);
    tracing::info!("initiating base backup, waiting for checkpoint to complete");
    send_command(conn, &options, facts).await?;
    progress.server_compressed(options.compression.is_some());
    progress.phase(Phase::Checkpoint);

    let mut state = State {
        decoder: BaseBackupDecoder::new(Dialect::for_version(facts.version)),
        progress,
        bytes: 0,
        unpacker: None,
        sink: Some(sink),
        tablespaces: Vec::new(),
        tablespace_dirs: Vec::new(),
        started: None,
        ended: None,
        manifest: false,
        wal,
        journal: cfg.journal().then(|| journal_plan(cfg, facts)),
        on_started,
        applied: None,
        batch: Vec::new(),
        batch_bytes: 0,
        server_compressed: options.compression.is_some(),
    };
    let streamed = tokio::select! {
        r = state.stream_or_fall_back(conn, cfg, facts, fallback, cleanup, abort) => r,
        () = abort.cancelled() => Err(Error::Cancelled),
    };
    let unpacked = match state.unpacker.take() {
        Some(u) => u.finish(&mut state.applied).await,
        None => Ok(Stats::default()),
    };
    let stats = match (streamed, unpacked) {
        (Ok(()), Ok(stats)) => stats,
        // The unpacker's own error is the root cause when it stopped taking chunks.
        (Ok(()) | Err(Error::UnpackerStopped), Err(e)) => return Err(e),
        (Err(e), _) => return Err(e),
    };
    state.progress.copied(&stats);
    let (start, (end, timeline)) = state
        .started
        .zip(state.ended)
        .ok_or_else(|| Error::Internal("backup ended without start or end position".into()))?;
    Ok(Outcome {
        start,
        end,
        timeline,
        tablespace_dirs: state.tablespace_dirs,
        manifest: state.manifest,
        stats,
        bytes: state.bytes,
        applied: state.applied.take(),
    })
}

/// Where the archives go.
#[derive(Debug)]
pub enum Sink {
    /// Unpacked into directories (`-F p`).
    Plain(Layout),
    /// Written as tar files or to standard output (`-F t`).
    Tar(tar::Layout),
    /// Nowhere: the server sends no data (a backup target).
    Discard,
    /// Applied onto an existing data directory (`--refresh`). The applier is opened (and
    /// removes `global/pg_control`) only when the tablespace list arrives.
    InPlace(inplace::Layout),
}

/// The writer behind the socket. Uncompressed plain archives and every tar-format archive are
/// written by the reading task itself: on a small machine a thread hand-off per batch costs
/// more (wake-ups, an eager reader woken for every few kilobytes) than it overlaps. Archives the
/// server compressed are decompressed on a blocking thread fed through a bounded channel, as
/// the decoder pulls its input.
enum Unpacker {
    Plain(Box<plain::Writer>),
    Tar(Box<tar::Writer>),
    Discard(Stats),
    InPlace(Box<Applier>),
    Thread {
        tx: mpsc::Sender<Chunk>,
        handle: JoinHandle<Result<Stats, Error>>,
    },
}

impl Unpacker {
    fn new(sink: Sink, server_compressed: bool) -> Result<Self, Error> {
        Ok(match sink {
            Sink::Plain(layout) if server_compressed => {
                let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
                let handle = tokio::task::spawn_blocking(move || plain::run(rx, layout));
                Self::Thread { tx, handle }
            }
            Sink::Plain(layout) => Self::Plain(Box::new(plain::Writer::new(layout))),
            Sink::Tar(layout) => Self::Tar(Box::new(tar::Writer::new(layout))),
            Sink::Discard => Self::Discard(Stats::default()),
            Sink::InPlace(layout) => Self::InPlace(Box::new(Applier::open(layout)?)),
        })
    }

    async fn send(&mut self, chunk: Chunk) -> Result<(), Error> {
        match self {
            Self::Plain(w) => w.handle(chunk),
            Self::Tar(w) => w.handle(chunk),
            Self::InPlace(a) => a.handle(chunk),
            Self::Discard(stats) => {
                discard(stats, &chunk);
                Ok(())
            }
            Self::Thread { tx, .. } => tx.send(chunk).await.map_err(|_| Error::UnpackerStopped),
        }
    }

    /// Ends the writing; an in-place apply's result goes to `applied`.
    async fn finish(self, applied: &mut Option<Box<Applied>>) -> Result<Stats, Error> {
        match self {
            Self::Plain(w) => w.finish(),
            Self::Tar(w) => w.finish(),
            Self::Discard(stats) => Ok(stats),
            Self::InPlace(a) => {
                let done = a.finish()?;
                let s = done.stats();
                *applied = Some(Box::new(done));
                Ok(Stats {
                    files: s.whole_files + s.incremental_files,
                    bytes: s.bytes,
                    checked: None,
                })
            }
            Self::Thread { tx, handle } => {
                drop(tx);
                handle
                    .await
                    .map_err(|e| Error::Internal(format!("unpacker task failed: {e}")))?
            }
        }
    }
}

struct State {
    decoder: BaseBackupDecoder,
    progress: Reporter,
    /// Archive bytes received.
    bytes: u64,
    unpacker: Option<Unpacker>,
    sink: Option<Sink>,
    tablespaces: Vec<TablespaceInfo>,
    tablespace_dirs: Vec<PathBuf>,
    started: Option<Lsn>,
    ended: Option<(Lsn, TimelineId)>,
    manifest: bool,
    wal: Option<WalLink>,
    /// The resume journal to keep, its header completed as the start and the tablespaces
    /// arrive.
    journal: Option<journal::Plan>,
    on_started: Option<OnStarted>,
    applied: Option<Box<Applied>>,
    batch: Vec<Bytes>,
    batch_bytes: usize,
    /// The server was asked to compress the archives.
    server_compressed: bool,
}

impl State {
    /// [`State::stream`]; if the server refuses `fallback`'s compression before the backup
    /// starts, once more with `fallback` on the same connection.
    async fn stream_or_fall_back(
        &mut self,
        conn: &mut Connection,
        cfg: &Config,
        facts: &ServerFacts,
        mut fallback: Option<BaseBackupOptions>,
        cleanup: &mut Cleanup,
        abort: &CancellationToken,
    ) -> Result<(), Error> {
        loop {
            let result = self.stream(conn, cfg, cleanup, abort).await;
            let options = match (&result, fallback.take()) {
                (Err(Error::Server { source, .. }), Some(options))
                    if self.started.is_none() && compression_refused(source) =>
                {
                    tracing::info!(
                        "the server cannot compress ({}): backing up uncompressed",
                        source.message
                    );
                    options
                }
                _ => return result,
            };
            self.wait_until_ready(conn).await?;
            self.decoder = BaseBackupDecoder::new(Dialect::for_version(facts.version));
            self.server_compressed = false;
            self.progress.server_compressed(false);
            send_command(conn, &options, facts).await?;
        }
    }

    /// Reads up to the ReadyForQuery that follows a failed command.
    async fn wait_until_ready(&mut self, conn: &mut Connection) -> Result<(), Error> {
        while !self.decoder.is_done() {
            let msg = conn.read_message("base backup start").await?;
            self.decoder
                .handle_message(msg)
                .map_err(Error::protocol("base backup start"))?;
            while self.decoder.poll_event().is_some() {}
        }
        Ok(())
    }

    async fn stream(
        &mut self,
        conn: &mut Connection,
        cfg: &Config,
        cleanup: &mut Cleanup,
        abort: &CancellationToken,
    ) -> Result<(), Error> {
        loop {
            // The writes below are synchronous and the socket may never run dry when the disk
            // is the slow side: look at the token here too, not only when this future waits.
            if abort.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let phase = if self.started.is_some() {
                "base backup"
            } else {
                "base backup start"
            };
            if self.started.is_some() {
                conn.set_read_timeout(cfg.timeout);
            }
            // Hand the batch over when the socket runs dry, then wait: the next read finds
            // what the server sent meanwhile.
            let msg = match conn
                .read_message_now(phase)
                .await
                .map_err(|e| self.lost(e))?
            {
                Some(msg) => msg,
                None => {
                    self.flush_batch().await?;
                    conn.read_message(phase).await.map_err(|e| self.lost(e))?
                }
            };
            self.decoder
                .handle_message(msg)
                .map_err(Error::protocol(phase))?;
            while let Some(event) = self.decoder.poll_event() {
                self.on_event(event, cfg, cleanup).await?;
            }
            if self.decoder.is_done() {
                return Ok(());
            }
        }
    }

    async fn on_event(
        &mut self,
        event: BackupEvent,
        cfg: &Config,
        cleanup: &mut Cleanup,
    ) -> Result<(), Error> {
        match event {
            BackupEvent::Started { start, timeline } => self.on_started(start, timeline)?,
            BackupEvent::Tablespaces(list) => self.on_tablespaces(list, cfg, cleanup)?,
            BackupEvent::ArchiveStart(info) => self.on_archive_start(info, cfg).await?,
            BackupEvent::ArchiveData(data) => {
                self.progress.data(&data);
                self.bytes += data.len() as u64;
                self.batch_bytes += data.len();
                self.batch.push(data);
                if self.batch_bytes >= BATCH_BYTES {
                    self.flush_batch().await?;
                }
            }
            BackupEvent::ArchiveEnd => {
                self.progress.archive_done();
                self.send(Chunk::ArchiveEnd).await?;
            }
            BackupEvent::ManifestStart => {
                self.manifest = true;
                self.send(Chunk::ManifestStart).await?;
            }
            BackupEvent::ManifestData(data) => self.send(Chunk::ManifestData(data)).await?,
            BackupEvent::ManifestEnd => self.send(Chunk::ManifestEnd).await?,
            // Compressed bytes say little about the way through: count the server's own
            // figure (uncompressed bytes done, sent about once a second and at each archive end).
            BackupEvent::Progress(done) => self.progress.server_progress(done),
            BackupEvent::Ended { end, timeline } => {
                tracing::info!("write-ahead log end point: {end}");
                self.ended = Some((end, timeline));
                if let Some(w) = &self.wal {
                    // A closed receiver means the WAL task already ended; its result says why.
                    let _ = w.end.send(Some(end));
                }
            }
            BackupEvent::ServerError(e) => return Err(self.server_error(e)),
            BackupEvent::Complete => {}
            other => tracing::debug!("ignoring {other:?}"),
        }
        Ok(())
    }

    /// The checkpoint is done: record the start and tell the WAL task where to begin.
    fn on_started(&mut self, start: Lsn, timeline: TimelineId) -> Result<(), Error> {
        tracing::info!("checkpoint completed");
        self.progress.phase(Phase::Copying);
        tracing::info!("write-ahead log start point: {start} on timeline {timeline}");
        self.started = Some(start);
        if let Some(plan) = self.journal.as_mut() {
            plan.header.start_lsn = start.to_string();
            plan.header.timeline = timeline.0;
        }
        if let Some(step) = self.on_started.take() {
            let sink = self
                .sink
                .as_mut()
                .ok_or_else(|| Error::Internal("the sink opened before the start".into()))?;
            step(start, timeline, sink)?;
        }
        if let Some(tx) = self.wal.as_mut().and_then(|w| w.start.take()) {
            tracing::info!("starting background WAL receiver");
            if tx.send((start, timeline)).is_err() {
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    }

    /// The tablespace list: prepare their directories (plain format), size the progress
    /// report and open the writer.
    fn on_tablespaces(
        &mut self,
        list: Vec<TablespaceInfo>,
        cfg: &Config,
        cleanup: &mut Cleanup,
    ) -> Result<(), Error> {
        let mut sink = self
            .sink
            .take()
            .ok_or_else(|| Error::Internal("tablespace list twice".into()))?;
        match &mut sink {
            Sink::Plain(layout) => {
                self.tablespace_dirs = prepare_tablespaces(&list, cfg, layout, cleanup)?;
                layout.journal = self.journal.take().map(|mut plan| {
                    plan.header.tablespaces = journal_tablespaces(&list, cfg);
                    plan
                });
            }
            Sink::InPlace(layout) => {
                self.tablespace_dirs = existing_tablespaces(&list, cfg, layout)?;
            }
            Sink::Tar(layout) if layout.dir.is_none() && list.len() > 1 => {
                return Err(Error::StdoutTablespaces(list.len()));
            }
            _ => {}
        }
        self.progress.tablespaces(&list);
        self.tablespaces = list;
        self.unpacker = Some(Unpacker::new(sink, self.server_compressed)?);
        Ok(())
    }

    /// An archive begins: tell the writer which directory it unpacks into.
    async fn on_archive_start(&mut self, info: ArchiveInfo, cfg: &Config) -> Result<(), Error> {
        let ts = self.tablespaces.get(info.tablespace);
        let root = match ts.and_then(|t| t.oid.zip(t.location.as_ref())) {
            None => ArchiveRoot::Base,
            Some((oid, location)) => ArchiveRoot::Tablespace {
                oid,
                dir: target_dir(location, cfg),
            },
        };
        tracing::debug!("receiving archive {}", info.name);
        self.progress.archive_start(info.tablespace);
        self.send(Chunk::ArchiveStart {
            name: info.name,
            root,
            server_terminated: info.server_terminated,
        })
        .await
    }

    /// A connection lost once the backup started, in pg_basebackup's words (`could not read
    /// COPY data: ...`).
    fn lost(&self, e: Error) -> Error {
        if self.started.is_some() {
            Error::lost_while("could not read COPY data")(e)
        } else {
            e
        }
    }

    fn server_error(&self, e: ServerError) -> Error {
        if e.code == sqlstate::DATA_CORRUPTED {
            tracing::debug!("server: {e}");
            return Error::ChecksumFailure;
        }
        let context = if self.started.is_some() {
            "backup failed"
        } else {
            "could not initiate base backup"
        };
        Error::Server {
            context: context.into(),
            source: Box::new(e),
        }
    }

    /// Sends the archive bytes collected so far.
    async fn flush_batch(&mut self) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        self.send_now(Chunk::Batch(batch)).await
    }

    /// Sends a chunk after any pending archive bytes, keeping stream order.
    async fn send(&mut self, chunk: Chunk) -> Result<(), Error> {
        self.flush_batch().await?;
        self.send_now(chunk).await
    }

    async fn send_now(&mut self, chunk: Chunk) -> Result<(), Error> {
        match &mut self.unpacker {
            Some(u) => u.send(chunk).await,
            None => Err(Error::Internal(
                "archive data before the tablespace list".into(),
            )),
        }
    }
}

/// Where a tablespace at `location` goes: its `-T` mapping or the same path; an in-place
/// tablespace (16+, relative `pg_tblspc/<oid>`) goes under the data directory.
fn target_dir(location: &str, cfg: &Config) -> PathBuf {
    let path = Path::new(location);
    if path.is_absolute() {
        cfg.tablespace_mapping.map(path)
    } else {
        cfg.dest.join(path)
    }
}

/// The journal's plan as far as it is known before BASE_BACKUP answers.
fn journal_plan(cfg: &Config, facts: &ServerFacts) -> journal::Plan {
    journal::Plan {
        header: journal::Header {
            format: journal::FORMAT_VERSION,
            system_identifier: facts.system_id.clone(),
            timeline: 0,
            major: facts.version.major(),
            start_lsn: String::new(),
            tablespaces: Vec::new(),
        },
        sync: !cfg.no_sync,
    }
}

/// The journal's list of tablespaces: oid, location on the server, directory here.
fn journal_tablespaces(list: &[TablespaceInfo], cfg: &Config) -> Vec<journal::Tablespace> {
    list.iter()
        .filter_map(|ts| {
            let (oid, location) = ts.oid.zip(ts.location.as_ref())?;
            Some(journal::Tablespace {
                oid: oid.0,
                location: location.clone(),
                dir: target_dir(location, cfg),
            })
        })
        .collect()
}

/// Checks and creates each tablespace's directory; fills in the symlink targets.
fn prepare_tablespaces(
    list: &[TablespaceInfo],
    cfg: &Config,
    layout: &mut Layout,
    cleanup: &mut Cleanup,
) -> Result<Vec<PathBuf>, Error> {
    let mut dirs = Vec::new();
    let mut seen = HashSet::new();
    let mut locations = Vec::new();
    for ts in list {
        let (Some(oid), Some(location)) = (ts.oid, ts.location.as_deref()) else {
            continue;
        };
        let path = Path::new(location);
        let dir = target_dir(location, cfg);
        if path.is_absolute() {
            locations.push(canonicalize(path));
            cleanup.prepare_dir(&dir, layout.modes.dir, "tablespace directory")?;
            layout.tablespace_links.insert(oid, dir.clone());
        } else {
            // 16+ in-place tablespace: exactly pg_tblspc/<oid>, nothing else.
            if path != Path::new("pg_tblspc").join(oid.to_string()) {
                return Err(Error::UnsafeTablespace {
                    location: location.into(),
                    reason: "a relative location other than pg_tblspc/<oid>",
                });
            }
            let tblspc = cfg.dest.join("pg_tblspc");
            for d in [&tblspc, &dir] {
                crate::sink::fs::make_dir(d, layout.modes.dir, true)?;
                layout.precreated.insert(d.clone());
            }
        }
        if !seen.insert(dir.clone()) {
            return Err(Error::Usage(format!(
                "two tablespaces map to the same directory \"{}\"",
                dir.display()
            )));
        }
        tracing::debug!("tablespace {oid} at {location} goes to {}", dir.display());
        dirs.push(dir);
    }
    for unused in cfg.tablespace_mapping.unused(&locations) {
        tracing::warn!(
            "tablespace mapping for \"{}\" matches no tablespace of the server",
            unused.display()
        );
    }
    Ok(dirs)
}

/// `--refresh`: each tablespace's directory (its `-T` mapping or its location) must exist or is
/// created; fills in the link targets. In-place tablespaces (relative locations) are left to
/// the applier, which refuses them.
fn existing_tablespaces(
    list: &[TablespaceInfo],
    cfg: &Config,
    layout: &mut inplace::Layout,
) -> Result<Vec<PathBuf>, Error> {
    let mut dirs = Vec::new();
    for ts in list {
        let (Some(oid), Some(location)) = (ts.oid, ts.location.as_deref()) else {
            continue;
        };
        if !Path::new(location).is_absolute() {
            continue;
        }
        let dir = target_dir(location, cfg);
        if dirs.contains(&dir) {
            return Err(Error::Usage(format!(
                "two tablespaces map to the same directory \"{}\"",
                dir.display()
            )));
        }
        crate::sink::fs::make_dir_all(&dir, layout.dir_mode)?;
        layout.tablespace_links.insert(oid, dir.clone());
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Counts archive bytes without writing anything (backup targets send no archive data).
fn discard(stats: &mut Stats, chunk: &Chunk) {
    match chunk {
        Chunk::Data(d) => stats.bytes += d.len() as u64,
        Chunk::Batch(pieces) => stats.bytes += pieces.iter().map(|d| d.len() as u64).sum::<u64>(),
        _ => {}
    }
}

/// Sends BASE_BACKUP with `options`.
async fn send_command(
    conn: &mut Connection,
    options: &BaseBackupOptions,
    facts: &ServerFacts,
) -> Result<(), Error> {
    let command = options.command(facts.version)?;
    tracing::debug!("sending {command}");
    conn.send_query(&command, "BASE_BACKUP").await
}

/// `--compress=auto` asked the server to compress: the same options without compression, to
/// fall back on if the server was built without the algorithm.
fn uncompressed_fallback(cfg: &Config, options: &BaseBackupOptions) -> Option<BaseBackupOptions> {
    (cfg.compression == Compression::Auto && options.compression.is_some()).then(|| {
        BaseBackupOptions {
            compression: None,
            ..options.clone()
        }
    })
}

/// The server's answer to a compression it was built without, before anything started:
/// "invalid compression specification: this build does not support compression with LZ4"
/// (42601, from validating the options, 15+), or 0A000 "lz4 compression is not supported by
/// this build". Told by SQLSTATE, as the text may be translated.
fn compression_refused(e: &ServerError) -> bool {
    const SYNTAX_ERROR: &str = "42601";
    const FEATURE_NOT_SUPPORTED: &str = "0A000";
    e.code == SYNTAX_ERROR || e.code == FEATURE_NOT_SUPPORTED
}
