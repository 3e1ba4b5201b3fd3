//! `--refresh` against real 17 and 18 primaries (`summarize_wal = on`, data checksums): a
//! standby cloned with `-R`, stopped while the primary keeps writing (updates, deletes, new and
//! dropped tables, TRUNCATE, VACUUM FULL) and recycles the WAL it would need, cannot catch up;
//! `pgclone --refresh -R -v` brings it back in place: it streams again, holds the primary's
//! rows, passes pg_verifybackup, and the refresh received far less than the full clone. Also
//! refusals (another cluster, `summarize_wal` off, a live postmaster.pid, not a data directory),
//! each leaving the directory byte for byte as it was, and a refresh killed mid-way: the
//! directory refuses to start, and `--refresh` again completes it. Also: a mapped tablespace
//! with `pg_wal` linked to a WAL directory, and a failover: a standby of the old primary is
//! refreshed from the promoted one (timeline 2), the old primary that wrote on is refused.

mod support;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use support::{pgclone_cmd, Cluster, TestDir};

const WAIT: Duration = Duration::from_secs(60);

/// A primary that keeps WAL summaries and no extra WAL, with data checksums.
fn summarizing_primary(major: u32) -> Cluster {
    Cluster::start(&support::summarizing(
        major,
        &[
            "wal_keep_size = 0",
            "min_wal_size = 32MB",
            "max_wal_size = 64MB",
        ],
    ))
}

/// pgclone against `p` into `dest` with a fast checkpoint, plus `extra` flags.
fn pgclone(p: &Cluster, dest: &Path, extra: &[&str]) -> support::Run {
    support::fast_clone(p, dest, extra)
}

/// The tables the test compares.
const TABLES: [&str; 4] = ["a", "b", "d", "e"];

/// count and md5 of each table's ordered rows.
fn contents(c: &Cluster) -> Vec<String> {
    TABLES
        .iter()
        .map(|t| {
            c.psql(&format!(
                "SELECT count(*) || ' ' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') \
                 FROM {t} x"
            ))
        })
        .collect()
}

/// Every entry under `dir` (not following links): path → (kind, size, hash of the content).
fn snapshot(dir: &Path) -> BTreeMap<String, (String, u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .expect("inside")
                .display()
                .to_string();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let value = if meta.is_dir() {
                stack.push(path);
                ("dir".to_owned(), 0, 0)
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                (
                    "link".to_owned(),
                    0,
                    hash(target.display().to_string().as_bytes()),
                )
            } else {
                let bytes = fs::read(&path).expect("read");
                ("file".to_owned(), meta.len(), hash(&bytes))
            };
            out.insert(rel, value);
        }
    }
    out
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The N of `refresh complete: N bytes received (...)` in pgclone's `-v` output.
fn received_bytes(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find_map(|l| l.split_once("refresh complete: ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no 'refresh complete' line in:\n{stderr}"));
    assert!(
        line.contains(" files whole, ") && line.ends_with(" incremental)"),
        "{line}"
    );
    line.split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad line: {line}"))
}

/// Writes on the primary of every kind a refresh must carry.
fn change_primary(p: &Cluster) {
    p.psql(
        "UPDATE a SET v = 'changed ' || id WHERE id BETWEEN 5000 AND 7000 AND id % 5 = 0; \
         DELETE FROM a WHERE id BETWEEN 1000 AND 1400; \
         INSERT INTO a SELECT g, md5(g::text) FROM generate_series(200001, 201000) g; \
         CREATE TABLE d AS SELECT g AS x, repeat('d', 40) AS y FROM generate_series(1, 2000) g; \
         DROP TABLE c; \
         TRUNCATE b; INSERT INTO b SELECT g FROM generate_series(1, 500) g; \
         DELETE FROM e WHERE x % 3 = 0",
    );
    p.psql("VACUUM FULL e");
    p.psql("CHECKPOINT");
}

/// Makes the primary recycle the WAL a stopped standby would need.
fn recycle_wal(p: &Cluster) {
    for i in 0..6 {
        p.psql(&format!(
            "INSERT INTO b VALUES ({}); SELECT pg_switch_wal()",
            100_000 + i
        ));
        p.psql("CHECKPOINT");
    }
}

