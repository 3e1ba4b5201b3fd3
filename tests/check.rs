//! `pgclone check` against real 10, 14 and 18 servers, one server per major shared by every
//! case (they run in turn, each undoing what it set up):
//! - a clean server: exit 0, the JSON parses, every finding is there, nothing was created (no
//!   slot on the server, no destination here); over TLS the protocol and cipher are named;
//! - walsenders exhausted: `max_wal_senders = 3` with two `pg_receivewal`s streaming, so `-X
//!   stream` (two connections) is a problem while `-X fetch` (one) is not;
//! - slots exhausted: `max_replication_slots = 2` with two slots; `-C` naming an existing slot;
//!   `-S` naming a missing one;
//! - a wrong password and an hba line that rejects replication: the connection finding is the
//!   clone's own error line, word for word;
//! - a non-empty destination, a non-empty `--waldir`;
//! - run as `pg_basebackup`, the same subcommand;
//! - a destination on a 4 MB tmpfs (when root) that fails the disk-space check;
//! - a tablespace without `-T` whose path (the server's own, on this host) is in use, and the
//!   same with `-T` to a free directory.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    pgclone_cmd, scrub_libpq_env, tools_bin, Cluster, ClusterOptions, Pgclone, Run, TestDir,
};

/// A self-signed server certificate and its key (0600), readable by the unprivileged account.
fn certificate(work: &TestDir) -> (String, String) {
    let dir = work.mkdir("cert");
    support::checked_output(
        Command::new("openssl")
            .current_dir(&dir)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-keyout",
                "server.key",
                "-out",
                "server.crt",
                "-subj",
                "/CN=localhost",
            ]),
        "openssl req",
    );
    support::chown_to_pg_user(&dir);
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let path = |p: PathBuf| p.display().to_string();
    (path(dir.join("server.crt")), path(key))
}

/// A server whose limits are small enough to exhaust: 3 walsenders, 2 slots; TLS on; a role
/// with a password for replication, and one the hba file rejects.
fn server(major: u32, work: &TestDir) -> Cluster {
    let (cert, key) = certificate(work);
    let mut opts = ClusterOptions::new(major);
    opts.conf = vec![
        "max_wal_senders = 3".into(),
        "max_replication_slots = 2".into(),
        "ssl = on".into(),
        format!("ssl_cert_file = '{cert}'"),
        format!("ssl_key_file = '{key}'"),
    ];
    opts.hba = vec![
        "host replication rejected 127.0.0.1/32 reject".into(),
        "host replication replication 127.0.0.1/32 scram-sha-256".into(),
    ];
    let c = Cluster::start(&opts);
    c.create_replication_role("secret", "scram-sha-256");
    c.psql("CREATE ROLE rejected LOGIN REPLICATION");
    c
}

/// `pgclone check` of `c` as `user` with `extra` flags.
fn check_cmd(c: &Cluster, user: &str, extra: &[&str]) -> Pgclone {
    let mut cmd = pgclone_cmd();
    cmd.arg("check").server(c.port, user).args(extra);
    cmd
}

/// Runs `check --json` and parses its document.
fn check_json(cmd: &mut Pgclone) -> (Run, Value) {
    let run = cmd.arg("--json").run();
    let doc = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr));
    (run, doc)
}

/// The findings named `name`.
fn findings<'a>(doc: &'a Value, name: &str) -> Vec<&'a Value> {
    doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["name"] == name)
        .collect()
}

/// The one finding named `name`, with its severity checked.
fn finding<'a>(doc: &'a Value, name: &str, severity: &str) -> &'a Value {
    let all = findings(doc, name);
    assert_eq!(all.len(), 1, "{name}: {doc:#}");
    assert_eq!(all[0]["severity"], severity, "{name}: {:#}", all[0]);
    all[0]
}

fn exit_code(run: &Run) -> Option<i32> {
    run.status.code()
}

/// Idle `pg_receivewal`s streaming from `c` (each holds a walsender); killed on drop.
struct Receivers {
    children: Vec<Child>,
    _dir: TestDir,
}

