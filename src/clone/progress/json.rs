//! `--progress=json`: one JSON object a line (on stderr, `--progress-file=PATH` or
//! `--progress-fd=N`). Schema version 1; it only ever grows by new keys, and every key below
//! is in every event of its kind (`null` when it does not apply).
//!
//! Every event has:
//! - `v`: `1`, the schema version;
//! - `event`: `"phase"`, `"progress"` or `"end"`;
//! - `at`: when, in milliseconds since the Unix epoch;
//! - `elapsed_ms`: milliseconds since the run began.
//!
//! `phase`, one at the start and one at each change of phase:
//! - `phase`: the phase entered, in this order, those that do not apply skipped:
//!   `"connecting"` (connections, server checks, slot creation), `"checkpoint"` (BASE_BACKUP
//!   sent, the server's checkpoint runs), `"copying"` (the archives arrive), `"wal"` (the
//!   end-of-backup WAL: `-X stream` until the WAL connection has it, `-X fetch` while it arrives
//!   at the end of the base archive, `-X none` while the server waits for it to be archived),
//!   `"standby"` (`-R`'s settings written; plain format), `"sync"` (fsync; with `--refresh` its
//!   last steps);
//! - `previous`, `previous_ms`: the phase left and how long it lasted (`null` at the start);
//! - `hint`: on `"checkpoint"` with a spread checkpoint (the default), a sentence saying that
//!   `-c fast` starts at once; else `null`.
//!
//! `progress`, at most once a second in every phase:
//! - `phase`, `phase_elapsed_ms`: the current phase and how long it has lasted;
//! - `bytes`: archive bytes received (with `-X fetch` the WAL in the base archive too);
//! - `total_bytes`: the server's size estimate, raised to `bytes` once that is more; `null`
//!   without an estimate (`--no-estimate-size`) or before the server sent it;
//! - `rate_bytes_per_s`: bytes a second over the copy (frozen once it ended); `null` at first;
//! - `eta_s`: seconds left in the copy at that rate, only while copying with an estimate;
//! - `tablespace`: the tablespace being copied, by its location on the server (`"base"` for
//!   the main data directory); `null` outside the copy;
//! - `tablespaces_done`, `tablespaces`: archives complete, and in all (0 before the list);
//! - `wal_flushed_lsn`: `-X stream`: the WAL position the WAL connection has flushed
//!   (`"0/3000148"`); `null` otherwise or before the first flush.
//!
//! `end`, last:
//! - `outcome`: `"ok"` or `"error"`; `error`: the error's text, or `null`;
//! - `phases`: each phase gone through and its milliseconds, in order
//!   (`{"connecting":12,"checkpoint":2010,...}`);
//! - `bytes`: archive bytes received;
//! - `manifest_check`: the check of every file written against the backup manifest (plain and
//!   tar format, 13+ servers): `{"files":N,"mismatches":0}` when all N matched,
//!   `{"files":null,"mismatches":M}` when M differed; `null` when no check ran (no manifest,
//!   a server-compressed archive, a backup target, or the run stopped before it).
//!
//! Lines that do not start with `{` on the same stream are pgclone's other messages.

use std::time::Duration;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::clone::progress::figures::Snapshot;
use crate::clone::progress::phase::Phase;

/// The schema version every event carries.
pub const VERSION: u32 = 1;

/// What every event starts with.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    /// Since the run began.
    pub elapsed: Duration,
}

#[derive(Serialize)]
struct Head {
    v: u32,
    event: &'static str,
    at: u64,
    elapsed_ms: u64,
}

impl Head {
    fn new(event: &'static str, stamp: Stamp) -> Self {
        Self {
            v: VERSION,
            event,
            at: stamp.at,
            elapsed_ms: millis(stamp.elapsed),
        }
    }
}

#[derive(Serialize)]
struct PhaseEvent<'a> {
    #[serde(flatten)]
    head: Head,
    phase: &'static str,
    previous: Option<&'static str>,
    previous_ms: Option<u64>,
    hint: Option<&'a str>,
}

#[derive(Serialize)]
struct ProgressEvent<'a> {
    #[serde(flatten)]
    head: Head,
    phase: &'static str,
    phase_elapsed_ms: u64,
    bytes: u64,
    total_bytes: Option<u64>,
    rate_bytes_per_s: Option<u64>,
    eta_s: Option<u64>,
    tablespace: Option<&'a str>,
    tablespaces_done: usize,
    tablespaces: usize,
    wal_flushed_lsn: Option<String>,
}

#[derive(Serialize)]
struct EndEvent<'a> {
    #[serde(flatten)]
    head: Head,
    outcome: &'static str,
    error: Option<&'a str>,
    phases: Durations<'a>,
    bytes: u64,
    manifest_check: Option<ManifestCheck>,
}

/// The verdict of the check against the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ManifestCheck {
    /// Files that matched, when all did.
    pub files: Option<u64>,
    /// Files that differed.
    pub mismatches: u64,
}

/// The phases and their durations, as an object in the phases' order.
struct Durations<'a>(&'a [(Phase, Duration)]);

impl Serialize for Durations<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (phase, d) in self.0 {
            map.serialize_entry(phase.name(), &millis(*d))?;
        }
        map.end()
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct End<'a> {
    /// The error's text, `None` for success.
    pub error: Option<&'a str>,
    /// The phases gone through and how long each lasted.
    pub phases: &'a [(Phase, Duration)],
    /// Archive bytes received.
    pub bytes: u64,
    /// The check against the manifest, when it ran.
    pub manifest_check: Option<ManifestCheck>,
}

