//! Bad input against real servers (and one fake one): each case gives one `pgclone: error:`
//! line, exit status 1, and leaves nothing behind.

mod support;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{fake, free_port, pgclone_cmd, Cluster, ClusterOptions, Pgclone, TestDir};

fn primary(major: u32, hba: &[&str]) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    opts.hba = hba.iter().map(|s| (*s).to_owned()).collect();
    Cluster::start(&opts)
}

/// A `-X fetch` clone of the server on `port` as `user` into `dest`.
fn clone_cmd(port: impl std::fmt::Display, user: &str, dest: &Path) -> Pgclone {
    let mut cmd = pgclone_cmd();
    cmd.server(port, user)
        .dest(dest)
        .args(["-X", "fetch", "-c", "fast"]);
    cmd
}

#[test]
fn wrong_password_no_password_and_missing_hba_entry() {
    let p = primary(
        15,
        &["host replication replication 127.0.0.1/32 scram-sha-256"],
    );
    p.create_replication_role("right", "scram-sha-256");
    let work = TestDir::new("bad");
    let dest = work.join("copy");

    clone_cmd(p.port, "replication", &dest)
        .password("wrong")
        .run()
        .assert_error("password authentication failed for user \"replication\"");
    assert!(!dest.exists());

    clone_cmd(p.port, "replication", &dest)
        .arg("-w")
        .run()
        .assert_error("fe_sendauth: no password supplied");
    assert!(!dest.exists());

    p.psql("CREATE ROLE nohba WITH REPLICATION LOGIN");
    clone_cmd(p.port, "nohba", &dest)
        .run()
        .assert_error("no pg_hba.conf entry for replication connection");
    assert!(!dest.exists());
}

#[test]
fn role_without_replication_attribute() {
    for (major, text) in [
        (
            14,
            "must be superuser or replication role to start walsender",
        ),
        (16, "permission denied to start WAL sender"),
    ] {
        let p = primary(major, &["host replication norep 127.0.0.1/32 trust"]);
        p.psql("CREATE ROLE norep LOGIN");
        let work = TestDir::new("bad");
        let dest = work.join("copy");
        clone_cmd(p.port, "norep", &dest).run().assert_error(text);
        assert!(!dest.exists());
    }
}

#[test]
fn nothing_listening() {
    let work = TestDir::new("bad");
    let dest = work.join("copy");
    let port = free_port();
    let run = clone_cmd(port, "x", &dest).run();
    run.assert_error(&format!(
        "connection to server at \"127.0.0.1\", port {port} failed: Connection refused"
    ));
    assert!(!dest.exists());
}

#[test]
fn destination_not_empty_or_not_writable() {
    let p = primary(13, &[]);
    let work = TestDir::new("bad");

    let full = work.mkdir("full");
    fs::write(full.join("keep.txt"), b"mine").expect("write");
    support::chown_to_pg_user(&full);
    clone_cmd(p.port, "postgres", &full)
        .run()
        .assert_error(&format!(
            "directory \"{}\" exists but is not empty",
            full.display()
        ));
    assert_eq!(fs::read(full.join("keep.txt")).expect("kept"), b"mine");
    assert_eq!(fs::read_dir(&full).expect("read").count(), 1);

    let locked = work.mkdir("locked");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).expect("chmod");
    let dest = locked.join("copy");
    clone_cmd(p.port, "postgres", &dest)
        .run()
        .assert_error("could not create directory");
    assert!(!dest.exists());

    // A file where the directory should be.
    let file = work.join("afile");
    fs::write(&file, b"x").expect("write");
    clone_cmd(p.port, "postgres", &file)
        .run()
        .assert_error("afile");
    assert_eq!(fs::read(&file).expect("kept"), b"x");
}

/// A fake server that authenticates anyone and claims to be 9.6.
fn fake_old_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten().take(1) {
            if fake::handshake(&mut s, "9.6.24") {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        }
    });
    port
}

#[test]
fn server_older_than_10_is_refused() {
    let port = fake_old_server();
    let work = TestDir::new("bad");
    let dest = work.join("copy");
    clone_cmd(port, "x", &dest)
        .run()
        .assert_error("incompatible server version 9.6.24");
    assert!(!dest.exists());
}

#[test]
fn usage_errors_exit_1_with_a_hint() {
    let work = TestDir::new("bad");
    let dest = work.join("copy");
    let d = dest.to_str().expect("utf8");
    for (argv, needle) in [
        (vec!["--bogus"], "--bogus"),
        (
            vec!["-U", "x"],
            "must specify output directory or backup target",
        ),
        (
            vec!["-D", d, "-U", "x", "-S", "s1", "-X", "fetch"],
            "replication slots can only be used with WAL streaming",
        ),
        (
            vec!["-D", d, "-U", "x", "-T", "a=b"],
            "old directory is not an absolute path",
        ),
        (
            vec!["-D", d, "-U", "x", "-r", "10"],
            "transfer rate \"10\" is out of range",
        ),
        (
            vec!["-D", d, "-U", "x", "-d", "bogus=1"],
            "invalid connection option \"bogus\"",
        ),
    ] {
        let run = pgclone_cmd().args(&argv).run();
        run.assert_error(needle);
        assert!(
            run.stderr.contains("hint:") || needle.contains("supported"),
            "{}",
            run.stderr
        );
        assert!(!dest.exists());
    }
    let run = pgclone_cmd().arg("--version").run();
    run.assert_ok();
    assert!(run.stdout.starts_with("pgclone "), "{}", run.stdout);
    let run = pgclone_cmd().arg("-?").run();
    run.assert_ok();
    assert!(run.stdout.contains("--pgdata"), "{}", run.stdout);
}

#[test]
fn checksum_failure_keeps_the_directory_and_exits_1() {
    let mut opts = ClusterOptions::new(15);
    opts.checksums = true;
    let mut p = Cluster::start(&opts);
    p.psql("CREATE TABLE c(id int, v text); INSERT INTO c SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g; CHECKPOINT");
    let rel = p.psql("SELECT pg_relation_filepath('c')");
    p.stop();
    let path = p.data.join(rel);
    let mut bytes = fs::read(&path).expect("relation file");
    for b in &mut bytes[4000..4010] {
        *b ^= 0xff;
    }
    fs::write(&path, bytes).expect("corrupt");
    let p = Cluster::start_existing(15, &p.data.clone(), &[]);
    let work = TestDir::new("bad");
    let dest = work.join("copy");
    let run = clone_cmd(p.port, "postgres", &dest).run();
    run.assert_error("checksum error occurred");
    assert!(
        run.stderr
            .contains("WARNING:  checksum verification failed"),
        "{}",
        run.stderr
    );
    assert!(
        dest.join("PG_VERSION").is_file(),
        "the data is kept for examination"
    );
}
