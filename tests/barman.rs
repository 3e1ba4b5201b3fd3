//! Barman 3.19 backs up a PostgreSQL 17 primary through pgclone installed as `pg_basebackup`:
//! `backup_method = postgres` with `path_prefix` naming a bin directory where `pg_basebackup`
//! is pgclone and `pg_receivewal` and `pg_combinebackup` the real ones. Barman finds pgclone
//! there (not another `pg_basebackup` on `PATH`), `barman check` passes every check
//! (`pg_basebackup: OK`, `pg_basebackup compatible: OK`), `barman backup` completes in plain
//! format, in tar format with client-side gzip, in plain format with server-side gzip and as
//! an incremental backup, and `barman recover` of each backup starts as a server that ends
//! recovery, accepts writes and holds the rows written on the primary before the backup and,
//! through the WAL Barman archived, after it. The primary has a tablespace (Barman maps it into
//! the backup, recover relocates it) and the streaming role a SCRAM password that pgclone and
//! pg_receivewal read from the passfile named in `streaming_conninfo`.
//!
//! Barman calls `pg_basebackup --dbname=<conninfo> -v --no-password --pgdata=<dir> --no-slot
//! --wal-method=none` plus, from the settings below, `--max-rate=<kB/s>`, `--checkpoint=fast`,
//! `--format=tar|plain --compress=[server-]gzip:level=1`, `--incremental=<manifest>` and
//! `--tablespace-mapping=<dir>=<backup>/<oid>`; the test reads them back from Barman's log.
//! Barman runs as the unprivileged account (run as root it would switch to `barman_user`).

mod support;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{
    as_pg_user, chown_to_pg_user, dropin, pg_user, tools_bin, Cluster, ClusterOptions, TestDir,
};

/// The Barman server section's name.
const SERVER: &str = "pg";
/// The primary's major version: its PyPI toolset has the real `pg_receivewal`.
const MAJOR: u32 = 17;
/// `streaming_barman`'s password, read from the passfile named in `streaming_conninfo`
/// (Barman passes `--no-password`).
const PASSWORD: &str = "stream-secret";

/// `barman -c <conf>` for one server, run as the unprivileged account.
struct Barman {
    exe: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    receive_wal_out: PathBuf,
    /// `barman_home`.
    home: PathBuf,
    /// `path_prefix`: where `pg_basebackup` is pgclone.
    bin: PathBuf,
    /// The configuration without per-backup settings.
    base_conf: String,
}

impl Barman {
    /// Writes `barman.conf` in `work` for `primary`, with `bin` as `path_prefix`.
    fn new(venv: &Path, work: &TestDir, bin: &Path, primary: &Cluster) -> Self {
        let user = pg_user()
            .map(str::to_owned)
            .unwrap_or_else(|| std::env::var("USER").expect("USER"));
        let home = work.mkdir("barman");
        let log = work.join("barman.log");
        let port = primary.port;
        let passfile = work.join("pgpass");
        fs::write(
            &passfile,
            format!("127.0.0.1:{port}:*:streaming_barman:{PASSWORD}\n"),
        )
        .expect("write pgpass");
        fs::set_permissions(&passfile, fs::Permissions::from_mode(0o600)).expect("chmod pgpass");
        chown_to_pg_user(&passfile);
        let base_conf = format!(
            "[barman]\nbarman_home = {home}\nbarman_user = {user}\nlog_file = {log}\n\
             log_level = DEBUG\n\n\
             [{SERVER}]\ndescription = \"PostgreSQL {MAJOR} through pgclone as pg_basebackup\"\n\
             conninfo = host=127.0.0.1 port={port} user=barman dbname=postgres\n\
             streaming_conninfo = host=127.0.0.1 port={port} user=streaming_barman \
             passfile={passfile}\n\
             backup_method = postgres\nstreaming_archiver = on\nslot_name = barman\n\
             create_slot = auto\npath_prefix = {bin}\nimmediate_checkpoint = true\n\
             bandwidth_limit = 200000\n",
            home = home.display(),
            log = log.display(),
            bin = bin.display(),
            passfile = passfile.display(),
        );
        let barman = Self {
            exe: venv.join("barman"),
            conf: work.join("barman.conf"),
            log,
            receive_wal_out: work.join("receive-wal.out"),
            bin: bin.to_path_buf(),
            home,
            base_conf,
        };
        barman.configure(&[]);
        barman
    }

    /// Rewrites the configuration: the base plus `extra` lines in the server section.
    fn configure(&self, extra: &[&str]) {
        let mut text = self.base_conf.clone();
        for line in extra {
            text.push_str(line);
            text.push('\n');
        }
        fs::write(&self.conf, text).expect("write barman.conf");
    }

