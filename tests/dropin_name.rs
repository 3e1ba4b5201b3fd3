//! pgclone run as `pg_basebackup` (through a symlink of that name, as Patroni, repmgr and
//! Barman find it) names itself so wherever pg_basebackup puts its name: in its messages, the
//! `--help` usage lines and hints, `--version`, and on the server (the walsenders'
//! `application_name` in `pg_stat_replication`, the temporary slot `pg_basebackup_<pid>`, the
//! backup label). Run as `pgclone`, it says pgclone. A dead WAL connection says what
//! pg_basebackup says: `background process terminated unexpectedly`.
//!
//! With `PGCLONE_STAND_IN=/bin/false` the `pg_basebackup` link runs that instead, and every
//! test that runs the link fails (`named_pgclone_stays_pgclone` runs pgclone by its own name).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::proxy::{Fault, Proxy};
use support::{as_pg_user, dropin, free_port, pgclone_exe, run_cmd, Cluster, ClusterOptions, Run};
use support::{Load, TestDir};

const WAIT: Duration = Duration::from_secs(60);

/// A directory whose `pg_basebackup` is pgclone (or `PGCLONE_STAND_IN`); its path.
fn pg_basebackup(work: &TestDir) -> PathBuf {
    let sources: &[&Path] = &[];
    dropin::bin_dir(work, "bin", sources).join("pg_basebackup")
}

