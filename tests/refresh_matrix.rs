//! `pgclone --refresh` against real 17 and 18 primaries (data checksums, `summarize_wal = on`,
//! `wal_keep_size = 0`), the cases of issue 13's "Tests" section that tests/refresh.rs does not
//! cover:
//! - a stale standby made by the real pg_basebackup `-R` and crashed (SIGKILL of its
//!   postmaster), while the primary ran pgbench, made new relfilenodes, a tablespace and dropped
//!   objects, and recycled the WAL the standby needed: after `--refresh -R` it streams, reads a
//!   row written after the refresh, holds every table's rows, and passes `pg_checksums --check`
//!   and amcheck's `bt_index_check` on every btree index;
//! - against the reference tool: with an idle primary, `--refresh` of a copy of a full clone and
//!   `pg_basebackup -i` + `pg_combinebackup` of that full clone give byte-identical files under
//!   `base/` and `global/`;
//! - an interrupted refresh (SIGKILL of pgclone): PostgreSQL refuses to start the directory, a
//!   second `--refresh` completes it;
//! - every refusal of issue point 4, each leaving the directory byte for byte as it was.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    as_pg_user, checked_output, output_text, pg_ctl, pgclone_cmd, pgclone_wait, tools_bin, Cluster,
    ClusterOptions, Pgclone, Run, TestDir,
};

const WAIT: Duration = Duration::from_secs(60);

/// A primary of `major` with data checksums, `summarize_wal` on or off, no WAL kept for
/// standbys beyond what checkpoints need, no autovacuum (the reference comparison needs an idle
/// primary), plus `extra` settings.
fn primary(major: u32, summarize: bool, extra: &[&str]) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    opts.checksums = true;
    opts.conf = vec!["wal_keep_size = 0".into(), "autovacuum = off".into()];
    if major >= 17 {
        let on = if summarize { "on" } else { "off" };
        opts.conf.push(format!("summarize_wal = {on}"));
    }
    opts.conf.extend(extra.iter().map(|s| (*s).to_owned()));
    Cluster::start(&opts)
}

/// A command of the toolset of `major`, as the unprivileged account, in the C locale.
fn tool(major: u32, name: &str) -> Command {
    let mut cmd = as_pg_user(tools_bin(major).join(name));
    cmd.env("LC_ALL", "C");
    cmd
}

/// `-h 127.0.0.1 -p <port> -U postgres` for the toolset's clients.
fn tcp_args(c: &Cluster) -> [String; 6] {
    [
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        c.port.to_string(),
        "-U".into(),
        "postgres".into(),
    ]
}

/// A test path as an argument (temporary directories have UTF-8 names).
fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `-T <old>=<new>`.
fn mapping(old: &Path, new: &Path) -> String {
    format!("{}={}", old.display(), new.display())
}

/// A plain pgclone clone of `p` into `dest` with a fast checkpoint, plus `extra` flags.
fn clone(p: &Cluster, dest: &Path, extra: &[&str]) {
    support::fast_clone(p, dest, extra).assert_ok();
}

/// `pgclone --refresh -D <dir>` against `p` with a fast checkpoint, plus `extra` flags.
fn refresh_cmd(p: &Cluster, dir: &Path, extra: &[&str]) -> Pgclone {
    let mut cmd = pgclone_cmd();
    cmd.arg("--refresh")
        .server(p.port, "postgres")
        .dest(dir)
        .args(["-c", "fast"])
        .args(extra);
    cmd
}

/// The `(bytes, whole, incremental)` of `-v`'s last line, an info line ending exactly
/// `refresh complete: N bytes received (W files whole, I incremental)`.
fn refresh_summary(run: &Run) -> (u64, u64, u64) {
    let line = run
        .stderr
        .lines()
        .last()
        .filter(|l| l.contains("refresh complete: "))
        .unwrap_or_else(|| panic!("`refresh complete` is not the last line:\n{}", run.stderr));
    let rest = line.split("refresh complete: ").nth(1).expect("after");
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect();
    let want = format!(
        "{} bytes received ({} files whole, {} incremental)",
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
        numbers.get(2).copied().unwrap_or(0)
    );
    assert_eq!(rest, want, "{line:?}");
    (numbers[0], numbers[1], numbers[2])
}