    /// `barman -c barman.conf <args>` as the unprivileged account.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = as_pg_user(&self.exe);
        cmd.arg("-c").arg(&self.conf).args(args);
        cmd
    }

    /// Runs barman to completion; its stdout, or a panic with its output and the logs.
    fn run(&self, args: &[&str], primary: &Cluster) -> String {
        let out = self.command(args).output().expect("run barman");
        self.stdout_or_panic(args, &out, primary)
    }

    /// Runs barman while writing a little WAL on `primary` every 200 ms, so that
    /// pg_receivewal opens the next segment and Barman archives the one it waits for (an
    /// idle server would write its next WAL record only after 15 s).
    fn run_nudging(&self, args: &[&str], primary: &Cluster) -> String {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn barman");
        let deadline = Instant::now() + Duration::from_secs(90);
        while child.try_wait().expect("wait for barman").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            let _ = primary.try_psql("INSERT INTO nudge DEFAULT VALUES");
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = child.wait_with_output().expect("barman output");
        self.stdout_or_panic(args, &out, primary)
    }

    fn stdout_or_panic(&self, args: &[&str], out: &Output, primary: &Cluster) -> String {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "barman {args:?} failed ({}):\n{stdout}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.context(primary)
        );
        stdout
    }

    /// The tails of Barman's log (without its once-per-poll lines), of `barman receive-wal`'s
    /// output and of the primary's log, for failure messages.
    fn context(&self, primary: &Cluster) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("No xlog segments found") && !l.contains(" DEBUG: "))
            .collect();
        format!(
            "--- barman log ---\n{}\n--- barman receive-wal ---\n{}\n--- primary log ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n"),
            fs::read_to_string(&self.receive_wal_out).unwrap_or_default(),
            primary.log_tail()
        )
    }

    /// `barman show-server`: the pg_basebackup Barman found must be the one in `path_prefix`
    /// (when that one fails `--version`, Barman silently takes the next `pg_basebackup` on
    /// `PATH`, e.g. Debian's wrapper in /usr/bin).
    fn assert_uses_bin_dir(&self, primary: &Cluster) {
        let show = self.run(&["show-server", SERVER], primary);
        let want = self.bin.join("pg_basebackup");
        let found: Vec<_> = show
            .lines()
            .filter(|l| l.contains("pg_basebackup"))
            .collect();
        assert_eq!(
            show_setting(&show, "pg_basebackup_path"),
            Some(want.to_str().expect("utf8")),
            "Barman does not use pgclone as pg_basebackup:\n{}",
            found.join("\n")
        );
    }

    /// `barman check`: exit 0, every check OK, and the pg_basebackup checks among them.
    fn check(&self, primary: &Cluster) {
        let out = self
            .command(&["check", SERVER])
            .output()
            .expect("barman check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let checks = parse_check(&stdout);
        let failed: Vec<_> = checks
            .iter()
            .filter(|(_, r)| !r.starts_with("OK"))
            .collect();
        assert!(
            out.status.success() && failed.is_empty(),
            "barman check failed ({}): {failed:?}\n{stdout}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.context(primary)
        );
        for name in [
            "pg_basebackup",
            "pg_basebackup compatible",
            "receive-wal running",
        ] {
            assert!(
                checks.iter().any(|(n, _)| n == name),
                "barman check lacks {name:?}:\n{stdout}"
            );
        }
    }

    /// `barman backup --wait <options>`, then the new backup's id, checked DONE by
    /// `show-backup`. Barman's log must show that it ran pgclone with the flags it passes to
    /// every backup and `adds`.
    fn backup(&self, primary: &Cluster, options: &[&str], adds: &str) -> String {
        let wait = ["backup", SERVER, "--wait", "--wait-timeout", "60"];
        self.run_nudging(&[&wait[..], options].concat(), primary);
        let args = self.last_pg_basebackup_args();
        let always =
            "-v --no-password --no-slot --wal-method=none --max-rate=200000 --checkpoint=fast";
        for flag in always.split(' ').chain(adds.split_whitespace()) {
            assert!(
                args.iter().any(|a| a == flag),
                "pg_basebackup run without {flag}: {args:?}"
            );
        }
        let id = self.run(&["list-backups", "--minimal", SERVER], primary);
        let id = id.lines().next().expect("a backup").trim().to_owned();
        let show = self.run(&["show-backup", SERVER, &id], primary);
        assert_eq!(show_field(&show, "Status"), Some("DONE"), "{show}");
        id
    }

    /// The arguments of Barman's last pg_basebackup run, from its log (`DEBUG: Command: [...]`,
    /// a Python list of quoted strings without quotes inside).
    fn last_pg_basebackup_args(&self) -> Vec<String> {
        let log = fs::read_to_string(&self.log).expect("barman log");
        let exe = self.bin.join("pg_basebackup");
        let head = format!("Command: ['{}', '--dbname=", exe.display());
        let line = log
            .lines()
            .rev()
            .find_map(|l| l.split_once(&head).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no pg_basebackup run in the barman log"));
        line.trim_end_matches(']')
            .split("', '")
            .skip(1)
            .map(|a| a.trim_matches('\'').to_owned())
            .collect()
    }

    /// Closes the current WAL segment and waits until Barman has archived it.
    fn switch_wal(&self, primary: &Cluster) {
        let args = [
            "switch-wal",
            "--force",
            "--archive",
            "--archive-timeout",
            "60",
        ];
        self.run_nudging(&[&args[..], &[SERVER]].concat(), primary);
    }

    /// Starts `barman receive-wal` in the background (stopped when the guard drops) and waits
    /// until its pg_receivewal streams from slot `barman` (created by `create_slot = auto`).
    fn receive_wal(&self, primary: &Cluster) -> ReceiveWal<'_> {
        let out = File::create(&self.receive_wal_out).expect("receive-wal output");
        let child = self
            .command(&["receive-wal", SERVER])
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn barman receive-wal");
        let guard = ReceiveWal {
            barman: self,
            child,
        };
        let active = "SELECT active FROM pg_replication_slots WHERE slot_name = 'barman'";
        let deadline = Instant::now() + Duration::from_secs(30);
        while primary.try_psql(active).as_deref() != Ok("t") {
            assert!(
                Instant::now() < deadline,
                "barman receive-wal never streamed from slot barman\n{}",
                self.context(primary)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        guard
    }
}

/// `barman receive-wal` running in the background; stopped with `receive-wal --stop` (and
/// killed if that does not end it) on drop, also when the test fails.
struct ReceiveWal<'a> {
    barman: &'a Barman,
    child: Child,
}

impl Drop for ReceiveWal<'_> {
    fn drop(&mut self) {
        let _ = self
            .barman
            .command(&["receive-wal", "--stop", SERVER])
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `barman check` output as (check name, result) pairs: `\tname: OK (hint)`.
fn parse_check(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter(|l| l.starts_with('\t'))
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(name, result)| (name.to_owned(), result.to_owned()))
        .collect()
}

/// The value of `\tname: value` in `barman show-server` output.
fn show_setting<'a>(show: &'a str, name: &str) -> Option<&'a str> {
    show.lines()
        .filter_map(|l| l.trim().split_once(": "))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// The value of `name : value` in `barman show-backup` output.
