//! The WAL task: a second replication connection that streams the WAL written during the
//! backup into `pg_wal` (`-X stream`), driving the sans-IO [`WalReceiver`].
//!
//! [`prepare`] opens the connection and creates the temporary slot before BASE_BACKUP starts,
//! so WAL from before the backup's checkpoint is already reserved; [`run`] waits for the start
//! position, streams, and stops once the end position (published by the backup task) is
//! received and flushed. It runs as its own tokio task on its own connection, so a slow disk
//! under the base archive never delays its replies to the server's keepalives.

pub mod segment;
pub mod tarwal;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use pgclone_proto::backend::BackendMessage;
use pgclone_proto::command::Command;
use pgclone_proto::replication::{pg_epoch_micros, ReceiverConfig, WalReceiver};
use pgclone_proto::{Lsn, TimelineId, WalSegSize};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::conn::{self, ConnParams, Connection};
use crate::error::Error;
use crate::sink::codec::ClientSpec;
use pgclone_proto::replication::WalChunk;
use segment::SegmentWriter;
use tarwal::TarWalWriter;

/// Where streamed WAL goes: segment files in a directory, or members of `pg_wal.tar`.
/// Implementations do blocking I/O (the task calls them inside `block_in_place`).
pub trait WalSink: Send {
    /// Starts (or, after a timeline switch, continues) on `timeline` at the segment boundary
    /// `start`.
    fn set_timeline(&mut self, timeline: TimelineId, start: Lsn) -> Result<(), Error>;
    /// Appends contiguous WAL.
    fn write(&mut self, chunk: WalChunk) -> Result<(), Error>;
    /// Makes what was written durable; returns the flushed position.
    fn flush(&mut self) -> Result<Lsn, Error>;
    /// End of WAL written.
    fn written(&self) -> Lsn;
    /// End of WAL flushed.
    fn flushed(&self) -> Lsn;
    /// Complete segments written.
    fn completed(&self) -> u64;
    /// Stores a timeline history file (and its `.done`).
    fn write_history(&mut self, name: &str, content: &[u8]) -> Result<(), Error>;
    /// Ends the output (pads the last segment of a tar, closes it).
    fn finish(&mut self) -> Result<(), Error>;
}

/// Where the WAL task writes.
#[derive(Debug, Clone)]
pub enum WalOutput {
    /// Segment files in this directory (`pg_wal` or `--waldir`).
    Dir(PathBuf),
    /// One tar file at this path, compressed as given (gzip only, as pg_basebackup).
    Tar(PathBuf, ClientSpec),
}

/// Which replication slot the stream uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// `--no-slot`.
    None,
    /// A temporary slot, created on the WAL connection and gone with it (the default).
    Temporary,
    /// A named, permanent slot (`-S`, created beforehand with `-C`).
    Named(String),
}

/// What the WAL task needs to know.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Connection parameters (with the password, if one was prompted for).
    pub params: ConnParams,
    /// Where segments go.
    pub output: WalOutput,
    /// The server's segment size.
    pub seg_size: WalSegSize,
    /// The system identifier of the main connection, to check the second one against.
    pub system_id: String,
    /// Slot to stream from.
    pub slot: Slot,
    /// Standby status update interval (`-s`; `None` for never).
    pub status_interval: Option<Duration>,
    /// fsync segments as they complete.
    pub sync: bool,
    /// Mode of the files written (the clone's file mode).
    pub file_mode: u32,
    /// Where the task publishes the position it has flushed, for progress reports (0 before
    /// the first flush).
    pub flushed: Arc<AtomicU64>,
}

/// An open WAL connection, ready to stream once the backup start is known.
pub struct Prepared {
    conn: Connection,
    cfg: WalConfig,
    slot_name: Option<String>,
}

impl Prepared {
    /// The position the task will have flushed, as it goes (for progress reports).
    pub fn flushed(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.cfg.flushed)
    }
}

/// Opens the WAL connection, checks it reaches the same system, and creates the temporary
/// slot if one is used.
pub async fn prepare(mut cfg: WalConfig) -> Result<Prepared, Error> {
    let mut conn = conn::connect(&mut cfg.params).await?;
    conn.set_label("WAL");
    let system_id = crate::conn::server::identify_system(&mut conn)
        .await?
        .system_id;
    if system_id != cfg.system_id {
        return Err(Error::IncompatibleServer(
            "system identifier does not match between base backup and streaming connection".into(),
        ));
    }
    let slot_name = match &cfg.slot {
        Slot::None => None,
        Slot::Named(name) => Some(name.clone()),
        Slot::Temporary => Some(create_temporary_slot(&mut conn).await?),
    };
    Ok(Prepared {
        conn,
        cfg,
        slot_name,
    })
}

/// Creates `pgclone_<walsender pid>` (`pg_basebackup_<pid>` as pg_basebackup) as a temporary slot reserving WAL; returns its name.
async fn create_temporary_slot(conn: &mut Connection) -> Result<String, Error> {
    let pid = conn
        .info()
        .backend_pid
        .unwrap_or_else(|| std::process::id() as i32);
    let name = crate::program::current().temporary_slot_name(pid);
    let cmd = Command::CreatePhysicalSlot {
        name: &name,
        temporary: true,
        reserve_wal: true,
    };
    let sql = cmd.text(conn.info().version);
    conn.simple_query(cmd.name(), &sql).await?;
    tracing::info!("created temporary replication slot \"{name}\"");
    Ok(name)
}