/// A `--refresh -v` that succeeded: its summary, with at least one file sent incrementally.
fn assert_refreshed(run: &Run) -> (u64, u64, u64) {
    run.assert_ok();
    let summary = refresh_summary(run);
    assert!(summary.2 > 0, "nothing incremental: {}", run.stderr);
    summary
}

/// Every user table of `c`'s database `postgres`: its row count and the md5 of its rows in
/// order, one line per table.
fn contents(c: &Cluster) -> String {
    let tables = c.psql(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
    let selects: Vec<String> = tables
        .lines()
        .map(|t| {
            format!(
                "SELECT '{t} ' || count(*) || ' ' || \
                 coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '-') FROM {t} x"
            )
        })
        .collect();
    assert!(!selects.is_empty(), "no tables");
    c.psql(&format!(
        "SELECT line FROM ({}) s(line) ORDER BY 1",
        selects.join(" UNION ALL ")
    ))
}

/// Waits until `replica` has replayed everything `primary` wrote so far.
fn caught_up(primary: &Cluster, replica: &Cluster) {
    replica.wait_for_replay(&primary.current_lsn());
}

/// Starts `dir` as a standby of `primary` and checks it: in recovery, streaming, reads a row
/// written on the primary after it started, and holds the primary's tables.
fn start_and_compare(primary: &Cluster, dir: &Path, tag: &str) -> Cluster {
    let replica = Cluster::start_existing(primary.major, dir, &[]);
    replica.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    replica.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    primary.psql(&format!(
        "CREATE TABLE after_{tag}(x text); INSERT INTO after_{tag} VALUES ('written after')"
    ));
    replica.wait_for(
        &format!("SELECT count(*) FROM pg_tables WHERE tablename = 'after_{tag}'"),
        "1",
        WAIT,
    );
    caught_up(primary, &replica);
    assert_eq!(
        replica.psql(&format!("SELECT x FROM after_{tag}")),
        "written after"
    );
    assert_eq!(contents(&replica), contents(primary), "{tag}");
    replica
}

/// `pg_checksums --check` of `major` on the stopped `dir`.
fn checksums_clean(major: u32, dir: &Path) {
    let out = tool(major, "pg_checksums")
        .arg("--check")
        .arg("-D")
        .arg(dir)
        .output()
        .expect("pg_checksums");
    assert!(out.status.success(), "pg_checksums: {}", output_text(&out));
}

/// The pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// Whether process `pid` still exists (and is not a zombie we could reap: none of these are
/// our children).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Whether `pid` has exited (gone, or a zombie not yet reaped).
fn exited(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_none_or(|state| state == "Z")
}

/// The postmaster pid of the running server `c`.
fn postmaster_pid(c: &Cluster) -> i32 {
    let pid_file = fs::read_to_string(c.data.join("postmaster.pid")).expect("postmaster.pid");
    pid_file.lines().next().expect("pid").parse().expect("pid")
}

/// A crash: SIGKILL of the postmaster alone; its children notice its death and exit on their
/// own (no shutdown restartpoint, postmaster.pid left behind). Waits until all are gone.
fn kill_postmaster(c: &mut Cluster) {
    let postmaster = postmaster_pid(c);
    let mut pids = children_of(postmaster);
    pids.push(postmaster);
    // SAFETY: kill has no memory-safety preconditions; the pid is the test server's.
    assert_eq!(unsafe { libc::kill(postmaster, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + WAIT;
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(Instant::now() < deadline, "server processes survived");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.data.join("postmaster.pid").exists());
    // Clears the running flag (pg_ctl finds no live server).
    c.stop();
}

/// Sends `signo` to the postmaster of `c` and to its children.
fn signal_server(c: &Cluster, signo: i32) {
    let postmaster = postmaster_pid(c);
    for pid in std::iter::once(postmaster).chain(children_of(postmaster)) {
        // SAFETY: kill has no memory-safety preconditions; the pids are the test server's.
        unsafe { libc::kill(pid, signo) };
    }
}

/// The segment file name holding `lsn` on timeline 1 (16 MB segments).
fn segment_of(lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').expect("lsn");
    let hi = u64::from_str_radix(hi, 16).expect("hi");
    let lo = u64::from_str_radix(lo, 16).expect("lo");
    let seg = ((hi << 32) | lo) >> 24;
    format!("00000001{:08X}{:08X}", seg >> 8, seg & 0xff)
}

/// pg_controldata's value for `key` on `dir`.
fn controldata(major: u32, dir: &Path, key: &str) -> String {
    let out = checked_output(tool(major, "pg_controldata").arg(dir), "pg_controldata");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key:?}"))
        .trim()
        .to_owned()
}

/// Several segment switches and checkpoints: no slot and `wal_keep_size = 0`, so the primary
/// recycles every segment before its latest checkpoint's redo.
fn recycle_wal(p: &Cluster) {
    for _ in 0..4 {
        p.psql("CREATE TABLE IF NOT EXISTS churn(x int); INSERT INTO churn VALUES (1)");
        p.psql("SELECT pg_switch_wal()");
        p.psql("CHECKPOINT");
    }
}

/// `pgbench` of `major` against `p` with `args`.
fn pgbench(p: &Cluster, args: &[&str]) {
    let mut cmd = tool(p.major, "pgbench");
    cmd.args(tcp_args(p)).args(args).arg("postgres");
    checked_output(&mut cmd, &format!("pgbench {args:?}"));
}

// ---------------------------------------------------------------------------------------------
// Case 1: a stale, crashed standby made by pg_basebackup.

/// The objects of the stale-standby case, made before the standby is cloned.
const BEFORE: &str = "CREATE TABLE to_drop(id int PRIMARY KEY, v text); \
     INSERT INTO to_drop SELECT g, md5(g::text) FROM generate_series(1, 2000) g; \
     CREATE TABLE to_truncate(id int PRIMARY KEY, v text); \
     INSERT INTO to_truncate SELECT g, md5(g::text) FROM generate_series(1, 3000) g; \
     CREATE TABLE to_vacuum(id int PRIMARY KEY, v text); \
     INSERT INTO to_vacuum SELECT g, md5(g::text) FROM generate_series(1, 3000) g; \
     CREATE TABLE to_cluster(id int, v text); \
     INSERT INTO to_cluster SELECT g, md5(g::text) FROM generate_series(3000, 1, -1) g; \
     CREATE INDEX to_cluster_id ON to_cluster(id); \
     CREATE TABLE in_ts1(id int PRIMARY KEY, v text) TABLESPACE ts1; \
     INSERT INTO in_ts1 SELECT g, md5(g::text) FROM generate_series(1, 2000) g; \
     CREATE TABLE dropped_in_ts1(id int) TABLESPACE ts1; \
     INSERT INTO dropped_in_ts1 SELECT generate_series(1, 1000); \
     CREATE EXTENSION amcheck; CHECKPOINT";

/// What the primary does while the standby is down: new relfilenodes for most tables, a new
/// tablespace with a table, dropped objects (one psql call each: VACUUM needs its own).
const WHILE_DOWN: [&str; 7] = [
    "DROP TABLE to_drop; CREATE TABLE created(id int PRIMARY KEY, v text); \
     INSERT INTO created SELECT g, md5(g::text) FROM generate_series(1, 2000) g",
    "TRUNCATE to_truncate; \
     INSERT INTO to_truncate SELECT g, 'again ' || g FROM generate_series(1, 500) g",
    "DELETE FROM to_vacuum WHERE id % 3 = 0",
    "VACUUM FULL to_vacuum",
    "CLUSTER to_cluster USING to_cluster_id",
    "UPDATE in_ts1 SET v = 'changed' WHERE id % 10 = 0; DROP TABLE dropped_in_ts1",
    "CREATE TABLE in_ts2(id int PRIMARY KEY, v text) TABLESPACE ts2; \
     INSERT INTO in_ts2 SELECT g, md5(g::text) FROM generate_series(1, 2000) g",
];

/// Runs `bt_index_check` on every btree index of database `postgres` on `c`; returns how many.
fn amcheck_all(c: &Cluster) -> usize {
    let checked = c.psql(
        "SELECT count(*) FROM (SELECT bt_index_check(i.indexrelid, true) FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
         WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND i.indisvalid) s",
    );
    checked.parse().expect("count")
}

fn stale_basebackup_standby(major: u32) {
    let p = primary(major, true, &[]);
    let work = TestDir::new(&format!("rm-stale{major}"));
    let (ts1, ts1_copy) = (work.mkdir("ts1"), work.join("ts1-copy"));
    let (ts2, ts2_copy) = (work.mkdir("ts2"), work.join("ts2-copy"));
    p.create_tablespace("ts1", &ts1);
    pgbench(&p, &["-i", "-s", "2", "-q"]);
    p.psql(BEFORE);

    let dir = work.join("standby");
    let mut cmd = tool(major, "pg_basebackup");
    cmd.args(tcp_args(&p))
        .arg("-D")
        .arg(&dir)
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-T"])
        .arg(mapping(&ts1, &ts1_copy));
    checked_output(&mut cmd, "pg_basebackup -R");
    let mut standby = Cluster::start_existing(major, &dir, &[]);
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    pgbench(&p, &["-c", "2", "-t", "50", "-n"]);
    caught_up(&p, &standby);
    kill_postmaster(&mut standby);
    drop(standby);
    assert_eq!(
        controldata(major, &dir, "Database cluster state"),
        "in archive recovery",
        "a crashed standby"
    );
    let redo = controldata(major, &dir, "Latest checkpoint's REDO location");

    pgbench(&p, &["-c", "2", "-t", "150", "-n"]);
    p.create_tablespace("ts2", &ts2);
    for sql in WHILE_DOWN {
        p.psql(sql);
    }
    recycle_wal(&p);
    // The standby cannot catch up: the segment its crash recovery starts in is gone.
    let segment = segment_of(&redo);
    assert_eq!(
        p.psql(&format!(
            "SELECT count(*) FROM pg_ls_waldir() WHERE name = '{segment}'"
        )),
        "0",
        "{segment} still on the primary"
    );

    let run = refresh_cmd(&p, &dir, &["-R", "-v"])
        .arg("-T")
        .arg(mapping(&ts1, &ts1_copy))
        .arg("-T")
        .arg(mapping(&ts2, &ts2_copy))
        .run();
    assert_refreshed(&run);
    let mut replica = start_and_compare(&p, &dir, "refresh");
    assert_eq!(replica.psql("SELECT count(*) FROM in_ts2"), "2000");
    let indexes = amcheck_all(&replica);
    assert!(indexes > 10, "only {indexes} btree indexes checked");
    replica.stop();
    checksums_clean(major, &dir);
}

#[test]
fn pg17_stale_crashed_pg_basebackup_standby_is_refreshed() {
    stale_basebackup_standby(17);
}

#[test]
fn pg18_stale_crashed_pg_basebackup_standby_is_refreshed() {
    stale_basebackup_standby(18);
}

// ---------------------------------------------------------------------------------------------
// Case 2: against pg_basebackup -i + pg_combinebackup.

/// Every regular file under `dir`, relative to it, with its bytes (links are not followed).
fn files_under(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let kind = entry.file_type().expect("type");
        if kind.is_dir() {
            files_under(root, &path, out);
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).expect("inside").to_path_buf();
            out.insert(rel, fs::read(&path).expect("read"));
        }
    }
}

