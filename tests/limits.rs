//! `refresh::limits::fetch` against real 17 and 18 primaries (`summarize_wal = on`, checksums):
//! a table cut by VACUUM in the range gets its truncated length as the main fork's limit block
//! (the server's own `pg_wal_summary_contents` agrees), a table created in the range gets 0, an
//! untouched table none; a range the summaries do not cover and a role that may only connect
//! for replication are refused with clear errors.
//!
//! End to end, the upstream defect the limits guard against: a table cut by VACUUM after a full
//! backup, then grown again by COPY (whose bulk extension leaves zero pages at the end that no
//! WAL record touches), comes in the real `pg_basebackup -i` as a member whose truncation block
//! length covers those pages. Applied in place with the limits, every block from the limit on
//! is the primary's (zeros where it has zeros); how many stale blocks `pg_combinebackup` took
//! from the full backup instead is printed, not asserted (the defect is upstream's).

mod support;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgclone::conn::{ConnFlags, ConnParams};
use pgclone::refresh::limits::{fetch, Limits, TimelineRange};
use pgclone::sink::inplace::{Applier, Layout};
use pgclone::sink::{ArchiveRoot, Chunk};
use pgclone_proto::incremental::BLCKSZ;
use pgclone_proto::tar::MemberKind;
use pgclone_proto::{testutil, Lsn, TimelineId};
use support::{as_pg_user, checked_output, pg_basebackup, tools_bin, Cluster, TestDir};

fn primary(major: u32) -> Cluster {
    let mut opts = support::summarizing(major, &["autovacuum = off"]);
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

/// `START WAL LOCATION` of a backup's `backup_label`.
fn label_start(dir: &Path) -> Lsn {
    let label = fs::read_to_string(dir.join("backup_label")).expect("backup_label");
    label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|l| l.parse().ok())
        .expect("START WAL LOCATION")
}

/// Rebuilds `rel` in `dest` (holding the full backup's copy) from the incremental backup's
/// member, through the in-place writer with `limits`.
fn apply_member(dest: &Path, incr: &Path, rel: &str, limits: Limits) {
    let (dir, name) = rel.rsplit_once('/').expect("a relation path");
    let member_name = format!("{dir}/INCREMENTAL.{name}");
    let member = fs::read(incr.join(&member_name)).expect("an INCREMENTAL member");
    let control = fs::read(incr.join("global/pg_control")).expect("pg_control");
    let archive = testutil::tar(
        &[
            (&member_name, MemberKind::File, &member, None),
            ("global/pg_control", MemberKind::File, &control, None),
        ],
        0o600,
    );
    let layout = Layout {
        dest: dest.to_path_buf(),
        tablespace_links: HashMap::new(),
        dir_mode: 0o700,
        limits,
    };
    let mut a = Applier::open(layout).expect("open");
    a.handle(Chunk::ArchiveStart {
        name: "base.tar".into(),
        root: ArchiveRoot::Base,
        server_terminated: true,
    })
    .expect("start");
    for piece in archive.chunks(64 * 1024) {
        a.handle(Chunk::Data(Bytes::copy_from_slice(piece)))
            .expect("data");
    }
    a.handle(Chunk::ArchiveEnd).expect("end");
    a.finish().expect("finish");
}

/// Block `b` of `file`.
fn page(file: &[u8], b: usize) -> &[u8] {
    &file[b * BLCKSZ..(b + 1) * BLCKSZ]
}

fn safeguard_on(major: u32) {
    let c = primary(major);
    let work = TestDir::new(&format!("limits{major}"));
    c.psql("CREATE TABLE tx (id int, pad text)");
    c.psql("INSERT INTO tx SELECT i, repeat('x', 200) FROM generate_series(1, 30000) i");
    c.psql("VACUUM FREEZE tx");
    // A summary boundary between the creation and the full backup (see `limits_on`).
    c.psql("CHECKPOINT");
    let full = work.join("full");
    pg_basebackup(&c, &full, &[]);
    c.psql("DELETE FROM tx WHERE id > 5000");
    c.psql("VACUUM tx");
    let rows = work.join("rows");
    let text: String = (1..=3000)
        .map(|i| format!("{i}\t{}\n", "y".repeat(200)))
        .collect();
    fs::write(&rows, text).expect("rows");
    c.psql(&format!("\\copy tx from '{}'", rows.display()));
    c.psql("CHECKPOINT");
    let incr = work.join("incr");
    let manifest = full.join("backup_manifest");
    pg_basebackup(&c, &incr, &["-i", manifest.to_str().expect("utf8")]);
    let range = TimelineRange {
        timeline: TimelineId(1),
        start: label_start(&full),
        end: label_start(&incr),
    };
    let limits = run_fetch(&c, "postgres", &[range]).expect("fetch");
    let rel = c.psql("SELECT pg_relation_filepath('tx')");
    let limit = limits.path_limit(&rel).expect("tx was cut in the range") as usize;

    let dest = work.join("applied");
    fs::create_dir_all(dest.join(&rel).parent().expect("dir")).expect("mkdir");
    fs::create_dir_all(dest.join("global")).expect("mkdir");
    fs::copy(full.join(&rel), dest.join(&rel)).expect("prior copy");
    apply_member(&dest, &incr, &rel, limits);
    let applied = fs::read(dest.join(&rel)).expect("applied");
    let primary_file = fs::read(c.data.join(&rel)).expect("the primary's file");
    assert_eq!(applied.len(), primary_file.len());
    let blocks = applied.len() / BLCKSZ;
    let zeros = (limit..blocks)
        .filter(|&b| page(&primary_file, b).iter().all(|&x| x == 0))
        .count();
    for b in limit..blocks {
        assert!(
            page(&applied, b) == page(&primary_file, b),
            "{major}: block {b} (limit {limit}) differs from the primary's"
        );
    }

    let combined = work.join("combined");
    let mut cmd = as_pg_user(tools_bin(major).join("pg_combinebackup"));
    cmd.arg(&full).arg(&incr).arg("-o").arg(&combined);
    checked_output(&mut cmd, "pg_combinebackup");
    let combined_file = fs::read(combined.join(&rel)).expect("combined");
    let stale = (limit..blocks)
        .filter(|&b| page(&combined_file, b) != page(&primary_file, b))
        .count();
    eprintln!(
        "{major}: tx has {blocks} blocks, limit {limit}, {zeros} zero blocks past it on the \
         primary; pg_combinebackup took {stale} stale blocks from the full backup, the \
         in-place apply with limits none"
    );
}

#[test]
fn limits_17() {
    limits_on(17);
}

#[test]
fn limits_18() {
    limits_on(18);
}

#[test]
fn safeguard_17() {
    safeguard_on(17);
}

#[test]
fn safeguard_18() {
    safeguard_on(18);
}
