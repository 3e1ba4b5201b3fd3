//! WAL streaming (`START_REPLICATION PHYSICAL`): the CopyBoth messages the server sends
//! ([`parse_copy_both`]) and a sans-IO physical WAL receiver ([`WalReceiver`]).
//!
//! Inside CopyBoth the server sends XLogData (`w`) and primary keepalives (`k`); the client
//! answers with standby status updates (`r`) and ends its side with CopyDone (see `protocol.md`
//! §6). [`WalReceiver`] checks that the WAL arrives gap-free, hands it out as [`WalChunk`]s,
//! decides when a status update or CopyDone is due, and reads what follows the copy (the
//! next-timeline result set, CommandComplete, ReadyForQuery).
//!
//! Nothing here writes files, reads a clock or starts the next timeline: the caller appends
//! the chunks to segment files, reports what it fsynced with [`WalReceiver::handle_flushed`],
//! passes the time in, and on a timeline switch issues TIMELINE_HISTORY and a new
//! START_REPLICATION with a new receiver.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::backend::BackendMessage;
use crate::error::{ProtocolError, ServerError};
use crate::frontend;
use crate::lsn::{Lsn, SegNo, TimelineId, WalSegSize};
use crate::query::{ResultSet, ResultSetBuilder};
use crate::reader::Reader;

/// Type byte of an XLogData message inside CopyData.
pub const XLOG_DATA_TAG: u8 = b'w';

/// Type byte of a primary keepalive message inside CopyData.
pub const KEEPALIVE_TAG: u8 = b'k';

/// Length of the XLogData header: type byte, dataStart, walEnd, sendTime.
pub const XLOG_DATA_HEADER_LEN: usize = 25;

/// Length of a primary keepalive message: type byte, walEnd, sendTime, replyRequested.
pub const KEEPALIVE_LEN: usize = 18;

/// Microseconds from the Unix epoch (1970-01-01) to the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// The command named in errors about the replication stream.
const COMMAND: &str = "START_REPLICATION";

/// Converts microseconds since the Unix epoch into microseconds since 2000-01-01 UTC, the clock
/// of the `sendTime` fields. Saturates instead of overflowing.
pub fn pg_epoch_micros(unix_micros: i64) -> i64 {
    unix_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

/// An XLogData message: WAL bytes starting at `data_start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// Position of the first byte of `data`.
    pub data_start: Lsn,
    /// The end of WAL on the server when it sent this.
    pub wal_end: Lsn,
    /// The server's clock, microseconds since 2000-01-01.
    pub send_time: i64,
    /// The WAL bytes, a zero-copy slice of the CopyData payload.
    pub data: Bytes,
}

impl XLogData {
    /// The position just past `data`. [`parse_copy_both`] rejects messages where this would
    /// overflow; for hand-built values it saturates.
    pub fn data_end(&self) -> Lsn {
        Lsn(self.data_start.0.saturating_add(self.data.len() as u64))
    }
}

/// A primary keepalive message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The end of WAL on the server.
    pub wal_end: Lsn,
    /// The server's clock, microseconds since 2000-01-01.
    pub send_time: i64,
    /// Whether the server wants a status update at once (any non-zero byte, as libpq-based
    /// clients read it).
    pub reply_requested: bool,
}

/// A message the server sends inside CopyBoth during physical replication.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationMessage {
    /// `w`
    XLogData(XLogData),
    /// `k`
    PrimaryKeepalive(PrimaryKeepalive),
}

/// Parses the payload of one CopyData message received during START_REPLICATION.
///
/// Errors: an empty payload or a short header is [`ProtocolError::Truncated`], bytes after a
/// keepalive are [`ProtocolError::TrailingData`], an XLogData whose range would run past the
/// end of the WAL address space or a type byte other than `w`/`k` is
/// [`ProtocolError::BadValue`]. The PostgreSQL 19 primary status message (`s`) is only sent on
/// request, which this client never makes, so it is unknown here too, as in pg_basebackup.
pub fn parse_copy_both(payload: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    match payload.first() {
        None => Err(ProtocolError::Truncated("replication message")),
        Some(&XLOG_DATA_TAG) => parse_xlog_data(payload),
        Some(&KEEPALIVE_TAG) => parse_keepalive(&payload),
        Some(&other) => Err(ProtocolError::BadValue {
            what: "replication message type",
            value: char::from(other).escape_default().to_string(),
        }),
    }
}

fn parse_xlog_data(payload: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    let mut r = Reader::new(&payload, "XLogData message");
    let _tag = r.u8()?;
    let data_start = Lsn(r.u64()?);
    let wal_end = Lsn(r.u64()?);
    let send_time = r.i64()?;
    let data_len = r.rest().len();
    let data = payload.slice(payload.len() - data_len..);
    if data_start.checked_add(data.len() as u64).is_none() {
        return Err(ProtocolError::BadValue {
            what: "XLogData range (past the end of the WAL address space)",
            value: format!("{} bytes at {data_start}", data.len()),
        });
    }
    Ok(ReplicationMessage::XLogData(XLogData {
        data_start,
        wal_end,
        send_time,
        data,
    }))
}

fn parse_keepalive(payload: &[u8]) -> Result<ReplicationMessage, ProtocolError> {
    let mut r = Reader::new(payload, "keepalive message");
    let _tag = r.u8()?;
    let wal_end = Lsn(r.u64()?);
    let send_time = r.i64()?;
    let reply_requested = r.u8()? != 0;
    r.finish()?;
    Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
        wal_end,
        send_time,
        reply_requested,
    }))
}

/// WAL bytes to append, in stream order: each chunk starts where the previous one ended.
///
/// A chunk may cross segment boundaries; [`Self::split_at_segments`] cuts it into per-segment
/// pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalChunk {
    /// Position of the first byte.
    pub start: Lsn,
    /// The bytes (a zero-copy slice of the server's message).
    pub data: Bytes,
}