/// The files under `base/` and `global/` of `dir`, without `global/pg_control` (each backup
/// writes its own).
fn relation_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    files_under(dir, &dir.join("base"), &mut files);
    files_under(dir, &dir.join("global"), &mut files);
    files.remove(Path::new("global/pg_control"));
    files
}

/// The paths whose bytes differ between `a` and `b`, or that only one of them has.
fn differences(a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<String> {
    let paths: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    paths
        .into_iter()
        .filter_map(|p| match (a.get(p), b.get(p)) {
            (Some(x), Some(y)) if x == y => None,
            (Some(x), Some(y)) => {
                Some(format!("{}: {} vs {} bytes", p.display(), x.len(), y.len()))
            }
            (Some(_), None) => Some(format!("{}: only in the first", p.display())),
            _ => Some(format!("{}: only in the second", p.display())),
        })
        .collect()
}

fn same_as_pg_combinebackup(major: u32) {
    let p = primary(major, true, &[]);
    let work = TestDir::new(&format!("rm-ref{major}"));
    support::create_table_t(&p, &work, false, "");
    p.psql(
        "CREATE TABLE gone(x int); INSERT INTO gone SELECT generate_series(1, 1000); \
         CREATE TABLE big(g int PRIMARY KEY, v text); \
         INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g",
    );
    p.psql("VACUUM (FREEZE, ANALYZE)");
    p.psql("CHECKPOINT");
    let full = work.join("full");
    clone(&p, &full, &["-X", "stream"]);
    let copy = work.join("copy");
    checked_output(Command::new("cp").arg("-a").arg(&full).arg(&copy), "cp -a");

    p.psql(
        "UPDATE t SET v = 'changed ' || id WHERE id % 7 = 0; \
         DELETE FROM t WHERE id BETWEEN 100 AND 199; \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(5001, 7000) g; \
         UPDATE big SET v = 'y' WHERE g % 500 = 0; \
         DROP TABLE gone; CREATE TABLE t2 AS SELECT generate_series(1, 3000) AS x",
    );
    p.psql("VACUUM (FREEZE, ANALYZE)");
    p.psql("CHECKPOINT");
    // From here to the end of both backups the primary is idle: nothing reads or writes it.
    let inc = work.join("inc");
    let mut cmd = tool(major, "pg_basebackup");
    cmd.args(tcp_args(&p))
        .arg("-i")
        .arg(full.join("backup_manifest"))
        .arg("-D")
        .arg(&inc)
        .args(["-X", "stream", "-c", "fast", "--no-sync"]);
    checked_output(&mut cmd, "pg_basebackup -i");
    let run = refresh_cmd(&p, &copy, &["-v"]).run();
    assert_refreshed(&run);

    let combined = work.join("combined");
    checked_output(
        tool(major, "pg_combinebackup")
            .arg(&full)
            .arg(&inc)
            .arg("-o")
            .arg(&combined)
            .arg("--no-sync"),
        "pg_combinebackup",
    );
    let (ours, theirs) = (relation_files(&copy), relation_files(&combined));
    assert!(ours.len() > 100, "{} files", ours.len());
    let diff = differences(&ours, &theirs);
    assert!(
        diff.is_empty(),
        "refreshed copy vs pg_combinebackup:\n{}",
        diff.join("\n")
    );

    // The refreshed copy is a backup: it recovers and holds the primary's rows.
    let mut restored = Cluster::start_existing(major, &copy, &[]);
    restored.wait_for("SELECT pg_is_in_recovery()", "f", WAIT);
    assert_eq!(contents(&restored), contents(&p));
    restored.stop();
}

#[test]
fn pg17_refresh_of_an_idle_primary_equals_pg_combinebackup() {
    same_as_pg_combinebackup(17);
}

#[test]
fn pg18_refresh_of_an_idle_primary_equals_pg_combinebackup() {
    same_as_pg_combinebackup(18);
}

// ---------------------------------------------------------------------------------------------
// Case 3: an interrupted refresh.

/// The pgclone process of `child` (runuser may sit between us and it).
fn pgclone_pid(child: &std::process::Child) -> i32 {
    let id = child.id() as i32;
    let comm = fs::read_to_string(format!("/proc/{id}/comm")).unwrap_or_default();
    if comm.trim() == "pgclone" {
        return id;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(&pid) = children_of(id).first() {
            return pid;
        }
        if exited(id) {
            // pgclone ended already; the checks after the kill say how.
            return id;
        }
        assert!(Instant::now() < deadline, "no pgclone under {id}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `pg_ctl start` of `dir` must fail; returns its output and the server log.
fn start_refused(major: u32, dir: &Path, log: &Path) -> String {
    let out = pg_ctl(&support::server_bin(major), dir)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "30", "-o"])
        .arg(format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            support::free_port(),
            text(dir.parent().expect("parent"))
        ))
        .arg("start")
        .output()
        .expect("pg_ctl");
    let said = format!(
        "{}{}",
        output_text(&out),
        fs::read_to_string(log).unwrap_or_default()
    );
    assert!(!out.status.success(), "the server started: {said}");
    said
}

fn interrupted_refresh(major: u32) {
    let p = primary(major, true, &[]);
    let work = TestDir::new(&format!("rm-int{major}"));
    p.psql(
        "CREATE TABLE big(g int PRIMARY KEY, v text); \
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g; CHECKPOINT",
    );
    let dir = work.join("standby");
    clone(&p, &dir, &["-R"]);
    let mut standby = Cluster::start_existing(major, &dir, &[]);
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    standby.stop();
    drop(standby);
    // Every page of `big` changes: the refresh has megabytes to receive.
    p.psql("UPDATE big SET v = repeat('z', 200) WHERE g % 10 = 0; CHECKPOINT");
    recycle_wal(&p);

    let child = refresh_cmd(&p, &dir, &["-R", "-v", "-r", "32k"]).spawn();
    let pid = pgclone_pid(&child);
    let deadline = Instant::now() + WAIT;
    while dir.join("global/pg_control").exists() && Instant::now() < deadline && !exited(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Well into the writing (a second of the throttled stream), then SIGKILL.
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill has no memory-safety preconditions; the pid is our pgclone.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let run = pgclone_wait(child);
    // Killed by the signal (runuser, when it sits between, reports it as 128 + 9).
    let killed = run.status.signal() == Some(libc::SIGKILL) || run.status.code() == Some(137);
    assert!(
        killed,
        "pgclone ended ({}) before it was killed:\n{}",
        run.status, run.stderr
    );
    assert!(
        !dir.join("global/pg_control").exists(),
        "interrupted refresh left global/pg_control:\n{}",
        run.stderr
    );
    let said = start_refused(major, &dir, &work.join("refused.log"));
    assert!(
        said.contains("pg_control") || said.contains("could not find the database system"),
        "{said}"
    );

    let run = refresh_cmd(&p, &dir, &["-R", "-v"]).run();
    assert_refreshed(&run);
    let mut replica = start_and_compare(&p, &dir, "resumed");
    replica.stop();
    checksums_clean(major, &dir);
}

#[test]
fn pg17_interrupted_refresh_does_not_start_and_is_completed() {
    interrupted_refresh(17);
}

#[test]
fn pg18_interrupted_refresh_does_not_start_and_is_completed() {
    interrupted_refresh(18);
}

// ---------------------------------------------------------------------------------------------
// Case 4: refusals.

/// Every entry under `dir` (links not followed): kind, size, link target, hash of the bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("inside").to_path_buf();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let what = if meta.is_dir() {
                walk(root, &path, out);
                "dir".to_owned()
            } else if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).expect("readlink").display())
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs::read(&path).expect("read").hash(&mut h);
                format!("file {} {:016x}", meta.len(), h.finish())
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What a refusal may tell the user to do instead (issue 13, point 4).
const INSTEAD: [&str; 4] = ["full clone", "stop it", "pg_rewind", "summarize_wal = on"];