fn show_field<'a>(show: &'a str, name: &str) -> Option<&'a str> {
    show.lines()
        .filter_map(|l| l.split_once(" : "))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, v)| v.trim())
}

/// A PostgreSQL 17 primary (PyPI toolset) with Barman's roles: `barman` (superuser, for
/// `conninfo`) and `streaming_barman` (replication with a SCRAM password, for pg_basebackup
/// and pg_receivewal), WAL summaries (for incremental backups), table `t` holding `before` in
/// tablespace `ts` (under `work`), and table `nudge` for [`Barman::run_nudging`].
fn primary(work: &TestDir) -> Cluster {
    let mut opts = ClusterOptions::new(MAJOR);
    opts.full_toolset = true;
    opts.conf = vec!["summarize_wal = on".into()];
    opts.hba = vec![
        "host all barman 127.0.0.1/32 trust".into(),
        "host replication streaming_barman 127.0.0.1/32 scram-sha-256".into(),
    ];
    let primary = Cluster::start(&opts);
    primary.create_tablespace("ts", &work.mkdir("ts-primary"));
    primary.psql(&format!(
        "SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE barman SUPERUSER LOGIN; \
         CREATE ROLE streaming_barman REPLICATION LOGIN PASSWORD '{PASSWORD}'; \
         CREATE TABLE t (v text) TABLESPACE ts; INSERT INTO t VALUES ('before'); \
         CREATE TABLE nudge (at timestamptz DEFAULT now())",
    ));
    primary
}

/// Barman's last pg_basebackup run relocated tablespace `ts` into backup `id`'s directory
/// named by the tablespace's OID (`--tablespace-mapping`).
fn assert_ts_mapped(barman: &Barman, primary: &Cluster, id: &str) {
    let ts = primary.psql(
        "SELECT pg_tablespace_location(oid) || '|' || oid FROM pg_tablespace WHERE spcname = 'ts'",
    );
    let (location, oid) = ts.split_once('|').expect("location|oid");
    let dest = barman.home.join(SERVER).join("base").join(id).join(oid);
    let mapping = format!("--tablespace-mapping={location}={}", dest.display());
    let args = barman.last_pg_basebackup_args();
    assert!(args.contains(&mapping), "no {mapping}: {args:?}");
}

