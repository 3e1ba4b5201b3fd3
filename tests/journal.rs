//! The resume journal against real servers: a clone killed with SIGKILL or cut off with
//! `--keep-partial` (or `--no-clean`) leaves its directory and a journal whose every listed file
//! is on disk with that size and CRC-32C; a clone that succeeds leaves no journal.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgclone::manifest::hex;
use pgclone::sink::journal::{self, Journal, JOURNAL_FILE};
use support::proxy::{Fault, Proxy};
use support::{create_table_t, pgclone_cmd, pgclone_wait, Cluster, ClusterOptions, TestDir};

const WAIT: Duration = Duration::from_secs(30);

/// A primary with about 35 MB of data beyond the empty cluster, so that a clone can be stopped
/// part-way; with a table `t` in a tablespace under `work` when `tablespace`.
fn primary(major: u32, work: &TestDir, tablespace: bool) -> (Cluster, Option<String>) {
    let p = Cluster::start(&ClusterOptions::new(major));
    let t = create_table_t(&p, work, tablespace, "");
    p.psql("CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 16) AS v FROM generate_series(1, 60000) g");
    (p, t.mapping)
}

/// Where the journal's `path` is on disk: under the data directory, or under the directory a
/// tablespace went to for `pg_tblspc/<oid>/…`.
fn on_disk(dest: &Path, j: &Journal, path: &[u8]) -> PathBuf {
    let rel = Path::new(OsStr::from_bytes(path));
    for ts in &j.header.tablespaces {
        if let Ok(inner) = rel.strip_prefix(format!("pg_tblspc/{}", ts.oid)) {
            return ts.dir.join(inner);
        }
    }
    dest.join(rel)
}

/// Reads the journal in `dest` and checks it against the primary and the disk: the header names
/// the primary, and every listed file is there with the listed size and CRC-32C.
fn check_journal(p: &Cluster, dest: &Path) -> Journal {
    let j = journal::read(dest).expect("a readable journal");
    let h = &j.header;
    assert_eq!(h.format, journal::FORMAT_VERSION);
    assert_eq!(
        h.system_identifier,
        p.psql("SELECT system_identifier FROM pg_control_system()")
    );
    assert_eq!((h.major, h.timeline), (p.major, 1));
    assert!(h.start_lsn.contains('/'), "{h:?}");
    assert!(!j.files.is_empty(), "no file listed");
    for f in &j.files {
        let path = on_disk(dest, &j, &f.path);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(bytes.len() as u64, f.size, "size of {}", path.display());
        let crc = hex(&crc32c::crc32c(&bytes).to_ne_bytes());
        assert_eq!(crc, f.crc32c, "CRC-32C of {}", path.display());
    }
    j
}