/// `--refresh` of `dir` against `p` must be refused with exit code 1 and one error line naming
/// one of `why` and one of [`INSTEAD`] (case-insensitive), leaving `dir` byte for byte as it
/// was. Returns what went wrong (so that one failure does not hide the later cases).
fn refused(p: &Cluster, dir: &Path, why: &[&str]) -> Vec<String> {
    let before = snapshot(dir);
    let run = refresh_cmd(p, dir, &["-R", "-v"]).run();
    let errors = run.error_lines();
    let line = errors.first().copied().unwrap_or_default();
    let lower = line.to_lowercase();
    let mut problems = Vec::new();
    if run.status.code() != Some(1) || errors.len() != 1 || run.stderr.contains("panicked") {
        problems.push(format!(
            "{why:?}: want exit 1 and one error line:\n{}",
            run.stderr
        ));
    } else if !why.iter().any(|w| lower.contains(&w.to_lowercase())) {
        problems.push(format!("{line:?} names none of {why:?}"));
    } else if !INSTEAD.iter().any(|w| lower.contains(w)) {
        problems.push(format!("{line:?} says nothing of what to do instead"));
    }
    let after = snapshot(dir);
    let changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{}: {:?} -> {:?}", k.display(), before.get(k), after.get(k)))
        .collect();
    if !changed.is_empty() {
        problems.push(format!(
            "{why:?}: the refused refresh changed {}:\n{}",
            dir.display(),
            changed.join("\n")
        ));
    }
    problems
}

