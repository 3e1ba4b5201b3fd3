//! Faults against a real server: connections cut or stalled at many byte offsets (through a
//! loopback proxy), signals at several points, the primary stopped mid-backup, a file-size
//! limit, a read-only destination. Every case must give its exit code and one clear error line,
//! leave nothing behind (nothing outside the destination either), and leave no slot and no
//! walsender of ours on the primary.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::proxy::{Fault, Proxy};
use support::{pgclone_cmd, pgclone_wait, run_cmd, Cluster, ClusterOptions, Pgclone, Run, TestDir};

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

/// A clone of the server on `port` into `dest`, giving up after 4 s without data.
fn clone_cmd(port: u16, dest: &Path) -> Pgclone {
    let mut cmd = pgclone_cmd();
    cmd.server(port, "postgres")
        .dest(dest)
        .args(["-c", "fast", "--timeout", "4"]);
    cmd
}

/// Runs [`clone_cmd`] (as the current user, plus `extra`) through a proxy to `p` that
/// applies `faults` to its connections in order; the proxy is gone when this returns.
fn run_through_proxy(p: &Cluster, faults: Vec<Fault>, dest: &Path, extra: &[&str]) -> Run {
    let proxy = Proxy::start(p.port, faults);
    let run = clone_cmd(proxy.port, dest).args(extra).direct().run();
    drop(proxy);
    run
}

/// A test directory with an empty `out/`, and `out/copy` to clone into.
fn workspace(prefix: &str) -> (TestDir, PathBuf, PathBuf) {
    let work = TestDir::new(prefix);
    let out = work.mkdir("out");
    let dest = out.join("copy");
    (work, out, dest)
}

#[test]
fn cut_connections_at_many_offsets() {
    let p = primary(15);
    // WAL traffic during every clone, so that the WAL stream is long enough to cut into.
    let _load = support::Load::start(&p);
    let (_work, out, dest) = workspace("cut");
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
        let run = run_through_proxy(&p, vec![main, wal], &dest, &[]);
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
            line.contains("closed the connection")
                || line.contains("connection lost")
                || line.contains("could not read COPY data")
                || line.contains("could not receive data from WAL stream"),
            "{main:?}/{wal:?}: {line}"
        );
        if wal != Fault::None && main == Fault::None {
            assert!(
                line.contains("background process terminated unexpectedly")
                    || line.contains("connection to server"),
                "{line}"
            );
        }
        assert_clean(&p, &out, &run);
    }
}

#[test]
fn stalled_connections_time_out() {
    let p = primary(16);
    let (_work, out, dest) = workspace("stall");
    for (main, wal, which) in [
        (Fault::StallAt(3_000_000), Fault::None, "main"),
        (Fault::StallAt(300), Fault::None, "main"),
        (Fault::None, Fault::StallAt(2_000), "WAL"),
    ] {
        let started = Instant::now();
        let run = run_through_proxy(&p, vec![main, wal], &dest, &[]);
        let took = started.elapsed();
        run.assert_error("no data received from the server for 4 s");
        assert!(
            run.stderr.contains(&format!("on the {which} connection")),
            "{}",
            run.stderr
        );
        assert!(took < Duration::from_secs(30), "took {took:?}");
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
    let (_work, out, dest) = workspace("signals");
    for (signo, code, point) in [
        (libc::SIGINT, 130, "start"),
        (libc::SIGTERM, 143, "archive"),
        (libc::SIGINT, 130, "streaming"),
        (libc::SIGHUP, 129, "archive"),
    ] {
        let child = clone_cmd(p.port, &dest)
            .args(["-r", "2M", "-C", "-S", "sigslot", "-v"])
            .direct()
            .spawn();
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
        assert_eq!(
            run.error_lines(),
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
    let (_work, out, dest) = workspace("stop");
    let child = clone_cmd(p.port, &dest).args(["-r", "2M"]).direct().spawn();
    wait_for_files(&dest);
    let stopped = support::pg_ctl(&support::server_bin(13), &p.data)
        .args(["-m", "immediate", "stop"])
        .status()
        .expect("pg_ctl");
    assert!(stopped.success());
    let run = pgclone_wait(child);
    run.assert_error("");
    // Whichever connection notices first: a read sees the server's FATAL or the closed socket,
    // a write (the WAL task's status update) a broken pipe or a reset.
    assert!(
        [
            "closed the connection",
            "terminating connection",
            "Broken pipe",
            "Connection reset"
        ]
        .iter()
        .any(|what| run.stderr.contains(what)),
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
    for extra in [&["-X", "stream"][..], &["-X", "fetch"][..]] {
        let dest = out.join("copy");
        let mut cmd = clone_cmd(p.port, &dest).args(extra).direct().command();
        support::limit_file_size(&mut cmd, 4 << 20);
        let run = run_cmd(cmd);
        run.assert_error("File too large");
        assert_clean(&p, &out, &run);
    }

    // An existing, empty, read-only destination: refused by the OS (so not as root), kept empty.
    let ro = work.mkdir("readonly");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).expect("chmod");
    let run = clone_cmd(p.port, &ro).run();
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
    let (_work, out, dest) = workspace("flip");
    let mut manifest_catches = 0;
    for (i, at) in [3_000_123u64, 6_000_321, 9_001_001, 12_002_017, 15_000_555]
        .into_iter()
        .enumerate()
    {
        let format: &[&str] = if i % 2 == 0 {
            &["-X", "fetch"]
        } else {
            &["-X", "fetch", "-Ft"]
        };
        let run = run_through_proxy(&p, vec![Fault::FlipAt(at)], &dest, format);
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
        assert_clean(&p, &out, &run);
    }
    assert!(
        manifest_catches >= 3,
        "only {manifest_catches} of 5 flips were caught by the manifest check"
    );
}
