//! The WAL-retention guard. With `-X fetch` (or `-X none` on a server that does not archive)
//! nothing keeps the WAL the copy needs, from the backup's start position on: the server may
//! recycle it while a long copy runs, and pg_basebackup learns so only at the end. The guard
//! watches instead: every [`INTERVAL`] a short extra replication connection runs
//! IDENTIFY_SYSTEM, and the distance from the start position to the server's position is
//! compared with what the server keeps ([`Retention`]). At half the margin it warns once; once
//! the WAL is no longer reserved it asks the server whether the start segment still exists
//! (`START_REPLICATION` from it, on another short connection) and, when it is gone, stops the
//! copy with [`Error::WalRemoved`] through the run's abort token. With `-X none` the WAL may
//! come from elsewhere (an archive, a WAL receiver): a removed segment is only a warning there.
//!
//! Off with `-X stream`: with a slot (temporary or `-S`) the slot keeps the WAL; with
//! `--no-slot` the WAL task itself streams from the start segment on and fails, stopping the
//! copy at once, when the server no longer has what it asks for.
//!
//! [`warn_standby_start`]: with `-R` and no slot, the new standby needs the WAL from the
//! backup's end on; at the end of the clone a warning says when much of the margin is used.
//!
//! What the server keeps (PostgreSQL's `KeepLogSeg` and the removal at the end of each
//! checkpoint): a checkpoint removes (or recycles, which renames the file just as well) the
//! segments before both its own redo position (on 10: the previous checkpoint's) and the
//! current position minus `wal_keep_size` (13+; `wal_keep_segments` × segment size before).
//! Other slots, a failing `archive_command` or WAL not yet summarized (17+) may hold it
//! longer; pgclone counts on none of them. So the WAL from the start on is reserved while the
//! server is less than `wal_keep_size` ahead; beyond that it goes at the next checkpoint, and
//! a checkpoint comes at the latest after about `max_wal_size` of WAL (two cycles on 10).
//! `min_wal_size` only decides between recycling and removing, and `max_slot_wal_keep_size`
//! only bounds what slots keep: neither protects a backup without a slot.

use std::time::Duration;

use pgclone_proto::backend::BackendMessage;
use pgclone_proto::command::Command;
use pgclone_proto::{Lsn, ServerError, ServerVersion, TimelineId, WalSegSize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clone::backup::{OnStarted, Outcome};
use crate::conn::server::{self, ServerFacts};
use crate::conn::{self, ConnParams, Connection, Prompt};
use crate::error::Error;
use crate::options::config::{Config, WalMethod};

/// How often the guard asks the server for its WAL position.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// How long a probe waits for the server to send WAL or refuse.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLSTATE of "requested WAL segment ... has already been removed" (`undefined_file`).
const UNDEFINED_FILE: &str = "58P01";

/// What the server keeps behind its current position for a backup without a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Bytes kept in any case: `wal_keep_size`, or `wal_keep_segments` × segment size.
    pub keep: u64,
    /// The setting behind `keep`, as SHOW printed it (`wal_keep_size = 16MB`).
    pub keep_setting: String,
    /// The distance past which a checkpoint has certainly removed the WAL: `keep` plus
    /// `max_wal_size` (twice it on 10, which keeps two checkpoint cycles).
    pub margin: u64,
}

impl Retention {
    /// Reads the settings over `conn` (SHOW works over replication on 10+).
    pub async fn read(conn: &mut Connection, seg: WalSegSize) -> Result<Self, Error> {
        let version = conn.info().version;
        let (keep, keep_setting) = if version.is_at_least(13) {
            let text = conn.show("wal_keep_size").await?;
            (
                size_setting("wal_keep_size", &text)?,
                format!("wal_keep_size = {text}"),
            )
        } else {
            let text = conn.show("wal_keep_segments").await?;
            let segs: u64 = text
                .trim()
                .parse()
                .map_err(|_| bad_setting("wal_keep_segments", &text))?;
            (
                segs * u64::from(seg.bytes()),
                format!("wal_keep_segments = {text}"),
            )
        };
        let max_wal = size_setting("max_wal_size", &conn.show("max_wal_size").await?)?;
        Ok(Self::new(keep, keep_setting, max_wal, version))
    }