/// What streaming did.
#[derive(Debug, Clone, Copy)]
pub struct Streamed {
    /// End of WAL written.
    pub end: Lsn,
    /// Segments completed.
    pub segments: u64,
    /// The timeline streaming ended on.
    pub timeline: TimelineId,
}

/// Streams WAL from the start position received on `start` until the end position published
/// on `end` has been received and flushed. `abort` is cancelled by whichever task fails first;
/// this task cancels it on its own failure.
pub async fn run(
    prepared: Prepared,
    start: oneshot::Receiver<(Lsn, TimelineId)>,
    end: watch::Receiver<Option<Lsn>>,
    abort: CancellationToken,
) -> Result<Streamed, Error> {
    let result = tokio::select! {
        r = stream(prepared, start, end) => r,
        () = abort.cancelled() => Err(Error::Cancelled),
    };
    if result.is_err() {
        abort.cancel();
    }
    result
}

async fn stream(
    prepared: Prepared,
    start: oneshot::Receiver<(Lsn, TimelineId)>,
    mut end: watch::Receiver<Option<Lsn>>,
) -> Result<Streamed, Error> {
    let Prepared {
        mut conn,
        cfg,
        slot_name,
    } = prepared;
    let Ok((start_lsn, mut timeline)) = start.await else {
        return Err(Error::Cancelled);
    };
    check_timeline(&mut conn, timeline).await?;
    let mut pos = start_lsn.segment_start(cfg.seg_size);
    let mut writer = open_sink(&cfg, timeline)?;
    let receiver_cfg = ReceiverConfig {
        status_interval: cfg.status_interval,
        report_flush: slot_name.is_some(),
    };
    loop {
        if timeline.0 > 1 {
            fetch_history(&mut conn, &cfg, timeline, &mut *writer).await?;
        }
        writer.set_timeline(timeline, pos)?;
        let cmd = Command::StartPhysical {
            slot: slot_name.as_deref(),
            start: pos,
            timeline,
        };
        let sql = cmd.text(conn.info().version);
        tracing::debug!("sending {sql}");
        conn.send_query(&sql, cmd.name()).await?;
        let mut rx = WalReceiver::new(pos, timeline, cfg.seg_size, receiver_cfg, Instant::now());
        stream_timeline(&mut conn, &cfg, &mut rx, &mut *writer, &mut end).await?;
        match rx.poll_timeline_switch() {
            Some((next, next_pos)) => {
                tracing::info!("switched to timeline {next} at {next_pos}");
                timeline = next;
                pos = next_pos;
            }
            None => break,
        }
    }
    finish(conn, writer, timeline).await
}

/// Refuses a start timeline the server (asked on the WAL connection) does not have yet.
async fn check_timeline(conn: &mut Connection, timeline: TimelineId) -> Result<(), Error> {
    let server_tli = crate::conn::server::identify_system(conn).await?.timeline;
    if timeline > server_tli {
        return Err(Error::IncompatibleServer(format!(
            "starting timeline {timeline} is not present in the server"
        )));
    }
    Ok(())
}

/// The writer for the configured output, starting on `timeline`.
fn open_sink(cfg: &WalConfig, timeline: TimelineId) -> Result<Box<dyn WalSink>, Error> {
    Ok(match &cfg.output {
        WalOutput::Dir(dir) => Box::new(SegmentWriter::new(
            dir.clone(),
            cfg.seg_size,
            timeline,
            cfg.sync,
            cfg.file_mode,
        )),
        WalOutput::Tar(path, spec) => Box::new(TarWalWriter::create(
            path.clone(),
            *spec,
            cfg.seg_size,
            timeline,
            cfg.sync,
            cfg.file_mode,
        )?),
    })
}

/// Streams one timeline (START_REPLICATION already sent) until the receiver is done: the end
/// position is written and flushed, or the server ended the timeline.
async fn stream_timeline(
    conn: &mut Connection,
    cfg: &WalConfig,
    rx: &mut WalReceiver,
    writer: &mut dyn WalSink,
    end: &mut watch::Receiver<Option<Lsn>>,
) -> Result<(), Error> {
    let timeout = cfg.params.timeout;
    let mut end_known = end.borrow().is_some();
    // Silence is checked here rather than per read (see [`Silence`]).
    conn.set_read_timeout(None);
    let mut silence = Silence::new(timeout);
    if let Some(e) = *end.borrow() {
        rx.stop_at(e);
    }
    let mut out = BytesMut::new();
    // Whether the server accepted START_REPLICATION (an error before is the command's).
    let mut copying = false;
    loop {
        let stop = if end_known { *end.borrow() } else { None };
        write_received(rx, writer, stop, copying)?;
        cfg.flushed.store(writer.flushed().0, Ordering::Relaxed);
        if rx.poll_transmit(pg_now(), &mut out) {
            conn.send_raw(&out, "WAL streaming").await?;
            out.clear();
        }
        if rx.is_done() {
            break;
        }
        let wake = rx.poll_timeout();
        tokio::select! {
            msg = conn.read_message("WAL streaming") => {
                let now = silence.heard();
                let msg = msg.map_err(Error::lost_while("could not receive data from WAL stream"))?;
                copying |= matches!(msg, BackendMessage::CopyBothResponse(_));
                rx.handle_message(now, msg).map_err(Error::protocol("WAL streaming"))?;
            }
            () = sleep_until(silence.deadline()), if timeout.is_some() => silence.expired(rx)?,
            () = sleep_until(wake) => rx.handle_timeout(Instant::now()),
            changed = end.changed(), if !end_known => {
                if changed.is_err() {
                    return Err(Error::Cancelled);
                }
                end_known = learn_end(end, rx);
            }
        }
    }
    conn.set_read_timeout(timeout);
    Ok(())
}

