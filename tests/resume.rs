//! Resuming an interrupted clone with `--refresh`, against real 17 and 18 primaries
//! (`summarize_wal = on`, data checksums): a clone with `--keep-partial` cut by the proxy at
//! about 30 %, 60 % and 90 % of a full clone's bytes, and one killed with SIGKILL while
//! throttled, each resumed with `pgclone --refresh -R -v` into the same directory after the
//! primary wrote more (and a clone cut after `pg_control` arrived, in the WAL that `-X fetch`
//! appends, which is resumed from its journal too): the result starts as a streaming replica, sees a row written after it
//! started, holds the primary's rows (md5 of the ordered rows), and the resume received fewer
//! bytes than a full clone holds; the resume of the 60 % cut is itself killed once first. The primary has a table in a tablespace (relocated with
//! `-T`; a resume without it is refused). One primary serves all the cut points of a major.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgclone::sink::journal::JOURNAL_FILE;
use support::proxy::{Fault, Proxy};
use support::{create_table_t, pgclone_cmd, Cluster, ClusterOptions, Pgclone, TestDir};

const WAIT: Duration = Duration::from_secs(60);

/// The primary and where its tablespace goes in a clone.
struct Primary {
    p: Cluster,
    /// `-T` for its tablespace `ts`.
    mapping: String,
    /// The tablespace's directory in a clone.
    ts_copy: PathBuf,
}

impl Primary {
    /// pgclone from port `port` (the primary's or a proxy's) into `dest` with a fast
    /// checkpoint and the tablespace mapping, plus `extra`.
    fn pgclone(&self, port: u16, dest: &Path, extra: &[&str]) -> Pgclone {
        let mut cmd = pgclone_cmd();
        cmd.server(port, "postgres")
            .dest(dest)
            .args(["-c", "fast", "-T", &self.mapping])
            .args(extra);
        cmd
    }

    /// Removes a clone and its tablespace directory.
    fn remove(&self, dest: &Path) {
        fs::remove_dir_all(dest).expect("rm copy");
        fs::remove_dir_all(&self.ts_copy).expect("rm tablespace copy");
    }
}

/// A primary that keeps WAL summaries, with data checksums, about 30 MB of rows and a table
/// `t` in a tablespace.
fn primary(major: u32, work: &TestDir) -> Primary {
    let mut opts = ClusterOptions::new(major);
    opts.checksums = true;
    opts.conf = vec!["summarize_wal = on".into()];
    let p = Cluster::start(&opts);
    let t = create_table_t(&p, work, true, "");
    // Several tables of a few MB each, so that each cut finds some complete and some not.
    for t in TABLES {
        p.psql(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v text); \
             INSERT INTO {t} SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 25000) g"
        ));
    }
    p.psql("CREATE TABLE b (x int); INSERT INTO b SELECT generate_series(1, 1000)");
    // Hint bits set now, not by the replica's first scan.
    p.psql("VACUUM (FREEZE, ANALYZE)");
    p.psql("CHECKPOINT");
    Primary {
        p,
        mapping: t.mapping.expect("a tablespace"),
        ts_copy: t.ts_copy,
    }
}

/// The tables of rows besides `b`.
const TABLES: [&str; 6] = ["a0", "a1", "a2", "a3", "a4", "a5"];

/// What the replica must hold as the primary does (`t` is in the tablespace).
const COMPARED: [&str; 8] = ["a0", "a1", "a2", "a3", "a4", "a5", "b", "t"];

/// count and md5 of the ordered rows of each table.
fn contents(c: &Cluster) -> Vec<String> {
    COMPARED
        .iter()
        .map(|t| {
            c.psql(&format!(
                "SELECT count(*) || ' ' || md5(string_agg(x::text, ',' ORDER BY x::text)) FROM {t} x"
            ))
        })
        .collect()
}