/// A `phase` event: `phase` entered, after `previous` (and how long it lasted).
pub fn phase(
    stamp: Stamp,
    phase: Phase,
    previous: Option<(Phase, Duration)>,
    hint: Option<&str>,
) -> String {
    encode(&PhaseEvent {
        head: Head::new("phase", stamp),
        phase: phase.name(),
        previous: previous.map(|(p, _)| p.name()),
        previous_ms: previous.map(|(_, d)| millis(d)),
        hint,
    })
}

/// A `progress` event with these figures, `in_phase` into the phase.
pub fn progress(stamp: Stamp, s: &Snapshot, in_phase: Duration) -> String {
    encode(&ProgressEvent {
        head: Head::new("progress", stamp),
        phase: s.phase.name(),
        phase_elapsed_ms: millis(in_phase),
        bytes: s.bytes,
        total_bytes: s.total_bytes,
        rate_bytes_per_s: s.rate.map(|r| r.round() as u64),
        eta_s: s.eta.map(|d| d.as_secs_f64().round() as u64),
        tablespace: s.tablespace.as_deref(),
        tablespaces_done: s.tablespaces_done,
        tablespaces: s.tablespaces,
        wal_flushed_lsn: s.wal_flushed.map(|l| l.to_string()),
    })
}

/// The `end` event.
pub fn end(stamp: Stamp, end: &End<'_>) -> String {
    encode(&EndEvent {
        head: Head::new("end", stamp),
        outcome: if end.error.is_some() { "error" } else { "ok" },
        error: end.error,
        phases: Durations(end.phases),
        bytes: end.bytes,
        manifest_check: end.manifest_check,
    })
}

fn encode<T: Serialize>(event: &T) -> String {
    // Plain structs of numbers and strings always serialize.
    serde_json::to_string(event).unwrap_or_else(|e| format!("{{\"v\":{VERSION},\"bug\":\"{e}\"}}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgclone_proto::Lsn;

    fn stamp() -> Stamp {
        Stamp {
            at: 1_764_600_000_123,
            elapsed: Duration::from_millis(2500),
        }
    }

    /// The exact bytes of each event: schema version 1 is stable, keys in this order.
    #[test]
    fn events_encode_exactly() {
        assert_eq!(
            phase(stamp(), Phase::Connecting, None, None),
            r#"{"v":1,"event":"phase","at":1764600000123,"elapsed_ms":2500,"phase":"connecting","previous":null,"previous_ms":null,"hint":null}"#
        );
        assert_eq!(
            phase(
                stamp(),
                Phase::Checkpoint,
                Some((Phase::Connecting, Duration::from_millis(40))),
                Some("say \"fast\""),
            ),
            r#"{"v":1,"event":"phase","at":1764600000123,"elapsed_ms":2500,"phase":"checkpoint","previous":"connecting","previous_ms":40,"hint":"say \"fast\""}"#
        );
        let s = Snapshot {
            phase: Phase::Copying,
            bytes: 1000,
            total_bytes: Some(4000),
            rate: Some(499.6),
            eta: Some(Duration::from_millis(6400)),
            tablespace: Some("base".into()),
            tablespaces_done: 1,
            tablespaces: 2,
            wal_flushed: Some(Lsn(0x1_0300_0148)),
        };
        assert_eq!(
            progress(stamp(), &s, Duration::from_millis(900)),
            r#"{"v":1,"event":"progress","at":1764600000123,"elapsed_ms":2500,"phase":"copying","phase_elapsed_ms":900,"bytes":1000,"total_bytes":4000,"rate_bytes_per_s":500,"eta_s":6,"tablespace":"base","tablespaces_done":1,"tablespaces":2,"wal_flushed_lsn":"1/3000148"}"#
        );
        let phases = [
            (Phase::Connecting, Duration::from_millis(12)),
            (Phase::Checkpoint, Duration::from_millis(2010)),
            (Phase::Copying, Duration::from_millis(300)),
        ];
        assert_eq!(
            end(
                stamp(),
                &End {
                    error: None,
                    phases: &phases,
                    bytes: 1000,
                    manifest_check: Some(ManifestCheck {
                        files: Some(960),
                        mismatches: 0
                    }),
                }
            ),
            r#"{"v":1,"event":"end","at":1764600000123,"elapsed_ms":2500,"outcome":"ok","error":null,"phases":{"connecting":12,"checkpoint":2010,"copying":300},"bytes":1000,"manifest_check":{"files":960,"mismatches":0}}"#
        );
    }

    /// A failure: the error's text (escaped), no verdict.
    #[test]
    fn an_error_ends_with_its_text() {
        let line = end(
            stamp(),
            &End {
                error: Some("could not connect: \"x\"\nrefused"),
                phases: &[(Phase::Connecting, Duration::from_millis(3))],
                bytes: 0,
                manifest_check: None,
            },
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["outcome"], "error");
        assert_eq!(v["error"], "could not connect: \"x\"\nrefused");
        assert_eq!(v["manifest_check"], serde_json::Value::Null);
        assert!(!line.contains('\n'), "one line: {line}");
    }
}