    /// The retention of a server of `version` with these settings.
    pub fn new(keep: u64, keep_setting: String, max_wal: u64, version: ServerVersion) -> Self {
        let cycles = if version.is_at_least(11) { 1 } else { 2 };
        Self {
            keep,
            keep_setting,
            margin: keep + cycles * max_wal,
        }
    }
}

/// What one look at the server's position calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the WAL is reserved and less than half the margin is used.
    Quiet,
    /// Half the margin is used: warn (once).
    Warn,
    /// The WAL is no longer reserved: ask the server whether the start segment still exists,
    /// warning first when this is the first time over half the margin.
    Probe {
        /// Whether to warn first.
        warn: bool,
    },
}

/// The guard's judgement over successive positions (pure, so it can be tested).
#[derive(Debug)]
pub struct Watch {
    start: Lsn,
    retention: Retention,
    warned: bool,
}

impl Watch {
    /// Watches the WAL from `start` on.
    pub fn new(start: Lsn, retention: Retention) -> Self {
        Self {
            start,
            retention,
            warned: false,
        }
    }

    /// The server is at `pos`: what to do.
    pub fn observe(&mut self, pos: Lsn) -> Step {
        let used = self.distance(pos);
        let warn = !self.warned && used.saturating_mul(2) >= self.retention.margin.max(1);
        self.warned |= warn;
        if used > self.retention.keep {
            Step::Probe { warn }
        } else if warn {
            Step::Warn
        } else {
            Step::Quiet
        }
    }

    /// Bytes written since the start.
    pub fn distance(&self, pos: Lsn) -> u64 {
        pos.0.saturating_sub(self.start.0)
    }
}

/// The guard of one clone: its task, and the token that stops it when the copy ends.
#[derive(Debug)]
pub struct Guard {
    task: Option<JoinHandle<Result<(), Error>>>,
    stop: CancellationToken,
}

/// Everything the guard's task needs, owned.
struct Context {
    params: ConnParams,
    seg: WalSegSize,
    method: WalMethod,
    abort: CancellationToken,
}

/// Starts the guard when the clone needs one; the step returned goes into the backup job's
/// `on_started` (it hands the start position to the guard).
pub fn start(
    cfg: &Config,
    params: &ConnParams,
    facts: &ServerFacts,
    abort: &CancellationToken,
) -> (Guard, Option<OnStarted>) {
    let stop = CancellationToken::new();
    if cfg.wal_method == WalMethod::Stream {
        return (Guard { task: None, stop }, None);
    }
    let mut params = params.clone();
    params.prompt = Prompt::Never;
    let ctx = Context {
        params,
        seg: facts.wal_seg_size,
        method: cfg.wal_method,
        abort: abort.clone(),
    };
    let (tx, rx) = oneshot::channel();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            r = watch(ctx, rx) => r,
            () = stopped.cancelled() => Ok(()),
        }
    });
    let hook: OnStarted = Box::new(move |start, timeline, _sink| {
        // A guard that already gave up has dropped its receiver: nothing to tell.
        let _ = tx.send((start, timeline));
        Ok(())
    });
    (
        Guard {
            task: Some(task),
            stop,
        },
        Some(hook),
    )
}

impl Guard {
    /// The copy ended with `result`: stops the guard; when the guard is what stopped the copy,
    /// its error replaces the `Cancelled` the backup task returned.
    pub async fn finish(self, result: Result<Outcome, Error>) -> Result<Outcome, Error> {
        let Some(task) = self.task else {
            return result;
        };
        self.stop.cancel();
        let found = task.await.unwrap_or(Ok(()));
        match (result, found) {
            (Err(Error::Cancelled), Err(e)) => Err(e),
            (result, _) => result,
        }
    }
}

