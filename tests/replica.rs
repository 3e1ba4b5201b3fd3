//! Replica-ready clones against real servers: `-X stream` (the default) with `-R` under write
//! load for every major 10–18, the seed's Compose scenario, slots, cascading standbys, a killed
//! WAL connection, a stream outlasting `wal_sender_timeout`, `--waldir`.
//!
//! Every clone is proven by starting it: it must be in recovery, stream from its upstream, and
//! show rows written after the clone; after catch-up its data must equal the primary's.

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{pgclone_cmd, pgclone_wait, Cluster, ClusterOptions, Load, Pgclone, TestDir};

const PASSWORD: &str = "rep-pw";
const WAIT: Duration = Duration::from_secs(60);

fn primary(major: u32, auth: &str, conf: &[&str]) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    opts.hba = vec![format!("host replication replication 127.0.0.1/32 {auth}")];
    opts.conf = conf.iter().map(|s| (*s).to_owned()).collect();
    let p = Cluster::start(&opts);
    p.create_replication_role(PASSWORD, auth);
    p
}

/// A clone of the server on `port` into `dest` as `replication` with its password.
fn clone_cmd(port: u16, dest: &Path) -> Pgclone {
    let mut cmd = pgclone_cmd();
    cmd.server(port, "replication")
        .dest(dest)
        .args(["-c", "fast"])
        .password(PASSWORD);
    cmd
}

/// Clones `upstream` into `dir` with `-R`.
fn clone_standby(upstream: &Cluster, dir: &Path) {
    clone_cmd(upstream.port, dir).arg("-R").run().assert_ok();
}

/// Starts the clone in `dir` as a server of `major` and waits until it streams.
fn start_streaming(major: u32, dir: &Path) -> Cluster {
    let standby = Cluster::start_existing(major, dir, &[]);
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    standby
}

/// Checks that `replica` streams from `upstream`, sees a row written after the clone, and,
/// once the load is stopped and replayed, holds the same `load` rows.
fn assert_streaming_replica(
    upstream: &Cluster,
    replica: &Cluster,
    origin: &Cluster,
    load: &mut Load,
) {
    replica.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    replica.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    upstream.wait_for(
        "SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming'",
        "t",
        WAIT,
    );
    origin.psql("CREATE TABLE after_clone(x text); INSERT INTO after_clone VALUES ('written after the clone')");
    replica.wait_for(
        "SELECT count(*) FROM pg_tables WHERE tablename = 'after_clone'",
        "1",
        WAIT,
    );
    assert_eq!(
        replica.psql("SELECT x FROM after_clone"),
        "written after the clone"
    );
    let batches = load.stop();
    assert!(batches > 0, "the load inserted nothing");
    let lsn = origin.current_lsn();
    replica.wait_for_replay(&lsn);
    let sum = "SELECT count(*), sum(hashtext(v)) FROM load";
    assert_eq!(replica.psql(sum), origin.psql(sum));
}

fn replica_under_load(major: u32) {
    let p = primary(major, "scram-sha-256", &[]);
    let mut load = Load::start(&p);
    let work = TestDir::new("replica");
    let dest = work.join("replica");
    let port = p.port.to_string();
    std::thread::sleep(Duration::from_millis(300));
    let run = clone_cmd(p.port, &dest).arg("-R").run();
    run.assert_ok();
    assert_eq!(run.stderr, "", "quiet on success");
    // The temporary slot went away with the WAL connection.
    p.wait_for("SELECT count(*) FROM pg_replication_slots", "0", WAIT);
    let conf = if major >= 12 {
        assert!(dest.join("standby.signal").is_file());
        fs::read_to_string(dest.join("postgresql.auto.conf")).expect("auto.conf")
    } else {
        let c = fs::read_to_string(dest.join("recovery.conf")).expect("recovery.conf");
        assert!(c.starts_with("standby_mode = 'on'\n"), "{c}");
        c
    };
    assert!(conf.contains(&format!("port={port}")), "{conf}");
    assert!(conf.contains("password=''rep-pw''"), "{conf}");
    assert!(!conf.contains("channel_binding"), "{conf}");
    let replica = Cluster::start_existing(major, &dest, &[]);
    assert_streaming_replica(&p, &replica, &p, &mut load);
}

#[test]
fn pg10_streaming_replica_under_load() {
    replica_under_load(10);
}

#[test]
fn pg11_streaming_replica_under_load() {
    replica_under_load(11);
}

#[test]
fn pg12_streaming_replica_under_load() {
    replica_under_load(12);
}

#[test]
fn pg13_streaming_replica_under_load() {
    replica_under_load(13);
}

#[test]
fn pg14_streaming_replica_under_load() {
    replica_under_load(14);
}

#[test]
fn pg15_streaming_replica_under_load() {
    replica_under_load(15);
}

