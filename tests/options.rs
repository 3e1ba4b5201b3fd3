//! Options carried to the server and to the output, on a legacy (10) and a 15+ server, plus the
//! Unix-socket transport, cleartext-password authentication, `-X none` and `-P`.

mod support;

use std::fs;

use support::{pgclone_cmd, Cluster, ClusterOptions, TestDir};

#[test]
fn label_checksums_manifest_and_progress_options() {
    for major in [10, 15] {
        let p = Cluster::start(&ClusterOptions::new(major));
        let work = TestDir::new("opts");
        let dest = work.join("copy");
        let run = pgclone_cmd()
            .server(p.port, "postgres")
            .dest(&dest)
            .args([
                "-X",
                "none",
                "-l",
                "label with 'quotes'",
                "--no-verify-checksums",
            ])
            .args(["--manifest-checksums", "sha256", "-P", "-c", "fast"])
            .run();
        run.assert_ok();
        let label = fs::read_to_string(dest.join("backup_label")).expect("backup_label");
        assert!(label.contains("LABEL: label with 'quotes'"), "{label}");
        // -P: one line at a time when stderr is not a terminal, ending at 100%.
        assert!(
            run.stderr.lines().any(|l| l.contains("kB (100%)")),
            "{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains('\r'),
            "no carriage returns off a terminal"
        );
        // -X none: no WAL segment in pg_wal, and the server's NOTICE about archiving shown.
        let segments = fs::read_dir(dest.join("pg_wal"))
            .expect("pg_wal")
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().len() == 24)
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(segments, 0);
        assert!(run.stderr.contains("NOTICE:  "), "{}", run.stderr);
        if major >= 13 {
            let manifest = fs::read_to_string(dest.join("backup_manifest")).expect("manifest");
            assert!(manifest.contains("\"Checksum-Algorithm\": \"SHA256\""));
        } else {
            assert!(!dest.join("backup_manifest").exists());
        }

        let dest = work.join("nomanifest");
        pgclone_cmd()
            .server(p.port, "postgres")
            .dest(&dest)
            .args(["--no-manifest", "--no-estimate-size", "-X", "fetch"])
            .run()
            .assert_ok();
        assert!(!dest.join("backup_manifest").exists());
        assert!(dest.join("PG_VERSION").exists());
    }
}

#[test]
fn unix_socket_cleartext_password_and_application_name() {
    let mut opts = ClusterOptions::new(14);
    opts.hba = vec![
        "local replication replication password".into(),
        "host replication replication 127.0.0.1/32 password".into(),
    ];
    let p = Cluster::start(&opts);
    p.create_replication_role("clear text", "scram-sha-256");
    let work = TestDir::new("socket");
    let dest = work.join("copy");
    let socket = p.socket_dir.to_str().expect("utf8").to_owned();
    pgclone_cmd()
        .args([
            "-h",
            &socket,
            "-p",
            &p.port.to_string(),
            "-U",
            "replication",
        ])
        .dest(&dest)
        .args(["-R", "-c", "fast"])
        .password("clear text")
        .env("PGAPPNAME", "standby one")
        .run()
        .assert_ok();
    let auto = fs::read_to_string(dest.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(auto.contains(&format!("host=''{socket}''")), "{auto}");
    assert!(auto.contains("application_name=''standby one''"), "{auto}");
    assert!(auto.contains("password=''clear text''"), "{auto}");
    let replica = Cluster::start_existing(14, &dest, &[]);
    replica.wait_for(
        "SELECT status FROM pg_stat_wal_receiver",
        "streaming",
        std::time::Duration::from_secs(60),
    );
    assert_eq!(
        p.psql("SELECT application_name FROM pg_stat_replication"),
        "standby one"
    );
}
