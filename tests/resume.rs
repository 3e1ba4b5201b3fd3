//! Resuming an interrupted clone with `--refresh`, against real 17 and 18 primaries
//! (`summarize_wal = on`, data checksums): a clone with `--keep-partial` cut by the proxy at
//! about 30 %, 60 % and 90 % of a full clone's bytes, and one killed with SIGKILL while
//! throttled, each resumed with `pgclone --refresh -R -v` into the same directory after the
//! primary wrote more: the result starts as a streaming replica, sees a row written after it
//! started, holds the primary's rows (md5 of the ordered rows), and the resume received fewer
//! bytes than a full clone holds. One primary serves all the cut points of a major.

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use pgclone::sink::journal::JOURNAL_FILE;
use support::proxy::{Fault, Proxy};
use support::{pgclone_cmd, Cluster, ClusterOptions, TestDir};

const WAIT: Duration = Duration::from_secs(60);

/// A primary that keeps WAL summaries, with data checksums and about 40 MB of rows.
fn primary(major: u32) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    opts.checksums = true;
    opts.conf = vec!["summarize_wal = on".into()];
    let p = Cluster::start(&opts);
    p.psql(
        "CREATE TABLE a (id int PRIMARY KEY, v text); \
         INSERT INTO a SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 150000) g; \
         CREATE TABLE b (x int); INSERT INTO b SELECT generate_series(1, 1000)",
    );
    // Hint bits set now, not by the replica's first scan.
    p.psql("VACUUM (FREEZE, ANALYZE)");
    p.psql("CHECKPOINT");
    p
}

/// count and md5 of the ordered rows of `a` and `b`.
fn contents(c: &Cluster) -> Vec<String> {
    ["a", "b"]
        .iter()
        .map(|t| {
            c.psql(&format!(
                "SELECT count(*) || ' ' || md5(string_agg(x::text, ',' ORDER BY x::text)) FROM {t} x"
            ))
        })
        .collect()
}

/// Bytes of the regular files under `dir`, `pg_wal` left out.
fn data_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)
            .expect("read_dir")
            .map(|e| e.expect("entry"))
        {
            let kind = entry.file_type().expect("type");
            if kind.is_dir() && entry.file_name() != "pg_wal" {
                stack.push(entry.path());
            } else if kind.is_file() {
                total += entry.metadata().expect("stat").len();
            }
        }
    }
    total
}

/// The N of `refresh complete: N bytes received (...)`.
fn received_bytes(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.split_once("refresh complete: ").map(|(_, r)| r))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'refresh complete: N bytes' line in:\n{stderr}"))
}

/// Writes on the primary between the interruption and the resume.
fn write_more(p: &Cluster, round: u32) {
    p.psql(&format!(
        "UPDATE a SET v = 'round {round} ' || id WHERE id % 101 = {round}; \
         DELETE FROM a WHERE id % 211 = {round}; \
         INSERT INTO b SELECT g FROM generate_series({0}, {0} + 99) g",
        10_000 * (round + 1)
    ));
}

/// A clone interrupted as `what` says, left with its journal: resume it with `--refresh -R -v`
/// and check the replica it makes; returns the bytes the resume received.
fn resume_and_check(p: &Cluster, dest: &Path, what: &str) -> u64 {
    assert!(
        dest.join(JOURNAL_FILE).exists(),
        "{what}: no journal left in {}",
        dest.display()
    );
    let run = pgclone_cmd()
        .server(p.port, "postgres")
        .dest(dest)
        .args(["-c", "fast", "--refresh", "-R", "-v"])
        .run();
    run.assert_ok();
    assert!(
        run.stderr.contains("interrupted clone"),
        "{what}: {}",
        run.stderr
    );
    assert!(!dest.join(JOURNAL_FILE).exists(), "{what}: journal left");
    assert!(
        !dest.join("pgclone_refresh").exists(),
        "{what}: marker left"
    );
    if let Err(e) = support::verify_backup(p.major, dest) {
        panic!("{what}: pg_verifybackup: {e}");
    }
    let mut replica = Cluster::start_existing(p.major, dest, &[]);
    replica.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    replica.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    p.psql("INSERT INTO b VALUES (-1)");
    replica.wait_for("SELECT count(*) FROM b WHERE x = -1", "1", WAIT);
    replica.wait_for_replay(&p.current_lsn());
    assert_eq!(contents(&replica), contents(p), "{what}");
    replica.stop();
    p.psql("DELETE FROM b WHERE x = -1");
    received_bytes(&run.stderr)
}

/// The pid of the one child process of `pid` (pgclone under runuser), or `pid` itself.
fn innermost(pid: u32) -> u32 {
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    match children
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
    {
        Some(child) => innermost(child),
        None => pid,
    }
}

/// A throttled `--keep-partial` clone into `dest`, killed with SIGKILL part-way.
fn killed_clone(p: &Cluster, dest: &Path) {
    let mut child = pgclone_cmd()
        .server(p.port, "postgres")
        .dest(dest)
        .args(["-c", "fast", "-r", "4M", "--keep-partial"])
        .spawn();
    let deadline = Instant::now() + WAIT;
    while !dest.join(JOURNAL_FILE).exists() {
        assert!(
            Instant::now() < deadline,
            "no journal in {}",
            dest.display()
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "pgclone ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(3000));
    let pid = innermost(child.id());
    // SAFETY: kill has no memory-safety preconditions; the pid is our live (grand)child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();
    assert!(
        !dest.join("global/pg_control").exists(),
        "the kill should land before the end"
    );
}

fn interrupted_clones_are_resumed(major: u32) {
    let work = TestDir::new(&format!("resume{major}"));
    let p = primary(major);
    let full_dir = work.join("full");
    pgclone_cmd()
        .server(p.port, "postgres")
        .dest(&full_dir)
        .args(["-c", "fast"])
        .run()
        .assert_ok();
    let full = data_size(&full_dir);
    fs::remove_dir_all(&full_dir).expect("rm full");

    for (round, percent) in [30u64, 60, 90].into_iter().enumerate() {
        let dest = work.join(&format!("cut{percent}"));
        // Connection 0 is the main one (BASE_BACKUP); the WAL stream's is not cut.
        let proxy = Proxy::start(p.port, vec![Fault::CutAt(full * percent / 100)]);
        pgclone_cmd()
            .server(proxy.port, "postgres")
            .dest(&dest)
            .args(["-c", "fast", "--keep-partial"])
            .run()
            .assert_error("");
        drop(proxy);
        write_more(&p, round as u32);
        let what = format!("cut at {percent} %");
        let received = resume_and_check(&p, &dest, &what);
        assert!(
            received < full,
            "{what}: the resume received {received} bytes, a full clone holds {full}"
        );
        fs::remove_dir_all(&dest).expect("rm copy");
    }

    let dest = work.join("killed");
    killed_clone(&p, &dest);
    write_more(&p, 3);
    let received = resume_and_check(&p, &dest, "SIGKILL");
    assert!(
        received < full,
        "SIGKILL: the resume received {received} bytes, a full clone holds {full}"
    );
}

#[test]
fn pg17_interrupted_clones_are_resumed() {
    interrupted_clones_are_resumed(17);
}

#[test]
fn pg18_interrupted_clones_are_resumed() {
    interrupted_clones_are_resumed(18);
}