impl Receivers {
    fn start(c: &Cluster, n: usize) -> Self {
        Self::start_more(c, n, n)
    }

    /// Starts `n` more, until `total` stream.
    fn start_more(c: &Cluster, n: usize, total: usize) -> Self {
        let dir = TestDir::new("receivewal");
        let mut children = Vec::new();
        for i in 0..n {
            let target = dir.mkdir(&format!("w{i}"));
            let mut cmd = Command::new(tools_bin(18).join("pg_receivewal"));
            scrub_libpq_env(&mut cmd)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &c.port.to_string(),
                    "-U",
                    "postgres",
                    "-D",
                ])
                .arg(&target)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            children.push(cmd.spawn().expect("pg_receivewal"));
        }
        c.wait_for(
            "SELECT count(*) FROM pg_stat_replication",
            &total.to_string(),
            Duration::from_secs(30),
        );
        Self {
            children,
            _dir: dir,
        }
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tmpfs of `size` mounted on a directory; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts one when root; `None` (said loudly) otherwise.
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: the tiny-filesystem case needs root to mount a tmpfs");
            return None;
        }
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=1777"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Some(Self {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// The findings every check of a reachable server makes.
const EXPECTED: &[&str] = &[
    "connection",
    "server_version",
    "tls",
    "wal_level",
    "data_checksums",
    "walsenders",
    "replication_slots",
    "destination",
    "disk_space",
];

fn clean(c: &Cluster, work: &TestDir) {
    let dest = work.join("clean");
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(doc["would_start"], true);
    assert_eq!(doc["problems"], 0);
    for name in EXPECTED {
        assert!(!findings(&doc, name).is_empty(), "{name} missing: {doc:#}");
    }
    let summarize = findings(&doc, "summarize_wal");
    assert_eq!(summarize.len(), usize::from(c.major >= 17), "{doc:#}");
    let ws = finding(&doc, "walsenders", "ok");
    assert_eq!(ws["values"]["max_wal_senders"], 3);
    assert_eq!(ws["values"]["in_use"], 0);
    assert_eq!(ws["values"]["needed"], 2);
    let slots = finding(&doc, "replication_slots", "ok");
    assert_eq!(slots["values"]["max_replication_slots"], 2);
    let d = finding(&doc, "destination", "ok");
    assert_eq!(d["values"]["state"], "missing");
    let disk = finding(&doc, "disk_space", "ok");
    assert!(
        disk["values"]["needed_bytes"].as_u64() > Some(1 << 20),
        "{disk:#}"
    );
    let v = finding(&doc, "server_version", "ok");
    assert_eq!(
        v["values"]["server_version_num"]
            .as_u64()
            .map(|n| n / 10000),
        Some(u64::from(c.major))
    );
    // Nothing was created, here or there.
    assert!(!dest.exists());
    assert_eq!(c.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    // The text form says the same, a line per finding.
    let text = check_cmd(c, "postgres", &["-D"]).arg(&dest).run();
    assert_eq!(exit_code(&text), Some(0), "{}", text.stderr);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("ok      walsenders: 3 of max_wal_senders = 3 free")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .ends_with("a clone would start (0 warning(s))\n"),
        "{}",
        text.stdout
    );
    // Over TLS, the finding names the protocol and the cipher.
    let (run, doc) =
        check_json(check_cmd(c, "postgres", &["-d", "sslmode=require", "-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(0), "{}", run.stdout);
    let tls = finding(&doc, "tls", "ok");
    assert_eq!(tls["values"]["in_use"], true);
    assert!(
        tls["values"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1_")),
        "{tls:#}"
    );
    assert!(
        tls["values"]["cipher"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLS")),
        "{tls:#}"
    );
}

fn walsenders_exhausted(c: &Cluster, work: &TestDir) {
    let dest = work.join("ws");
    let _receivers = Receivers::start(c, 2);
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(1), "{}", run.stderr);
    assert_eq!(doc["would_start"], false);
    let ws = finding(&doc, "walsenders", "problem");
    assert_eq!(
        ws["message"],
        "max_wal_senders = 3 and 2 are in use; the clone needs 2 (the backup and -X stream's WAL connection)"
    );
    assert!(ws["hint"]
        .as_str()
        .is_some_and(|h| h.contains("stop a standby")));
    assert_eq!(ws["values"]["in_use"], 2);
    // One connection fits.
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-X", "fetch", "-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(0), "{}", run.stdout);
    finding(&doc, "walsenders", "ok");
    // With every walsender taken, the check's own connection is refused as the clone's would
    // be, and the SQL count says why.
    let _third = Receivers::start_more(c, 1, 3);
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-X", "fetch", "-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(1));
    let conn = finding(&doc, "connection", "problem");
    assert!(
        conn["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_wal_senders")),
        "{conn:#}"
    );
    let ws = finding(&doc, "walsenders", "problem");
    assert_eq!(ws["values"]["in_use"], 3);
}

fn slots_exhausted(c: &Cluster, work: &TestDir) {
    let dest = work.join("slots");
    c.psql("SELECT pg_create_physical_replication_slot('one'), pg_create_physical_replication_slot('two')");
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(1));
    let s = finding(&doc, "replication_slots", "problem");
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("max_replication_slots = 2 and 2 are in use")),
        "{s:#}"
    );
    // -S of an existing slot needs no new one.
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-S", "one", "-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(0), "{}", run.stdout);
    finding(&doc, "slot", "ok");
    // -C of an existing slot.
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-S", "one", "-C", "-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(1));
    let s = finding(&doc, "slot", "problem");
    assert_eq!(
        s["message"],
        "replication slot \"one\" already exists, and -C would create it"
    );
    c.psql("SELECT pg_drop_replication_slot('two')");
    // -S of a missing slot without -C.
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-S", "nope", "-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(1));
    let s = finding(&doc, "slot", "problem");
    assert_eq!(s["message"], "replication slot \"nope\" does not exist");
    c.psql("SELECT pg_drop_replication_slot('one')");
}

