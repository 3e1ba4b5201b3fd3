//! `-P`, `--progress[=text|json]`: where a run is and when it will end, by phase
//! ([`Phase`]: connecting, checkpoint, copying, wal, standby, sync), then how long each took.
//!
//! The run calls a [`Reporter`] at each phase boundary and the backup task feeds it the
//! archives' bytes; a ticker task draws once a second (a quarter second for the bar) from the
//! shared figures, so the silent phases (the server's checkpoint, the WAL, the fsync) are
//! reported too. The outputs: text ([`text`]: a bar on a terminal, lines elsewhere) and JSON
//! lines ([`json`], whose doc is the schema).
//!
//! - `phase`: the phases and when each began;
//! - `figures`: the copy's figures and the snapshot every output draws from;
//! - `text`, `json`: the outputs;
//! - `fetch`: spotting the WAL at the end of a `-X fetch` base archive.

pub mod fetch;
pub mod figures;
pub mod json;
pub mod phase;
pub mod text;

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pgclone_proto::basebackup::{Checkpoint, TablespaceInfo};
use pgclone_proto::Lsn;

use crate::error::Error;
use crate::options::config::{Config, JsonTarget, ProgressOutput, WalMethod};
use crate::sink::Stats;

use fetch::FetchWatch;
use figures::Copy;
use json::{ManifestCheck, Stamp};
pub use phase::Phase;
use phase::Timeline;
use text::Text;

/// The checkpoint phase's hint with a spread checkpoint.
pub const SPREAD_HINT: &str = "a spread checkpoint, the default: -c fast starts at once";

/// The progress reporter of one run: a cheap handle, shared by the run, the backup task and
/// the ticker; it does nothing when progress was not asked for.
#[derive(Debug, Clone, Default)]
pub struct Reporter {
    shared: Option<Arc<Mutex<State>>>,
}

#[derive(Debug)]
struct State {
    out: Out,
    timeline: Timeline,
    copy: Copy,
    hint: Option<&'static str>,
    wal_method: WalMethod,
    server_compressed: bool,
    /// The main directory's index in the tablespace list, for `-X fetch`'s watch.
    base_index: Option<usize>,
    /// `-X fetch`: watching the base archive for its WAL.
    fetch: Option<FetchWatch>,
    /// `-X stream`: the WAL task's flushed position.
    wal_flushed: Option<Arc<AtomicU64>>,
    /// The check against the manifest, once the copy ended.
    manifest_check: Option<ManifestCheck>,
    /// Nothing is drawn after the end.
    ended: bool,
}

#[derive(Debug)]
enum Out {
    Text(Text),
    Json(JsonOut),
}

/// Where the JSON lines go.
struct JsonOut(Box<dyn Write + Send>);

impl std::fmt::Debug for JsonOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonOut")
    }
}

impl Reporter {
    /// The reporter `cfg.progress` asks for, in the connecting phase; opens the JSON file and
    /// starts the ticker (inside the runtime).
    pub fn start(cfg: &Config) -> Result<Self, Error> {
        let Some(progress) = &cfg.progress else {
            return Ok(Self::default());
        };
        let (out, period) = match progress {
            ProgressOutput::Text => {
                // With -v the messages would tear the bar: lines then, as off a terminal.
                let bar =
                    std::io::stderr().is_terminal() && !tracing::enabled!(tracing::Level::INFO);
                let period = if bar { 250 } else { 1000 };
                (Out::Text(Text::new(bar)), Duration::from_millis(period))
            }
            ProgressOutput::Json(target) => (Out::Json(open(target)?), Duration::from_secs(1)),
        };
        let state = State {
            out,
            timeline: Timeline::new(Instant::now()),
            copy: Copy::default(),
            hint: (cfg.checkpoint == Checkpoint::Spread).then_some(SPREAD_HINT),
            wal_method: cfg.wal_method,
            server_compressed: false,
            base_index: None,
            fetch: None,
            wal_flushed: None,
            manifest_check: None,
            ended: false,
        };
        let shared = Arc::new(Mutex::new(state));
        lock(&shared).emit_phase(None);
        tokio::spawn(tick(Arc::downgrade(&shared), period));
        Ok(Self {
            shared: Some(shared),
        })
    }

    fn with(&self, f: impl FnOnce(&mut State)) {
        if let Some(shared) = &self.shared {
            f(&mut lock(shared));
        }
    }

    /// Enters `phase` (a phase already passed is ignored).
    pub fn phase(&self, phase: Phase) {
        self.with(|s| s.enter(phase));
    }

