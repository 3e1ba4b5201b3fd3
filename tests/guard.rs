//! The WAL-retention guard against real primaries that recycle WAL within seconds
//! (`wal_keep_size = 16MB` or `wal_keep_segments = 1`, `max_wal_size = min_wal_size = 32MB`,
//! `checkpoint_timeout = 30s`), kept busy by [`Load`] and by [`Churn`], which switches to a new
//! segment and checkpoints twice a second:
//! - a throttled `-X fetch` clone stops early with the guard's message, well before the copy
//!   could have ended, while pg_basebackup 18 with the same arguments runs to the end and fails
//!   there (both durations are printed);
//! - a `-X stream` clone with its temporary slot under the same churn succeeds (the guard is
//!   off, the slot keeps the WAL) and is complete (pg_verifybackup, and it starts);
//! - a `-X none` clone under the same churn warns once that the start segment is gone (the WAL
//!   may come from an archive or a receiver) and succeeds;
//! - a `-X fetch` clone during which the server writes more than half the margin but less than
//!   `wal_keep_size` warns once and succeeds.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{
    as_pg_user, data_size, pgclone_cmd, psql_cmd, tools_bin, verify_backup, Cluster,
    ClusterOptions, Load, Run, TestDir,
};

/// The throttle of the clones that stop early, in kB/s (`--max-rate 512k`).
const RATE_KB: u64 = 512;

/// The throttle of the clones that succeed: slow enough for the server to move on meanwhile.
const SUCCEED_RATE: &str = "1M";

/// The guard's message, and its advice.
const STOPPED: &str = "that this backup needs";
const ADVICE: &str = "use -X stream or a replication slot";

/// A primary of `major` that keeps almost no WAL: `keep` of `wal_keep_size` (13+) or one
/// segment of `wal_keep_segments` (before 13), and checkpoints often.
fn recycling_primary(major: u32, keep: &str) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    let keep_line = if major >= 13 {
        format!("wal_keep_size = '{keep}'")
    } else {
        "wal_keep_segments = 1".into()
    };
    opts.conf = vec![
        keep_line,
        "max_wal_size = '32MB'".into(),
        "min_wal_size = '32MB'".into(),
        "checkpoint_timeout = '30s'".into(),
    ];
    Cluster::start(&opts)
}

/// Switches the primary to a new WAL segment and checkpoints, every half second, until
/// stopped (with [`Load`] writing, each switch starts a new segment and each checkpoint
/// removes what is no longer kept).
struct Churn {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u32>>,
}

