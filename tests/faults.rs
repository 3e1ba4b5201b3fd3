//! Faults against a real server: connections cut or stalled at many byte offsets (through a
//! loopback proxy), signals at several points, the primary stopped mid-backup, a file-size
//! limit, a read-only destination. Every case must give its exit code and one clear error line,
//! leave nothing behind (nothing outside the destination either), and leave no slot and no
//! walsender of ours on the primary.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::proxy::{Fault, Proxy};
use support::{
    pgclone, pgclone_direct_cmd, pgclone_wait, run_cmd, Cluster, ClusterOptions, Run, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);

fn primary(major: u32) -> Cluster {
    let p = Cluster::start(&ClusterOptions::new(major));
    // About 20 MB more data, so that offsets deep into the archive exist.
    p.psql("CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 16) AS v FROM generate_series(1, 30000) g");
    p
}

/// After a failed clone: the output parent holds nothing, and the primary has no slot and no
/// walsender left.
fn assert_clean(p: &Cluster, out: &Path, run: &Run) {
    let left: Vec<_> = fs::read_dir(out)
        .expect("out dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}\n{}", run.stderr);
    p.wait_for("SELECT count(*) FROM pg_replication_slots", "0", WAIT);
    p.wait_for("SELECT count(*) FROM pg_stat_replication", "0", WAIT);
}

fn args<'a>(port: &'a str, dest: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-U",
        "postgres",
        "-D",
        dest,
        "-c",
        "fast",
        "--timeout",
        "4",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn cut_connections_at_many_offsets() {
    let p = primary(15);
    // WAL traffic during every clone, so that the WAL stream is long enough to cut into.
    let _load = support::Load::start(&p);
    let work = TestDir::new("cut");
    let out = work.mkdir("out");
    let dest = out.join("copy");
    let d = dest.to_str().expect("utf8");
    // Connection 0 is the main one, 1 the WAL one (opened before BASE_BACKUP).
    let cases: Vec<(Fault, Fault)> = [10, 200, 700, 1_500, 40_000, 2_000_000, 15_000_000]
        .iter()
        .map(|&n| (Fault::CutAt(n), Fault::None))
        .chain(
            [10, 300, 900, 3_000, 60_000]
                .iter()
                .map(|&n| (Fault::None, Fault::CutAt(n))),
        )
        .collect();
    for (main, wal) in cases {
        let proxy = Proxy::start(p.port, vec![main, wal]);
        let port = proxy.port.to_string();
        let run = run_cmd(pgclone_direct_cmd(&args(&port, d, &[]), &[]));
        // A cut after the last byte the server sends would not be a fault: these offsets are
        // all inside the streams.
        assert_eq!(
            run.status.code(),
            Some(1),
            "{main:?}/{wal:?} should fail:\n{}",
            run.stderr
        );
        run.assert_error("");
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with("pgclone: error:"))
            .unwrap_or_default();
        eprintln!("{main:?}/{wal:?}: {line}");
        assert!(
            line.contains("closed the connection") || line.contains("connection lost"),
            "{main:?}/{wal:?}: {line}"
        );
        if wal != Fault::None && main == Fault::None {
            assert!(
                line.contains("background WAL receiver terminated unexpectedly")
                    || line.contains("connection to server"),
                "{line}"
            );
        }
        drop(proxy);
        assert_clean(&p, &out, &run);
    }
}

#[test]
fn stalled_connections_time_out() {
    let p = primary(16);
    let work = TestDir::new("stall");
    let out = work.mkdir("out");
    let dest = out.join("copy");
    let d = dest.to_str().expect("utf8");
    for (main, wal, which) in [
        (Fault::StallAt(3_000_000), Fault::None, "main"),
        (Fault::StallAt(300), Fault::None, "main"),
        (Fault::None, Fault::StallAt(2_000), "WAL"),
    ] {
        let proxy = Proxy::start(p.port, vec![main, wal]);
        let port = proxy.port.to_string();
        let started = Instant::now();
        let run = run_cmd(pgclone_direct_cmd(&args(&port, d, &[]), &[]));
        let took = started.elapsed();
        run.assert_error("no data received from the server for 4 s");
        assert!(
            run.stderr.contains(&format!("on the {which} connection")),
            "{}",
            run.stderr
        );
        assert!(took < Duration::from_secs(30), "took {took:?}");
        drop(proxy);
        assert_clean(&p, &out, &run);
    }
}

