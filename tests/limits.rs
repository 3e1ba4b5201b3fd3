//! `refresh::limits::fetch` against real 17 and 18 primaries (`summarize_wal = on`, checksums):
//! a table cut by VACUUM in the range gets its truncated length as the main fork's limit block
//! (the server's own `pg_wal_summary_contents` agrees), a table created in the range gets 0, an
//! untouched table none; a range the summaries do not cover and a role that may only connect
//! for replication are refused with clear errors.

mod support;

use std::time::{Duration, Instant};

use pgclone::conn::{ConnFlags, ConnParams};
use pgclone::refresh::limits::{fetch, Limits, TimelineRange};
use pgclone_proto::{Lsn, TimelineId};
use support::{Cluster, ClusterOptions};

fn primary(major: u32) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    opts.checksums = true;
    opts.conf = vec!["summarize_wal = on".into(), "autovacuum = off".into()];
    opts.hba = vec![
        "local replication onlyrepl trust".into(),
        "local all onlyrepl reject".into(),
    ];
    Cluster::start(&opts)
}

fn params(c: &Cluster, user: &str) -> ConnParams {
    let socket = c.socket_dir.to_string_lossy().into_owned();
    let port = c.port.to_string();
    let flags = ConnFlags {
        host: Some(&socket),
        port: Some(&port),
        user: Some(user),
        no_password: true,
        ..ConnFlags::default()
    };
    ConnParams::resolve(&flags, &|_| None).expect("params")
}

fn run_fetch(c: &Cluster, user: &str, ranges: &[TimelineRange]) -> Result<Limits, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(fetch(&params(c, user), ranges))
        .map_err(|e| pgclone::error::chain(&e))
}

fn lsn(c: &Cluster, sql: &str) -> Lsn {
    c.psql(sql).parse().expect("an LSN")
}

/// Waits until a WAL summary reaches `lsn` (a CHECKPOINT after it ends the summary file).
fn wait_for_summaries(c: &Cluster, lsn: Lsn) {
    c.psql("CHECKPOINT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let sql =
        format!("SELECT count(*) > 0 FROM pg_available_wal_summaries() WHERE end_lsn >= '{lsn}'");
    while c.psql(&sql) != "t" {
        assert!(Instant::now() < deadline, "no summary reaches {lsn}");
        std::thread::sleep(Duration::from_millis(200));
        c.psql("CHECKPOINT");
    }
}

/// The server's own smallest limit block for `table`'s main fork over files touching the range.
fn server_limit(c: &Cluster, table: &str, range: &TimelineRange) -> String {
    c.psql(&format!(
        "SELECT min(c.relblocknumber) FROM pg_available_wal_summaries() s, \
         pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) c \
         WHERE c.is_limit_block AND c.relforknumber = 0 \
         AND c.relfilenode = pg_relation_filenode('{table}') \
         AND s.tli = {} AND s.end_lsn >= '{}' AND s.start_lsn <= '{}'",
        range.timeline, range.start, range.end
    ))
}

fn limits_on(major: u32) {
    let c = primary(major);
    c.psql(
        "CREATE TABLE tx (id int, pad text); CREATE TABLE untouched (id int); \
         INSERT INTO untouched SELECT generate_series(1, 1000); \
         INSERT INTO tx SELECT i, repeat('x', 200) FROM generate_series(1, 30000) i",
    );
    c.psql("VACUUM FREEZE tx");
    let before: u64 = c
        .psql("SELECT pg_relation_size('tx') / 8192")
        .parse()
        .expect("n");
    assert!(before > 800, "{before} blocks");
    // The summary file ending at the reference's redo point is read too (the server takes
    // files touching the range, ends included): the creation must lie before it.
    c.psql("CHECKPOINT");
    c.psql("INSERT INTO untouched VALUES (0)");
    c.psql("CHECKPOINT");
    let reference = lsn(&c, "SELECT redo_lsn FROM pg_control_checkpoint()");
    c.psql("DELETE FROM tx WHERE id > 5000");
    c.psql("VACUUM tx");
    let truncated: u32 = c
        .psql("SELECT pg_relation_size('tx') / 8192")
        .parse()
        .expect("n");
    assert!(u64::from(truncated) < before / 2, "{truncated} blocks");
    c.psql(
        "INSERT INTO tx SELECT i, repeat('y', 200) FROM generate_series(1, 30) i; \
         CREATE TABLE fresh (id int); INSERT INTO fresh VALUES (1)",
    );
    c.psql("SELECT pg_switch_wal()");
    let start = lsn(&c, "SELECT pg_current_wal_lsn()");
    wait_for_summaries(&c, start);
    let range = TimelineRange {
        timeline: TimelineId(1),
        start: reference,
        end: start,
    };
    let limits = run_fetch(&c, "postgres", &[range]).expect("fetch");
    let path = |t: &str| c.psql(&format!("SELECT pg_relation_filepath('{t}')"));
    assert_eq!(
        limits.path_limit(&path("tx")),
        Some(truncated),
        "{major}: {limits:?}"
    );
    assert_eq!(server_limit(&c, "tx", &range), truncated.to_string());
    assert_eq!(limits.path_limit(&path("untouched")), None, "{limits:?}");
    assert_eq!(server_limit(&c, "untouched", &range), "");
    assert_eq!(
        limits.path_limit(&format!("{}_vm", path("untouched"))),
        None
    );
    assert_eq!(limits.path_limit(&path("fresh")), Some(0), "{limits:?}");

    // Before the summaries begin: a gap, refused.
    let early = TimelineRange {
        start: Lsn(0x100),
        ..range
    };
    let err = run_fetch(&c, "postgres", &[early]).expect_err("not summarized");
    assert!(err.contains("are incomplete"), "{err}");

    // A role pg_hba.conf only lets in for replication.
    c.psql("CREATE ROLE onlyrepl WITH REPLICATION LOGIN");
    let err = run_fetch(&c, "onlyrepl", &[range]).expect_err("refused");
    assert!(
        err.contains("pg_hba.conf") && err.contains("database \"postgres\""),
        "{err}"
    );
    assert!(err.contains("--refresh reads the limit blocks"), "{err}");
}

#[test]
fn limits_17() {
    limits_on(17);
}

#[test]
fn limits_18() {
    limits_on(18);
}
