//! The clone path against real servers of every major 10–18 (`-X fetch`): authentication by
//! SCRAM, MD5 or trust, a tablespace relocated with `-T` on one major ≤ 14 and one ≥ 15, group
//! access on one; the copy must start and hold the primary's rows, and `pg_verifybackup`
//! must accept it (13+).

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{create_table_t, pgclone_cmd, verify_backup, Cluster, ClusterOptions, TestDir};

const PASSWORD: &str = "s3cret 'pw'\\x";

struct Case {
    major: u32,
    auth: &'static str,
    tablespace: bool,
    group_access: bool,
}

fn clone_and_check(case: Case) {
    let mut opts = ClusterOptions::new(case.major);
    opts.hba = vec![format!(
        "host replication replication 127.0.0.1/32 {}",
        case.auth
    )];
    opts.group_access = case.group_access;
    let primary = Cluster::start(&opts);
    if case.auth == "trust" {
        primary.psql("CREATE ROLE replication WITH REPLICATION LOGIN");
    } else {
        primary.create_replication_role(&PASSWORD.replace('\'', "''"), case.auth);
    }
    let work = TestDir::new("matrix");
    let table = create_table_t(&primary, &work, case.tablespace, "");
    let want = primary.psql("SELECT count(*), sum(hashtext(v)) FROM t");

    let dest = work.join("copy");
    let mut cmd = pgclone_cmd();
    cmd.server(primary.port, "replication")
        .dest(&dest)
        .args(["-X", "fetch", "-c", "fast"])
        .password(PASSWORD);
    if let Some(mapping) = &table.mapping {
        cmd.args(["-T", mapping]);
    }
    let run = cmd.run();
    run.assert_ok();
    assert_eq!(
        run.stderr, "",
        "a successful run prints nothing without -v/-P"
    );
    assert_eq!(run.stdout, "");

    if case.tablespace {
        let oid = primary.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");
        let link = fs::read_link(dest.join("pg_tblspc").join(&oid)).expect("tablespace link");
        assert_eq!(link, table.ts_copy);
        assert!(fs::read_dir(&table.ts_copy).expect("ts copy").count() > 0);
    }
    if case.group_access {
        for dir in [dest.clone(), dest.join("base"), dest.join("global")] {
            let mode = fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o750, "{}", dir.display());
        }
        let mode = fs::metadata(dest.join("PG_VERSION"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
    } else {
        let mode = fs::metadata(&dest).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
    if case.major >= 13 {
        assert!(dest.join("backup_manifest").is_file());
        assert!(!dest.join("backup_manifest.tmp").exists());
        if let Err(e) = verify_backup(case.major, &dest) {
            panic!("pg_verifybackup rejects the clone of {}: {e}", case.major);
        }
    } else {
        assert!(!dest.join("backup_manifest").exists());
    }

    let copy = Cluster::start_existing(case.major, &dest, &[]);
    copy.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(60));
    assert_eq!(copy.psql("SELECT count(*), sum(hashtext(v)) FROM t"), want);
    drop(copy);
    drop(primary);
}

#[test]
fn pg10_trust() {
    clone_and_check(Case {
        major: 10,
        auth: "trust",
        tablespace: false,
        group_access: false,
    });
}

#[test]
fn pg11_md5_group_access() {
    clone_and_check(Case {
        major: 11,
        auth: "md5",
        tablespace: false,
        group_access: true,
    });
}

#[test]
fn pg12_scram_tablespace() {
    clone_and_check(Case {
        major: 12,
        auth: "scram-sha-256",
        tablespace: true,
        group_access: false,
    });
}

#[test]
fn pg13_scram() {
    clone_and_check(Case {
        major: 13,
        auth: "scram-sha-256",
        tablespace: false,
        group_access: false,
    });
}

#[test]
fn pg14_scram() {
    clone_and_check(Case {
        major: 14,
        auth: "scram-sha-256",
        tablespace: false,
        group_access: false,
    });
}

#[test]
fn pg15_scram() {
    clone_and_check(Case {
        major: 15,
        auth: "scram-sha-256",
        tablespace: false,
        group_access: false,
    });
}

#[test]
fn pg16_scram() {
    clone_and_check(Case {
        major: 16,
        auth: "scram-sha-256",
        tablespace: false,
        group_access: false,
    });
}

#[test]
fn pg17_scram_tablespace() {
    clone_and_check(Case {
        major: 17,
        auth: "scram-sha-256",
        tablespace: true,
        group_access: false,
    });
}

#[test]
fn pg18_scram() {
    clone_and_check(Case {
        major: 18,
        auth: "scram-sha-256",
        tablespace: false,
        group_access: false,
    });
}
