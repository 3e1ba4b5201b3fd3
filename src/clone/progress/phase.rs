//! The phases of a run and when each began.

use std::time::{Duration, Instant};

/// The phases of a clone, in the order they come. A run skips those that do not apply (no
/// `wal` with `-X fetch` of a server-compressed backup, no `standby` without `-R`, no `sync`
/// with `-N` or without a directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connecting, inspecting the server, opening the WAL connection, creating slots,
    /// uploading `-i`'s manifest: everything before BASE_BACKUP is sent.
    Connecting,
    /// BASE_BACKUP sent; the server runs its checkpoint, until the backup's start position
    /// arrives.
    Checkpoint,
    /// The archives arrive and are written.
    Copying,
    /// Waiting for the end-of-backup WAL: `-X stream` until the WAL task has the end
    /// position, `-X fetch` while the WAL files arrive at the end of the base archive, `-X none`
    /// while the server waits for its WAL to be archived.
    Wal,
    /// `-R`: writing the standby settings.
    Standby,
    /// Making the clone durable (fsync), and for `--refresh` its last steps.
    Sync,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Self; 6] = [
        Self::Connecting,
        Self::Checkpoint,
        Self::Copying,
        Self::Wal,
        Self::Standby,
        Self::Sync,
    ];

    /// The phase's name in the JSON events and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Checkpoint => "checkpoint",
            Self::Copying => "copying",
            Self::Wal => "wal",
            Self::Standby => "standby",
            Self::Sync => "sync",
        }
    }
}

/// When the run and each of its phases began. Phases only move forward: entering the current
/// phase or an earlier one changes nothing.
#[derive(Debug, Clone)]
pub struct Timeline {
    started: Instant,
    phases: Vec<(Phase, Instant)>,
}

impl Timeline {
    /// A run that began `now`, connecting.
    pub fn new(now: Instant) -> Self {
        Self {
            started: now,
            phases: vec![(Phase::Connecting, now)],
        }
    }

    /// Enters `phase` at `now`; returns the phase left and how long it lasted, or `None` when
    /// nothing changed.
    pub fn enter(&mut self, phase: Phase, now: Instant) -> Option<(Phase, Duration)> {
        let (current, since) = self.last();
        if phase <= current {
            return None;
        }
        self.phases.push((phase, now));
        Some((current, now.saturating_duration_since(since)))
    }

    /// The current phase.
    pub fn current(&self) -> Phase {
        self.last().0
    }

    /// How long the current phase has lasted at `now`.
    pub fn in_phase(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last().1)
    }

    /// How long the run has lasted at `now`.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Each phase the run went through and how long it lasted, the current one until `end`.
    pub fn durations(&self, end: Instant) -> Vec<(Phase, Duration)> {
        let ends = self.phases.iter().skip(1).map(|(_, t)| *t).chain([end]);
        self.phases
            .iter()
            .zip(ends)
            .map(|((phase, from), to)| (*phase, to.saturating_duration_since(*from)))
            .collect()
    }

    fn last(&self) -> (Phase, Instant) {
        // Never empty: it starts with Connecting.
        self.phases
            .last()
            .copied()
            .unwrap_or((Phase::Connecting, self.started))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Each phase lasts from its start to the next one's; the last one to the end given.
    #[test]
    fn durations_run_from_one_phase_to_the_next() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        assert_eq!(
            t.enter(Phase::Checkpoint, t0 + ms(100)),
            Some((Phase::Connecting, ms(100)))
        );
        assert_eq!(
            t.enter(Phase::Copying, t0 + ms(2100)),
            Some((Phase::Checkpoint, ms(2000)))
        );
        t.enter(Phase::Sync, t0 + ms(5100));
        assert_eq!(t.current(), Phase::Sync);
        assert_eq!(t.in_phase(t0 + ms(5600)), ms(500));
        assert_eq!(t.elapsed(t0 + ms(5600)), ms(5600));
        assert_eq!(
            t.durations(t0 + ms(6100)),
            [
                (Phase::Connecting, ms(100)),
                (Phase::Checkpoint, ms(2000)),
                (Phase::Copying, ms(3000)),
                (Phase::Sync, ms(1000)),
            ]
        );
    }

    /// A phase entered twice, or one earlier than the current, is no change: the WAL spotted
    /// in a `-X fetch` archive does not go back to copying.
    #[test]
    fn phases_only_move_forward() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        assert_eq!(t.enter(Phase::Connecting, t0 + ms(5)), None);
        t.enter(Phase::Wal, t0 + ms(10));
        assert_eq!(t.enter(Phase::Copying, t0 + ms(20)), None);
        assert_eq!(t.enter(Phase::Wal, t0 + ms(30)), None);
        assert_eq!(t.current(), Phase::Wal);
        assert_eq!(t.durations(t0 + ms(40)).len(), 2);
    }

    #[test]
    fn names_in_order() {
        let names: Vec<_> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            [
                "connecting",
                "checkpoint",
                "copying",
                "wal",
                "standby",
                "sync"
            ]
        );
    }
}
