//! Connection service files against a real server: a clone reached only through a service
//! (`-d service=NAME` with `PGSERVICEFILE`) starts as a streaming standby, and its
//! `primary_conninfo` holds the values the service resolved to, not `service=`; libpq's errors
//! for a service that no file defines and a `PGSERVICEFILE` that does not exist.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{
    as_pg_user, checked_output, pgclone_cmd, tools_bin, Cluster, ClusterOptions, TestDir,
};

const WAIT: Duration = Duration::from_secs(60);

/// Writes a service file in `work` with a section `primary` for the server on `port`.
fn service_file(work: &TestDir, port: u16) -> std::path::PathBuf {
    let file = work.join("pg_service.conf");
    let text = format!(
        "# the test's services\n[other]\nhost=192.0.2.1\n\n\
         [primary]\nhost=127.0.0.1\nport={port}\nuser=postgres\napplication_name=svcapp\n"
    );
    fs::write(&file, text).expect("write the service file");
    file
}

/// The `primary_conninfo` line of a clone, split into its `key=value` words (the values in
/// these tests need no quoting).
fn primary_conninfo(dir: &Path) -> Vec<String> {
    let conf = fs::read_to_string(dir.join("postgresql.auto.conf")).expect("postgresql.auto.conf");
    let line = conf
        .lines()
        .find_map(|l| l.strip_prefix("primary_conninfo = '"))
        .unwrap_or_else(|| panic!("no primary_conninfo in:\n{conf}"));
    line.trim_end_matches('\'')
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `-d service=primary` with `PGSERVICEFILE` gives host, port, user and application_name: the
/// clone succeeds, and with `-R` starts as a standby that streams from the primary and sees a
/// row written after the clone. Its `primary_conninfo` holds the resolved values and no
/// `service=`. pg_basebackup 18 in the same setup writes the same values but also
/// `service=primary` first (PQconninfo lists the service); a standby whose server cannot find
/// that service then fails to connect with `definition of service "primary" not found`,
/// which is why pgclone leaves it out.
#[test]
fn clones_through_a_service_and_writes_the_resolved_conninfo() {
    let primary = Cluster::start(&ClusterOptions::new(18));
    let work = TestDir::new("service");
    let file = service_file(&work, primary.port);
    let dest = work.join("standby");
    pgclone_cmd()
        .args(["-d", "service=primary", "-c", "fast", "-R"])
        .dest(&dest)
        .env("PGSERVICEFILE", &file)
        .run()
        .assert_ok();

    let ours = primary_conninfo(&dest);
    let port = format!("port={}", primary.port);
    for want in [
        "host=127.0.0.1",
        &port,
        "user=postgres",
        "application_name=svcapp",
    ] {
        assert!(ours.iter().any(|w| w == want), "{want} not in {ours:?}");
    }
    assert!(!ours.iter().any(|w| w.starts_with("service=")), "{ours:?}");

    let standby = Cluster::start_existing(18, &dest, &[]);
    standby.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    primary.psql("CREATE TABLE after_clone(x text); INSERT INTO after_clone VALUES ('after')");
    standby.wait_for(
        "SELECT count(*) FROM pg_tables WHERE tablename = 'after_clone'",
        "1",
        WAIT,
    );
    assert_eq!(standby.psql("SELECT x FROM after_clone"), "after");
    assert_eq!(
        primary.psql("SELECT application_name FROM pg_stat_replication"),
        "svcapp"
    );

    let theirs_dir = work.join("pg_basebackup");
    let mut pgb = as_pg_user(tools_bin(18).join("pg_basebackup"));
    pgb.args(["-d", "service=primary", "-c", "fast", "-R", "-D"])
        .arg(&theirs_dir)
        .env("PGSERVICEFILE", &file);
    checked_output(&mut pgb, "pg_basebackup with a service");
    let theirs = primary_conninfo(&theirs_dir);
    assert_eq!(theirs.first().map(String::as_str), Some("service=primary"));
    for key in ["host", "port", "user", "application_name"] {
        let value = |words: &[String]| {
            words
                .iter()
                .find(|w| w.split_once('=').is_some_and(|(k, _)| k == key))
                .cloned()
        };
        assert_eq!(
            value(&ours),
            value(&theirs),
            "{key}: {ours:?} vs {theirs:?}"
        );
    }
}

/// A service no file defines, and a `PGSERVICEFILE` that does not exist when a service is
/// named, fail before connecting, in libpq's words (as pg_basebackup 18 prints them).
#[test]
fn service_errors_are_libpqs() {
    let work = TestDir::new("service-errors");
    let file = service_file(&work, 1);
    let dest = work.join("dest");
    let run = pgclone_cmd()
        .args(["-d", "service=absent"])
        .dest(&dest)
        .env("PGSERVICEFILE", &file)
        .env("PGSYSCONFDIR", work.path())
        .run();
    run.assert_error("definition of service \"absent\" not found");
    // As pg_basebackup: no hint to --help, the command line was fine.
    assert!(!run.stderr.contains("hint"), "{}", run.stderr);
    let missing = work.join("missing.conf");
    pgclone_cmd()
        .dest(&dest)
        .env("PGSERVICE", "primary")
        .env("PGSERVICEFILE", &missing)
        .run()
        .assert_error(&format!("service file \"{}\" not found", missing.display()));
    assert!(!dest.exists(), "nothing was created");
}

/// The first error line of a run, without the program's `NAME: error: ` prefix.
fn first_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().next().unwrap_or_default();
    line.split_once(": error: ")
        .map_or(line, |(_, message)| message)
        .to_owned()
}