/// Waits until `dest` has at least one entry (the archive is being unpacked).
fn wait_for_files(dest: &Path) {
    let deadline = Instant::now() + WAIT;
    while fs::read_dir(dest)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "no file appeared in {}",
            dest.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn signals_cancel_clean_up_and_drop_slots() {
    let p = primary(14);
    let work = TestDir::new("signals");
    let out = work.mkdir("out");
    let dest = out.join("copy");
    let d = dest.to_str().expect("utf8");
    let port = p.port.to_string();
    for (signo, code, point) in [
        (libc::SIGINT, 130, "start"),
        (libc::SIGTERM, 143, "archive"),
        (libc::SIGINT, 130, "streaming"),
        (libc::SIGHUP, 129, "archive"),
    ] {
        let child = pgclone_direct_cmd(
            &args(&port, d, &["-r", "2M", "-C", "-S", "sigslot", "-v"]),
            &[],
        )
        .spawn()
        .expect("spawn");
        match point {
            "start" => std::thread::sleep(Duration::from_millis(30)),
            "archive" => wait_for_files(&dest),
            _ => p.wait_for(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                "1",
                WAIT,
            ),
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our live child.
        let rc = unsafe { libc::kill(child.id() as i32, signo) };
        assert_eq!(rc, 0);
        let run = pgclone_wait(child);
        assert_eq!(
            run.status.code(),
            Some(code),
            "signal {signo} at {point}:\n{}",
            run.stderr
        );
        let name = match signo {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("pgclone: error:"))
            .collect();
        assert_eq!(
            errors,
            [format!("pgclone: error: interrupted by {name}")],
            "{}",
            run.stderr
        );
        assert_clean(&p, &out, &run);
    }
}

#[test]
fn primary_stopped_mid_backup() {
    let mut p = primary(13);
    let work = TestDir::new("stop");
    let out = work.mkdir("out");
    let dest = out.join("copy");
    let port = p.port.to_string();
    let child = pgclone_direct_cmd(
        &args(&port, dest.to_str().expect("utf8"), &["-r", "2M"]),
        &[],
    )
    .spawn()
    .expect("spawn");
    wait_for_files(&dest);
    let stopped = support::as_pg_user(support::server_bin(13).join("pg_ctl"))
        .arg("-D")
        .arg(&p.data)
        .args(["-m", "immediate", "stop"])
        .status()
        .expect("pg_ctl");
    assert!(stopped.success());
    let run = pgclone_wait(child);
    run.assert_error("");
    assert!(
        run.stderr.contains("closed the connection")
            || run.stderr.contains("terminating connection"),
        "{}",
        run.stderr
    );
    let left: Vec<_> = fs::read_dir(&out).expect("out").collect();
    assert!(left.is_empty(), "{}", run.stderr);
    p.stop();
}

#[test]
fn file_size_limit_and_read_only_destination() {
    let p = primary(17);
    let work = TestDir::new("fsize");
    let out = work.mkdir("out");
    let port = p.port.to_string();
    for extra in [&["-X", "stream"][..], &["-X", "fetch"][..]] {
        let dest = out.join("copy");
        let mut cmd = pgclone_direct_cmd(&args(&port, dest.to_str().expect("utf8"), extra), &[]);
        // SAFETY: only async-signal-safe setrlimit runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 4 << 20,
                    rlim_max: 4 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let run = run_cmd(cmd);
        run.assert_error("File too large");
        assert_clean(&p, &out, &run);
    }

    // An existing, empty, read-only destination: refused by the OS (so not as root), kept empty.
    let ro = work.mkdir("readonly");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).expect("chmod");
    let run = pgclone(&args(&port, ro.to_str().expect("utf8"), &[]), &[]);
    run.assert_error("Permission denied");
    assert!(ro.is_dir());
    assert_eq!(fs::read_dir(&ro).expect("ro").count(), 0);
    p.wait_for("SELECT count(*) FROM pg_replication_slots", "0", WAIT);
}

/// A byte flipped in flight inside a file's contents is caught while writing: the file's
/// checksum does not match the manifest's (other offsets may hit a tar header or a message
/// header instead, which fail differently but just as cleanly).
#[test]
fn corruption_in_flight_is_caught_by_the_manifest() {
    let p = primary(16);
    let work = TestDir::new("flip");
    let out = work.mkdir("out");
    let dest = out.join("copy");
    let d = dest.to_str().expect("utf8");
    let mut manifest_catches = 0;
    for (i, at) in [3_000_123u64, 6_000_321, 9_001_001, 12_002_017, 15_000_555]
        .into_iter()
        .enumerate()
    {
        let proxy = Proxy::start(p.port, vec![Fault::FlipAt(at)]);
        let port = proxy.port.to_string();
        let format: &[&str] = if i % 2 == 0 {
            &["-X", "fetch"]
        } else {
            &["-X", "fetch", "-Ft"]
        };
        let run = run_cmd(pgclone_direct_cmd(&args(&port, d, format), &[]));
        assert_eq!(
            run.status.code(),
            Some(1),
            "flip at {at} went unnoticed:\n{}",
            run.stderr
        );
        if run
            .stderr
            .contains("the backup does not match its manifest")
        {
            assert!(
                run.stderr.contains("checksum mismatch for file"),
                "{}",
                run.stderr
            );
            manifest_catches += 1;
        } else {
            assert!(
                run.stderr.contains("invalid archive") || run.stderr.contains("protocol violation"),
                "{}",
                run.stderr
            );
        }
        drop(proxy);
        assert_clean(&p, &out, &run);
    }
    assert!(
        manifest_catches >= 3,
        "only {manifest_catches} of 5 flips were caught by the manifest check"
    );
}