impl WalChunk {
    /// The position just past the chunk (saturating).
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0.saturating_add(self.data.len() as u64))
    }

    /// Cuts the chunk at segment boundaries: yields, in order, the segment, the offset inside
    /// it, and the bytes that belong there. No piece is empty; pieces are zero-copy.
    pub fn split_at_segments(
        self,
        seg_size: WalSegSize,
    ) -> impl Iterator<Item = (SegNo, u64, Bytes)> {
        let mut pos = self.start;
        let mut rest = self.data;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let offset = pos.segment_offset(seg_size);
            let room = u64::from(seg_size.bytes()) - offset;
            let n = usize::try_from(room).map_or(rest.len(), |room| room.min(rest.len()));
            let piece = rest.split_to(n);
            let segment = pos.segment(seg_size);
            pos = Lsn(pos.0.saturating_add(n as u64));
            Some((segment, offset, piece))
        })
    }
}

/// How a [`WalReceiver`] talks back to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Interval between periodic status updates (pg_basebackup `-s`, default 10 s). `None`
    /// (or zero) sends none, including the one at stream start, as `-s 0` does; replies to
    /// keepalives that ask for one, and the final update before CopyDone, are sent anyway.
    pub status_interval: Option<Duration>,
    /// Report the flush position given to [`WalReceiver::handle_flushed`]. pg_basebackup does
    /// so when it streams through a replication slot (the report advances the slot's
    /// `restart_lsn`); without a slot it reports 0.
    pub report_flush: bool,
}

impl Default for ReceiverConfig {
    /// pg_basebackup's defaults: an update every 10 s, through a (temporary) slot.
    fn default() -> Self {
        Self {
            status_interval: Some(Duration::from_secs(10)),
            report_flush: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Inside CopyBoth; the server has not sent CopyDone yet. Our own CopyDone may be sent.
    Copy,
    /// The server sent CopyDone: an optional next-timeline result set, CommandComplete(s) and
    /// ReadyForQuery follow.
    AfterCopy,
    /// ReadyForQuery ended the command, at the stop point or with a timeline switch.
    Done,
    /// The server sent ErrorResponse.
    Failed,
}

impl Stage {
    fn expects(self) -> &'static str {
        match self {
            Self::Copy => "CopyData or CopyDone",
            Self::AfterCopy => "the next-timeline result set, CommandComplete or ReadyForQuery",
            Self::Done => "nothing (the replication command is over)",
            Self::Failed => "ReadyForQuery",
        }
    }
}

/// Physical WAL receiver for one START_REPLICATION command, sans-IO (shaped like quinn-proto's
/// `Connection`).
///
/// Create it once START_REPLICATION has been sent (feeding the server's CopyBothResponse to
/// it is allowed and ignored). Then, after each `handle_*` call, drain in this order:
/// [`Self::poll_server_error`], [`Self::poll_write`] (append the chunks; fsync; report with
/// [`Self::handle_flushed`]), [`Self::poll_transmit`] (send what it wrote), then
/// [`Self::poll_timeout`] (call [`Self::handle_timeout`] when it passes). Stop when
/// [`Self::is_done`]; then [`Self::poll_timeline_switch`] says whether to continue on a new
/// timeline or whether the WAL is complete.
///
/// What it does:
/// - checks that XLogData continues exactly at [`Self::written`], starting at the segment start;
/// - sends a standby status update at stream start, every `status_interval`, when a keepalive
///   asks for one, and once more before its CopyDone;
/// - once [`Self::stop_at`] is known and WAL up to it is both received and reported flushed,
///   sends CopyDone and ignores further XLogData until the server's CopyDone;
/// - answers the server's CopyDone (server shutdown, end of timeline) with its own;
/// - parses the next-timeline result set and checks it as pg_basebackup does.
///
/// What it does not do: write or fsync files, name segments, read the clock, print notices
/// (NoticeResponse is ignored), or restart streaming after a timeline switch.
///
/// # Errors
/// [`Self::handle_message`] returns `Err` for protocol violations and for a stream that ended
/// (at ReadyForQuery) before the stop point without a timeline switch. An ErrorResponse is not
/// an `Err`: the receiver stores it, stops transmitting, and [`Self::poll_server_error`]
/// returns it; the stream has failed and [`Self::is_done`] never becomes true, so the caller
/// must check it after every `handle_message` (the server may close the connection without
/// ReadyForQuery).
#[derive(Debug)]
pub struct WalReceiver {
    timeline: TimelineId,
    seg_size: WalSegSize,
    config: ReceiverConfig,
    stage: Stage,
    /// Whether any message other than a notice arrived (a CopyBothResponse is only accepted
    /// first).
    seen_message: bool,
    /// End of WAL received (pg_basebackup's `blockpos`).
    written: Lsn,
    /// End of WAL the caller fsynced.
    flushed: Lsn,
    stop: Option<Lsn>,
    chunks: VecDeque<WalChunk>,
    status_due: bool,
    /// Whether the next status update asks the server to answer at once.
    reply_wanted: bool,
    next_status: Option<Instant>,
    /// Whether our CopyDone has been written.
    sent_copy_done: bool,
    builder: ResultSetBuilder,
    next_timeline: Option<(TimelineId, Lsn)>,
    server_error: Option<ServerError>,
}

impl WalReceiver {
    /// A receiver for WAL from `start` on `timeline`.
    ///
    /// `start` must be segment-aligned (round the backup start down with
    /// [`Lsn::segment_start`], and send that LSN in START_REPLICATION). An unaligned `start` is
    /// rounded down here, so a caller that sent an unaligned LSN gets a clear offset error on
    /// the first XLogData instead of a segment file that starts in the middle.
    pub fn new(
        start: Lsn,
        timeline: TimelineId,
        seg_size: WalSegSize,
        config: ReceiverConfig,
        now: Instant,
    ) -> Self {
        let config = ReceiverConfig {
            status_interval: config.status_interval.filter(|d| !d.is_zero()),
            ..config
        };
        let start = start.segment_start(seg_size);
        let mut rx = Self {
            timeline,
            seg_size,
            config,
            stage: Stage::Copy,
            seen_message: false,
            written: start,
            flushed: start,
            stop: None,
            chunks: VecDeque::new(),
            status_due: config.status_interval.is_some(),
            reply_wanted: false,
            next_status: None,
            sent_copy_done: false,
            builder: ResultSetBuilder::default(),
            next_timeline: None,
            server_error: None,
        };
        rx.next_status = rx.deadline_after(now);
        rx
    }