/// The precedence table and the errors, against pg_basebackup 18 itself: for each row both
/// programs connect to socket directories that do not exist, so the error names the host and
/// port libpq (or pgclone) resolved; errors must read the same (pgclone may add a `: detail`
/// to libpq's bare "syntax error"). Rows: service alone, over the environment, under `-d`
/// and under `-h`/`-p`; an empty service value hiding the environment; `PGSERVICE`, and `-d`'s
/// service over it; the user file over the system file without merging; the system file when
/// the user file lacks the service; and libpq's errors.
#[test]
fn precedence_and_errors_match_pg_basebackup() {
    let work = TestDir::new("service-table");
    let user_file = work.join("user.conf");
    fs::write(
        &user_file,
        "[s]\nhost=/shost\nport=1003\n[hostonly]\nhost=/shost\n[emptyport]\nhost=/shost\nport=\n\
         [nested]\nservice=s\n[spaced]\nhost = /x\n[t]\nhost=/thost\nport=1005\n",
    )
    .expect("user file");
    let sys = work.mkdir("sys");
    fs::write(
        sys.join("pg_service.conf"),
        "[s]\nhost=/sys\nport=2000\n[sysonly]\nhost=/sysonly\nport=2001\n[hostonly]\nport=2002\n",
    )
    .expect("system file");
    let file = user_file.display().to_string();
    let missing = work.join("missing.conf").display().to_string();
    let env_hp: &[(&str, &str)] = &[("PGHOST", "/ehost"), ("PGPORT", "1004")];
    // -d, other arguments, environment, and PGSERVICEFILE (None: the user file).
    type Row<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
    );
    let rows: &[Row<'_>] = &[
        ("service=s", &[], &[], None),
        ("service=s", &[], env_hp, None),
        ("service=hostonly", &[], env_hp, None),
        ("service=emptyport", &[], env_hp, None),
        ("service=s port=1002", &[], env_hp, None),
        (
            "service=s port=1002",
            &["-p", "1001", "-h", "/fhost"],
            env_hp,
            None,
        ),
        ("", &[], &[("PGSERVICE", "s")], None),
        ("service=t", &[], &[("PGSERVICE", "s")], None),
        ("postgresql:///?service=t&port=1006", &[], &[], None),
        ("service=sysonly", &[], &[], None),
        ("service=absent", &[], &[], None),
        ("", &[], &[("PGSERVICE", "")], None),
        ("service=nested", &[], &[], None),
        ("service=spaced", &[], &[], None),
        ("service=s", &[], &[], Some(&missing)),
    ];
    for (connstr, args, env, service_file) in rows {
        let mut all: Vec<&str> = vec!["-w", "-D"];
        let dest = work.join("dest").display().to_string();
        all.push(&dest);
        if !connstr.is_empty() {
            all.extend(["-d", connstr]);
        }
        all.extend(args.iter());
        let with_env = |cmd: &mut Command| {
            cmd.env("PGSERVICEFILE", service_file.unwrap_or(&file))
                .env("PGSYSCONFDIR", &sys);
            for (k, v) in *env {
                cmd.env(k, v);
            }
        };
        let mut theirs = as_pg_user(tools_bin(18).join("pg_basebackup"));
        theirs.args(&all);
        with_env(&mut theirs);
        let mut ours = pgclone_cmd().args(&all).command();
        with_env(&mut ours);
        let (theirs, ours) = (
            theirs.output().expect("pg_basebackup"),
            ours.output().expect("pgclone"),
        );
        let (want, got) = (first_error(&theirs.stderr), first_error(&ours.stderr));
        assert!(
            !theirs.status.success() && !ours.status.success(),
            "{connstr:?} {args:?} {env:?}"
        );
        assert!(
            got.starts_with(&want) && !want.is_empty(),
            "{connstr:?} {args:?} {env:?}:\n pg_basebackup: {want}\n pgclone:       {got}"
        );
    }
}
