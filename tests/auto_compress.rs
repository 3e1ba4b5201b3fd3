//! `--compress=auto`, the default: a plain clone over TCP of a 15+ server asks the server for
//! lz4 and unpacks it on the fly; over a Unix socket, to 14, in tar format or with
//! `--compress=none` it asks for nothing; a server built without lz4 (the npm builds) refuses
//! the option and the clone falls back to no compression on the same connection.
//!
//! What the server was asked is read from its own log (`log_replication_commands = on`). Every
//! clone that should work is proven by `pgclone verify` and, for the compressed and the
//! fallen-back ones, by starting it as a streaming replica that sees a row written afterwards.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use support::{
    as_pg_user, fast_clone, pgclone_cmd, pgclone_exe, run_cmd, Cluster, ClusterOptions, Run,
    TestDir,
};

const WAIT: Duration = Duration::from_secs(60);
const ASKED: &str = "asking the server to compress with lz4 (--compress=auto)";
const FELL_BACK: &str = "backing up uncompressed";

/// A primary that logs every replication command; `full_toolset`: the PyPI build (with lz4).
fn primary(major: u32, full_toolset: bool) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    opts.full_toolset = full_toolset;
    opts.conf = vec!["log_replication_commands = on".into()];
    Cluster::start(&opts)
}

/// The BASE_BACKUP commands the server received so far, oldest first (its log is
/// `server.log` next to its socket, see `Cluster::start`).
fn base_backup_commands(p: &Cluster) -> Vec<String> {
    let log = fs::read_to_string(p.socket_dir.join("server.log")).expect("server log");
    log.lines()
        .filter_map(|l| l.split_once("received replication command: "))
        .map(|(_, cmd)| cmd.to_owned())
        .filter(|cmd| cmd.starts_with("BASE_BACKUP"))
        .collect()
}

/// The last BASE_BACKUP command the server received.
fn last_base_backup(p: &Cluster) -> String {
    base_backup_commands(p)
        .pop()
        .unwrap_or_else(|| panic!("no BASE_BACKUP in the log:\n{}", p.log_tail()))
}

/// `pgclone verify` accepts the clone.
fn assert_verifies(dir: &Path) {
    pgclone_cmd().arg("verify").arg(dir).run().assert_ok();
}

/// Starts the clone in `dir` (made with `-R`) and checks it is a replica of `p` that sees a
/// row written after the clone.
fn assert_replica(p: &Cluster, major: u32, dir: &Path, table: &str) {
    let standby = Cluster::start_existing(major, dir, &[]);
    standby.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    p.psql(&format!(
        "CREATE TABLE {table}(x text); INSERT INTO {table} VALUES ('after the clone')"
    ));
    standby.wait_for(
        &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{table}'"),
        "1",
        WAIT,
    );
    standby.wait_for(&format!("SELECT x FROM {table}"), "after the clone", WAIT);
}

/// A clone of `p` over its Unix socket (no `-h 127.0.0.1`) into `dest`, `-v`.
fn clone_over_socket(p: &Cluster, dest: &Path, extra: &[&str]) -> Run {
    pgclone_cmd()
        .arg("-h")
        .arg(&p.socket_dir)
        .args([
            "-p",
            &p.port.to_string(),
            "-U",
            "postgres",
            "-c",
            "fast",
            "-v",
        ])
        .dest(dest)
        .args(extra)
        .run()
}

/// PostgreSQL 16 with lz4: over TCP the default asks for lz4 (and only that; under the name
/// `pg_basebackup` too), the clone verifies and streams as a replica; over the Unix socket, in tar format and with
/// `--compress=none` nothing is asked and nothing arrives compressed.
#[test]
fn auto_asks_for_lz4_over_tcp_only() {
    let work = TestDir::new("auto-compress");
    let p = primary(16, true);
    p.psql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    );

    let tcp = work.join("tcp");
    let run = fast_clone(&p, &tcp, &["-R", "-v", "-P"]);
    run.assert_ok();
    assert!(run.stderr.contains(ASKED), "{}", run.stderr);
    // -P counts the server's uncompressed figure, not the compressed bytes received
    assert!(run.stderr.contains("(100%)"), "{}", run.stderr);
    let cmd = last_base_backup(&p);
    assert!(cmd.contains("COMPRESSION 'lz4'"), "{cmd}");
    assert!(!cmd.contains("COMPRESSION_DETAIL"), "{cmd}");
    assert_verifies(&tcp);
    assert_replica(&p, 16, &tcp, "after_auto");

    let socket = work.join("socket");
    let run = clone_over_socket(&p, &socket, &[]);
    run.assert_ok();
    assert!(!run.stderr.contains(ASKED), "{}", run.stderr);
    let cmd = last_base_backup(&p);
    assert!(!cmd.contains("COMPRESSION"), "over the socket: {cmd}");
    assert_verifies(&socket);

    let none = work.join("none");
    let run = fast_clone(&p, &none, &["--compress=none", "-v"]);
    run.assert_ok();
    assert!(!run.stderr.contains(ASKED), "{}", run.stderr);
    let cmd = last_base_backup(&p);
    assert!(!cmd.contains("COMPRESSION"), "--compress=none: {cmd}");
    assert_verifies(&none);

    let tar = work.join("tar");
    fast_clone(&p, &tar, &["-Ft", "-v"]).assert_ok();
    let cmd = last_base_backup(&p);
    assert!(!cmd.contains("COMPRESSION"), "tar format: {cmd}");
    assert!(tar.join("base.tar").is_file(), "tar format keeps base.tar");

    // Run as `pg_basebackup` (the drop-in), the default is the same: the data directory is
    // the same either way.
    let name = work.join("pg_basebackup");
    std::os::unix::fs::symlink(pgclone_exe(), &name).expect("symlink");
    let dropin = work.join("dropin");
    let mut cmd = as_pg_user(&name);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &p.port.to_string(),
        "-U",
        "postgres",
    ])
    .args(["-c", "fast", "-D"])
    .arg(&dropin);
    run_cmd(cmd).assert_ok();
    let cmd = last_base_backup(&p);
    assert!(cmd.contains("COMPRESSION 'lz4'"), "as pg_basebackup: {cmd}");
    assert!(cmd.contains("LABEL 'pg_basebackup base backup'"), "{cmd}");
    assert_verifies(&dropin);

    // An explicit server-side choice is sent as given, not replaced by auto's.
    let zstd = work.join("zstd");
    fast_clone(&p, &zstd, &["--compress=server-zstd:level=1"]).assert_ok();
    let cmd = last_base_backup(&p);
    assert!(cmd.contains("COMPRESSION 'zstd'"), "{cmd}");
    assert_verifies(&zstd);
}