/// `program` (as the unprivileged account) cloning the server on `port` into `dest` with a
/// fast checkpoint, plus `extra`; stdout and stderr piped.
fn clone_cmd(program: &Path, port: u16, dest: &Path, extra: &[&str]) -> Command {
    let mut cmd = as_pg_user(program);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .arg("-D")
        .arg(dest)
        .args(["-c", "fast"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A primary with about 6 MB of data, so that a clone at `-r 2M` lasts a few seconds.
fn primary(major: u32) -> Cluster {
    let p = Cluster::start(&ClusterOptions::new(major));
    p.psql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS v FROM generate_series(1, 10000) g",
    );
    p
}

/// What the server shows while a clone named `name` runs, polled until its WAL connection
/// streams beside the backup: the walsenders' `application_name:state` pairs, and the
/// temporary slots as `slot_name:pid` when named `<name>_<pid of the walsender holding it>`.
fn observe_running_clone(
    p: &Cluster,
    name: &str,
    child: &mut std::process::Child,
) -> (String, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let senders = p.psql(
            "SELECT string_agg(application_name || ':' || state, ',' ORDER BY state) \
             FROM pg_stat_replication",
        );
        if senders.contains(":backup") && senders.contains(":streaming") {
            let slots = p.psql(&format!(
                "SELECT string_agg(slot_name || CASE WHEN slot_name = '{name}_' || active_pid \
                 THEN ':pid' ELSE ':other' END, ',') FROM pg_replication_slots WHERE temporary"
            ));
            return (senders, slots);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the clone ended ({status}) before it was seen streaming");
        }
        assert!(
            Instant::now() < deadline,
            "never saw the clone streaming: {senders}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `program` (named `name`) with `-X stream -R` at 2 MB/s against `p`, checks what the
/// server shows while it runs, and returns the finished clone's directory.
fn clone_and_observe(p: &Cluster, work: &TestDir, program: &Path, name: &str) -> PathBuf {
    let dest = work.join(&format!("copy-{name}"));
    let mut child = clone_cmd(program, p.port, &dest, &["-X", "stream", "-R", "-r", "2M"])
        .spawn()
        .expect("spawn the clone");
    let (senders, slots) = observe_running_clone(p, name, &mut child);
    let run = Run::from(child.wait_with_output().expect("wait for the clone"));
    assert!(run.status.success(), "{name} failed:\n{}", run.stderr);
    assert_eq!(senders, format!("{name}:backup,{name}:streaming"));
    assert!(slots.starts_with(&format!("{name}_")), "{slots}");
    assert!(slots.ends_with(":pid") && !slots.contains(','), "{slots}");
    let label = fs::read_to_string(dest.join("backup_label")).expect("backup_label");
    assert!(
        label
            .lines()
            .any(|l| l == format!("LABEL: {name} base backup")),
        "{label}"
    );
    dest
}

/// The `primary_conninfo` line `-R` wrote (PostgreSQL 12+: `postgresql.auto.conf`, older:
/// `recovery.conf`).
fn primary_conninfo(dest: &Path, major: u32) -> String {
    let file = if major >= 12 {
        "postgresql.auto.conf"
    } else {
        "recovery.conf"
    };
    let text = fs::read_to_string(dest.join(file)).expect("recovery settings");
    text.lines()
        .find(|l| l.starts_with("primary_conninfo"))
        .unwrap_or_else(|| panic!("no primary_conninfo in {file}:\n{text}"))
        .to_owned()
}

/// Run as `pg_basebackup` against `major`: the server sees `pg_basebackup` on both
/// walsenders and the slot `pg_basebackup_<pid>`, the label is pg_basebackup's, `-R` leaves
/// the (fallback) application name out of `primary_conninfo` as pg_basebackup 18 does, and
/// the clone starts as a standby that follows the primary.
fn named_pg_basebackup_on_the_server(major: u32) {
    let p = primary(major);
    let work = TestDir::new("dropin-name");
    let program = pg_basebackup(&work);
    let dest = clone_and_observe(&p, &work, &program, "pg_basebackup");
    let conninfo = primary_conninfo(&dest, major);
    assert!(!conninfo.contains("application_name"), "{conninfo}");

    let replica = Cluster::start_existing(major, &dest, &[]);
    p.psql("CREATE TABLE after_clone AS SELECT 1 AS x");
    replica.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    replica.wait_for("SELECT count(*) FROM after_clone", "1", WAIT);
}

#[test]
fn pg16_named_pg_basebackup_on_the_server() {
    named_pg_basebackup_on_the_server(16);
}

#[test]
fn pg10_named_pg_basebackup_on_the_server() {
    named_pg_basebackup_on_the_server(10);
}

/// Run as `pgclone`, the same clone says pgclone on the server and in the label.
#[test]
fn named_pgclone_stays_pgclone() {
    let p = primary(16);
    let work = TestDir::new("dropin-own-name");
    clone_and_observe(&p, &work, pgclone_exe(), "pgclone");
}

/// A bad flag, `--help`, `--version` and a failed connection, as `pg_basebackup` and as
/// `pgclone`: each names the program it runs as, and only that one.
#[test]
fn messages_name_the_program() {
    let work = TestDir::new("dropin-messages");
    let as_pgb = pg_basebackup(&work);
    let version = env!("CARGO_PKG_VERSION");
    for (program, name, other, version_line) in [
        (
            as_pgb.as_path(),
            "pg_basebackup",
            "pgclone:",
            format!("pg_basebackup (PostgreSQL) 18.0 (pgclone {version})"),
        ),
        (
            pgclone_exe(),
            "pgclone",
            "pg_basebackup:",
            format!("pgclone {version}"),
        ),
    ] {
        let run_with = |args: &[&str]| {
            let mut cmd = as_pg_user(program);
            cmd.args(args);
            run_cmd(cmd)
        };
        let run = run_with(&["--bogus"]);
        assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
        assert_eq!(
            run.stderr,
            format!(
                "{name}: error: unexpected argument '--bogus' found\n\
                 {name}: hint: Try \"{name} --help\" for more information.\n"
            )
        );

        let run = run_with(&["--version"]);
        assert!(run.status.success(), "{}", run.stderr);
        assert_eq!(run.stdout, format!("{version_line}\n"));

        let run = run_with(&["--help"]);
        assert!(run.status.success(), "{}", run.stderr);
        assert!(
            run.stdout.contains(&format!("Usage: {name} [OPTIONS]")),
            "{}",
            run.stdout
        );
        assert!(!run
            .stdout
            .contains(&format!("Usage: {}", other.trim_end_matches(':'))));

        let dest = work.join(&format!("never-{name}"));
        let run = run_cmd(clone_cmd(program, free_port(), &dest, &["--no-password"]));
        let errors = run.error_lines_of(name);
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(
            errors[0].contains("connection to server at"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains(other), "{}", run.stderr);
        assert!(!dest.exists());
    }
}

/// Run as `pg_basebackup`, a WAL connection cut while streaming fails the clone with
/// pg_basebackup's `background process terminated unexpectedly`, pgclone's detail after it,
/// and removes the directory.
#[test]
fn cut_wal_connection_says_background_process_terminated() {
    let p = primary(15);
    let _load = Load::start(&p);
    let work = TestDir::new("dropin-cut");
    let program = pg_basebackup(&work);
    let dest = work.join("copy");
    // Connection 0 is the main one, 1 the WAL one: cut well into the WAL stream.
    let proxy = Proxy::start(p.port, vec![Fault::None, Fault::CutAt(200_000)]);
    let run = run_cmd(clone_cmd(
        &program,
        proxy.port,
        &dest,
        &["-X", "stream", "-r", "1M"],
    ));
    drop(proxy);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let errors = run.error_lines_of("pg_basebackup");
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].starts_with(
            "pg_basebackup: error: background process terminated unexpectedly: \
             could not receive data from WAL stream: "
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("pgclone:"), "{}", run.stderr);
    assert!(!dest.exists(), "{}", run.stderr);
    p.wait_for("SELECT count(*) FROM pg_replication_slots", "0", WAIT);
}

/// Run as `pg_basebackup`, failures the server side causes read as pg_basebackup's: a tar on
/// standard output of a server with a tablespace is refused before any archive is written; a
/// missing `-S` slot fails START_REPLICATION in the background process.
#[test]
fn server_side_failures_in_pg_basebackups_words() {
    let p = Cluster::start(&ClusterOptions::new(16));
    let work = TestDir::new("dropin-refusals");
    p.create_tablespace("elsewhere", &work.mkdir("ts"));
    let program = pg_basebackup(&work);
    let run = run_cmd(clone_cmd(
        &program,
        p.port,
        Path::new("-"),
        &["-Ft", "-X", "fetch"],
    ));
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert_eq!(
        run.error_lines_of("pg_basebackup"),
        ["pg_basebackup: error: can only write single tablespace to stdout, database has 2"],
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "{} bytes on stdout",
        run.stdout.len()
    );

    let dest = work.join("copy");
    let run = run_cmd(clone_cmd(
        &program,
        p.port,
        &dest,
        &["-Ft", "-X", "stream", "-S", "nosuchslot"],
    ));
    assert_eq!(
        run.error_lines_of("pg_basebackup"),
        [
            "pg_basebackup: error: background process terminated unexpectedly: could not send \
             replication command \"START_REPLICATION\": ERROR:  replication slot \"nosuchslot\" \
             does not exist"
        ],
        "{}",
        run.stderr
    );
    assert!(!dest.exists());
}