    /// The server's tablespace list (main directory last): the estimate and the names.
    pub fn tablespaces(&self, list: &[TablespaceInfo]) {
        self.with(|s| {
            s.copy.set_tablespaces(list, Instant::now());
            s.base_index = list.iter().position(TablespaceInfo::is_base);
        });
    }

    /// Archive `index` of the tablespace list begins.
    pub fn archive_start(&self, index: usize) {
        self.with(|s| {
            s.copy.archive_start(index);
            let watch = s.wal_method == WalMethod::Fetch
                && !s.server_compressed
                && s.base_index == Some(index);
            s.fetch = watch.then(FetchWatch::default);
        });
    }

    /// Whether the archives come compressed by the server (`-Z server-...`, or `auto` when the
    /// server accepted it): their bytes are not counted ([`Reporter::data`]), the server's own
    /// figure is ([`Reporter::server_progress`]), and `-X fetch`'s WAL is not looked for.
    pub fn server_compressed(&self, compressed: bool) {
        self.with(|s| s.server_compressed = compressed);
    }

    /// The server's progress figure (uncompressed bytes done, sent about once a second and at
    /// each archive's end): what counts when the archives come compressed.
    pub fn server_progress(&self, done: u64) {
        self.with(|s| {
            if s.server_compressed {
                s.copy.add(done.saturating_sub(s.copy.bytes()));
            }
        });
    }

    /// Archive bytes received (not counted when the server compresses them).
    pub fn data(&self, data: &Bytes) {
        self.with(|s| {
            if !s.server_compressed {
                s.copy.add(data.len() as u64);
            }
            if s.fetch.as_mut().is_some_and(|w| w.wal_begins(data)) {
                s.fetch = None;
                s.enter(Phase::Wal);
            }
        });
    }

    /// The current archive is complete. After the last, with `-X none`, the server waits for
    /// its WAL to be archived.
    pub fn archive_done(&self) {
        self.with(|s| {
            s.copy.archive_done();
            s.fetch = None;
            let snapshot = s.snapshot(Instant::now());
            if s.wal_method == WalMethod::None && snapshot.tablespaces_done == snapshot.tablespaces
            {
                s.enter(Phase::Wal);
            }
        });
    }

    /// Every archive is written: the copy's last figures and the check's verdict.
    pub fn copied(&self, stats: &Stats) {
        self.with(|s| {
            let now = Instant::now();
            s.copy.end(now);
            s.manifest_check = stats.checked.map(|files| ManifestCheck {
                files: Some(files),
                mismatches: 0,
            });
            let snapshot = s.snapshot(now);
            if let Out::Text(t) = &mut s.out {
                t.copied(&snapshot);
            }
        });
    }

    /// `-X stream`: the WAL task's flushed position, read at each tick.
    pub fn watch_wal(&self, flushed: Arc<AtomicU64>) {
        self.with(|s| s.wal_flushed = Some(flushed));
    }

    /// The run ended with `result`: the summary (text) or the `end` event (JSON); nothing is
    /// drawn after.
    pub fn end<T>(&self, result: &Result<T, Error>) {
        self.with(|s| s.end(result.as_ref().err()));
    }
}

impl State {
    fn enter(&mut self, phase: Phase) {
        if self.ended {
            return;
        }
        let now = Instant::now();
        if let Some(left) = self.timeline.enter(phase, now) {
            if phase > Phase::Copying {
                self.copy.end(now);
            }
            self.emit_phase(Some(left));
        }
    }

    fn snapshot(&self, now: Instant) -> figures::Snapshot {
        let flushed = self
            .wal_flushed
            .as_ref()
            .map(|f| Lsn(f.load(Ordering::Relaxed)))
            .filter(|l| *l != Lsn::INVALID);
        self.copy.snapshot(self.timeline.current(), now, flushed)
    }

