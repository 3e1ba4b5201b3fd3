//! Tar format, compression and backup targets against real servers: archives extracted with
//! GNU tar must start (as streaming replicas with `-R`), every client compression method and
//! level must round-trip through the standard `gzip`, `lz4` and `zstd` programs, server-side
//! compression must unpack into a plain copy that starts, and the validation messages must be
//! pg_basebackup's own.

mod support;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgclone::sink::codec::{self, ClientSpec, Method};
use support::{checked_output, pgclone_cmd, tools_bin, Cluster, ClusterOptions, Load, TestDir};

const WAIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "tar-pw";

fn primary(opts: ClusterOptions) -> Cluster {
    let mut opts = opts;
    opts.hba = vec!["host replication replication 127.0.0.1/32 scram-sha-256".into()];
    let p = Cluster::start(&opts);
    p.create_replication_role(PASSWORD, "scram-sha-256");
    p
}

/// Extracts a (possibly compressed) tar with GNU tar as the unprivileged account.
fn untar(archive: &Path, into: &Path) {
    fs::create_dir_all(into).expect("mkdir");
    support::chown_to_pg_user(into);
    let flag = match Method::from_archive_name(&archive.to_string_lossy()) {
        Method::Gzip => "-z",
        Method::Zstd => "--zstd",
        Method::Lz4 => "--use-compress-program=lz4",
        Method::None => "-v",
    };
    checked_output(
        support::as_pg_user("tar")
            .args(["-x", flag, "-f"])
            .arg(archive)
            .arg("-C")
            .arg(into),
        &format!("tar -x {}", archive.display()),
    );
}

/// PostgreSQL refuses a data directory others can read (the first restore step after untar).
fn chmod_700(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).expect("chmod");
}

/// Clones `p` in tar format with `-R`, extracts base and pg_wal archives (and a tablespace,
/// repointing tablespace_map at its new place), starts the copy and checks it streams.
fn tar_replica(major: u32, extra: &[&str], tablespace: bool) {
    let p = primary(ClusterOptions::new(major));
    let work = TestDir::new("tar");
    let ts_dir = work.mkdir("ts-primary");
    if tablespace {
        p.create_tablespace("ts", &ts_dir);
        p.psql("CREATE TABLE in_ts(x int) TABLESPACE ts; INSERT INTO in_ts SELECT generate_series(1, 1000)");
    }
    let mut load = Load::start(&p);
    let out = work.join("tar");
    pgclone_cmd()
        .server(p.port, "replication")
        .dest(&out)
        .args(["-F", "t", "-R", "-c", "fast"])
        .args(extra)
        .password(PASSWORD)
        .run()
        .assert_ok();
    let names: Vec<String> = fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let find = |prefix: &str| -> std::path::PathBuf {
        out.join(
            names
                .iter()
                .find(|n| n.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix}* in {names:?}")),
        )
    };
    if major >= 13 {
        assert!(names.contains(&"backup_manifest".to_string()), "{names:?}");
    }
    let data = work.join("data");
    untar(&find("base.tar"), &data);
    chmod_700(&data);
    untar(&find("pg_wal.tar"), &data.join("pg_wal"));
    if tablespace {
        let oid = p.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");
        let ts_copy = work.join("ts-copy");
        untar(&find(&format!("{oid}.tar")), &ts_copy);
        let map = fs::read_to_string(data.join("tablespace_map")).expect("tablespace_map");
        assert!(
            map.starts_with(&format!("{oid} {}", ts_dir.display())),
            "{map}"
        );
        fs::write(
            data.join("tablespace_map"),
            format!("{oid} {}\n", ts_copy.display()),
        )
        .expect("rewrite map");
    }
    let replica = Cluster::start_existing(major, &data, &[]);
    replica.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    replica.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    p.psql("CREATE TABLE after_clone AS SELECT 'hello'::text AS x");
    replica.wait_for(
        "SELECT count(*) FROM pg_tables WHERE tablename = 'after_clone'",
        "1",
        WAIT,
    );
    load.stop();
    let lsn = p.current_lsn();
    replica.wait_for_replay(&lsn);
    let sum = "SELECT count(*), sum(hashtext(v)) FROM load";
    assert_eq!(replica.psql(sum), p.psql(sum));
    if tablespace {
        assert_eq!(replica.psql("SELECT count(*) FROM in_ts"), "1000");
    }
}

