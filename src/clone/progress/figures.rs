//! The copy's figures (bytes, the server's estimate, tablespaces, rate, time left) and the
//! snapshot of them that every output draws from.

use std::time::{Duration, Instant};

use pgclone_proto::basebackup::TablespaceInfo;
use pgclone_proto::Lsn;

use crate::clone::progress::phase::Phase;

/// The name of the main data directory's archive in reports (other tablespaces go by their
/// location on the server).
pub const BASE: &str = "base";

/// What the backup task has reported so far.
#[derive(Debug, Default)]
pub struct Copy {
    bytes: u64,
    total_kb: Option<u64>,
    tablespaces: Vec<String>,
    current: Option<usize>,
    done: usize,
    started: Option<Instant>,
    ended: Option<Instant>,
}

impl Copy {
    /// The server's tablespace list arrived at `now` (main directory last): the estimate
    /// (when every row has one) and the names; the rate counts from here.
    pub fn set_tablespaces(&mut self, list: &[TablespaceInfo], now: Instant) {
        self.total_kb = list.iter().map(|t| t.size_kb).sum();
        self.tablespaces = list
            .iter()
            .map(|t| t.location.clone().unwrap_or_else(|| BASE.to_owned()))
            .collect();
        self.started = Some(now);
    }

    /// Archive `index` of the list begins.
    pub fn archive_start(&mut self, index: usize) {
        self.current = Some(index);
    }

    /// The current archive is complete.
    pub fn archive_done(&mut self) {
        self.done += 1;
    }

    /// `n` more archive bytes.
    pub fn add(&mut self, n: u64) {
        self.bytes += n;
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Every archive arrived at `now`: the rate stops counting.
    pub fn end(&mut self, now: Instant) {
        self.ended.get_or_insert(now);
    }

    /// The estimate in bytes, raised to what arrived once that is more (files grow during a
    /// backup).
    fn total_bytes(&self) -> Option<u64> {
        self.total_kb.map(|kb| (kb * 1024).max(self.bytes))
    }

    /// Bytes a second since the tablespace list arrived, until every archive arrived; `None`
    /// for the first tenth of a second.
    fn rate(&self, now: Instant) -> Option<f64> {
        let window = self.ended.unwrap_or(now) - self.started?;
        (window >= Duration::from_millis(100)).then(|| self.bytes as f64 / window.as_secs_f64())
    }

    /// The snapshot at `now` in `phase`.
    pub fn snapshot(&self, phase: Phase, now: Instant, wal_flushed: Option<Lsn>) -> Snapshot {
        let total_bytes = self.total_bytes();
        let rate = self.rate(now);
        // Only the copy has an estimate to count down to.
        let eta = match (phase, total_bytes, rate) {
            (Phase::Copying, Some(total), Some(rate)) if rate > 0.0 => {
                Some(Duration::from_secs_f64((total - self.bytes) as f64 / rate))
            }
            _ => None,
        };
        Snapshot {
            phase,
            bytes: self.bytes,
            total_bytes,
            rate,
            eta,
            tablespace: self
                .current
                .and_then(|i| self.tablespaces.get(i))
                .filter(|_| phase == Phase::Copying)
                .cloned(),
            tablespaces_done: self.done,
            tablespaces: self.tablespaces.len(),
            wal_flushed,
        }
    }
}

/// The figures at one instant, as every output shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The phase.
    pub phase: Phase,
    /// Archive bytes received.
    pub bytes: u64,
    /// The server's estimate, raised to `bytes` once that is more; `None` without an estimate.
    pub total_bytes: Option<u64>,
    /// Bytes a second over the copy so far.
    pub rate: Option<f64>,
    /// Time left in the copy, while copying with an estimate.
    pub eta: Option<Duration>,
    /// The tablespace being copied (its location, [`BASE`] for the main directory).
    pub tablespace: Option<String>,
    /// Archives complete.
    pub tablespaces_done: usize,
    /// Archives in all (0 until the list arrives).
    pub tablespaces: usize,
    /// What the WAL task has flushed (`-X stream`, once it flushed something).
    pub wal_flushed: Option<Lsn>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Vec<TablespaceInfo> {
        vec![
            TablespaceInfo {
                oid: Some(pgclone_proto::Oid(16400)),
                location: Some("/srv/ts".into()),
                size_kb: Some(1000),
            },
            TablespaceInfo {
                oid: None,
                location: None,
                size_kb: Some(3000),
            },
        ]
    }

    /// Rate over the copy so far; time left at that rate to the estimate; the tablespace by
    /// its location.
    #[test]
    fn rate_and_time_left() {
        let t0 = Instant::now();
        let mut c = Copy::default();
        c.set_tablespaces(&list(), t0);
        c.archive_start(0);
        c.add(1024 * 1000);
        let s = c.snapshot(Phase::Copying, t0 + Duration::from_secs(2), None);
        assert_eq!(s.total_bytes, Some(4000 * 1024));
        assert_eq!(s.rate, Some(512_000.0));
        assert_eq!(s.eta, Some(Duration::from_secs(6)));
        assert_eq!(s.tablespace.as_deref(), Some("/srv/ts"));
        assert_eq!((s.tablespaces_done, s.tablespaces), (0, 2));
        c.archive_done();
        c.archive_start(1);
        let s = c.snapshot(Phase::Copying, t0 + Duration::from_secs(3), None);
        assert_eq!(s.tablespace.as_deref(), Some(BASE));
    }

    /// Past the estimate the total follows the bytes; after the copy the rate stays what it
    /// was and there is no time left.
    #[test]
    fn after_the_copy() {
        let t0 = Instant::now();
        let mut c = Copy::default();
        c.set_tablespaces(&list(), t0);
        c.add(5000 * 1024);
        c.end(t0 + Duration::from_secs(5));
        let s = c.snapshot(
            Phase::Wal,
            t0 + Duration::from_secs(50),
            Some(Lsn(0x300_0000)),
        );
        assert_eq!(s.total_bytes, Some(5000 * 1024));
        assert_eq!(s.rate, Some(1_024_000.0));
        assert_eq!(s.eta, None);
        assert_eq!(s.tablespace, None);
        assert_eq!(s.wal_flushed, Some(Lsn(0x300_0000)));
    }

    /// Before the list (or without an estimate) there is no total and no rate yet.
    #[test]
    fn nothing_known_yet() {
        let c = Copy::default();
        let s = c.snapshot(Phase::Checkpoint, Instant::now(), None);
        assert_eq!((s.total_bytes, s.rate, s.eta), (None, None, None));
        let mut c = Copy::default();
        let mut unknown = list();
        unknown[0].size_kb = None;
        c.set_tablespaces(&unknown, Instant::now());
        assert_eq!(c.total_bytes(), None);
    }
}