/// Starts the standby in `dir` and shows it cannot catch up: its log (or the primary's) says
/// the segment it asks for was removed, within a bounded wait. Stops it again.
fn assert_cannot_catch_up(p: &Cluster, major: u32, dir: &Path) {
    let mut standby = Cluster::start_existing(major, dir, &[]);
    let target = p.current_lsn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut removed = false;
    while Instant::now() < deadline && !removed {
        removed = standby.log_tail().contains("has already been removed")
            || p.log_tail().contains("has already been removed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        removed,
        "the standby did not hit removed WAL\nstandby:\n{}\nprimary:\n{}",
        standby.log_tail(),
        p.log_tail()
    );
    let reached = standby.psql(&format!(
        "SELECT coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false)"
    ));
    assert_eq!(reached, "f", "the standby caught up after all");
    standby.stop();
}

/// A primary of `major` and, in `work/standby`, a standby cloned with `-R` that streamed, was
/// stopped, and can no longer catch up; returns them with the size of the full clone.
fn stale_standby(major: u32, work: &TestDir) -> (Cluster, std::path::PathBuf, u64) {
    let p = summarizing_primary(major);
    p.psql(
        "CREATE TABLE a (id int PRIMARY KEY, v text); \
         INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 200000) g; \
         CREATE TABLE b (x int); INSERT INTO b SELECT generate_series(1, 1000); \
         CREATE TABLE c AS SELECT generate_series(1, 1000) AS x; \
         CREATE TABLE e AS SELECT g AS x FROM generate_series(1, 3000) g",
    );
    // Hint bits set now, not by the first scan after the clone (with checksums that scan
    // would log every page).
    p.psql("VACUUM (FREEZE, ANALYZE)");
    p.psql("CHECKPOINT");
    let dir = work.join("standby");
    pgclone(&p, &dir, &["-R"]).assert_ok();
    let full = support::data_size(&dir);
    let mut standby = Cluster::start_existing(major, &dir, &[]);
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    standby.wait_for_replay(&p.current_lsn());
    standby.stop();

    change_primary(&p);
    recycle_wal(&p);
    assert_cannot_catch_up(&p, major, &dir);
    (p, dir, full)
}

/// Starts the refreshed standby in `dir`: in recovery, streaming, sees a row written now, and
/// holds the primary's rows.
fn assert_refreshed(p: &Cluster, major: u32, dir: &Path) {
    assert!(!dir.join("pgclone_refresh").exists(), "marker left behind");
    if let Err(e) = support::verify_backup(major, dir) {
        panic!("pg_verifybackup of the refreshed directory: {e}");
    }
    pgclone_cmd().arg("verify").arg(dir).run().assert_ok();
    let standby = Cluster::start_existing(major, dir, &[]);
    standby.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    p.psql("INSERT INTO b VALUES (-1)");
    standby.wait_for("SELECT count(*) FROM b WHERE x = -1", "1", WAIT);
    standby.wait_for_replay(&p.current_lsn());
    assert_eq!(contents(&standby), contents(p));
    assert_eq!(
        standby.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'c'"),
        "0"
    );
}

fn stale_standby_is_refreshed(major: u32) {
    let work = TestDir::new(&format!("refresh{major}"));
    let (p, dir, full) = stale_standby(major, &work);
    let run = pgclone(&p, &dir, &["--refresh", "-R", "-v"]);
    run.assert_ok();
    let received = received_bytes(&run.stderr);
    assert!(
        received * 4 < full,
        "the refresh received {received} bytes, the full clone holds {full}"
    );
    // The standby settings come out as a fresh `pgclone -R` clone's.
    let fresh = work.join("fresh");
    pgclone(&p, &fresh, &["-R", "-X", "none", "--no-verify-checksums"]).assert_ok();
    for name in ["postgresql.auto.conf", "standby.signal"] {
        assert_eq!(
            fs::read(dir.join(name)).expect("refreshed"),
            fs::read(fresh.join(name)).expect("fresh"),
            "{name}"
        );
    }
    for name in [
        "postmaster.pid",
        "postmaster.opts",
        "recovery.signal",
        "tablespace_map",
    ] {
        assert!(
            !dir.join(name).exists(),
            "{name} left in the refreshed directory"
        );
    }
    assert_refreshed(&p, major, &dir);
}

#[test]
fn pg17_stale_standby_is_refreshed() {
    stale_standby_is_refreshed(17);
}

#[test]
fn pg18_stale_standby_is_refreshed() {
    stale_standby_is_refreshed(18);
}

/// `--refresh` of `dir` against `p` fails with `needle` and changes nothing in `dir`.
fn refused(p: &Cluster, dir: &Path, needle: &str) {
    let before = snapshot(dir);
    pgclone(p, dir, &["--refresh", "-R"]).assert_error(needle);
    assert_eq!(snapshot(dir), before, "{} changed", dir.display());
}

#[test]
fn pg18_refusals_leave_the_directory_as_it_was() {
    let p = summarizing_primary(18);
    let other = summarizing_primary(18);
    let work = TestDir::new("refresh-refused");
    let dir = work.join("standby");
    pgclone(&p, &dir, &["-R"]).assert_ok();

    refused(&other, &dir, "is a copy of another cluster");

    let pid = dir.join("postmaster.pid");
    fs::write(&pid, format!("{}\n{}\n", std::process::id(), dir.display())).expect("write");
    refused(&p, &dir, "a server is running on");
    fs::remove_file(&pid).expect("remove");

    p.psql("ALTER SYSTEM SET summarize_wal = off");
    p.psql("SELECT pg_reload_conf()");
    p.wait_for("SHOW summarize_wal", "off", WAIT);
    refused(&p, &dir, "ALTER SYSTEM SET summarize_wal = on");
    p.psql("ALTER SYSTEM RESET summarize_wal");
    p.psql("SELECT pg_reload_conf()");

    let empty = work.mkdir("empty");
    refused(&p, &empty, "is not a data directory");
}

#[test]
fn pg18_interrupted_refresh_does_not_start_and_completes_when_run_again() {
    let work = TestDir::new("refresh-killed");
    let (p, dir, _) = stale_standby(18, &work);
    let mut child = pgclone_cmd()
        .server(p.port, "postgres")
        .dest(&dir)
        .args(["-c", "fast", "--refresh", "-R", "-r", "64k"])
        .spawn();
    let applying =
        || dir.join("pgclone_refresh").exists() && !dir.join("global/pg_control").exists();
    support::sigkill_when(
        &mut child,
        "the refresh applies",
        applying,
        Duration::from_millis(500),
    );
    assert!(dir.join("pgclone_refresh").exists(), "marker gone");

    let log = work.join("killed.log");
    let started = support::pg_ctl(&support::server_bin(18), &dir)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "20", "-o"])
        .arg(format!(
            "-p {} -k {} -c listen_addresses=''",
            support::free_port(),
            work.path().display()
        ))
        .arg("start")
        .output()
        .expect("pg_ctl");
    assert!(
        !started.status.success(),
        "an interrupted refresh started:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );

    let run = pgclone(&p, &dir, &["--refresh", "-R", "-v"]);
    run.assert_ok();
    assert!(run.stderr.contains("unfinished refresh"), "{}", run.stderr);
    assert_refreshed(&p, 18, &dir);
}

