//! Replica-ready clones against real servers: `-X stream` (the default) with `-R` under write
//! load for every major 10–18, the seed's Compose scenario, slots, cascading standbys, a killed
//! WAL connection, a stream outlasting `wal_sender_timeout`, `--waldir`.
//!
//! Every clone is proven by starting it: it must be in recovery, stream from its upstream, and
//! show rows written after the clone; after catch-up its data must equal the primary's.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use support::{pgclone, pgclone_spawn, pgclone_wait, Cluster, ClusterOptions, Load, TestDir};

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

fn clone_args<'a>(port: &'a str, dest: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-U",
        "replication",
        "-D",
        dest,
        "-c",
        "fast",
    ];
    v.extend_from_slice(extra);
    v
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
    let run = pgclone(
        &clone_args(&port, dest.to_str().expect("utf8"), &["-R"]),
        &[("PGPASSWORD", PASSWORD)],
    );
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
    let port = master.port.to_string();
    pgclone(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "-U",
            "replication",
            "--dest",
            dest.to_str().expect("utf8"),
            "-R",
        ],
        &[("PGPASSWORD", "replication")],
    )
    .assert_ok();
    let replica = Cluster::start_existing(10, &dest, &[]);
    replica.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    let psql_app = |c: &Cluster, sql: &str| {
        let out = std::process::Command::new(support::tools_bin(18).join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-U",
                "postgres",
                "-d",
                "application",
                "-h",
            ])
            .arg(&c.socket_dir)
            .args(["-p", &c.port.to_string(), "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    psql_app(
        &master,
        "create table test(code char(5)); insert into test values('abcd')",
    );
    let lsn = master.current_lsn();
    replica.wait_for_replay(&lsn);
    assert_eq!(psql_app(&replica, "select * from test"), "abcd");
}

#[test]
fn permanent_slot_is_created_used_and_refused_twice() {
    let p = primary(15, "scram-sha-256", &[]);
    let mut load = Load::start(&p);
    let work = TestDir::new("slots");
    let port = p.port.to_string();
    let dest = work.join("replica");
    let env = [("PGPASSWORD", PASSWORD)];
    pgclone(
        &clone_args(
            &port,
            dest.to_str().expect("utf8"),
            &["-R", "-C", "-S", "standby_1"],
        ),
        &env,
    )
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
    pgclone(
        &clone_args(
            &port,
            again.to_str().expect("utf8"),
            &["-C", "-S", "standby_1"],
        ),
        &env,
    )
    .assert_error("replication slot \"standby_1\" already exists");
    assert!(!again.exists());
}

#[test]
fn missing_slot_fails_cleanly_and_no_slot_works() {
    let p = primary(16, "scram-sha-256", &[]);
    let work = TestDir::new("slots");
    let port = p.port.to_string();
    let env = [("PGPASSWORD", PASSWORD)];
    let dest = work.join("missing");
    pgclone(
        &clone_args(&port, dest.to_str().expect("utf8"), &["-S", "nosuchslot"]),
        &env,
    )
    .assert_error("replication slot \"nosuchslot\" does not exist");
    assert!(!dest.exists());

    let dest = work.join("noslot");
    pgclone(
        &clone_args(&port, dest.to_str().expect("utf8"), &["--no-slot", "-R"]),
        &env,
    )
    .assert_ok();
    assert_eq!(p.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    let replica = Cluster::start_existing(16, &dest, &[]);
    replica.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
}

/// A clone of a standby that is itself a pgclone clone; WAL streams from the standby.
fn cascade(major: u32) {
    let p = primary(major, "scram-sha-256", &[]);
    let mut load = Load::start(&p);
    let work = TestDir::new("cascade");
    let env = [("PGPASSWORD", PASSWORD)];
    let s1_dir = work.join("standby1");
    pgclone(
        &clone_args(&p.port.to_string(), s1_dir.to_str().expect("utf8"), &["-R"]),
        &env,
    )
    .assert_ok();
    let s1 = Cluster::start_existing(major, &s1_dir, &[]);
    s1.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);

    let s2_dir = work.join("standby2");
    pgclone(
        &clone_args(
            &s1.port.to_string(),
            s2_dir.to_str().expect("utf8"),
            &["-R"],
        ),
        &env,
    )
    .assert_ok();
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
    let port = p.port.to_string();
    let child = pgclone_spawn(
        &clone_args(
            &port,
            dest.to_str().expect("utf8"),
            &["-r", "4M", "-C", "-S", "doomed"],
        ),
        &[("PGPASSWORD", PASSWORD)],
    );
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
    run.assert_error("background WAL receiver terminated unexpectedly");
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
    pgclone(
        &clone_args(
            &p.port.to_string(),
            dest.to_str().expect("utf8"),
            &["-R", "-r", "8M"],
        ),
        &[("PGPASSWORD", PASSWORD)],
    )
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
    pgclone(
        &clone_args(
            &p.port.to_string(),
            dest.to_str().expect("utf8"),
            &["-R", "--waldir", waldir.to_str().expect("utf8")],
        ),
        &[("PGPASSWORD", PASSWORD)],
    )
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
    let env = [("PGPASSWORD", PASSWORD)];
    let s1_dir = work.join("standby1");
    pgclone(
        &clone_args(&p.port.to_string(), s1_dir.to_str().expect("utf8"), &["-R"]),
        &env,
    )
    .assert_ok();
    let s1 = Cluster::start_existing(16, &s1_dir, &[]);
    s1.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    let s2_dir = work.join("standby2");
    pgclone(
        &clone_args(
            &s1.port.to_string(),
            s2_dir.to_str().expect("utf8"),
            &["-R"],
        ),
        &env,
    )
    .assert_ok();
    let s2 = Cluster::start_existing(16, &s2_dir, &[]);
    s2.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);

    let s3_dir = work.join("standby3");
    let child = pgclone_spawn(
        &clone_args(
            &s2.port.to_string(),
            s3_dir.to_str().expect("utf8"),
            &["-R", "-r", "4M", "-v"],
        ),
        &env,
    );
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
    let s3 = Cluster::start_existing(16, &s3_dir, &[]);
    s3.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    s1.psql("INSERT INTO on_new_timeline VALUES (43)");
    s3.wait_for("SELECT count(*) FROM on_new_timeline", "2", WAIT);
}