/// Panics with every problem [`refused`] found.
fn assert_no_problems(problems: &[String]) {
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// A pgclone `-R` clone of `upstream` into `dir`, started until it streams, then stopped.
fn stopped_standby(upstream: &Cluster, dir: &Path) {
    clone(upstream, dir, &["-R"]);
    let mut s = Cluster::start_existing(upstream.major, dir, &[]);
    s.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    upstream.psql("CREATE TABLE IF NOT EXISTS seen(x int); INSERT INTO seen VALUES (1)");
    caught_up(upstream, &s);
    s.stop();
}

#[test]
fn refresh_refuses_a_16_server() {
    let p = primary(16, false, &[]);
    let work = TestDir::new("rm-16");
    let dir = work.join("standby");
    stopped_standby(&p, &dir);
    assert_no_problems(&refused(&p, &dir, &["17", "incremental"]));
}

#[test]
fn pg17_refusals_leave_the_directory_unchanged() {
    let p = primary(17, false, &[]);
    let mut problems = Vec::new();
    let work = TestDir::new("rm-refuse");
    let old = work.join("old");
    stopped_standby(&p, &old);

    // Not a data directory: no pg_control, no marker.
    let empty = work.mkdir("not-data");
    fs::write(empty.join("notes.txt"), "not a cluster\n").expect("write");
    problems.extend(refused(&p, &empty, &["data directory", "pg_control"]));

    problems.extend(refused(&p, &old, &["summarize_wal"]));

    // Summaries start only after the standby's restartpoint.
    p.psql("INSERT INTO seen VALUES (2)");
    p.psql("CHECKPOINT");
    p.psql("ALTER SYSTEM SET summarize_wal = on");
    p.psql("SELECT pg_reload_conf()");
    p.wait_for("SHOW summarize_wal", "on", WAIT);
    recycle_wal(&p);
    p.wait_for(
        "SELECT count(*) > 0 FROM pg_available_wal_summaries()",
        "t",
        WAIT,
    );
    problems.extend(refused(&p, &old, &["summar"]));

    // A standby of another primary.
    let q = primary(17, true, &[]);
    let foreign = work.join("foreign");
    stopped_standby(&q, &foreign);
    problems.extend(refused(&p, &foreign, &["system identifier"]));

    // A postmaster running on the directory (held still so its files do not move).
    let dir = work.join("standby");
    clone(&p, &dir, &["-R"]);
    let mut s = Cluster::start_existing(17, &dir, &[]);
    s.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    signal_server(&s, libc::SIGSTOP);
    problems.extend(refused(&p, &dir, &["running", "postmaster"]));
    signal_server(&s, libc::SIGCONT);

    // A promoted standby: its timeline left the primary's history.
    s.psql("SELECT pg_promote()");
    s.wait_for("SELECT pg_is_in_recovery()", "f", WAIT);
    s.psql("CREATE TABLE on_promoted(x int); INSERT INTO on_promoted VALUES (1)");
    s.stop();
    problems.extend(refused(&p, &dir, &["timeline", "promoted", "pg_rewind"]));
    assert_no_problems(&problems);
}
