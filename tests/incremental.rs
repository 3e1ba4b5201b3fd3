//! `-i/--incremental` against real 17 and 18 primaries (`summarize_wal = on`, data
//! checksums): a full plain clone, changes on the primary, an incremental clone relative to the
//! full one's manifest, then the real `pg_combinebackup` of the same major merges the two into
//! a directory that starts and holds the rows written after the full clone. Also the refusals:
//! a 16 server (pg_basebackup's message, nothing created), `summarize_wal` off and manifests
//! the server rejects, at the end or while the chunks still arrive (the server's message,
//! nothing left), a missing manifest (usage error). The incremental clone itself passes
//! pg_verifybackup and `pgclone verify`.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::{
    as_pg_user, checked_output, pgclone_cmd, tools_bin, Cluster, ClusterOptions, TestDir,
};

/// A primary that keeps WAL summaries, with data checksums.
fn summarizing_primary(major: u32) -> Cluster {
    Cluster::start(&support::summarizing(major, &[]))
}

/// A plain clone of `p` into `dest` with a fast checkpoint, plus `extra` flags.
fn clone(p: &Cluster, dest: &Path, extra: &[&str]) -> support::Run {
    support::fast_clone(p, dest, extra)
}

/// A test path as an argument (temporary directories have UTF-8 names).
fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Writes a file the unprivileged account can read.
fn write_file(path: &Path, text: &str) {
    fs::write(path, text).expect("write");
    support::chown_to_pg_user(path);
}

/// `-i manifest` fails with one error line holding `needle`, and leaves no directory.
fn refused(p: &Cluster, work: &TestDir, manifest: &Path, needle: &str) {
    let dest = work.join("refused");
    clone(p, &dest, &["-i", text(manifest)]).assert_error(needle);
    assert!(!dest.exists(), "{} left behind", dest.display());
}

/// Every `INCREMENTAL.*` file under `dir`, relative to it.
fn incremental_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if entry.file_type().expect("type").is_dir() {
                stack.push(path);
            } else if entry
                .file_name()
                .to_string_lossy()
                .starts_with("INCREMENTAL.")
            {
                found.push(path.strip_prefix(dir).expect("inside").to_path_buf());
            }
        }
    }
    found
}

/// What the test compares between the primary and the combined copy.
const CONTENTS: &str =
    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t \
                        UNION ALL SELECT count(*) || ' ' || sum(x) FROM t2";

/// Full clone, changes, incremental clone, `pg_combinebackup`, start: the changes are there.
/// Returns the primary and the work directory holding `full/`, for further checks.
fn full_then_incremental(major: u32) -> (Cluster, TestDir) {
    let p = summarizing_primary(major);
    let work = TestDir::new(&format!("incr{major}"));
    support::create_table_t(&p, &work, false, "");
    let full = work.join("full");
    clone(&p, &full, &["-X", "stream"]).assert_ok();
    assert!(
        full.join("pg_wal/summaries").is_dir(),
        "full: pg_wal/summaries"
    );

    p.psql(
        "UPDATE t SET v = 'changed ' || id WHERE id % 7 = 0; \
         DELETE FROM t WHERE id BETWEEN 100 AND 199; \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(5001, 9000) g; \
         CREATE TABLE t2 AS SELECT generate_series(1, 3000) AS x; CHECKPOINT",
    );
    let want = p.psql(CONTENTS);

    let inc = work.join("inc");
    let manifest = full.join("backup_manifest");
    clone(&p, &inc, &["-X", "stream", "-i", text(&manifest)]).assert_ok();
    let sent = incremental_files(&inc);
    assert!(
        !sent.is_empty(),
        "no INCREMENTAL.* files in the incremental clone"
    );
    assert!(
        sent.iter()
            .all(|f| f.starts_with("base") || f.starts_with("global")),
        "{sent:?}"
    );
    assert!(
        inc.join("pg_wal/summaries").is_dir(),
        "inc: pg_wal/summaries"
    );
    if let Err(e) = support::verify_backup(major, &inc) {
        panic!("pg_verifybackup {major} on the incremental clone: {e}");
    }
    pgclone_cmd().arg("verify").arg(&inc).run().assert_ok();

    let out = work.join("out");
    checked_output(
        as_pg_user(tools_bin(major).join("pg_combinebackup"))
            .arg(&full)
            .arg(&inc)
            .arg("-o")
            .arg(&out),
        &format!("pg_combinebackup {major}"),
    );
    assert!(incremental_files(&out).is_empty());
    let mut copy = Cluster::start_existing(major, &out, &[]);
    assert_eq!(copy.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(copy.psql(CONTENTS), want, "combined copy of {major}");
    copy.stop();
    (p, work)
}

#[test]
fn incremental_17_combines_with_pg_combinebackup() {
    full_then_incremental(17);
}

#[test]
fn incremental_18_combines_then_refusals_leave_nothing() {
    let (p, work) = full_then_incremental(18);
    let manifest = work.join("full/backup_manifest");

    // Tar format: the INCREMENTAL members go into base.tar as the server sent them.
    let tar = work.join("inc-tar");
    clone(&p, &tar, &["-F", "t", "-X", "fetch", "-i", text(&manifest)]).assert_ok();
    let listing = checked_output(
        std::process::Command::new("tar")
            .arg("-tf")
            .arg(tar.join("base.tar")),
        "tar -tf",
    );
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l.contains("/INCREMENTAL.")),
        "{listing}"
    );

    // A manifest the server rejects: its message, nothing left behind.
    let garbage = work.join("garbage_manifest");
    write_file(&garbage, "{ \"PostgreSQL-Backup-Manifest-Version\": 2 }\n");
    refused(&p, &work, &garbage, "could not upload manifest: ERROR:");
    // Refused while the chunks are still arriving: the server ignores the rest of them.
    write_file(&garbage, &"[1, ".repeat(100_000));
    refused(&p, &work, &garbage, "could not upload manifest: ERROR:");

    // summarize_wal off: the server's message, nothing left behind.
    p.psql("ALTER SYSTEM SET summarize_wal = off");
    p.psql("SELECT pg_reload_conf()");
    p.wait_for(
        "SHOW summarize_wal",
        "off",
        std::time::Duration::from_secs(30),
    );
    refused(
        &p,
        &work,
        &manifest,
        "could not initiate base backup: ERROR:  incremental backups cannot be taken unless WAL summarization is enabled",
    );
}

#[test]
fn incremental_refused_below_17_before_anything_is_created() {
    let p = Cluster::start(&ClusterOptions::new(16));
    let work = TestDir::new("incr16");
    let manifest = work.join("backup_manifest");
    write_file(&manifest, "{}");
    refused(
        &p,
        &work,
        &manifest,
        "server does not support incremental backup",
    );
}

#[test]
fn a_missing_manifest_is_a_usage_error() {
    let work = TestDir::new("incr-missing");
    let dest = work.join("dest");
    let missing = work.join("no/backup_manifest");
    let run = pgclone_cmd()
        .args(["-h", "127.0.0.1", "-p", "1", "-U", "postgres"])
        .dest(&dest)
        .arg("-i")
        .arg(&missing)
        .run();
    run.assert_error(&format!(
        "could not open file \"{}\": No such file or directory",
        missing.display()
    ));
    assert!(
        run.stderr.contains("Try \"pgclone --help\""),
        "{}",
        run.stderr
    );
    assert!(!dest.exists());
}