/// `barman recover --tablespace ts:<new dir>` of `id` into `work/recovered-<id>`, started as a
/// server: it must end recovery, accept a write, find `ts` in the new directory and hold the
/// rows of `t` in `want` (sorted, comma-separated).
fn recover_and_start(barman: &Barman, primary: &Cluster, work: &TestDir, id: &str, want: &str) {
    let dest = work.join(&format!("recovered-{id}"));
    let ts = work.join(&format!("recovered-{id}-ts"));
    let relocate = format!("ts:{}", ts.display());
    let dest_arg = dest.to_str().expect("utf8");
    barman.run(
        &["recover", "--tablespace", &relocate, SERVER, id, dest_arg],
        primary,
    );
    let restored = Cluster::start_existing(MAJOR, &dest, &[]);
    restored.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(30));
    assert_eq!(
        restored.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"),
        ts.to_str().expect("utf8")
    );
    assert_eq!(
        restored.psql("SELECT string_agg(v, ',' ORDER BY v) FROM t"),
        want,
        "rows of the server recovered from {id}\n{}",
        restored.log_tail()
    );
    restored.psql("INSERT INTO t VALUES ('written after recovery')");
}

/// A `barman backup` made with extra server settings: what pg_basebackup gets, and a file
/// its data directory must hold.
struct Variant {
    name: &'static str,
    settings: &'static [&'static str],
    /// What Barman adds to pg_basebackup's arguments.
    adds: &'static str,
    file: &'static str,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        name: "plain",
        settings: &[],
        adds: "",
        file: "PG_VERSION",
    },
    Variant {
        name: "tar client gzip",
        settings: &[
            "backup_compression = gzip",
            "backup_compression_format = tar",
            "backup_compression_level = 1",
        ],
        adds: "--format=tar --compress=gzip:level=1",
        file: "base.tar.gz",
    },
    Variant {
        name: "plain server gzip",
        settings: &[
            "backup_compression = gzip",
            "backup_compression_location = server",
            "backup_compression_format = plain",
            "backup_compression_level = 1",
        ],
        adds: "--format=plain --compress=server-gzip:level=1",
        file: "PG_VERSION",
    },
];

/// `barman backup --incremental <parent>` (PostgreSQL 17's incremental backup from WAL
/// summaries): Barman passes `--incremental=<parent's backup_manifest>`; the backup is
/// incremental, and `barman recover` rebuilds it with the real pg_combinebackup.
fn incremental_backup(barman: &Barman, primary: &Cluster, parent: &str) -> String {
    barman.configure(&[]);
    let manifest = barman.home.join(SERVER).join("base").join(parent);
    let adds = format!(
        "--incremental={}",
        manifest.join("data/backup_manifest").display()
    );
    let id = barman.backup(primary, &["--incremental", parent], &adds);
    assert_ts_mapped(barman, primary, &id);
    let show = barman.run(&["show-backup", SERVER, &id], primary);
    assert_eq!(
        show_field(&show, "Backup Type"),
        Some("incremental"),
        "{show}"
    );
    id
}

/// Barman with pgclone as pg_basebackup: `barman check`, a backup of each [`VARIANTS`] and an
/// incremental one, each followed by a row, then the recovery of each backup, started.
#[test]
fn barman_backs_up_and_recovers_through_pgclone() {
    let Some(venv) = dropin::venv("barman") else {
        return;
    };
    let Some(_rsync) = dropin::system_tool("/usr/bin/rsync", "rsync (barman recover uses it)")
    else {
        return;
    };
    let work = TestDir::new("barman");
    let primary = primary(&work);
    let bin = dropin::bin_dir(&work, "bin", &[&tools_bin(MAJOR)]);
    let barman = Barman::new(&venv, &work, &bin, &primary);

    let _receive_wal = barman.receive_wal(&primary);
    barman.assert_uses_bin_dir(&primary);
    barman.switch_wal(&primary);
    barman.check(&primary);

    let mut rows = vec!["before".to_owned()];
    let mut backups = Vec::new();
    for variant in &VARIANTS {
        barman.configure(variant.settings);
        let id = barman.backup(&primary, &[], variant.adds);
        assert_ts_mapped(&barman, &primary, &id);
        let data = barman.home.join(SERVER).join("base").join(&id).join("data");
        assert!(
            data.join(variant.file).exists(),
            "{} backup {id} ({}) lacks {}",
            variant.name,
            variant.adds,
            variant.file
        );
        let row = format!("after {}", variant.name);
        primary.psql(&format!("INSERT INTO t VALUES ('{row}')"));
        rows.push(row);
        backups.push(id);
    }
    let incremental = incremental_backup(&barman, &primary, &backups[0]);
    primary.psql("INSERT INTO t VALUES ('after incremental')");
    rows.push("after incremental".to_owned());
    backups.push(incremental);
    barman.switch_wal(&primary);

    rows.sort();
    for id in &backups {
        recover_and_start(&barman, &primary, &work, id, &rows.join(","));
    }
}