    /// Feeds one server message. See the type's `# Errors` section.
    pub fn handle_message(
        &mut self,
        now: Instant,
        msg: BackendMessage,
    ) -> Result<(), ProtocolError> {
        match msg {
            BackendMessage::NoticeResponse(_) | BackendMessage::ParameterStatus { .. } => {
                return Ok(())
            }
            BackendMessage::ErrorResponse(e) if self.stage != Stage::Done => {
                self.server_error.get_or_insert(e);
                self.stage = Stage::Failed;
                return Ok(());
            }
            _ => {}
        }
        let first = !std::mem::replace(&mut self.seen_message, true);
        match (self.stage, msg) {
            (Stage::Copy, BackendMessage::CopyBothResponse(_)) if first => Ok(()),
            (Stage::Copy, BackendMessage::CopyData(payload)) => self.on_copy_data(now, payload),
            (Stage::Copy, BackendMessage::CopyDone) => {
                self.stage = Stage::AfterCopy;
                Ok(())
            }
            (Stage::AfterCopy, BackendMessage::ReadyForQuery(_)) if !self.builder.is_open() => {
                self.on_ready()
            }
            (Stage::AfterCopy, msg) => {
                if let Some(set) = self
                    .builder
                    .handle_message(msg, Stage::AfterCopy.expects())?
                {
                    self.on_result_set(&set)?;
                }
                Ok(())
            }
            (Stage::Failed, _) => Ok(()),
            (stage, msg) => Err(ProtocolError::UnexpectedMessage {
                expected: stage.expects(),
                got: msg.name(),
            }),
        }
    }

    /// The caller has fsynced WAL up to `upto`. Only this moves the flush position (clamped to
    /// [`Self::written`]; it never moves back).
    pub fn handle_flushed(&mut self, upto: Lsn) {
        self.flushed = self.flushed.max(upto.min(self.written));
    }

    /// The status-update timer fired (call it when [`Self::poll_timeout`] has passed; early or
    /// extra calls do nothing).
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.streaming() {
            return;
        }
        if let Some(deadline) = self.next_status {
            if now >= deadline {
                self.status_due = true;
                self.next_status = self.deadline_after(now);
            }
        }
    }

    /// Makes a status update due that asks the server to reply at once: a probe for a server
    /// that has been silent (the reply is a keepalive). Does nothing once streaming is over.
    pub fn request_reply(&mut self) {
        if self.streaming() {
            self.status_due = true;
            self.reply_wanted = true;
        }
    }

    /// The backup's end position (from BASE_BACKUP's last result set). The stream stops once
    /// WAL up to `end` has been received and reported flushed. A later call replaces it.
    pub fn stop_at(&mut self, end: Lsn) {
        self.stop = Some(end);
    }

    /// The next WAL bytes to append, in order.
    pub fn poll_write(&mut self) -> Option<WalChunk> {
        self.chunks.pop_front()
    }

    /// Writes what is due into `out`: a standby status update (with `now_pg_micros`, see
    /// [`pg_epoch_micros`]), and/or CopyDone once the stop point is received and flushed or
    /// the server ended the copy. Returns whether it wrote anything.
    pub fn poll_transmit(&mut self, now_pg_micros: i64, out: &mut BytesMut) -> bool {
        match self.stage {
            Stage::Copy if !self.sent_copy_done => {
                let stopping = self.stop_reached_and_flushed();
                let due = self.status_due || stopping;
                if due {
                    frontend::standby_status_update(
                        self.written,
                        self.reported_flush(),
                        Lsn::INVALID,
                        now_pg_micros,
                        self.reply_wanted,
                        out,
                    );
                    self.status_due = false;
                    self.reply_wanted = false;
                }
                if stopping {
                    frontend::copy_done(out);
                    self.sent_copy_done = true;
                }
                due
            }
            Stage::AfterCopy if !self.sent_copy_done => {
                // The server ended the copy (shutdown or end of timeline) and waits for ours.
                frontend::copy_done(out);
                self.sent_copy_done = true;
                true
            }
            _ => false,
        }
    }