/// The guard's task: waits for the start position, then looks every [`INTERVAL`]. Only a
/// removed segment is an error; a guard that cannot watch says so and lets the copy run.
async fn watch(ctx: Context, started: oneshot::Receiver<(Lsn, TimelineId)>) -> Result<(), Error> {
    let Ok((start, timeline)) = started.await else {
        return Ok(());
    };
    let found = match watch_from(&ctx, start, timeline).await {
        Err(e @ Error::WalRemoved { .. }) => Err(e),
        Err(e) => {
            tracing::warn!(
                "the WAL-retention guard stopped watching: {}",
                crate::error::chain(&e)
            );
            Ok(())
        }
        Ok(()) => Ok(()),
    };
    if found.is_err() {
        ctx.abort.cancel();
    }
    found
}

async fn watch_from(ctx: &Context, start: Lsn, timeline: TimelineId) -> Result<(), Error> {
    let mut params = ctx.params.clone();
    let mut conn = conn::connect(&mut params).await?;
    conn.set_label("guard");
    if ctx.method == WalMethod::None && archiving(&mut conn).await? {
        tracing::debug!("WAL-retention guard off: the server archives the WAL -X none needs");
        return Ok(());
    }
    let retention = Retention::read(&mut conn, ctx.seg).await?;
    tracing::debug!("WAL-retention guard on: {retention:?}");
    let mut watch = Watch::new(start, retention);
    let mut probe_failed = false;
    loop {
        tokio::time::sleep(INTERVAL).await;
        let pos = server::identify_system(&mut conn).await?.xlogpos;
        let step = watch.observe(pos);
        if let Step::Probe { .. } = step {
            match probe(ctx, start, timeline).await {
                Ok(None) => {}
                // The error says it all; no warning before it.
                Ok(Some(e)) if ctx.method == WalMethod::Fetch => {
                    return Err(removed(&watch, pos, start, timeline, ctx.seg, &e))
                }
                Ok(Some(e)) => {
                    warn_gone(&watch, start, timeline, ctx.seg, &e);
                    return Ok(());
                }
                Err(e) if !probe_failed => {
                    probe_failed = true;
                    tracing::warn!(
                        "the WAL-retention guard could not check the start segment: {}",
                        crate::error::chain(&e)
                    );
                }
                Err(e) => tracing::debug!("probe failed: {}", crate::error::chain(&e)),
            }
        }
        if matches!(step, Step::Warn | Step::Probe { warn: true }) {
            warn_half(&watch, pos);
        }
    }
}

/// `-X none`: whether the server archives (it then removes no segment before archiving it).
async fn archiving(conn: &mut Connection) -> Result<bool, Error> {
    Ok(conn.show("archive_mode").await?.trim() != "off")
}

fn warn_half(watch: &Watch, pos: Lsn) {
    let r = &watch.retention;
    tracing::warn!(
        "the server has written {} of WAL since this backup started at {}; it keeps {} ({}) \
         and removes older WAL at a checkpoint, certainly after {}: if the WAL this backup \
         needs goes, the copy stops; use -X stream or a replication slot to protect it",
        mb(watch.distance(pos)),
        watch.start,
        mb(r.keep),
        r.keep_setting,
        mb(r.margin)
    );
}

/// `-X none`: the WAL may come from elsewhere (an archive, a WAL receiver such as Barman's), so
/// a removed start segment is a warning, not a reason to stop.
fn warn_gone(watch: &Watch, start: Lsn, timeline: TimelineId, seg: WalSegSize, e: &ServerError) {
    tracing::debug!("server: {e}");
    tracing::warn!(
        "the server has removed WAL segment {} that this backup needs (it started at {start}, \
         {}): with -X none it must come from your WAL archive or receiver; use -X stream or \
         a replication slot to have the server keep it",
        start.segment(seg).file_name(timeline, seg),
        watch.retention.keep_setting
    );
}

