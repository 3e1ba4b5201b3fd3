//! The reference side of `--refresh` against real 17 and 18 servers: `global/pg_control` read
//! as pg_controldata reads it (fresh initdb, and a standby stopped after replaying writes), and
//! the reference manifest synthesized from that stopped standby accepted by the real server:
//! `pg_basebackup -i` of the same major takes an incremental backup from it whose relation files
//! are `INCREMENTAL.*` files far smaller than the full ones; pg_combinebackup of the standby's
//! directory and that incremental backup starts with the primary's data and clean page
//! checksums (nothing changed before the reference point is missing). The server refuses a
//! manifest with a wrong checksum, another system identifier, a timeline not in its history, or
//! a start before its WAL summaries begin (the messages a refresh has to translate).

mod support;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgclone::manifest::{Manifest, ManifestWriter, WalRange};
use pgclone::refresh::{synthesize, ControlFile, DbState, ReferencePoint};
use pgclone_proto::{Lsn, TimelineId};
use support::{
    as_pg_user, chown_to_pg_user, create_table_t, initdb_cmd, output_text, pgclone_cmd, server_bin,
    tools_bin, Cluster, ClusterOptions, TestDir,
};

const WAIT: Duration = Duration::from_secs(60);

/// pg_controldata's `key: value` lines.
fn controldata(major: u32, data: &Path) -> HashMap<String, String> {
    let out = as_pg_user(tools_bin(major).join("pg_controldata"))
        .env("LC_ALL", "C")
        .arg(data)
        .output()
        .expect("pg_controldata");
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Asserts that every field `ControlFile` reads agrees with pg_controldata.
fn assert_matches_controldata(major: u32, data: &Path, c: &ControlFile) {
    let d = controldata(major, data);
    let get = |k: &str| {
        d.get(k)
            .unwrap_or_else(|| panic!("no {k:?} in {d:?}"))
            .as_str()
    };
    let lsn = |k: &str| get(k).parse::<Lsn>().unwrap_or_else(|_| panic!("{k}"));
    assert_eq!(
        get("pg_control version number"),
        c.pg_control_version.to_string()
    );
    assert_eq!(get("Catalog version number"), c.catalog_version.to_string());
    assert_eq!(
        get("Database system identifier"),
        c.system_identifier.to_string()
    );
    assert_eq!(get("Database cluster state"), c.state.name());
    assert_eq!(lsn("Latest checkpoint location"), c.checkpoint);
    assert_eq!(lsn("Latest checkpoint's REDO location"), c.redo);
    assert_eq!(
        get("Latest checkpoint's TimeLineID"),
        c.timeline.to_string()
    );
    assert_eq!(
        get("Latest checkpoint's PrevTimeLineID"),
        c.prev_timeline.to_string()
    );
    assert_eq!(
        lsn("Minimum recovery ending location"),
        c.min_recovery_point
    );
    assert_eq!(
        get("Min recovery ending loc's timeline"),
        c.min_recovery_point_timeline.to_string()
    );
    assert_eq!(lsn("Backup start location"), c.backup_start_point);
    assert_eq!(lsn("Backup end location"), c.backup_end_point);
    let required = if c.backup_end_required { "yes" } else { "no" };
    assert_eq!(get("End-of-backup record required"), required);
    assert_eq!(get("Database block size"), c.block_size.to_string());
    assert_eq!(
        get("Blocks per segment of large relation"),
        c.relation_segment_blocks.to_string()
    );
    assert_eq!(
        get("Bytes per WAL segment"),
        c.wal_segment_size.bytes().to_string()
    );
    assert_eq!(
        get("Data page checksum version"),
        c.data_checksum_version.to_string()
    );
}

fn fresh_initdb_control_file(major: u32) {
    let work = TestDir::new("control");
    let data = work.join("data");
    let mut initdb = initdb_cmd(&server_bin(major), &data);
    support::checked_output(initdb.arg("-k"), "initdb");
    let c = ControlFile::read_data_dir(&data).expect("read pg_control");
    assert_eq!(c.pg_control_version, major * 100);
    assert_eq!(c.state, DbState::Shutdowned);
    assert_eq!(c.data_checksum_version, 1);
    assert_matches_controldata(major, &data, &c);
    // A cleanly shut down server's reference ends at its last checkpoint.
    let point = ReferencePoint::from_control(&c).expect("reference point");
    assert_eq!((point.start, point.end), (c.redo, c.checkpoint));
}

#[test]
fn pg17_control_file_matches_pg_controldata() {
    fresh_initdb_control_file(17);
}

#[test]
fn pg18_control_file_matches_pg_controldata() {
    fresh_initdb_control_file(18);
}

/// Total size of the regular files under `dir` (following no links), `pg_wal` left out.
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let meta = fs::symlink_metadata(entry.path()).expect("stat");
        if meta.is_dir() && entry.file_name() != "pg_wal" {
            total += tree_size(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// A command of the toolset of `major`, as the unprivileged account.
fn tool(major: u32, name: &str) -> Command {
    let mut cmd = as_pg_user(tools_bin(major).join(name));
    cmd.env("LC_ALL", "C");
    cmd
}

/// `pg_basebackup -i <manifest> -D <dest>` of `major` against `primary`, plain format.
fn pg_basebackup_incremental(
    primary: &Cluster,
    manifest: &Path,
    dest: &Path,
    mapping: &str,
) -> std::process::Output {
    tool(primary.major, "pg_basebackup")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
        ])
        .arg("-i")
        .arg(manifest)
        .arg("-D")
        .arg(dest)
        .args(["-X", "stream", "-c", "fast", "--no-sync", "-T", mapping])
        .output()
        .expect("pg_basebackup")
}

/// Writes `bytes` to `path`, readable by the unprivileged account.
fn write_file(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).expect("write");
    chown_to_pg_user(path);
}