/// The clone's own error line for these flags (it fails before creating anything).
fn clone_error(c: &Cluster, user: &str, password: Option<&str>, dest: &Path) -> String {
    let mut cmd = pgclone_cmd();
    cmd.server(c.port, user).arg("-w").arg("-D").arg(dest);
    if let Some(p) = password {
        cmd.password(p);
    }
    let run = cmd.run();
    let line = run
        .error_lines()
        .first()
        .copied()
        .unwrap_or_default()
        .to_owned();
    assert!(!dest.exists());
    line.trim_start_matches("pgclone: error: ").to_owned()
}

fn refused_connections(c: &Cluster, work: &TestDir) {
    let dest = work.join("refused");
    let (run, doc) = check_json(
        check_cmd(c, "replication", &["-w", "-D"])
            .arg(&dest)
            .password("wrong"),
    );
    assert_eq!(exit_code(&run), Some(1));
    let conn = finding(&doc, "connection", "problem");
    let msg = conn["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("password authentication failed for user \"replication\""),
        "{msg}"
    );
    assert_eq!(msg, clone_error(c, "replication", Some("wrong"), &dest));
    // The right password passes.
    let (run, doc) = check_json(
        check_cmd(c, "replication", &["-w", "-D"])
            .arg(&dest)
            .password("secret"),
    );
    finding(&doc, "connection", "ok");
    assert_eq!(exit_code(&run), Some(0), "{}", run.stdout);
    // This role may not open an SQL session (no hba line): the counts are unknown, and the
    // findings say so and why.
    let ws = finding(&doc, "walsenders", "warning");
    let msg = ws["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("max_wal_senders = 3, but how many are in use could not be learned")
            && msg.contains("no pg_hba.conf entry"),
        "{msg}"
    );
    assert!(ws["hint"]
        .as_str()
        .is_some_and(|h| h.contains("database \"postgres\"")));
    finding(&doc, "disk_space", "warning");

    let (run, doc) = check_json(check_cmd(c, "rejected", &["-w", "-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(1));
    let conn = finding(&doc, "connection", "problem");
    let msg = conn["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("pg_hba.conf rejects replication connection"),
        "{msg}"
    );
    assert!(conn["hint"]
        .as_str()
        .is_some_and(|h| h.contains("pg_hba.conf")));
    assert_eq!(msg, clone_error(c, "rejected", None, &dest));
}

fn non_empty_destination(c: &Cluster, work: &TestDir) {
    let dest = work.mkdir("full");
    std::fs::write(dest.join("PG_VERSION"), "18\n").expect("write");
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(1));
    let d = finding(&doc, "destination", "problem");
    assert_eq!(
        d["message"],
        format!("\"{}\" exists and is not empty", dest.display())
    );
    assert_eq!(d["values"]["state"], "not_empty");
    // The same for --waldir, the destination being free.
    let (run, doc) = check_json(
        check_cmd(c, "postgres", &["-D"])
            .arg(work.join("free"))
            .arg("--waldir")
            .arg(&dest),
    );
    assert_eq!(exit_code(&run), Some(1));
    finding(&doc, "destination", "ok");
    let w = finding(&doc, "waldir", "problem");
    assert_eq!(w["values"]["state"], "not_empty");
}

/// Run as `pg_basebackup`, the subcommand is there too and names itself so.
fn as_pg_basebackup(c: &Cluster, work: &TestDir) {
    let link = work.join("pg_basebackup");
    std::os::unix::fs::symlink(support::pgclone_exe(), &link).expect("symlink");
    let mut cmd = support::as_pg_user(&link);
    cmd.arg("check")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            "postgres",
            "--json",
            "-D",
        ])
        .arg(work.join("dropin"));
    let run = support::run_cmd(cmd);
    assert_eq!(exit_code(&run), Some(0), "{}\n{}", run.stdout, run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(doc["program"], "pg_basebackup");
    assert_eq!(doc["would_start"], true);
}