#[test]
fn pg16_streaming_replica_under_load() {
    replica_under_load(16);
}

#[test]
fn pg17_streaming_replica_under_load() {
    replica_under_load(17);
}

#[test]
fn pg18_streaming_replica_under_load() {
    replica_under_load(18);
}

/// The seed's setup: a PostgreSQL 10 master with an `application` database and user, a
/// `replication` role with an md5 password, and its pg_hba lines; pgclone with `--host`,
/// `--dest` and `-R`; a row inserted on the master is read on the replica.
#[test]
fn seed_scenario_pg10() {
    let mut opts = ClusterOptions::new(10);
    // The seed's lines, with the md5 replication line first: the seed also trusts replication
    // from 127.0.0.1, which here would hide the password path (everything runs on loopback).
    opts.hba = vec![
        "host replication replication 0.0.0.0/0 md5".into(),
        "host all application 127.0.0.1/32 md5".into(),
        "host all application_ro 127.0.0.1/32 md5".into(),
    ];
    opts.conf = vec![
        "max_wal_senders = 4".into(),
        "wal_keep_segments = 64".into(),
        "hot_standby = on".into(),
    ];
    let master = Cluster::start(&opts);
    master.psql("SET password_encryption = 'md5'; CREATE ROLE replication WITH REPLICATION LOGIN PASSWORD 'replication'");
    master.psql("SET password_encryption = 'md5'; CREATE ROLE application WITH LOGIN PASSWORD 'application'");
    master.psql("SET password_encryption = 'md5'; CREATE ROLE application_ro WITH LOGIN PASSWORD 'application_ro'");
    master.psql("CREATE DATABASE application OWNER application");
    let work = TestDir::new("seed");
    let dest = work.join("replica");
    pgclone_cmd()
        .args(["--host", "127.0.0.1", "--port", &master.port.to_string()])
        .args(["-U", "replication", "--dest"])
        .arg(&dest)
        .arg("-R")
        .password("replication")
        .run()
        .assert_ok();
    let replica = start_streaming(10, &dest);
    master.psql_in(
        "application",
        "create table test(code char(5)); insert into test values('abcd')",
    );
    let lsn = master.current_lsn();
    replica.wait_for_replay(&lsn);
    assert_eq!(replica.psql_in("application", "select * from test"), "abcd");
}

#[test]
fn permanent_slot_is_created_used_and_refused_twice() {
    let p = primary(15, "scram-sha-256", &[]);
    let mut load = Load::start(&p);
    let work = TestDir::new("slots");
    let dest = work.join("replica");
    clone_cmd(p.port, &dest)
        .args(["-R", "-C", "-S", "standby_1"])
        .run()
        .assert_ok();
    assert_eq!(
        p.psql("SELECT slot_type, temporary, restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'standby_1'"),
        "physical|f|t"
    );
    let auto = fs::read_to_string(dest.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(auto.contains("primary_slot_name = 'standby_1'"), "{auto}");
    let replica = Cluster::start_existing(15, &dest, &[]);
    p.wait_for(
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_1'",
        "t",
        WAIT,
    );
    assert_streaming_replica(&p, &replica, &p, &mut load);

    // Creating it again fails before anything is written.
    let again = work.join("again");
    clone_cmd(p.port, &again)
        .args(["-C", "-S", "standby_1"])
        .run()
        .assert_error("replication slot \"standby_1\" already exists");
    assert!(!again.exists());
}

#[test]
fn missing_slot_fails_cleanly_and_no_slot_works() {
    let p = primary(16, "scram-sha-256", &[]);
    let work = TestDir::new("slots");
    let dest = work.join("missing");
    clone_cmd(p.port, &dest)
        .args(["-S", "nosuchslot"])
        .run()
        .assert_error("replication slot \"nosuchslot\" does not exist");
    assert!(!dest.exists());

    let dest = work.join("noslot");
    clone_cmd(p.port, &dest)
        .args(["--no-slot", "-R"])
        .run()
        .assert_ok();
    assert_eq!(p.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    start_streaming(16, &dest);
}

/// A clone of a standby that is itself a pgclone clone; WAL streams from the standby.
fn cascade(major: u32) {
    let p = primary(major, "scram-sha-256", &[]);
    let mut load = Load::start(&p);
    let work = TestDir::new("cascade");
    let s1_dir = work.join("standby1");
    clone_standby(&p, &s1_dir);
    let s1 = start_streaming(major, &s1_dir);

    let s2_dir = work.join("standby2");
    clone_standby(&s1, &s2_dir);
    let conf = fs::read_to_string(if major >= 12 {
        s2_dir.join("postgresql.auto.conf")
    } else {
        s2_dir.join("recovery.conf")
    })
    .expect("conf");
    assert!(conf.contains(&format!("port={}", s1.port)), "{conf}");
    let s2 = Cluster::start_existing(major, &s2_dir, &[]);
    assert_streaming_replica(&s1, &s2, &p, &mut load);
}

#[test]
fn pg11_clone_of_a_standby() {
    cascade(11);
}

#[test]
fn pg14_clone_of_a_standby() {
    cascade(14);
}

/// Terminating the WAL connection's walsender mid-backup fails the clone with the WAL
/// receiver's error, removes the directory, and leaves no slot (not even a `-C` one).
#[test]
fn killed_wal_connection_fails_and_cleans_up() {
    let p = primary(13, "scram-sha-256", &[]);
    p.psql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS v FROM generate_series(1, 40000) g",
    );
    let work = TestDir::new("kill");
    let dest = work.join("copy");
    let child = clone_cmd(p.port, &dest)
        .args(["-r", "4M", "-C", "-S", "doomed"])
        .spawn();
    let deadline = Instant::now() + WAIT;
    loop {
        let killed = p.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication WHERE state = 'streaming'",
        );
        if killed != "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the WAL connection never started streaming"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = pgclone_wait(child);
    run.assert_error(
        "background process terminated unexpectedly: unexpected termination of replication \
         stream: FATAL:  terminating connection due to administrator command",
    );
    assert!(!dest.exists(), "{}", run.stderr);
    p.wait_for("SELECT count(*) FROM pg_replication_slots", "0", WAIT);
}

/// A rate-limited backup that lasts several times `wal_sender_timeout` completes: the WAL
/// task answers the server's keepalives.
#[test]
fn stream_outlasting_wal_sender_timeout_completes() {
    let p = primary(17, "scram-sha-256", &["wal_sender_timeout = '1s'"]);
    p.psql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS v FROM generate_series(1, 20000) g",
    );
    let mut load = Load::start(&p);
    let work = TestDir::new("slow");
    let dest = work.join("copy");
    let started = Instant::now();
    clone_cmd(p.port, &dest)
        .args(["-R", "-r", "8M"])
        .run()
        .assert_ok();
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(3),
        "the backup was not slow enough to test anything: {took:?}"
    );
    let replica = Cluster::start_existing(17, &dest, &[]);
    assert_streaming_replica(&p, &replica, &p, &mut load);
}