fn removed(
    watch: &Watch,
    pos: Lsn,
    start: Lsn,
    timeline: TimelineId,
    seg: WalSegSize,
    e: &ServerError,
) -> Error {
    tracing::debug!("server: {e}");
    Error::WalRemoved {
        segment: start.segment(seg).file_name(timeline, seg),
        start,
        written: mb(watch.distance(pos)),
        keep: watch.retention.keep_setting.clone(),
    }
}

/// Asks the server for WAL from the start segment on a fresh connection: `Some(error)` when it
/// answers that the segment has been removed, `None` when WAL (or a keepalive) comes.
async fn probe(
    ctx: &Context,
    start: Lsn,
    timeline: TimelineId,
) -> Result<Option<ServerError>, Error> {
    let mut params = ctx.params.clone();
    let mut conn = conn::connect(&mut params).await?;
    conn.set_label("guard");
    conn.set_read_timeout(Some(PROBE_TIMEOUT));
    let cmd = Command::StartPhysical {
        slot: None,
        start: start.segment_start(ctx.seg),
        timeline,
    };
    let sql = cmd.text(conn.info().version);
    tracing::debug!("guard: sending {sql}");
    conn.send_query(&sql, cmd.name()).await?;
    let answer = loop {
        match conn.read_message(cmd.name()).await? {
            BackendMessage::ErrorResponse(e) if is_removed(&e) => break Some(e),
            BackendMessage::ErrorResponse(e) => {
                return Err(Error::Server {
                    context: "the guard's START_REPLICATION failed".into(),
                    source: Box::new(e),
                })
            }
            BackendMessage::CopyData(_) => break None,
            _ => {}
        }
    };
    conn.close().await;
    Ok(answer)
}

/// Whether a server error says that the requested WAL segment is gone.
fn is_removed(e: &ServerError) -> bool {
    e.code == UNDEFINED_FILE || e.message.contains("has already been removed")
}

/// `-R` without a slot, once the clone is durable: the new standby needs the WAL from the
/// backup's `end` on, and nothing keeps it. Warns when half the margin is already used (asked
/// on the main connection); a failure to ask is only logged.
pub async fn warn_standby_start(
    conn: &mut Connection,
    cfg: &Config,
    facts: &ServerFacts,
    end: Lsn,
) {
    if !cfg.write_recovery_conf || cfg.slot.is_some() {
        return;
    }
    let look = async {
        let retention = Retention::read(conn, facts.wal_seg_size).await?;
        let pos = server::identify_system(conn).await?.xlogpos;
        Ok::<_, Error>((retention, pos))
    };
    match look.await {
        Ok((retention, pos)) => {
            let used = pos.0.saturating_sub(end.0);
            if standby_at_risk(&retention, used) {
                tracing::warn!(
                    "the server has written {} of WAL since this backup ended at {}, and keeps \
                     {} ({}): the new standby may find the WAL it needs removed before it \
                     starts; start it soon, or use a replication slot (-C -S name)",
                    mb(used),
                    end,
                    mb(retention.keep),
                    retention.keep_setting
                );
            }
        }
        Err(e) => tracing::debug!(
            "could not check the WAL the standby needs: {}",
            crate::error::chain(&e)
        ),
    }
}

/// Whether a standby that needs the WAL from `used` bytes behind the server's position is
/// likely to find it gone before it starts: half the margin is used.
fn standby_at_risk(retention: &Retention, used: u64) -> bool {
    used.saturating_mul(2) >= retention.margin.max(1)
}

/// A byte count as megabytes, for messages.
fn mb(bytes: u64) -> String {
    format!("{} MB", bytes / (1024 * 1024))
}