fn tiny_filesystem(c: &Cluster, work: &TestDir) {
    let dir = work.mkdir("tiny");
    let Some(_tmpfs) = Tmpfs::mount(&dir, "4m") else {
        return;
    };
    let dest = dir.join("clone");
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(1), "{}", run.stdout);
    let d = finding(&doc, "destination", "ok");
    assert_eq!(d["values"]["fs_type"], "tmpfs");
    assert_eq!(d["values"]["mount_point"], dir.display().to_string());
    let space = finding(&doc, "disk_space", "problem");
    let free = space["values"]["free_bytes"].as_u64().unwrap_or(u64::MAX);
    let need = space["values"]["needed_bytes"].as_u64().unwrap_or(0);
    assert!(free <= 4 << 20 && need > free, "{space:#}");
    assert!(!dest.exists());
}

fn tablespace_without_mapping(c: &Cluster, work: &TestDir) {
    let location = work.mkdir("ts");
    c.create_tablespace("space", &location);
    let dest = work.join("ts-clone");
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(1));
    let ts = finding(&doc, "tablespace", "problem");
    assert_eq!(ts["values"]["location"], location.display().to_string());
    assert_eq!(
        ts["hint"],
        format!("map it with -T {}=NEWDIR", location.display())
    );
    let mapping = format!("{}={}", location.display(), work.join("ts-new").display());
    let (run, doc) = check_json(check_cmd(c, "postgres", &["-T", &mapping, "-D"]).arg(&dest));
    assert_eq!(exit_code(&run), Some(0), "{}", run.stdout);
    let ts = finding(&doc, "tablespace", "ok");
    assert_eq!(ts["values"]["mapped"], true);
    c.psql("DROP TABLESPACE space");
}

/// Every case against one server of `major`.
fn all_cases(major: u32) {
    let started = Instant::now();
    let work = TestDir::new("check");
    let c = server(major, &work);
    clean(&c, &work);
    as_pg_basebackup(&c, &work);
    walsenders_exhausted(&c, &work);
    slots_exhausted(&c, &work);
    refused_connections(&c, &work);
    non_empty_destination(&c, &work);
    tiny_filesystem(&c, &work);
    tablespace_without_mapping(&c, &work);
    eprintln!(
        "check against {major}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn check_against_10() {
    all_cases(10);
}

#[test]
fn check_against_14() {
    all_cases(14);
}

#[test]
fn check_against_18() {
    all_cases(18);
}