#[test]
fn waldir_with_streaming() {
    let p = primary(12, "scram-sha-256", &[]);
    let mut load = Load::start(&p);
    let work = TestDir::new("waldir");
    let dest = work.join("copy");
    let waldir = work.join("wal");
    clone_cmd(p.port, &dest)
        .args(["-R", "--waldir"])
        .arg(&waldir)
        .run()
        .assert_ok();
    assert_eq!(fs::read_link(dest.join("pg_wal")).expect("link"), waldir);
    assert!(fs::read_dir(&waldir).expect("waldir").count() > 1);
    let replica = Cluster::start_existing(12, &dest, &[]);
    assert_streaming_replica(&p, &replica, &p, &mut load);
}

/// A clone of a cascading standby whose upstream is promoted during the backup: the standby
/// follows the new timeline, and so must pgclone's WAL stream (TIMELINE_HISTORY, history file,
/// START_REPLICATION on the new timeline).
#[test]
fn pg16_wal_stream_follows_a_timeline_switch() {
    let p = primary(16, "scram-sha-256", &[]);
    p.psql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS v FROM generate_series(1, 20000) g",
    );
    let work = TestDir::new("tli");
    let s1_dir = work.join("standby1");
    clone_standby(&p, &s1_dir);
    let s1 = start_streaming(16, &s1_dir);
    let s2_dir = work.join("standby2");
    clone_standby(&s1, &s2_dir);
    let s2 = start_streaming(16, &s2_dir);

    let s3_dir = work.join("standby3");
    let child = clone_cmd(s2.port, &s3_dir)
        .args(["-R", "-r", "4M", "-v"])
        .spawn();
    s2.wait_for(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "1",
        WAIT,
    );
    assert_eq!(s1.psql("SELECT pg_promote()"), "t");
    s1.wait_for("SELECT pg_is_in_recovery()", "f", WAIT);
    s1.psql("CREATE TABLE on_new_timeline AS SELECT 42 AS answer; SELECT pg_switch_wal()");
    s2.wait_for("SELECT received_tli FROM pg_stat_wal_receiver", "2", WAIT);
    let run = pgclone_wait(child);
    run.assert_ok();
    assert!(
        run.stderr.contains("switched to timeline 2"),
        "{}",
        run.stderr
    );
    assert!(s3_dir.join("pg_wal/00000002.history").is_file());
    let s3 = start_streaming(16, &s3_dir);
    s1.psql("INSERT INTO on_new_timeline VALUES (43)");
    s3.wait_for("SELECT count(*) FROM on_new_timeline", "2", WAIT);
}