/// A size setting as SHOW prints it (`16MB`, `1GB`, `512kB`, or a bare number of MB).
fn size_setting(name: &'static str, text: &str) -> Result<u64, Error> {
    // wal_keep_size, max_wal_size, ...: a bare number counts in MB, their unit.
    pgclone_proto::guc::size(text, 1 << 20).ok_or_else(|| bad_setting(name, text))
}

fn bad_setting(name: &'static str, text: &str) -> Error {
    Error::Protocol {
        phase: "SHOW",
        source: pgclone_proto::ProtocolError::BadValue {
            what: name,
            value: text.chars().take(32).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn retention(keep_mb: u64, max_wal_mb: u64, major: u32) -> Retention {
        Retention::new(
            keep_mb * MB,
            format!("wal_keep_size = {keep_mb}MB"),
            max_wal_mb * MB,
            ServerVersion(major * 10000),
        )
    }

    /// A bare number counts in MB (the unit of wal_keep_size and max_wal_size).
    #[test]
    fn sizes_as_show_prints_them() {
        assert_eq!(size_setting("wal_keep_size", "1GB").ok(), Some(1024 * MB));
        assert_eq!(size_setting("wal_keep_size", "64").ok(), Some(64 * MB));
        assert!(size_setting("wal_keep_size", "12parsecs").is_err());
    }

    /// The margin is what wal_keep keeps plus one checkpoint cycle of max_wal_size (two on 10).
    #[test]
    fn margin_counts_checkpoint_cycles() {
        assert_eq!(retention(16, 32, 16).margin, 48 * MB);
        assert_eq!(retention(16, 32, 11).margin, 48 * MB);
        assert_eq!(retention(16, 32, 10).margin, 80 * MB);
    }

    /// Reserved WAL is quiet until half the margin, warns once, and is probed only once the
    /// distance passes wal_keep.
    #[test]
    fn warns_once_at_half_and_probes_past_keep() {
        let start = Lsn(0x100_0000);
        let mut w = Watch::new(start, retention(64, 32, 16));
        let at = |mb: u64| Lsn(start.0 + mb * MB);
        assert_eq!(w.observe(at(10)), Step::Quiet);
        assert_eq!(w.observe(at(50)), Step::Warn);
        assert_eq!(w.observe(at(64)), Step::Quiet);
        assert_eq!(w.observe(at(65)), Step::Probe { warn: false });
        assert_eq!(w.observe(at(500)), Step::Probe { warn: false });
    }

    /// With nothing kept (wal_keep_size = 0, the default) every look past the start probes; the
    /// warning comes with the probe at half the margin.
    #[test]
    fn nothing_kept_probes_at_once() {
        let start = Lsn(0x100_0000);
        let mut w = Watch::new(start, retention(0, 1024, 16));
        assert_eq!(w.observe(start), Step::Quiet);
        assert_eq!(w.observe(Lsn(start.0 + MB)), Step::Probe { warn: false });
        assert_eq!(
            w.observe(Lsn(start.0 + 600 * MB)),
            Step::Probe { warn: true }
        );
        assert_eq!(
            w.observe(Lsn(start.0 + 700 * MB)),
            Step::Probe { warn: false }
        );
    }

    /// The standby's warning: quiet while less than half the margin is used.
    #[test]
    fn standby_warning_at_half_the_margin() {
        let r = retention(16, 32, 16);
        assert!(!standby_at_risk(&r, 0));
        assert!(!standby_at_risk(&r, 23 * MB));
        assert!(standby_at_risk(&r, 24 * MB));
        assert!(standby_at_risk(&retention(0, 1024, 16), 600 * MB));
    }

    #[test]
    fn removed_segment_errors_are_recognised() {
        let e = ServerError {
            severity: "ERROR".into(),
            code: "58P01".into(),
            message: "requested WAL segment 000000010000000000000003 has already been removed"
                .into(),
            ..ServerError::default()
        };
        assert!(is_removed(&e));
        let other = ServerError {
            code: "XX000".into(),
            message: "something else".into(),
            ..ServerError::default()
        };
        assert!(!is_removed(&other));
    }
}