/// md5 of table `t` and of `big`, ordered.
fn table_digest(c: &Cluster) -> String {
    c.psql(
        "SELECT (SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t) || ' ' || \
         (SELECT md5(string_agg(g || ':' || v, ',' ORDER BY g)) FROM big)",
    )
}

/// The primary (checksums, `summarize_wal = on`) with `big` (~25 MB) and `t` in tablespace `ts`,
/// and its standby cloned by pgclone `-R` (tablespace mapped), streaming.
struct Setup {
    work: TestDir,
    primary: Cluster,
    standby: Cluster,
    standby_dir: PathBuf,
    ts_primary: PathBuf,
}

fn setup(major: u32) -> Setup {
    let mut opts = ClusterOptions::new(major);
    opts.checksums = true;
    opts.conf = vec!["summarize_wal = on".into()];
    let primary = Cluster::start(&opts);
    let work = TestDir::new("refref");
    let t = create_table_t(&primary, &work, true, "");
    primary.psql(
        "CREATE TABLE big(g int PRIMARY KEY, v text); \
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g; \
         CHECKPOINT",
    );
    let standby_dir = work.join("standby");
    pgclone_cmd()
        .server(primary.port, "postgres")
        .dest(&standby_dir)
        .args([
            "-c",
            "fast",
            "-R",
            "-T",
            t.mapping.as_deref().expect("mapping"),
        ])
        .run()
        .assert_ok();
    let standby = Cluster::start_existing(major, &standby_dir, &[]);
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    Setup {
        ts_primary: work.join("ts-primary"),
        work,
        primary,
        standby,
        standby_dir,
    }
}

/// How the standby is stopped before its reference is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `pg_ctl stop -m fast`: a shutdown restartpoint writes every buffer out.
    Fast,
    /// SIGKILL of the postmaster and all its children at once: what was replayed after the last
    /// restartpoint is partly only in shared memory, and is lost.
    Kill,
}