/// N, W and I of `refresh complete: N bytes received (W files whole, I incremental)`.
fn refresh_figures(stderr: &str) -> [u64; 3] {
    let line = stderr
        .lines()
        .find_map(|l| l.split_once("refresh complete: ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no 'refresh complete' line in:\n{stderr}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    numbers
        .try_into()
        .unwrap_or_else(|_| panic!("bad line: {line}"))
}

/// Writes on the primary between the interruption and the resume.
fn write_more(p: &Cluster, round: u32) {
    p.psql(&format!(
        "UPDATE t SET v = 'round {round}' WHERE id % 7 = {round}"
    ));
    p.psql(&format!(
        "UPDATE a{round} SET v = 'round {round} ' || id WHERE id % 101 = {round}; \
         DELETE FROM a{round} WHERE id % 211 = {round}; \
         INSERT INTO b SELECT g FROM generate_series({0}, {0} + 99) g",
        10_000 * (round + 1)
    ));
}

/// A clone interrupted as `what` says, left with its journal: resume it with `--refresh -R -v`
/// and check the replica it makes; returns the bytes the resume received.
fn resume_and_check(primary: &Primary, dest: &Path, what: &str) -> u64 {
    let p = &primary.p;
    assert!(
        dest.join(JOURNAL_FILE).exists(),
        "{what}: no journal left in {}",
        dest.display()
    );
    let run = primary
        .pgclone(p.port, dest, &["--refresh", "-R", "-v"])
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
    let [received, whole, incremental] = refresh_figures(&run.stderr);
    eprintln!("{what}: {received} bytes received, {whole} files whole, {incremental} incremental");
    assert!(
        incremental > 0,
        "{what}: the journal's files should come incremental"
    );
    received
}

/// A throttled resume of `dest` killed with SIGKILL once it applies: the journal and the
/// marker stay, `pg_control` is gone; the next resume goes by the journal again.
fn killed_resume(primary: &Primary, dest: &Path) {
    let mut child = primary
        .pgclone(primary.p.port, dest, &["--refresh", "-R", "-r", "64k"])
        .spawn();
    let applying =
        || dest.join("pgclone_refresh").exists() && !dest.join("global/pg_control").exists();
    support::sigkill_when(
        &mut child,
        "the resume applies",
        applying,
        Duration::from_millis(500),
    );
    assert!(dest.join(JOURNAL_FILE).exists(), "journal gone");
    assert!(dest.join("pgclone_refresh").exists(), "marker gone");
}

/// A resume without the clone's `-T` is refused before anything changes.
fn refused_without_mapping(p: &Cluster, dest: &Path) {
    let journal = fs::read(dest.join(JOURNAL_FILE)).expect("journal");
    pgclone_cmd()
        .server(p.port, "postgres")
        .dest(dest)
        .args(["--refresh", "-R"])
        .run()
        .assert_error("give the clone's -T");
    assert_eq!(fs::read(dest.join(JOURNAL_FILE)).expect("journal"), journal);
}

/// A throttled `--keep-partial` clone into `dest`, killed with SIGKILL part-way.
fn killed_clone(primary: &Primary, dest: &Path) {
    let mut child = primary
        .pgclone(primary.p.port, dest, &["-r", "4M", "--keep-partial"])
        .spawn();
    let journal = || dest.join(JOURNAL_FILE).exists();
    support::sigkill_when(&mut child, "a journal", journal, Duration::from_secs(3));
    assert!(
        !dest.join("global/pg_control").exists(),
        "the kill should land before the end"
    );
}

fn interrupted_clones_are_resumed(major: u32) {
    let work = TestDir::new(&format!("resume{major}"));
    let primary = primary(major, &work);
    let p = &primary.p;
    let full_dir = work.join("full");
    primary.pgclone(p.port, &full_dir, &[]).run().assert_ok();
    let full = support::data_size(&full_dir) + support::data_size(&primary.ts_copy);
    primary.remove(&full_dir);
    eprintln!("PostgreSQL {major}: a full clone holds {full} bytes");

    for (round, percent) in [30u64, 60, 90].into_iter().enumerate() {
        let dest = work.join(&format!("cut{percent}"));
        // Connection 0 is the main one (BASE_BACKUP); the WAL stream's is not cut.
        let proxy = Proxy::start(p.port, vec![Fault::CutAt(full * percent / 100)]);
        primary
            .pgclone(proxy.port, &dest, &["--keep-partial"])
            .run()
            .assert_error("");
        drop(proxy);
        write_more(p, round as u32);
        let what = format!("cut at {percent} %");
        match round {
            0 => refused_without_mapping(p, &dest),
            1 => killed_resume(&primary, &dest),
            _ => {}
        }
        let received = resume_and_check(&primary, &dest, &what);
        // Most of what arrived before the cut is not sent again.
        let arrived = full * percent / 100;
        assert!(
            received < full - arrived / 4,
            "{what}: the resume received {received} bytes, a full clone holds {full}"
        );
        primary.remove(&dest);
    }

    // With -X fetch the WAL comes after pg_control in the base archive: a cut there leaves
    // pg_control beside the journal, and the journal is still what the resume goes by.
    let dest = work.join("after-control");
    let proxy = Proxy::start(p.port, vec![Fault::CutAt(full + (4 << 20))]);
    primary
        .pgclone(proxy.port, &dest, &["-X", "fetch", "--keep-partial"])
        .run()
        .assert_error("");
    drop(proxy);
    assert!(
        dest.join("global/pg_control").exists(),
        "cut before pg_control"
    );
    let received = resume_and_check(&primary, &dest, "cut after pg_control");
    assert!(
        received * 4 < full,
        "cut after pg_control: {received} bytes received"
    );
    primary.remove(&dest);

    let dest = work.join("killed");
    killed_clone(&primary, &dest);
    write_more(p, 3);
    let received = resume_and_check(&primary, &dest, "SIGKILL");
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