#[test]
fn pg17_refresh_with_a_mapped_tablespace_and_a_wal_directory_link() {
    let p = summarizing_primary(17);
    let work = TestDir::new("refresh-ts");
    let t = support::create_table_t(&p, &work, true, "");
    p.psql("VACUUM (FREEZE)");
    p.psql("CREATE TABLE gone (x int) TABLESPACE ts; INSERT INTO gone VALUES (1)");
    let mapping = t.mapping.expect("mapping");
    let dir = work.join("standby");
    let waldir = work.join("waldir");
    let waldir_arg = waldir.to_str().expect("UTF-8").to_owned();
    pgclone(&p, &dir, &["-R", "-T", &mapping, "--waldir", &waldir_arg]).assert_ok();
    let mut standby = Cluster::start_existing(17, &dir, &[]);
    standby.wait_for_replay(&p.current_lsn());
    standby.stop();

    p.psql(
        "UPDATE t SET v = 'changed' WHERE id BETWEEN 10 AND 20; DROP TABLE gone; \
         CREATE TABLE t3 TABLESPACE ts AS SELECT generate_series(1, 100) AS x",
    );
    let run = pgclone(&p, &dir, &["--refresh", "-R", "-v", "-T", &mapping]);
    run.assert_ok();
    received_bytes(&run.stderr);
    if let Err(e) = support::verify_backup(17, &dir) {
        panic!("pg_verifybackup of the refreshed directory: {e}");
    }
    let link = fs::read_link(
        fs::read_dir(dir.join("pg_tblspc"))
            .expect("pg_tblspc")
            .next()
            .expect("one link")
            .expect("entry")
            .path(),
    )
    .expect("a link");
    assert_eq!(link, t.ts_copy);
    assert_eq!(
        fs::read_link(dir.join("pg_wal")).expect("pg_wal link"),
        waldir
    );
    assert!(
        fs::read_dir(&waldir)
            .expect("waldir")
            .any(|e| e.expect("entry").file_name().len() == 24),
        "no streamed segment in the WAL directory"
    );
    let standby = Cluster::start_existing(17, &dir, &[]);
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    standby.wait_for_replay(&p.current_lsn());
    let sql = "SELECT count(*) || ' ' || md5(string_agg(id || v, ',' ORDER BY id)) FROM t \
               UNION ALL SELECT count(*)::text FROM t3";
    assert_eq!(standby.psql(sql), p.psql(sql));
}

