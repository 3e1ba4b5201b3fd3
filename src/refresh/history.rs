//! Whether a data directory's reference point lies on the primary's history: a timeline history
//! file (as `TIMELINE_HISTORY` returns it) parsed into its switch points, and the check that the
//! directory never saw WAL of a timeline after the primary's history left that timeline (a
//! promoted replica, an old primary that kept writing: pg_rewind's job, not a refresh's).

use pgclone_proto::{Lsn, TimelineId};

use crate::refresh::reference::ReferencePoint;

/// One line of a history file: `timeline` was left for the next one at `switch_point`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The parent timeline.
    pub timeline: TimelineId,
    /// Where the next timeline branched off it.
    pub switch_point: Lsn,
}

/// Why the reference point is not on the primary's history, or the history is unreadable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// A line that is not `<timeline>\t<LSN>\t<reason>`.
    #[error("invalid line {line} in the history file of timeline {timeline}")]
    BadLine {
        /// The primary's timeline.
        timeline: TimelineId,
        /// The 1-based line number.
        line: usize,
    },
    /// The directory's timeline is not one the primary's timeline descends from.
    #[error(
        "the data directory is on timeline {ours}, which is not in the history of the \
         primary's timeline {primary}: it is not a copy of this primary (pg_rewind or a full \
         clone)"
    )]
    NotInHistory {
        /// The directory's timeline.
        ours: TimelineId,
        /// The primary's timeline.
        primary: TimelineId,
    },
    /// The directory went past the point where the primary's history left its timeline.
    #[error(
        "the data directory has WAL of timeline {ours} up to {end}, but the primary left that \
         timeline at {switch_point}: it diverged from the primary (pg_rewind or a full clone)"
    )]
    Diverged {
        /// The directory's timeline.
        ours: TimelineId,
        /// The directory's end.
        end: Lsn,
        /// Where the primary's history left it.
        switch_point: Lsn,
    },
}

/// Parses the history file of `timeline` (blank lines and `#` comments skipped).
pub fn parse_history(
    timeline: TimelineId,
    content: &[u8],
) -> Result<Vec<HistoryEntry>, HistoryError> {
    let text = String::from_utf8_lossy(content);
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || HistoryError::BadLine {
            timeline,
            line: i + 1,
        };
        let mut fields = line.split_whitespace();
        let tli = fields
            .next()
            .and_then(|f| f.parse::<u32>().ok())
            .ok_or_else(bad)?;
        let lsn = fields
            .next()
            .and_then(|f| f.parse::<Lsn>().ok())
            .ok_or_else(bad)?;
        entries.push(HistoryEntry {
            timeline: TimelineId(tli),
            switch_point: lsn,
        });
    }
    Ok(entries)
}

impl ReferencePoint {
    /// Checks that this point lies on the history of the primary's `primary` timeline, whose
    /// history file has `entries` (empty for timeline 1): either the same timeline, or an
    /// ancestor the primary left no earlier than [`ReferencePoint::end`].
    pub fn check_history(
        &self,
        primary: TimelineId,
        entries: &[HistoryEntry],
    ) -> Result<(), HistoryError> {
        if self.timeline == primary {
            return Ok(());
        }
        let entry = entries.iter().find(|e| e.timeline == self.timeline).ok_or(
            HistoryError::NotInHistory {
                ours: self.timeline,
                primary,
            },
        )?;
        if self.end > entry.switch_point {
            return Err(HistoryError::Diverged {
                ours: self.timeline,
                end: self.end,
                switch_point: entry.switch_point,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn point(timeline: u32, end: u64) -> ReferencePoint {
        ReferencePoint {
            system_identifier: 1,
            timeline: TimelineId(timeline),
            start: Lsn(0x100),
            end: Lsn(end),
        }
    }

    #[test]
    fn history_decides_divergence() {
        let history = b"1\t0/5000000\tno recovery target specified\n\n\
                        2\t0/7000000\tno recovery target specified\n";
        let entries = parse_history(TimelineId(3), history).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].switch_point, Lsn(0x700_0000));
        let tli3 = TimelineId(3);
        point(3, 0x900_0000).check_history(tli3, &entries).unwrap();
        point(1, 0x500_0000).check_history(tli3, &entries).unwrap();
        point(2, 0x600_0000).check_history(tli3, &entries).unwrap();
        let err = point(1, 0x500_0001)
            .check_history(tli3, &entries)
            .unwrap_err();
        assert!(matches!(err, HistoryError::Diverged { .. }), "{err}");
        let err = point(4, 0x100).check_history(tli3, &entries).unwrap_err();
        assert!(matches!(err, HistoryError::NotInHistory { .. }), "{err}");
        assert!(parse_history(tli3, b"1\tnot-an-lsn\tx\n").is_err());
    }
}