impl Churn {
    fn start(c: &Cluster) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (socket, port) = (c.socket_dir.clone(), c.port);
        let handle = std::thread::spawn(move || {
            let mut rounds = 0;
            while !flag.load(Ordering::Relaxed) {
                let sql =
                    "INSERT INTO load(v) VALUES ('churn'); SELECT pg_switch_wal(); CHECKPOINT";
                if psql_cmd(&socket, port, "postgres", sql)
                    .output()
                    .is_ok_and(|o| o.status.success())
                {
                    rounds += 1;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            rounds
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops; returns the rounds done.
    fn stop(&mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("churn thread"))
            .unwrap_or(0)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throttled clone of `c` into `dest` with these extra flags, timed.
fn timed_pgclone(c: &Cluster, dest: &Path, rate: &str, extra: &[&str]) -> (Run, Duration) {
    let began = Instant::now();
    let run = pgclone_cmd()
        .server(c.port, "postgres")
        .dest(dest)
        .args(["-c", "fast", "--max-rate", rate])
        .args(extra)
        .run();
    (run, began.elapsed())
}

/// The same clone by pg_basebackup 18, timed.
fn timed_pg_basebackup(c: &Cluster, dest: &Path, extra: &[&str]) -> (Run, Duration) {
    let mut cmd = as_pg_user(tools_bin(18).join("pg_basebackup"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &c.port.to_string(),
        "-U",
        "postgres",
    ])
    .args(["-c", "fast", "--max-rate", &format!("{RATE_KB}k"), "-D"])
    .arg(dest)
    .args(extra);
    let began = Instant::now();
    let out = cmd.output().expect("run pg_basebackup");
    (Run::from(out), began.elapsed())
}

/// The shortest time a complete throttled copy of `c` can take: its files over the rate.
fn shortest_copy(c: &Cluster) -> Duration {
    Duration::from_secs_f64(data_size(&c.data) as f64 / (RATE_KB * 1024) as f64)
}

/// A `-X fetch` clone of a primary that recycles its WAL stops with the guard's message once
/// the start segment is gone, before a full copy could have ended, and leaves nothing behind;
/// with `compare`, pg_basebackup 18 in the same setup copies everything and fails only at the
/// end.
fn fetch_stops_early(major: u32, compare: bool) {
    let primary = recycling_primary(major, "16MB");
    let work = TestDir::new("guard-fetch");
    let mut load = Load::start(&primary);
    let mut churn = Churn::start(&primary);
    let floor = shortest_copy(&primary);

    let dest = work.join("pgclone");
    let (run, took) = timed_pgclone(&primary, &dest, &format!("{RATE_KB}k"), &["-X", "fetch"]);
    eprintln!(
        "{major}: pgclone -X fetch stopped after {:.1} s (a full copy takes at least {:.1} s):\n{}",
        took.as_secs_f64(),
        floor.as_secs_f64(),
        run.stderr
    );
    run.assert_error(STOPPED).assert_error(ADVICE);
    assert!(took < floor, "pgclone did not stop early:\n{}", run.stderr);
    assert!(!dest.exists(), "the destination was left behind");

    if compare {
        let dest = work.join("pg_basebackup");
        let (theirs, their_time) = timed_pg_basebackup(&primary, &dest, &["-X", "fetch"]);
        eprintln!(
            "{major}: pg_basebackup 18 -X fetch failed after {:.1} s:\n{}",
            their_time.as_secs_f64(),
            theirs.stderr
        );
        assert!(!theirs.status.success(), "pg_basebackup succeeded");
        assert!(
            their_time >= floor.mul_f64(0.9),
            "pg_basebackup failed early"
        );
        assert!(took < their_time);
    }
    churn.stop();
    load.stop();
}

/// On 16 (wal_keep_size), compared with pg_basebackup 18.
#[test]
fn fetch_stops_early_16() {
    fetch_stops_early(16, true);
}

/// On 12 (wal_keep_segments).
#[test]
fn fetch_stops_early_12() {
    fetch_stops_early(12, false);
}

/// `-X stream` with its temporary slot under the same churn: the guard is off (no warning),
/// the clone succeeds, holds every WAL segment from its start to its end (pg_verifybackup
/// parses them) and starts as a server with the rows written before it.
#[test]
fn stream_with_slot_is_unguarded_and_complete() {
    let primary = recycling_primary(16, "16MB");
    let work = TestDir::new("guard-stream");
    let mut load = Load::start(&primary);
    let mut churn = Churn::start(&primary);
    let dest = work.join("clone");
    let (run, took) = timed_pgclone(&primary, &dest, SUCCEED_RATE, &["-X", "stream"]);
    let rounds = churn.stop();
    load.stop();
    eprintln!(
        "pgclone -X stream took {:.1} s while the primary switched segments {rounds} times",
        took.as_secs_f64()
    );
    run.assert_ok();
    assert!(rounds >= 10, "the primary hardly churned: {rounds}");
    assert!(!run.stderr.contains("WARNING"), "{}", run.stderr);
    verify_backup(16, &dest).expect("pg_verifybackup");
    let clone = Cluster::start_existing(16, &dest, &[]);
    let rows: u64 = clone
        .psql("SELECT count(*) FROM load")
        .trim()
        .parse()
        .expect("count");
    assert!(rows > 0);
}

/// `-X none` under the same churn (the server does not archive): the WAL may come from
/// elsewhere, so the removed start segment is one warning and the clone runs to its end.
#[test]
fn none_warns_when_the_start_segment_goes() {
    let primary = recycling_primary(16, "16MB");
    let work = TestDir::new("guard-none");
    let mut load = Load::start(&primary);
    let mut churn = Churn::start(&primary);
    let dest = work.join("clone");
    let (run, took) = timed_pgclone(&primary, &dest, SUCCEED_RATE, &["-X", "none"]);
    churn.stop();
    load.stop();
    eprintln!(
        "pgclone -X none took {:.1} s:\n{}",
        took.as_secs_f64(),
        run.stderr
    );
    run.assert_ok();
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("with -X none it must come from"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert!(warnings[0].contains(ADVICE), "{}", warnings[0]);
}

/// A `-X fetch` clone during which the server writes more than half the margin (wal_keep_size
/// 80MB + max_wal_size 32MB) but less than wal_keep_size: one warning, and the clone succeeds
/// with its WAL. (The WAL comes in the throttled stream too: 2 MB/s keeps it short.)
#[test]
fn fetch_warns_at_half_the_margin() {
    let primary = recycling_primary(16, "80MB");
    let work = TestDir::new("guard-warn");
    primary.psql("CREATE TABLE load(id bigserial PRIMARY KEY, v text)");
    let dest = work.join("clone");
    let child = {
        let mut cmd = pgclone_cmd();
        cmd.server(primary.port, "postgres").dest(&dest).args([
            "-c",
            "fast",
            "--max-rate",
            "2M",
            "-X",
            "fetch",
        ]);
        cmd.spawn()
    };
    // Once the backup has started: four segment switches (64 MB), then quiet.
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..4 {
        primary.psql("INSERT INTO load(v) VALUES ('x'); SELECT pg_switch_wal(); CHECKPOINT");
    }
    let run = support::pgclone_wait(child);
    run.assert_ok();
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("since this backup started"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert!(warnings[0].contains(ADVICE), "{}", warnings[0]);
    verify_backup(16, &dest).expect("pg_verifybackup");
}