    fn hint(&self) -> Option<&'static str> {
        self.hint
            .filter(|_| self.timeline.current() == Phase::Checkpoint)
    }

    fn stamp(&self, now: Instant) -> Stamp {
        Stamp {
            at: unix_millis(),
            elapsed: self.timeline.elapsed(now),
        }
    }

    /// The phase entered (JSON; the text shows it at the next tick).
    fn emit_phase(&mut self, left: Option<(Phase, Duration)>) {
        let stamp = self.stamp(Instant::now());
        let (phase, hint) = (self.timeline.current(), self.hint());
        if let Out::Json(w) = &mut self.out {
            write_line(w, &json::phase(stamp, phase, left, hint));
        }
    }

    fn tick(&mut self) {
        if self.ended {
            return;
        }
        let now = Instant::now();
        let snapshot = self.snapshot(now);
        let in_phase = self.timeline.in_phase(now);
        let hint = self.hint();
        let stamp = self.stamp(now);
        match &mut self.out {
            Out::Text(t) => t.tick(&snapshot, in_phase, hint),
            Out::Json(w) => write_line(w, &json::progress(stamp, &snapshot, in_phase)),
        }
    }

    fn end(&mut self, error: Option<&Error>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let now = Instant::now();
        let phases = self.timeline.durations(now);
        let stamp = self.stamp(now);
        let text = error.map(|e| crate::error::chain(e));
        let manifest_check = match error {
            Some(Error::ManifestMismatch(n)) => Some(ManifestCheck {
                files: None,
                mismatches: *n as u64,
            }),
            _ => self.manifest_check,
        };
        match &mut self.out {
            Out::Text(t) => t.end(&text::summary(&phases, stamp.elapsed, error.is_none())),
            Out::Json(w) => {
                let end = json::End {
                    error: text.as_deref(),
                    phases: &phases,
                    bytes: self.copy.bytes(),
                    manifest_check,
                };
                write_line(w, &json::end(stamp, &end));
            }
        }
    }
}

/// Draws every `period` until the run ended or every handle is gone.
async fn tick(shared: Weak<Mutex<State>>, period: Duration) {
    let mut interval = tokio::time::interval(period);
    // A late tick is not made up for: never two events within a period.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = lock(&shared);
        if state.ended {
            return;
        }
        state.tick();
    }
}

fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while drawing leaves figures that are still worth drawing.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The JSON events' destination.
fn open(target: &JsonTarget) -> Result<JsonOut, Error> {
    let file = match target {
        JsonTarget::Stderr => return Ok(JsonOut(Box::new(std::io::stderr()))),
        JsonTarget::File(path) => OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(Error::fs("open progress file", path))?,
        JsonTarget::Fd(fd) => adopt_fd(*fd)?,
    };
    Ok(JsonOut(Box::new(file)))
}

/// `--progress-fd`: a duplicate of the inherited descriptor `fd` (reopening `/dev/fd/N` would
/// fail on a pipe another user created, as when a supervisor runs pgclone under its account).
fn adopt_fd(fd: u32) -> Result<File, Error> {
    let name = PathBuf::from(format!("file descriptor {fd}"));
    let raw = i32::try_from(fd).unwrap_or(-1);
    // SAFETY: F_DUPFD_CLOEXEC only creates a new descriptor (or fails with EBADF).
    let dup = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(Error::fs("write progress events to", name)(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `dup` was just created for this process and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(dup) })
}

/// One event, one line; a reader that went away is not the run's failure.
fn write_line(JsonOut(w): &mut JsonOut, line: &str) {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    if let Err(e) = w.write_all(buf.as_bytes()).and_then(|()| w.flush()) {
        tracing::debug!("could not write a progress event: {e}");
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::config::tests::config;

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("events")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    }

    /// Through the reporter: a phase event at the start and at each change (an earlier phase
    /// and anything after the end ignored), the end with the phases and the count of files
    /// that differed from the manifest.
    #[tokio::test]
    async fn events_through_the_reporter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events");
        let file = path.to_str().expect("utf8");
        let argv = [
            "-D",
            "/x",
            "-U",
            "u",
            "--progress=json",
            "--progress-file",
            file,
        ];
        let r = Reporter::start(&config(&argv).expect("config")).expect("start");
        r.phase(Phase::Checkpoint);
        r.phase(Phase::Copying);
        r.phase(Phase::Checkpoint);
        r.end::<()>(&Err(Error::ManifestMismatch(2)));
        r.phase(Phase::Sync);
        let events = lines(&path);
        let kinds: Vec<_> = events
            .iter()
            .map(|e| format!("{}:{}", e["event"], e["phase"]))
            .collect();
        assert_eq!(
            kinds,
            [
                r#""phase":"connecting""#,
                r#""phase":"checkpoint""#,
                r#""phase":"copying""#,
                r#""end":null"#
            ]
        );
        let end = &events[3];
        assert_eq!(end["outcome"], "error");
        assert_eq!(end["manifest_check"]["mismatches"], 2);
        assert_eq!(events[1]["hint"], SPREAD_HINT);
    }

    /// Off, the reporter does nothing (no runtime needed).
    #[test]
    fn off_does_nothing() {
        let r = Reporter::default();
        r.phase(Phase::Copying);
        r.data(&Bytes::from_static(b"x"));
        r.end::<()>(&Ok(()));
    }
}