#[test]
fn pg10_tar_replica_with_tablespace() {
    tar_replica(10, &[], true);
}

#[test]
fn pg14_tar_replica_gzip() {
    tar_replica(14, &["-z"], false);
}

#[test]
fn pg15_tar_replica_lz4_with_tablespace() {
    tar_replica(15, &["--compress=client-lz4:1"], true);
}

#[test]
fn pg18_tar_replica_zstd() {
    tar_replica(18, &["-Z", "zstd:level=5,workers=2"], false);
}

/// Every client method and level, through the real decompressors.
#[test]
fn every_client_level_round_trips_through_the_standard_programs() {
    let input: Vec<u8> = (0..150_000u32)
        .flat_map(|i| format!("{i:08} line of text {}\n", i % 13).into_bytes())
        .collect();
    let cases: Vec<(Method, i32, &str)> = (1..=9)
        .map(|l| (Method::Gzip, l, "gzip"))
        .chain((1..=12).map(|l| (Method::Lz4, l, "lz4")))
        .chain(
            [-5, 1, 3, 10, 19]
                .into_iter()
                .map(|l| (Method::Zstd, l, "zstd")),
        )
        .collect();
    for (method, level, program) in cases {
        // ArchiveWriter owns its output: collect it through a shared buffer.
        let shared = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = codec::writer(
            ClientSpec {
                method,
                level: Some(level),
                ..ClientSpec::NONE
            },
            Shared(shared.clone()),
        )
        .expect("writer");
        w.write_all(&input).expect("write");
        w.finish().expect("finish");
        let compressed = shared.lock().expect("lock").clone();
        let mut child = Command::new(program)
            .args(["-d", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let mut stdin = child.stdin.take().expect("stdin");
        let feeder = std::thread::spawn(move || stdin.write_all(&compressed));
        let out = child.wait_with_output().expect("decompress");
        feeder.join().expect("feeder").expect("feed");
        assert!(out.status.success(), "{program} -d failed at level {level}");
        assert!(
            out.stdout == input,
            "{program} level {level} did not round-trip"
        );
    }
}

#[test]
fn server_side_compression_unpacks_into_a_plain_copy() {
    for major in [15, 18] {
        let mut opts = ClusterOptions::new(major);
        opts.full_toolset = true;
        let p = primary(opts);
        p.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 5000) g");
        let want = p.psql("SELECT count(*), sum(hashtext(v)) FROM t");
        // The PyPI build of 15 has lz4 but not zstd.
        let methods: &[&str] = if major >= 16 {
            &["server-gzip", "server-lz4:1", "server-zstd:level=3"]
        } else {
            &["server-gzip:1", "server-lz4"]
        };
        for method in methods {
            let work = TestDir::new("srvz");
            let dest = work.join("copy");
            pgclone_cmd()
                .server(p.port, "replication")
                .dest(&dest)
                .args(["-Z", method, "-c", "fast"])
                .password(PASSWORD)
                .run()
                .assert_ok();
            if let Err(e) = support::verify_backup(major, &dest) {
                panic!("{major} {method}: {e}");
            }
            let copy = Cluster::start_existing(major, &dest, &[]);
            copy.wait_for("SELECT pg_is_in_recovery()", "f", WAIT);
            assert_eq!(
                copy.psql("SELECT count(*), sum(hashtext(v)) FROM t"),
                want,
                "{major} {method}"
            );
        }
        // In tar format the server's compressed archives are stored as received.
        let work = TestDir::new("srvz");
        let dest = work.join("tar");
        let (method, name) = if major >= 16 {
            ("server-zstd", "base.tar.zst")
        } else {
            ("server-lz4", "base.tar.lz4")
        };
        pgclone_cmd()
            .server(p.port, "replication")
            .dest(&dest)
            .args(["-Ft", "-Z", method, "-X", "fetch"])
            .password(PASSWORD)
            .run()
            .assert_ok();
        assert!(dest.join(name).is_file());
        untar(&dest.join(name), &work.join("x"));
        assert!(work.join("x/global/pg_control").is_file());
    }
}

#[test]
fn standard_output_and_backup_targets() {
    let p = primary(ClusterOptions::new(16));
    let work = TestDir::new("stdout");
    // -D - : one tar on stdout with the manifest inside.
    let out = pgclone_cmd()
        .server(p.port, "postgres")
        .args(["-D", "-", "-Ft", "-X", "fetch", "-c", "fast"])
        .direct()
        .output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tarball = work.join("base.tar");
    fs::write(&tarball, &out.stdout).expect("write tar");
    support::chown_to_pg_user(&tarball);
    let data = work.join("data");
    untar(&tarball, &data);
    chmod_700(&data);
    assert!(data.join("backup_manifest").is_file());
    if let Err(e) = support::verify_backup(16, &data) {
        panic!("{e}");
    }
    let copy = Cluster::start_existing(16, &data, &[]);
    copy.wait_for("SELECT pg_is_in_recovery()", "f", WAIT);
    drop(copy);

    // Targets: blackhole writes nothing; server writes into a directory on the server.
    pgclone_cmd()
        .server(p.port, "postgres")
        .args(["-t", "blackhole", "-X", "none"])
        .run()
        .assert_ok();
    let on_server = work.join("server-side");
    let target = format!("server:{}", on_server.display());
    pgclone_cmd()
        .server(p.port, "postgres")
        .args(["-t", &target, "-X", "fetch", "-c", "fast"])
        .run()
        .assert_ok();
    assert!(
        on_server.join("base.tar").is_file(),
        "the server wrote base.tar"
    );
    assert!(on_server.join("backup_manifest").is_file());

    let old = primary(ClusterOptions::new(14));
    pgclone_cmd()
        .server(old.port, "postgres")
        .args(["-t", "blackhole", "-X", "none"])
        .run()
        .assert_error("backup targets are not supported by this server version");
    let dest = work.join("z");
    pgclone_cmd()
        .server(old.port, "postgres")
        .dest(&dest)
        .args(["-Z", "server-gzip"])
        .run()
        .assert_error("server-side compression is not supported by this server version");
    assert!(!dest.exists());
}

/// The messages for bad client compression specifications and option combinations are the
/// ones pg_basebackup 18 prints, checked against the real binary.
#[test]
fn option_errors_match_pg_basebackup() {
    let reference = tools_bin(18).join("pg_basebackup");
    let cases: &[&[&str]] = &[
        &["-Ft", "-Z", "gzip:12"],
        &["-Ft", "-Z", "gzip:x"],
        &["-Ft", "-Z", "gzip:level"],
        &["-Ft", "-Z", "lz4:13"],
        &["-Ft", "-Z", "zstd:23"],
        &["-Ft", "-Z", "none:5"],
        &["-Ft", "-Z", "gzip:workers=2"],
        &["-Ft", "-Z", "lz4:long"],
        &["-Ft", "-Z", "zstd:long=maybe"],
        &["-Ft", "-Z", "zstd:bogus=1"],
        &["-Ft", "-Z", "zstd:"],
        &["-Ft", "-Z", "zstd:workers=x"],
        &["-Ft", "-Z", "brotli"],
        &["-Ft", "-Z", "10"],
        &["-Fp", "-Z", "3"],
        &["-Fp", "-z"],
        &["-X", "fetch", "-t", "blackhole", "-Z", "client-gzip"],
        &["-t", "blackhole"],
        &["-t", "blackhole", "-Ft"],
        &["-X", "fetch", "-t", "blackhole", "--waldir=/tmp/w"],
        &["-Ft", "--waldir=/tmp/w"],
        &["-Ft", "-S", "s", "-X", "fetch"],
    ];
    for extra in cases {
        let mut args: Vec<&str> = vec!["-h", "/nonexistent-socket-dir"];
        if !extra.contains(&"-t") {
            args.extend(["-D", "/nonexistent-dir/x"]);
        }
        args.extend_from_slice(extra);
        let theirs = Command::new(&reference)
            .args(&args)
            .output()
            .expect("pg_basebackup");
        let ours = pgclone_cmd().args(&args).direct().output();
        let first = |b: &[u8]| -> String {
            let text = String::from_utf8_lossy(b);
            let line = text.lines().next().unwrap_or_default();
            line.split_once("error: ")
                .map(|(_, m)| m.to_owned())
                .unwrap_or_default()
        };
        assert_eq!(ours.status.code(), Some(1), "{args:?}");
        assert_eq!(first(&ours.stderr), first(&theirs.stderr), "{args:?}");
    }
}
