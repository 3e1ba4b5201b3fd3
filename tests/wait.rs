//! `--wait`: pgclone started before its primary keeps retrying until the primary accepts
//! connections; an authentication failure is never retried.

mod support;

use std::time::{Duration, Instant};

use support::{free_port, pgclone_cmd, pgclone_wait, Cluster, ClusterOptions, TestDir};

#[test]
fn clone_waits_for_a_primary_that_starts_later() {
    let port = free_port();
    let work = TestDir::new("wait");
    let dest = work.join("copy");
    let child = pgclone_cmd()
        .server(port, "replication")
        .dest(&dest)
        .args(["--wait=90", "-c", "fast", "-R"])
        .password("waitpw")
        .spawn();
    // Prepare the primary elsewhere (so that pgclone never meets it half set up), then move it
    // to the port pgclone is waiting on.
    let mut opts = ClusterOptions::new(15);
    opts.hba = vec!["host replication replication 127.0.0.1/32 scram-sha-256".into()];
    let mut p = Cluster::start(&opts);
    p.create_replication_role("waitpw", "scram-sha-256");
    std::thread::sleep(Duration::from_secs(2));
    p.restart_on(port);
    let run = pgclone_wait(child);
    run.assert_ok();
    assert!(
        run.stderr.contains("retrying in"),
        "one line per attempt:\n{}",
        run.stderr
    );
    let replica = Cluster::start_existing(15, &dest, &[]);
    replica.wait_for(
        "SELECT status FROM pg_stat_wal_receiver",
        "streaming",
        Duration::from_secs(60),
    );

    // A wrong password is not worth waiting for.
    let started = Instant::now();
    let other = work.join("other");
    pgclone_cmd()
        .server(port, "replication")
        .dest(&other)
        .arg("--wait=60")
        .password("wrong")
        .run()
        .assert_error("password authentication failed");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// `.pgpass` (via PGPASSFILE) supplies the password, `-R` refers to the file instead of
/// copying the password, a group-readable passfile is refused with libpq's warning, and a URI
/// connection string works.
#[test]
fn passfile_and_uri() {
    use std::os::unix::fs::PermissionsExt;
    let mut opts = ClusterOptions::new(16);
    opts.hba = vec!["host replication replication 127.0.0.1/32 scram-sha-256".into()];
    let p = Cluster::start(&opts);
    p.create_replication_role("from:file", "scram-sha-256");
    let work = TestDir::new("pgpass");
    let passfile = work.join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# comment\nother:*:*:*:nope\n127.0.0.1:{}:replication:replication:from\\:file\n",
            p.port
        ),
    )
    .expect("passfile");
    support::chown_to_pg_user(&passfile);
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let pf = passfile.to_str().expect("utf8");
    let dest = work.join("copy");
    let uri = format!(
        "postgresql://replication@127.0.0.1:{}/?application_name=from%20uri",
        p.port
    );
    pgclone_cmd()
        .args(["-d", &uri])
        .dest(&dest)
        .args(["-R", "-w", "-c", "fast"])
        .env("PGPASSFILE", pf)
        .run()
        .assert_ok();
    let auto = std::fs::read_to_string(dest.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(auto.contains(&format!("passfile=''{pf}''")), "{auto}");
    assert!(!auto.contains("password="), "{auto}");
    assert!(auto.contains("application_name=''from uri''"), "{auto}");

    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let other = work.join("other");
    let run = pgclone_cmd()
        .args(["-d", &uri])
        .dest(&other)
        .arg("-w")
        .env("PGPASSFILE", pf)
        .run();
    run.assert_error("no password supplied");
    assert!(
        run.stderr.contains("has group or world access"),
        "{}",
        run.stderr
    );
}