/// Kills the server of `c` and every child of its postmaster with SIGKILL, and waits until they
/// are gone.
fn kill_server(c: &mut Cluster) {
    let pid_file = fs::read_to_string(c.data.join("postmaster.pid")).expect("postmaster.pid");
    let postmaster: i32 = pid_file.lines().next().expect("pid").parse().expect("pid");
    let mut pids = vec![postmaster];
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(entry.file_name().to_string_lossy().parse().expect("pid"));
        }
    }
    for &pid in &pids {
        // SAFETY: kill has no memory-safety preconditions; these are the test server's pids.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + WAIT;
    // SAFETY: signal 0 only checks whether the process exists.
    while pids.iter().any(|&pid| unsafe { libc::kill(pid, 0) } == 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "server survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Clears the running flag (pg_ctl finds no server).
    c.stop();
}

/// Writes on the primary and lets the standby replay them: some before a checkpoint (so the
/// standby's last restartpoint has a recent REDO point), many after it; then stops the standby
/// and checks its control file against pg_controldata and the primary's checkpoint.
fn replay_and_stop(s: &mut Setup, stop: Stop) -> ControlFile {
    let p = &s.primary;
    p.psql("UPDATE big SET v = 'before checkpoint' WHERE g % 1000 = 0; INSERT INTO t VALUES (5001, 'a')");
    p.psql("CHECKPOINT");
    let redo: Lsn = p
        .psql("SELECT redo_lsn FROM pg_control_checkpoint()")
        .parse()
        .expect("redo");
    // A restartpoint at that checkpoint (standbys make them on their own schedule otherwise).
    s.standby.wait_for_replay(&p.current_lsn());
    s.standby.psql("CHECKPOINT");
    p.psql("UPDATE big SET v = 'after checkpoint' WHERE g % 997 = 42");
    let replayed = p.current_lsn();
    s.standby.wait_for_replay(&replayed);
    match stop {
        Stop::Fast => s.standby.stop(),
        Stop::Kill => kill_server(&mut s.standby),
    }
    let c = ControlFile::read_data_dir(&s.standby_dir).expect("standby pg_control");
    assert_matches_controldata(p.major, &s.standby_dir, &c);
    assert!(
        c.redo >= redo,
        "restartpoint {} before checkpoint {redo}",
        c.redo
    );
    if stop == Stop::Fast {
        assert_eq!(c.state, DbState::ShutdownedInRecovery);
        assert!(c.min_recovery_point >= replayed.parse().expect("lsn"));
    } else {
        assert_eq!(c.state, DbState::InArchiveRecovery);
    }
    c
}

fn standby_reference_is_accepted(major: u32, stop: Stop) {
    let mut s = setup(major);
    let control = replay_and_stop(&mut s, stop);
    let p = &s.primary;
    // A small change after the standby stopped: one page of `big`, one row of `t`.
    p.psql("UPDATE big SET v = 'after stop' WHERE g = 77; INSERT INTO t VALUES (5002, 'b')");

    let reference = synthesize(&s.standby_dir).expect("synthesize");
    assert_eq!(reference.control, control);
    assert_eq!(reference.point.start, control.redo);
    assert_eq!(
        reference.point.end,
        control.min_recovery_point.max(control.redo)
    );
    Manifest::check_own_checksum(&reference.manifest).expect("own checksum");
    let parsed = Manifest::parse(&reference.manifest).expect("parse");
    let big_path = p.psql("SELECT pg_relation_filepath('big')");
    assert!(
        parsed.file(big_path.as_bytes()).is_some(),
        "{big_path} not listed"
    );
    assert!(parsed.file(b"global/pg_control").is_some());
    assert!(parsed.files.iter().all(|f| !f.path.starts_with(b"pg_wal/")));
    assert!(parsed
        .files
        .iter()
        .any(|f| f.path.starts_with(b"pg_tblspc/")));
    let manifest_path = s.work.join("reference_manifest");
    write_file(&manifest_path, &reference.manifest);

    refused_manifests(&s, &reference.manifest, reference.point);

    // The real pg_basebackup of this major uploads it and takes an incremental backup.
    let inc = s.work.join("inc");
    let ts_inc = s.work.join("ts-inc");
    let mapping = format!("{}={}", s.ts_primary.display(), ts_inc.display());
    let out = pg_basebackup_incremental(p, &manifest_path, &inc, &mapping);
    assert!(
        out.status.success(),
        "pg_basebackup -i: {}",
        output_text(&out)
    );
    let label = fs::read_to_string(inc.join("backup_label")).expect("backup_label");
    assert!(
        label.contains(&format!("INCREMENTAL FROM LSN: {}", control.redo)),
        "{label}"
    );
    let (dir, name) = big_path.rsplit_once('/').expect("path");
    let full = fs::metadata(s.standby_dir.join(&big_path))
        .expect("big")
        .len();
    let incremental = fs::metadata(inc.join(dir).join(format!("INCREMENTAL.{name}")))
        .expect("big is sent as an INCREMENTAL file")
        .len();
    assert!(
        incremental * 10 < full,
        "INCREMENTAL.{name} has {incremental} bytes, the full file {full}"
    );
    // The tablespace's table too, under the tablespace's directory.
    let t_path = p.psql("SELECT pg_relation_filepath('t')");
    let (t_dir, t_name) = t_path.rsplit_once('/').expect("path");
    let in_ts = t_dir.splitn(3, '/').nth(2).expect("pg_tblspc/<oid>/...");
    assert!(
        ts_inc
            .join(in_ts)
            .join(format!("INCREMENTAL.{t_name}"))
            .is_file(),
        "{t_path} not sent incrementally"
    );
    let (inc_size, standby_size) = (
        tree_size(&inc) + tree_size(&ts_inc),
        tree_size(&s.standby_dir),
    );
    assert!(
        inc_size * 4 < standby_size,
        "incremental backup {inc_size} bytes, the standby {standby_size}"
    );

    combine_and_compare(&s, &inc, &ts_inc);
}

/// The server refuses the reference with one byte of its body changed, a manifest of another
/// cluster, one on a timeline it never had, and one from before its WAL summaries begin.
fn refused_manifests(s: &Setup, manifest: &[u8], point: ReferencePoint) {
    let scratch = TestDir::new("refref-bad");
    let mut bad = manifest.to_vec();
    let at = bad.iter().position(|&b| b == b'[').expect("Files list");
    bad.insert(at + 1, b' ');
    let with_range = |sysid: u64, range: WalRange| ManifestWriter::new(sysid).finish(&[range]);
    let sysid = point.system_identifier;
    let other = with_range(42, point.wal_range());
    let mut range = point.wal_range();
    range.timeline = TimelineId(7);
    let other_timeline = with_range(sysid, range);
    let mut range = point.wal_range();
    range.start = Lsn(0x10);
    let unsummarized = with_range(sysid, range);
    for (name, bytes, want) in [
        ("bad-checksum", bad, "manifest checksum mismatch"),
        (
            "other-system",
            other,
            "system identifier in backup manifest is 42",
        ),
        (
            "other-timeline",
            other_timeline,
            "timeline 7 found in manifest, but not in this server's history",
        ),
        (
            "unsummarized",
            unsummarized,
            "WAL summaries are required on timeline 1 from 0/10",
        ),
    ] {
        let path = scratch.join(name);
        write_file(&path, &bytes);
        let mapping = format!(
            "{}={}",
            s.ts_primary.display(),
            scratch.join("ts").display()
        );
        let out = pg_basebackup_incremental(&s.primary, &path, &scratch.join("out"), &mapping);
        let text = output_text(&out);
        assert!(
            !out.status.success() && text.contains(want),
            "{name}: {text}"
        );
    }
}

/// Makes the stopped standby's directory a full backup for pg_combinebackup (its backup_label
/// names the reference point, its backup_manifest is the reference), combines it with the
/// incremental backup, starts the result and compares it with the primary; then checks its
/// page checksums.
fn combine_and_compare(s: &Setup, inc: &Path, ts_inc: &Path) {
    let reference = synthesize(&s.standby_dir).expect("synthesize");
    let point = reference.point;
    let label = format!(
        "START WAL LOCATION: {} (file 000000010000000000000001)\nCHECKPOINT LOCATION: {}\n\
         BACKUP METHOD: streamed\nBACKUP FROM: standby\nSTART TIME: 2026-12-01 00:00:00 UTC\n\
         LABEL: reference\nSTART TIMELINE: {}\n",
        point.start, reference.control.checkpoint, point.timeline
    );
    write_file(&s.standby_dir.join("backup_label"), label.as_bytes());
    write_file(&s.standby_dir.join("backup_manifest"), &reference.manifest);
    let combined = s.work.join("combined");
    let ts_combined = s.work.join("ts-combined");
    let out = tool(s.primary.major, "pg_combinebackup")
        .arg(&s.standby_dir)
        .arg(inc)
        .arg("-o")
        .arg(&combined)
        .arg("-T")
        .arg(format!("{}={}", ts_inc.display(), ts_combined.display()))
        .arg("--no-sync")
        .output()
        .expect("pg_combinebackup");
    assert!(
        out.status.success(),
        "pg_combinebackup: {}",
        output_text(&out)
    );
    let mut restored = Cluster::start_existing(s.primary.major, &combined, &[]);
    restored.wait_for("SELECT pg_is_in_recovery()", "f", WAIT);
    assert_eq!(table_digest(&restored), table_digest(&s.primary));
    assert_eq!(
        restored.psql("SELECT v FROM big WHERE g IN (42, 77, 1000) ORDER BY g"),
        "after checkpoint\nafter stop\nbefore checkpoint"
    );
    restored.stop();
    let out = tool(s.primary.major, "pg_checksums")
        .arg("--check")
        .arg("-D")
        .arg(&combined)
        .output()
        .expect("pg_checksums");
    assert!(out.status.success(), "pg_checksums: {}", output_text(&out));
}

#[test]
fn pg17_stopped_standby_reference_is_accepted_by_the_server() {
    standby_reference_is_accepted(17, Stop::Fast);
}

#[test]
fn pg18_killed_standby_reference_is_accepted_by_the_server() {
    standby_reference_is_accepted(18, Stop::Kill);
}