    /// When to call [`Self::handle_timeout`] next; `None` when no periodic update is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.streaming() {
            self.next_status
        } else {
            None
        }
    }

    /// The server's ErrorResponse, once (see the type's `# Errors` section).
    pub fn poll_server_error(&mut self) -> Option<ServerError> {
        self.server_error.take()
    }

    /// After [`Self::is_done`]: the next timeline and the segment-aligned position to restart
    /// streaming from, if the server ended this timeline before the stop point; once. `None`
    /// when done means all WAL up to the stop point has been received. The caller fetches the
    /// new timeline's history file and creates a new receiver for a new START_REPLICATION.
    pub fn poll_timeline_switch(&mut self) -> Option<(TimelineId, Lsn)> {
        if self.stage == Stage::Done {
            self.next_timeline.take()
        } else {
            None
        }
    }

    /// Whether the command is over: both sides sent CopyDone and ReadyForQuery arrived, at the
    /// stop point or with a timeline switch. Never true after an ErrorResponse.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// End of WAL received so far (handed out, or queued for [`Self::poll_write`]).
    pub fn written(&self) -> Lsn {
        self.written
    }

    /// End of WAL reported flushed through [`Self::handle_flushed`] (the start position
    /// before any report).
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// The timeline being streamed.
    pub fn timeline(&self) -> TimelineId {
        self.timeline
    }

    /// Whether we are still in the copy and have not sent CopyDone.
    fn streaming(&self) -> bool {
        self.stage == Stage::Copy && !self.sent_copy_done
    }

    fn deadline_after(&self, now: Instant) -> Option<Instant> {
        self.config
            .status_interval
            .and_then(|interval| now.checked_add(interval))
    }

    fn stop_reached_and_flushed(&self) -> bool {
        self.stop
            .is_some_and(|end| self.written >= end && self.flushed >= end)
    }

    fn reported_flush(&self) -> Lsn {
        if self.config.report_flush {
            self.flushed
        } else {
            Lsn::INVALID
        }
    }

    fn on_copy_data(&mut self, now: Instant, payload: Bytes) -> Result<(), ProtocolError> {
        match parse_copy_both(payload)? {
            // After our CopyDone, WAL is ignored until the server's CopyDone (pg_basebackup).
            ReplicationMessage::XLogData(_) if self.sent_copy_done => {}
            ReplicationMessage::XLogData(x) => {
                if x.data_start != self.written {
                    return Err(ProtocolError::BadValue {
                        what: "XLogData start position",
                        value: format!(
                            "got WAL data at {} (segment offset {:08x}), expected {} (segment \
                             offset {:08x})",
                            x.data_start,
                            x.data_start.segment_offset(self.seg_size),
                            self.written,
                            self.written.segment_offset(self.seg_size),
                        ),
                    });
                }
                self.written = x.data_end();
                if !x.data.is_empty() {
                    self.chunks.push_back(WalChunk {
                        start: x.data_start,
                        data: x.data,
                    });
                }
            }
            ReplicationMessage::PrimaryKeepalive(k) => {
                if k.reply_requested && !self.sent_copy_done {
                    self.status_due = true;
                    self.next_status = self.deadline_after(now);
                }
            }
        }
        Ok(())
    }

    /// A result set (or a bare CommandComplete) after the server's CopyDone.
    fn on_result_set(&mut self, set: &ResultSet) -> Result<(), ProtocolError> {
        if set.columns.is_empty() {
            return Ok(()); // CommandComplete START_STREAMING / START_REPLICATION / SELECT
        }
        const WHAT: &str = "START_REPLICATION next-timeline result";
        if self.next_timeline.is_some() {
            return Err(ProtocolError::BadResult {
                command: COMMAND,
                problem: "more than one next-timeline result set".into(),
            });
        }
        set.expect_shape(WHAT, Some(1), 2)?;
        let next: TimelineId = set.required_text(WHAT, 0, 0)?.parse()?;
        let startpos: Lsn = set.required_text(WHAT, 0, 1)?.parse()?;
        if next <= self.timeline {
            return Err(ProtocolError::BadResult {
                command: COMMAND,
                problem: format!(
                    "server reported unexpected next timeline {next}, following timeline {}",
                    self.timeline
                ),
            });
        }
        if startpos > self.written {
            return Err(ProtocolError::BadResult {
                command: COMMAND,
                problem: format!(
                    "server stopped streaming timeline {} at {}, but reported next timeline \
                     {next} to begin at {startpos}",
                    self.timeline, self.written
                ),
            });
        }
        self.next_timeline = Some((next, startpos.segment_start(self.seg_size)));
        Ok(())
    }

    /// ReadyForQuery after the copy: decide how the stream ended.
    fn on_ready(&mut self) -> Result<(), ProtocolError> {
        if self.stop.is_some_and(|end| self.written >= end) {
            // Everything needed arrived; a timeline switch after it does not matter.
            self.next_timeline = None;
        } else if self.next_timeline.is_none() {
            let problem = match self.stop {
                Some(end) => format!(
                    "replication stream was terminated before stop point {end} (WAL received \
                     up to {})",
                    self.written
                ),
                None => format!(
                    "replication stream was terminated before stop point (stop point not known \
                     yet; WAL received up to {})",
                    self.written
                ),
            };
            return Err(ProtocolError::BadResult {
                command: COMMAND,
                problem,
            });
        }
        self.stage = Stage::Done;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CopyResponse, FieldDescription};
    use crate::testutil::{keepalive as keepalive_payload, xlog_data as xlog_payload};

    const SEG: u64 = 1 << 20;
    const START: u64 = SEG; // segment 1

    fn seg_size() -> WalSegSize {
        WalSegSize::from_bytes(SEG).expect("valid size")
    }

    fn xlog(start: u64, len: usize) -> BackendMessage {
        BackendMessage::CopyData(Bytes::from(xlog_payload(start, &vec![0xAB; len])))
    }

    fn keepalive(wal_end: u64, reply: bool) -> BackendMessage {
        BackendMessage::CopyData(Bytes::from(keepalive_payload(wal_end, reply)))
    }

    /// What the receiver wrote, decoded.
    #[derive(Debug, PartialEq, Eq)]
    enum Sent {
        Status { write: Lsn, flush: Lsn, time: i64 },
        CopyDone,
    }

    fn decode_sent(mut buf: &[u8]) -> Vec<Sent> {
        let mut sent = Vec::new();
        while !buf.is_empty() {
            let tag = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            let body = &buf[5..1 + len];
            match tag {
                b'c' => {
                    assert!(body.is_empty());
                    sent.push(Sent::CopyDone);
                }
                b'd' => {
                    assert_eq!(body.len(), 34);
                    assert_eq!(body[0], b'r');
                    let u = |at: usize| {
                        u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"))
                    };
                    assert_eq!(u(17), 0, "apply is always 0");
                    assert_eq!(body[33], 0, "never asks for a reply");
                    sent.push(Sent::Status {
                        write: Lsn(u(1)),
                        flush: Lsn(u(9)),
                        time: u(25) as i64,
                    });
                }
                other => panic!("unexpected frontend message {other}"),
            }
            buf = &buf[1 + len..];
        }
        sent
    }

    fn transmit(rx: &mut WalReceiver) -> Vec<Sent> {
        let mut out = BytesMut::new();
        let wrote = rx.poll_transmit(42, &mut out);
        assert_eq!(wrote, !out.is_empty());
        decode_sent(&out)
    }

    fn status(write: u64, flush: u64) -> Sent {
        Sent::Status {
            write: Lsn(write),
            flush: Lsn(flush),
            time: 42,
        }
    }

    fn quiet() -> ReceiverConfig {
        ReceiverConfig {
            status_interval: None,
            report_flush: true,
        }
    }

    fn receiver(config: ReceiverConfig, now: Instant) -> WalReceiver {
        WalReceiver::new(Lsn(START), TimelineId(1), seg_size(), config, now)
    }

    fn feed(rx: &mut WalReceiver, now: Instant, msgs: Vec<BackendMessage>) {
        for msg in msgs {
            let name = msg.name();
            rx.handle_message(now, msg)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    fn drain(rx: &mut WalReceiver) -> Vec<WalChunk> {
        std::iter::from_fn(|| rx.poll_write()).collect()
    }

    fn end_of_command() -> Vec<BackendMessage> {
        vec![
            BackendMessage::CommandComplete("START_STREAMING".into()),
            BackendMessage::CommandComplete("START_REPLICATION".into()),
            BackendMessage::ReadyForQuery(b'I'),
        ]
    }

    fn next_timeline_set(tli: &'static str, startpos: &'static str) -> Vec<BackendMessage> {
        let col = |name: &str, type_oid| FieldDescription {
            name: name.into(),
            type_oid,
        };
        vec![
            BackendMessage::RowDescription(vec![col("next_tli", 20), col("next_tli_startpos", 25)]),
            BackendMessage::DataRow(vec![
                Some(Bytes::from_static(tli.as_bytes())),
                Some(Bytes::from_static(startpos.as_bytes())),
            ]),
        ]
    }

    #[test]
    fn parses_xlog_data_and_keepalive() {
        let payload =
            Bytes::from_static(b"w\0\0\0\0\x02\0\0\0\0\0\0\0\x02\0\0\x80\0\0\0\0\0\0\0\x01WAL");
        let msg = parse_copy_both(payload.clone()).expect("valid");
        let ReplicationMessage::XLogData(x) = msg else {
            panic!("wrong message {msg:?}")
        };
        assert_eq!(x.data_start, Lsn(0x200_0000));
        assert_eq!(x.wal_end, Lsn(0x200_0080));
        assert_eq!(x.send_time, 1);
        assert_eq!(&x.data[..], b"WAL");
        assert_eq!(x.data_end(), Lsn(0x200_0003));
        // Zero-copy: the WAL bytes point into the payload.
        assert_eq!(x.data.as_ptr(), payload[XLOG_DATA_HEADER_LEN..].as_ptr());

        let header_only = Bytes::from_static(&[b'w'; XLOG_DATA_HEADER_LEN]);
        let Ok(ReplicationMessage::XLogData(x)) = parse_copy_both(header_only) else {
            panic!("a header without data is valid")
        };
        assert!(x.data.is_empty());

        let payload = Bytes::from_static(b"k\0\0\0\0\x03\0\0\0\0\0\0\0\0\0\0\x2a\x01");
        assert_eq!(payload.len(), KEEPALIVE_LEN);
        assert_eq!(
            parse_copy_both(payload),
            Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(0x300_0000),
                send_time: 42,
                reply_requested: true,
            }))
        );
        let payload = Bytes::from_static(b"k\0\0\0\0\x03\0\0\0\0\0\0\0\0\0\0\x2a\x00");
        assert!(matches!(
            parse_copy_both(payload),
            Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                reply_requested: false,
                ..
            }))
        ));
    }

    #[test]
    fn malformed_payloads_are_typed_errors() {
        assert_eq!(
            parse_copy_both(Bytes::new()),
            Err(ProtocolError::Truncated("replication message"))
        );
        let xlog = xlog_payload(START, b"");
        for cut in 1..xlog.len() {
            assert_eq!(
                parse_copy_both(Bytes::copy_from_slice(&xlog[..cut])),
                Err(ProtocolError::Truncated("XLogData message")),
                "cut {cut}"
            );
        }
        let BackendMessage::CopyData(ka) = keepalive(START, true) else {
            unreachable!()
        };
        for cut in 1..ka.len() {
            assert_eq!(
                parse_copy_both(ka.slice(..cut)),
                Err(ProtocolError::Truncated("keepalive message")),
                "cut {cut}"
            );
        }
        let mut long = ka.to_vec();
        long.push(0);
        assert_eq!(
            parse_copy_both(Bytes::from(long)),
            Err(ProtocolError::TrailingData("keepalive message"))
        );
        assert_eq!(
            parse_copy_both(Bytes::from_static(b"s\0\0")),
            Err(ProtocolError::BadValue {
                what: "replication message type",
                value: "s".into()
            })
        );
        assert!(matches!(
            parse_copy_both(Bytes::from_static(b"\xff")),
            Err(ProtocolError::BadValue { .. })
        ));
        let mut overflow = xlog_payload(0, b"xy");
        overflow[1..9].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            parse_copy_both(Bytes::from(overflow)),
            Err(ProtocolError::BadValue { .. })
        ));
        // Every prefix of every byte value after each tag: an error or a message, never a panic.
        for tag in [b'w', b'k', b'r', 0] {
            for fill in [0u8, 0xff] {
                let mut v = vec![tag];
                v.resize(40, fill);
                for cut in 0..v.len() {
                    let _ = parse_copy_both(Bytes::copy_from_slice(&v[..cut]));
                }
            }
        }
    }

    #[test]
    fn splits_chunks_at_segment_boundaries() {
        let chunk = WalChunk {
            start: Lsn(2 * SEG - 3),
            data: Bytes::from_static(b"abcdefgh"),
        };
        assert_eq!(chunk.end(), Lsn(2 * SEG + 5));
        let pieces: Vec<_> = chunk.split_at_segments(seg_size()).collect();
        assert_eq!(
            pieces,
            vec![
                (SegNo(1), SEG - 3, Bytes::from_static(b"abc")),
                (SegNo(2), 0, Bytes::from_static(b"defgh")),
            ]
        );
        let empty = WalChunk {
            start: Lsn(SEG),
            data: Bytes::new(),
        };
        assert_eq!(empty.split_at_segments(seg_size()).count(), 0);
    }

    #[test]
    fn streams_across_a_segment_boundary_and_answers_keepalives() {
        let now = Instant::now();
        let mut rx = receiver(ReceiverConfig::default(), now);
        assert_eq!(
            feed_first_copy_both(&mut rx, now),
            vec![status(START, START)]
        );
        assert_eq!(transmit(&mut rx), vec![]);

        let first = (SEG - 256) as usize;
        feed(
            &mut rx,
            now,
            vec![xlog(START, first), xlog(START + SEG - 256, 512)],
        );
        assert_eq!(rx.written(), Lsn(2 * SEG + 256));
        let chunks = drain(&mut rx);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].start, Lsn(START));
        assert_eq!(chunks[0].data.len(), first);
        let pieces: Vec<_> = chunks[1]
            .clone()
            .split_at_segments(seg_size())
            .map(|(seg, offset, data)| (seg, offset, data.len()))
            .collect();
        assert_eq!(pieces, vec![(SegNo(1), SEG - 256, 256), (SegNo(2), 0, 256)]);

        feed(&mut rx, now, vec![keepalive(3 * SEG, false)]);
        assert_eq!(transmit(&mut rx), vec![]);
        feed(&mut rx, now, vec![keepalive(3 * SEG, true)]);
        assert_eq!(transmit(&mut rx), vec![status(2 * SEG + 256, START)]);
        assert_eq!(transmit(&mut rx), vec![]);
    }

    /// Feeds the CopyBothResponse and returns what the receiver sends first.
    fn feed_first_copy_both(rx: &mut WalReceiver, now: Instant) -> Vec<Sent> {
        feed(
            rx,
            now,
            vec![BackendMessage::CopyBothResponse(CopyResponse {
                format: 0,
                columns: 0,
            })],
        );
        transmit(rx)
    }

    #[test]
    fn periodic_status_updates_follow_the_timer() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut rx = receiver(ReceiverConfig::default(), t0);
        assert_eq!(transmit(&mut rx), vec![status(START, START)]);
        assert_eq!(rx.poll_timeout(), Some(t0 + s(10)));
        rx.handle_timeout(t0 + s(5));
        assert_eq!(transmit(&mut rx), vec![]);
        rx.handle_timeout(t0 + s(11));
        assert_eq!(transmit(&mut rx), vec![status(START, START)]);
        assert_eq!(rx.poll_timeout(), Some(t0 + s(21)));
        // A requested reply restarts the interval.
        feed(&mut rx, t0 + s(15), vec![keepalive(START, true)]);
        assert_eq!(rx.poll_timeout(), Some(t0 + s(25)));

        // Without an interval: no update at start, no timer, but keepalives are answered.
        let mut rx = receiver(quiet(), t0);
        assert_eq!(rx.poll_timeout(), None);
        assert_eq!(transmit(&mut rx), vec![]);
        rx.handle_timeout(t0 + s(3600));
        assert_eq!(transmit(&mut rx), vec![]);
        feed(&mut rx, t0, vec![keepalive(START, true)]);
        assert_eq!(transmit(&mut rx), vec![status(START, START)]);
        let zero = ReceiverConfig {
            status_interval: Some(Duration::ZERO),
            report_flush: true,
        };
        assert_eq!(receiver(zero, t0).poll_timeout(), None);
    }

    #[test]
    fn flush_is_reported_only_after_handle_flushed() {
        let now = Instant::now();
        let mut rx = receiver(quiet(), now);
        feed(&mut rx, now, vec![xlog(START, 0x4000), keepalive(0, true)]);
        assert_eq!(transmit(&mut rx), vec![status(START + 0x4000, START)]);
        rx.handle_flushed(Lsn(START + 0x1000));
        assert_eq!(rx.flushed(), Lsn(START + 0x1000));
        feed(&mut rx, now, vec![keepalive(0, true)]);
        assert_eq!(
            transmit(&mut rx),
            vec![status(START + 0x4000, START + 0x1000)]
        );
        // Clamped to what was received; never moves back.
        rx.handle_flushed(Lsn(9 * SEG));
        assert_eq!(rx.flushed(), Lsn(START + 0x4000));
        rx.handle_flushed(Lsn(START));
        assert_eq!(rx.flushed(), Lsn(START + 0x4000));

        let no_slot = ReceiverConfig {
            status_interval: None,
            report_flush: false,
        };
        let mut rx = receiver(no_slot, now);
        feed(&mut rx, now, vec![xlog(START, 0x4000)]);
        rx.handle_flushed(Lsn(START + 0x4000));
        feed(&mut rx, now, vec![keepalive(0, true)]);
        assert_eq!(transmit(&mut rx), vec![status(START + 0x4000, 0)]);
    }

    #[test]
    fn stop_at_before_data_reaches_the_end() {
        let now = Instant::now();
        let mut rx = receiver(quiet(), now);
        let end = START + 0x8_0000;
        rx.stop_at(Lsn(end));
        feed(&mut rx, now, vec![xlog(START, 0x4_0000)]);
        assert_eq!(transmit(&mut rx), vec![]);
        feed(&mut rx, now, vec![xlog(START + 0x4_0000, 0x8_0000)]);
        let written = START + 0xC_0000;
        assert_eq!(rx.written(), Lsn(written));
        // Received past the end, but not flushed yet.
        assert_eq!(transmit(&mut rx), vec![]);
        assert_eq!(drain(&mut rx).len(), 2);
        rx.handle_flushed(Lsn(end - 1));
        assert_eq!(transmit(&mut rx), vec![]);
        rx.handle_flushed(Lsn(written));
        assert_eq!(
            transmit(&mut rx),
            vec![status(written, written), Sent::CopyDone]
        );
        assert_eq!(transmit(&mut rx), vec![]);
        assert_eq!(rx.poll_timeout(), None);
        // Until the server's CopyDone, WAL and keepalives are ignored.
        feed(
            &mut rx,
            now,
            vec![xlog(written, 0x100), xlog(START, 0x100), keepalive(0, true)],
        );
        assert_eq!(rx.poll_write(), None);
        assert_eq!(rx.written(), Lsn(written));
        assert_eq!(transmit(&mut rx), vec![]);
        feed(&mut rx, now, vec![BackendMessage::CopyDone]);
        assert_eq!(transmit(&mut rx), vec![]);
        assert!(!rx.is_done());
        feed(&mut rx, now, end_of_command());
        assert!(rx.is_done());
        assert_eq!(rx.poll_timeline_switch(), None);
        assert_eq!(rx.poll_server_error(), None);
        assert!(rx
            .handle_message(now, BackendMessage::ReadyForQuery(b'I'))
            .is_err());
    }

    #[test]
    fn stop_at_after_data_reached_the_end() {
        let now = Instant::now();
        let mut rx = receiver(quiet(), now);
        feed(&mut rx, now, vec![xlog(START, 0x4_0000)]);
        rx.handle_flushed(Lsn(START + 0x4_0000));
        assert_eq!(transmit(&mut rx), vec![]);
        rx.stop_at(Lsn(START + 0x2_0000));
        assert_eq!(
            transmit(&mut rx),
            vec![status(START + 0x4_0000, START + 0x4_0000), Sent::CopyDone]
        );
        feed(&mut rx, now, vec![BackendMessage::CopyDone]);
        feed(&mut rx, now, end_of_command());
        assert!(rx.is_done());
        assert_eq!(rx.poll_timeline_switch(), None);

        // A stop point at or before the start stops at once.
        let mut rx = receiver(quiet(), now);
        rx.stop_at(Lsn(START));
        assert_eq!(
            transmit(&mut rx),
            vec![status(START, START), Sent::CopyDone]
        );
    }

    #[test]
    fn out_of_order_xlog_data_is_rejected() {
        let now = Instant::now();
        let offset_error = |r: Result<(), ProtocolError>| {
            matches!(
                r,
                Err(ProtocolError::BadValue {
                    what: "XLogData start position",
                    ..
                })
            )
        };
        // The first message must be at the segment start.
        let mut rx = receiver(quiet(), now);
        let err = rx.handle_message(now, xlog(START + 0x28, 16));
        assert!(offset_error(err.clone()), "{err:?}");
        assert_eq!(
            err.expect_err("offset error").to_string(),
            "invalid XLogData start position: \"got WAL data at 0/100028 (segment offset \
             00000028), expected 0/100000 (segment offset 00000000)\""
        );
        // An unaligned start is rounded down.
        let rx = WalReceiver::new(Lsn(START + 0x28), TimelineId(1), seg_size(), quiet(), now);
        assert_eq!(rx.written(), Lsn(START));

        let mut rx = receiver(quiet(), now);
        feed(&mut rx, now, vec![xlog(START, 16)]);
        assert!(offset_error(rx.handle_message(now, xlog(START, 16))));
        assert!(offset_error(rx.handle_message(now, xlog(START + 32, 16))));
        assert!(offset_error(rx.handle_message(now, xlog(START + 8, 16))));
        feed(
            &mut rx,
            now,
            vec![xlog(START + 16, 0), xlog(START + 16, 16)],
        );
        assert_eq!(rx.written(), Lsn(START + 32));
        assert_eq!(drain(&mut rx).len(), 2, "empty XLogData yields no chunk");
    }

    #[test]
    fn unexpected_messages_are_rejected() {
        let now = Instant::now();
        let mut rx = receiver(quiet(), now);
        feed(&mut rx, now, vec![xlog(START, 16)]);
        for msg in [
            BackendMessage::CopyBothResponse(CopyResponse {
                format: 0,
                columns: 0,
            }),
            BackendMessage::DataRow(vec![]),
            BackendMessage::ReadyForQuery(b'I'),
            BackendMessage::CommandComplete("START_STREAMING".into()),
        ] {
            assert!(matches!(
                rx.handle_message(now, msg),
                Err(ProtocolError::UnexpectedMessage { .. })
            ));
        }
        assert!(rx
            .handle_message(now, BackendMessage::CopyData(Bytes::from_static(b"?")))
            .is_err());
        feed(&mut rx, now, vec![BackendMessage::CopyDone]);
        assert!(matches!(
            rx.handle_message(now, xlog(START + 16, 16)),
            Err(ProtocolError::UnexpectedMessage { .. })
        ));
    }

    #[test]
    fn timeline_switch_result_set_is_parsed() {
        let now = Instant::now();
        let mut rx = receiver(quiet(), now);
        rx.stop_at(Lsn(3 * SEG));
        feed(
            &mut rx,
            now,
            vec![xlog(START, 0x8_0000), BackendMessage::CopyDone],
        );
        assert!(rx.poll_timeline_switch().is_none());
        // The server waits for our CopyDone before sending the result set.
        assert_eq!(transmit(&mut rx), vec![Sent::CopyDone]);
        assert_eq!(transmit(&mut rx), vec![]);
        feed(&mut rx, now, next_timeline_set("2", "0/17FF28"));
        assert!(!rx.is_done());
        feed(&mut rx, now, end_of_command());
        assert!(rx.is_done());
        assert_eq!(rx.poll_timeline_switch(), Some((TimelineId(2), Lsn(START))));
        assert_eq!(rx.poll_timeline_switch(), None);

        // Without a stop point yet, a switch is not an error either.
        let mut rx = receiver(quiet(), now);
        feed(
            &mut rx,
            now,
            vec![xlog(START, 0x10), BackendMessage::CopyDone],
        );
        feed(&mut rx, now, next_timeline_set("3", "0/100010"));
        feed(&mut rx, now, end_of_command());
        assert_eq!(rx.poll_timeline_switch(), Some((TimelineId(3), Lsn(START))));

        // The checks pg_basebackup applies.
        for (tli, pos) in [
            ("1", "0/100000"),
            ("2", "0/100011"),
            ("x", "0/0"),
            ("2", "z"),
        ] {
            let mut rx = receiver(quiet(), now);
            feed(
                &mut rx,
                now,
                vec![xlog(START, 0x10), BackendMessage::CopyDone],
            );
            feed(&mut rx, now, next_timeline_set(tli, pos));
            assert!(
                rx.handle_message(
                    now,
                    BackendMessage::CommandComplete("START_STREAMING".into())
                )
                .is_err(),
                "{tli} {pos}"
            );
        }
    }

    #[test]
    fn premature_end_is_an_error() {
        let now = Instant::now();
        let terminated = |r: Result<(), ProtocolError>| match r {
            Err(e) => e
                .to_string()
                .contains("replication stream was terminated before stop point"),
            Ok(()) => false,
        };
        let ended_by_server = |rx: &mut WalReceiver| {
            feed(rx, now, vec![xlog(START, 0x1000), BackendMessage::CopyDone]);
            assert_eq!(transmit(rx), vec![Sent::CopyDone]);
            feed(
                rx,
                now,
                vec![BackendMessage::CommandComplete("START_STREAMING".into())],
            );
            rx.handle_message(now, BackendMessage::ReadyForQuery(b'I'))
        };
        let mut rx = receiver(quiet(), now);
        rx.stop_at(Lsn(START + 0x2000));
        assert!(terminated(ended_by_server(&mut rx)));
        assert!(!rx.is_done());

        let mut rx = receiver(quiet(), now);
        assert!(terminated(ended_by_server(&mut rx)), "no stop point");

        // The server ending the stream after the stop point is fine, flushed or not.
        let mut rx = receiver(quiet(), now);
        rx.stop_at(Lsn(START + 0x1000));
        assert_eq!(ended_by_server(&mut rx), Ok(()));
        assert!(rx.is_done());
        assert_eq!(rx.poll_timeline_switch(), None);
    }

    #[test]
    fn server_error_is_stored_not_returned() {
        let now = Instant::now();
        let mut rx = receiver(ReceiverConfig::default(), now);
        let e = ServerError {
            severity: "ERROR".into(),
            code: crate::sqlstate::UNDEFINED_OBJECT.into(),
            message: "replication slot \"slot0\" does not exist".into(),
            ..ServerError::default()
        };
        feed(
            &mut rx,
            now,
            vec![
                BackendMessage::NoticeResponse(ServerError::default()),
                BackendMessage::ErrorResponse(e.clone()),
            ],
        );
        assert_eq!(transmit(&mut rx), vec![]);
        assert_eq!(rx.poll_timeout(), None);
        assert_eq!(rx.poll_server_error(), Some(e));
        assert_eq!(rx.poll_server_error(), None);
        feed(&mut rx, now, vec![BackendMessage::ReadyForQuery(b'I')]);
        assert!(!rx.is_done());
        assert_eq!(rx.poll_timeline_switch(), None);
    }

    #[test]
    fn request_reply_sends_an_update_asking_for_an_answer() {
        let now = Instant::now();
        let cfg = ReceiverConfig {
            status_interval: None,
            report_flush: true,
        };
        let mut rx = WalReceiver::new(
            Lsn(0x100_0000),
            TimelineId(1),
            WalSegSize::DEFAULT,
            cfg,
            now,
        );
        let mut out = BytesMut::new();
        assert!(!rx.poll_transmit(0, &mut out));
        rx.request_reply();
        assert!(rx.poll_transmit(0, &mut out));
        assert_eq!(out.len(), 39);
        assert_eq!(out.last(), Some(&1), "reply requested");
        out.clear();
        assert!(!rx.poll_transmit(0, &mut out), "only once");
    }

    #[test]
    fn converts_unix_to_pg_epoch() {
        assert_eq!(pg_epoch_micros(946_684_800_000_000), 0);
        assert_eq!(pg_epoch_micros(946_684_800_000_001), 1);
        assert_eq!(pg_epoch_micros(0), -946_684_800_000_000);
        assert_eq!(pg_epoch_micros(i64::MIN), i64::MIN);
    }
}