/// Writes what the receiver holds, flushes once the end position `stop` (when known) is
/// written, and tells the receiver what is flushed. A server error stops streaming; it reads
/// as pg_basebackup words it, as the command's error until the server started `copying`.
fn write_received(
    rx: &mut WalReceiver,
    writer: &mut dyn WalSink,
    stop: Option<Lsn>,
    copying: bool,
) -> Result<(), Error> {
    if let Some(e) = rx.poll_server_error() {
        let context = if copying {
            "unexpected termination of replication stream".into()
        } else {
            "could not send replication command \"START_REPLICATION\"".into()
        };
        return Err(Error::Server {
            context,
            source: Box::new(e),
        });
    }
    while let Some(chunk) = rx.poll_write() {
        tokio::task::block_in_place(|| writer.write(chunk))?;
    }
    if stop.is_some_and(|e| writer.written() >= e) && writer.flushed() < writer.written() {
        tokio::task::block_in_place(|| writer.flush())?;
    }
    rx.handle_flushed(writer.flushed());
    Ok(())
}

/// Hands the end position, once the backup task published it, to the receiver; returns
/// whether it is known.
fn learn_end(end: &watch::Receiver<Option<Lsn>>, rx: &mut WalReceiver) -> bool {
    match *end.borrow() {
        Some(e) => {
            tracing::debug!("WAL streaming will stop at {e}");
            rx.stop_at(e);
            true
        }
        None => false,
    }
}

/// How long the WAL connection has been silent. After half the timeout a status update asks
/// the server for a reply (a keepalive comes back at once from a live server); after the
/// whole timeout the stream has stalled.
struct Silence {
    timeout: Option<Duration>,
    last_heard: Instant,
    probed: bool,
}

impl Silence {
    fn new(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            last_heard: Instant::now(),
            probed: false,
        }
    }

    /// When the silence runs out next (`None` without a timeout).
    fn deadline(&self) -> Option<Instant> {
        let probed = self.probed;
        self.timeout
            .map(|t| self.last_heard + if probed { t } else { t / 2 })
    }

    /// A message arrived now; returns the instant.
    fn heard(&mut self) -> Instant {
        self.last_heard = Instant::now();
        self.probed = false;
        self.last_heard
    }

    /// The deadline passed: ask for a reply the first time, fail the second.
    fn expired(&mut self, rx: &mut WalReceiver) -> Result<(), Error> {
        if self.probed {
            return Err(Error::Stalled {
                connection: "WAL",
                secs: self.timeout.map_or(0, |t| t.as_secs()),
                phase: "WAL streaming",
            });
        }
        tracing::debug!("the WAL connection is silent; asking the server for a reply");
        rx.request_reply();
        self.probed = true;
        Ok(())
    }
}

/// Ends the output, reports what was streamed and closes the connection.
async fn finish(
    conn: Connection,
    mut writer: Box<dyn WalSink>,
    timeline: TimelineId,
) -> Result<Streamed, Error> {
    tokio::task::block_in_place(|| writer.finish())?;
    tracing::info!(
        "WAL streaming done: {} segment{} up to {}",
        writer.completed(),
        if writer.completed() == 1 { "" } else { "s" },
        writer.written()
    );
    let streamed = Streamed {
        end: writer.written(),
        segments: writer.completed(),
        timeline,
    };
    conn.close().await;
    Ok(streamed)
}

/// TIMELINE_HISTORY for `timeline`, written into the WAL directory unless it is there.
async fn fetch_history(
    conn: &mut Connection,
    cfg: &WalConfig,
    timeline: TimelineId,
    sink: &mut dyn WalSink,
) -> Result<(), Error> {
    let name = timeline.history_file_name();
    if let WalOutput::Dir(dir) = &cfg.output {
        if dir.join(&name).exists() {
            return Ok(());
        }
    }
    let (name, content) = crate::conn::server::timeline_history(conn, timeline).await?;
    tracing::info!("fetched timeline history file {name}");
    tokio::task::block_in_place(|| sink.write_history(&name, &content))
}

fn pg_now() -> i64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    pg_epoch_micros(micros)
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