#[test]
fn pg18_after_a_failover_a_standby_is_refreshed_and_the_old_primary_refused() {
    let mut p = summarizing_primary(18);
    let work = TestDir::new("refresh-failover");
    p.psql("CREATE TABLE a (id int PRIMARY KEY, v text)");
    p.psql("INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 5000) g");
    let (s1_dir, s2_dir) = (work.join("s1"), work.join("s2"));
    pgclone(&p, &s1_dir, &["-R"]).assert_ok();
    pgclone(&p, &s2_dir, &["-R"]).assert_ok();
    let s1 = Cluster::start_existing(18, &s1_dir, &[]);
    let mut s2 = Cluster::start_existing(18, &s2_dir, &[]);
    // Not at a segment boundary (where the clone's backup left it): a timeline that begins
    // exactly there is summarized from its first record on, and the server then finds the
    // summaries of the new timeline incomplete (seen on 18.4).
    p.psql("INSERT INTO a VALUES (0, 'before the failover')");
    let lsn = p.current_lsn();
    s1.wait_for_replay(&lsn);
    s2.wait_for_replay(&lsn);
    s2.stop();

    // s1 becomes the primary on timeline 2; the old primary writes on, then stops: diverged.
    assert_eq!(s1.psql("SELECT pg_promote()"), "t");
    s1.wait_for("SELECT pg_is_in_recovery()", "f", WAIT);
    p.psql("INSERT INTO a VALUES (-5, 'only on the old primary')");
    p.psql("CHECKPOINT");
    p.stop();
    s1.psql("UPDATE a SET v = 'after failover' WHERE id <= 100");
    s1.psql("CHECKPOINT");

    refused(&s1, &p.data, "pg_rewind");

    let run = pgclone(&s1, &s2_dir, &["--refresh", "-R", "-v"]);
    run.assert_ok();
    received_bytes(&run.stderr);
    let s2 = Cluster::start_existing(18, &s2_dir, &[]);
    s2.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    s2.wait_for_replay(&s1.current_lsn());
    let sql = "SELECT count(*) || ' ' || md5(string_agg(id || v, ',' ORDER BY id)) FROM a";
    assert_eq!(s2.psql(sql), s1.psql(sql));
    assert_eq!(
        s2.psql("SELECT received_tli FROM pg_stat_wal_receiver"),
        "2"
    );
}