/// The files of `dir` (not recursive).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until `dest/base` exists (the base archive is being unpacked).
fn wait_for_base(dest: &Path) {
    let deadline = Instant::now() + WAIT;
    while !dest.join("base").is_dir() {
        assert!(Instant::now() < deadline, "no base/ in {}", dest.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn signals_and_a_full_disk_leave_a_journal_of_complete_files() {
    let work = TestDir::new("journal-kill");
    let (p, _) = primary(16, &work, false);
    let dest = work.join("copy");
    for (signo, code) in [(libc::SIGKILL, None), (libc::SIGTERM, Some(143))] {
        let child = pgclone_cmd()
            .server(p.port, "postgres")
            .dest(&dest)
            .args(["-c", "fast", "-r", "8M", "--keep-partial"])
            .direct()
            .spawn();
        wait_for_base(&dest);
        std::thread::sleep(Duration::from_millis(2500));
        // SAFETY: kill has no memory-safety preconditions; the pid is our live child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signo) }, 0);
        let run = pgclone_wait(child);
        assert_eq!(run.status.code(), code, "signal {signo}:\n{}", run.stderr);
        let j = check_journal(&p, &dest);
        assert!(
            !dest.join("global/pg_control").exists(),
            "signal {signo} should land before the end ({} files listed)",
            j.files.len()
        );
        if code.is_some() {
            assert!(entries(&dest.join("pg_wal")).is_empty(), "WAL is dropped");
        }
        p.wait_for("SELECT count(*) FROM pg_replication_slots", "0", WAIT);
        fs::remove_dir_all(&dest).expect("rm copy");
    }

    // A file-size limit (as a full disk): WAL at the end of the base archive, so that the
    // first file over 4 MB fails the clone after the journal was started.
    let mut cmd = pgclone_cmd()
        .server(p.port, "postgres")
        .dest(&dest)
        .args(["-c", "fast", "-X", "fetch", "--keep-partial"])
        .direct()
        .command();
    support::limit_file_size(&mut cmd, 4 << 20);
    support::run_cmd(cmd).assert_error("File too large");
    check_journal(&p, &dest);
}

#[test]
fn a_cut_connection_keeps_data_tablespaces_and_journal() {
    let work = TestDir::new("journal-cut");
    let (p, mapping) = primary(18, &work, true);
    let mapping = mapping.expect("a tablespace");
    let ts_copy = work.join("ts-copy");
    let out = work.mkdir("out");
    let dest = out.join("copy");
    // Connection 0 is the main one: cut 15 MB in, past the tablespace's archive (or at `cut`).
    let clone_cut_at = |cut: u64, extra: &[&str]| {
        let proxy = Proxy::start(p.port, vec![Fault::CutAt(cut)]);
        let run = pgclone_cmd()
            .server(proxy.port, "postgres")
            .dest(&dest)
            .args(["-c", "fast", "-T", &mapping])
            .args(extra)
            .direct()
            .run();
        drop(proxy);
        run.assert_error("");
        run
    };
    let clone = |extra: &[&str]| clone_cut_at(15_000_000, extra);

    // Without either flag, nothing is left (as tests/faults.rs checks more widely).
    clone(&[]);
    assert!(entries(&out).is_empty());
    assert!(!ts_copy.exists());
    // With --keep-partial, a cut before the first archive (no journal yet) leaves nothing too.
    clone_cut_at(700, &["--keep-partial"]);
    assert!(entries(&out).is_empty());
    assert!(!ts_copy.exists());

    let run = clone(&["--keep-partial", "-C", "-S", "kept", "-v"]);
    assert!(run.stderr.contains("--refresh"), "{}", run.stderr);
    let j = check_journal(&p, &dest);
    assert_eq!(j.header.tablespaces.len(), 1);
    assert_eq!(j.header.tablespaces[0].dir, ts_copy);
    assert!(
        j.files.iter().any(|f| f.path.starts_with(b"pg_tblspc/")),
        "the tablespace's files are listed"
    );
    assert!(
        j.files.iter().all(|f| !f.path.starts_with(b"pg_wal")),
        "WAL is never listed"
    );
    assert!(
        entries(&dest.join("pg_wal")).is_empty(),
        "WAL received is dropped"
    );
    assert!(!dest.join("backup_manifest.tmp").exists());
    p.wait_for("SELECT count(*) FROM pg_replication_slots", "0", WAIT);

    // --no-clean keeps everything, the journal included.
    fs::remove_dir_all(&dest).expect("rm copy");
    fs::remove_dir_all(&ts_copy).expect("rm ts copy");
    clone(&["-n"]);
    check_journal(&p, &dest);
    assert!(ts_copy.is_dir());
}

#[test]
fn a_successful_clone_leaves_no_journal() {
    let work = TestDir::new("journal-ok");
    let (p, mapping) = primary(18, &work, true);
    let mapping = mapping.expect("a tablespace");
    for (i, flag) in ["--keep-partial", "-n"].into_iter().enumerate() {
        let dest = work.join(&format!("copy{i}"));
        let ts_copy = work.join("ts-copy");
        pgclone_cmd()
            .server(p.port, "postgres")
            .dest(&dest)
            .args(["-c", "fast", "-T", &mapping, flag])
            .run()
            .assert_ok();
        assert!(!dest.join(JOURNAL_FILE).exists(), "{flag}");
        if let Err(e) = support::verify_backup(18, &dest) {
            panic!("{flag}: {e}");
        }
        fs::remove_dir_all(&ts_copy).expect("rm ts copy");
    }
}