/// A 14 server takes no COMPRESSION option: auto asks for nothing and the clone works.
#[test]
fn auto_asks_nothing_of_14() {
    let work = TestDir::new("auto-compress-14");
    let p = primary(14, true);
    let dest = work.join("clone");
    let run = fast_clone(&p, &dest, &["-v"]);
    run.assert_ok();
    assert!(!run.stderr.contains(ASKED), "{}", run.stderr);
    let cmd = last_base_backup(&p);
    assert!(!cmd.contains("COMPRESSION"), "{cmd}");
    assert_verifies(&dest);
}

/// A 16 server built without lz4 refuses the option at once; the clone asks again without
/// compression on the same connection, says so only under `-v`, and gives a working replica
/// (a backup left started by the refused command would have made the second one fail).
#[test]
fn server_without_lz4_falls_back_uncompressed() {
    let work = TestDir::new("auto-compress-nolz4");
    let p = primary(16, false);
    let dest = work.join("clone");

    let quiet = work.join("quiet");
    let run = fast_clone(&p, &quiet, &[]);
    run.assert_ok();
    assert!(run.stderr.trim().is_empty(), "without -v: {}", run.stderr);

    let run = fast_clone(&p, &dest, &["-R", "-v"]);
    run.assert_ok();
    assert!(run.stderr.contains(ASKED), "{}", run.stderr);
    assert!(run.stderr.contains(FELL_BACK), "{}", run.stderr);
    let cmds = base_backup_commands(&p);
    let last_two = &cmds[cmds.len() - 2..];
    assert!(last_two[0].contains("COMPRESSION 'lz4'"), "{last_two:?}");
    assert!(!last_two[1].contains("COMPRESSION"), "{last_two:?}");
    assert_verifies(&dest);
    assert_replica(&p, 16, &dest, "after_fallback");
}

/// `-i` with the default over TCP to a 17 server with lz4: the incremental backup comes
/// compressed too, verifies, and pg_combinebackup makes a copy holding the change.
#[test]
fn incremental_comes_compressed_and_combines() {
    let work = TestDir::new("auto-compress-inc");
    let mut opts = support::summarizing(17, &["log_replication_commands = on"]);
    opts.full_toolset = true;
    let p = Cluster::start(&opts);
    p.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g");
    let full = work.join("full");
    fast_clone(&p, &full, &[]).assert_ok();
    p.psql("UPDATE t SET v = 'changed' WHERE id % 7 = 0; CHECKPOINT");
    let want = p.psql("SELECT count(*) FROM t WHERE v = 'changed'");

    let inc = work.join("inc");
    let manifest = full.join("backup_manifest");
    fast_clone(&p, &inc, &["-i", manifest.to_str().expect("utf8")]).assert_ok();
    let cmd = last_base_backup(&p);
    assert!(
        cmd.contains("INCREMENTAL") && cmd.contains("COMPRESSION 'lz4'"),
        "{cmd}"
    );
    assert_verifies(&inc);

    let out = work.join("out");
    support::checked_output(
        as_pg_user(support::tools_bin(17).join("pg_combinebackup"))
            .arg(&full)
            .arg(&inc)
            .arg("-o")
            .arg(&out),
        "pg_combinebackup",
    );
    let copy = Cluster::start_existing(17, &out, &[]);
    assert_eq!(
        copy.psql("SELECT count(*) FROM t WHERE v = 'changed'"),
        want
    );
}
