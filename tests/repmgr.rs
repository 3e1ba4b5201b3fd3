//! repmgr 5.3 (Debian's `postgresql-15-repmgr`) with Debian's PostgreSQL 15 seeds standbys
//! through pgclone installed as `pg_basebackup` in its `pg_bindir`, unchanged otherwise.
//!
//! `repmgr standby clone` runs, through the shell, `<pg_bindir>/pg_basebackup -l "repmgr base
//! backup" -D <data>`, then either `-h <host> -p <port> -U repmgr` (source given as options) or
//! `-d '<conninfo>'` (source given as a conninfo string), then `-c fast -X stream -S
//! repmgr_slot_<id>` (`-c fast` for `--fast-checkpoint`; the slot, created beforehand by repmgr,
//! for `use_replication_slots=true`), then repmgr.conf's `pg_basebackup_options`. repmgr checks
//! only its exit status (no version check on the local pg_basebackup); `--verify-backup` then
//! runs PostgreSQL 15's own `pg_verifybackup` on what pgclone wrote. Each standby must start in
//! recovery, register, show as a running standby of node1 in `repmgr cluster show`, stream
//! through repmgr's slot and see a row written on the primary after the clones. With
//! `PGCLONE_STAND_IN=/bin/false` the first clone fails.

mod support;

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{as_pg_user, chown_to_pg_user, dropin, free_port, initdb_cmd, pg_ctl, TestDir};

/// Debian's PostgreSQL 15, whose share and lib directories hold repmgr's extension.
const PG15: &str = "/usr/lib/postgresql/15/bin";
const PASSWORD: &str = "repmgr-secret";
const WAIT: Duration = Duration::from_secs(30);

/// A server of Debian's PostgreSQL 15 with its repmgr configuration; stopped on drop.
struct Node {
    id: u32,
    name: &'static str,
    port: u16,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    conf: PathBuf,
    /// repmgr.conf's `pg_basebackup_options`: flags repmgr appends to its own.
    pg_basebackup_options: String,
    running: bool,
}

impl Node {
    /// Node `id` named `name`, with its data directory, socket directory and log in `work`.
    fn new(work: &TestDir, id: u32, name: &'static str) -> Self {
        Self {
            id,
            name,
            port: free_port(),
            data: work.join(name),
            socket_dir: work.mkdir(&format!("{name}-socket")),
            log: work.join(&format!("{name}.log")),
            conf: work.join(&format!("{name}.conf")),
            pg_basebackup_options: String::new(),
            running: false,
        }
    }

    /// Starts the data directory on a free port (retrying when another process took it).
    fn start(&mut self) {
        for _attempt in 0..5 {
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.socket_dir.display()
            );
            let out = pg_ctl(Path::new(PG15), &self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-o", &opts, "start"])
                .output()
                .expect("pg_ctl start");
            if out.status.success() {
                self.running = true;
                return;
            }
            let log = self.log_tail();
            assert!(
                log.contains("could not bind") || log.contains("could not create"),
                "{} failed to start: {}\n{log}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            self.port = free_port();
        }
        panic!("{} could not find a free port", self.name);
    }

    /// Runs `sql` as `postgres` on database `db` through the Unix socket.
    fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = support::psql_cmd(&self.socket_dir, self.port, db, sql)
            .output()
            .expect("psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` as `postgres`; panics with the server log on failure.
    fn psql(&self, sql: &str) -> String {
        self.try_psql("postgres", sql).unwrap_or_else(|e| {
            panic!(
                "psql on {}: {e}\nSQL: {sql}\n{}",
                self.name,
                self.log_tail()
            )
        })
    }

    /// Waits until `sql` returns `want` on this node.
    fn wait_for(&self, sql: &str, want: &str) {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.try_psql("postgres", sql) {
                Ok(v) if v == want => return,
                Ok(v) => last = v,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {sql:?} = {want:?} on {}; last: {last}\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// The last lines of the server log.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- {} log ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// Writes this node's repmgr.conf: its conninfo, data directory, and `bin` as `pg_bindir`.
    fn write_repmgr_conf(&self, bin: &Path, pgpass: &Path) {
        let conf = format!(
            "node_id={}\nnode_name='{}'\n\
             conninfo='host=127.0.0.1 port={} user=repmgr dbname=repmgr connect_timeout=5'\n\
             data_directory='{}'\npg_bindir='{}'\npassfile='{}'\n\
             use_replication_slots=true\nlog_level=INFO\npg_basebackup_options='{}'\n",
            self.id,
            self.name,
            self.port,
            self.data.display(),
            bin.display(),
            pgpass.display(),
            self.pg_basebackup_options
        );
        fs::write(&self.conf, conf).expect("write repmgr.conf");
        chown_to_pg_user(&self.conf);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_ctl(Path::new(PG15), &self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// initdb and start the primary: replication on, the `repmgr` superuser with a password
/// (scram-sha-256 on loopback, for its database and for replication) and its database.
fn start_primary(work: &TestDir) -> Node {
    let mut node = Node::new(work, 1, "node1");
    support::checked_output(&mut initdb_cmd(Path::new(PG15), &node.data), "initdb 15");
    let conf = format!(
        "\nfsync = off\nshared_buffers = 16MB\nwal_level = replica\nmax_wal_senders = 10\n\
         max_replication_slots = 10\nhot_standby = on\nwal_log_hints = on\n\
         log_line_prefix = '%m [%p] '\nunix_socket_directories = '{}'\n",
        node.socket_dir.display()
    );
    append(&node.data.join("postgresql.conf"), &conf);
    fs::write(
        node.data.join("pg_hba.conf"),
        "local all all trust\n\
         host repmgr repmgr 127.0.0.1/32 scram-sha-256\n\
         host replication repmgr 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("pg_hba.conf");
    node.start();
    node.psql(&format!(
        "CREATE ROLE repmgr SUPERUSER REPLICATION LOGIN PASSWORD '{PASSWORD}'"
    ));
    node.psql("CREATE DATABASE repmgr OWNER repmgr");
    node
}

/// Appends `text` to the file at `path`.
fn append(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("append");
}

/// A .pgpass the unprivileged account owns (0600) with the `repmgr` password for every
/// database, `replication` included.
fn write_pgpass(work: &TestDir) -> PathBuf {
    let path = work.join("pgpass");
    fs::write(&path, format!("127.0.0.1:*:*:repmgr:{PASSWORD}\n")).expect("pgpass");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod pgpass");
    chown_to_pg_user(&path);
    path
}

/// What every repmgr run shares: the work directory, the .pgpass and `pg_bindir`.
struct Setup {
    work: TestDir,
    pgpass: PathBuf,
    bin: PathBuf,
}

impl Setup {
    /// Runs `repmgr -f <node's repmgr.conf> <args>` as the unprivileged account in the work
    /// directory with `PGPASSFILE`; panics with its output and the log tails of `nodes` unless
    /// it exits 0. Returns stdout followed by stderr.
    fn repmgr(&self, node: &Node, nodes: &[&Node], args: &[&str]) -> String {
        let mut cmd = as_pg_user(Path::new(PG15).join("repmgr"));
        cmd.current_dir(self.work.path())
            .env("PGPASSFILE", &self.pgpass)
            .arg("-f")
            .arg(&node.conf)
            .args(args);
        let out = cmd.output().expect("run repmgr");
        let text = support::output_text(&out);
        if !out.status.success() {
            let mut msg = format!("repmgr {args:?} failed ({}):\n{text}\n", out.status);
            for node in nodes {
                let _ = writeln!(msg, "{}", node.log_tail());
            }
            panic!("{msg}");
        }
        text
    }

    /// `repmgr standby clone --fast-checkpoint --verify-backup` of `standby` from the server
    /// `source` names, which must run pgclone as `pg_basebackup` with `-c fast` and repmgr's
    /// slot; then the standby starts, streams, and `repmgr standby register` records it.
    fn clone_start_register(&self, primary: &Node, standby: &mut Node, source: &[&str]) {
        standby.write_repmgr_conf(&self.bin, &self.pgpass);
        let mut args = source.to_vec();
        args.extend(["standby", "clone", "--fast-checkpoint", "--verify-backup"]);
        let clone = self.repmgr(standby, &[primary], &args);
        let ran = format!("{}/pg_basebackup ", self.bin.display());
        let flags = format!(
            " -c fast -X stream -S repmgr_slot_{} {}",
            standby.id, standby.pg_basebackup_options
        );
        assert!(
            clone.contains(&ran) && clone.contains(&flags),
            "repmgr did not run {ran} with{flags}:\n{clone}"
        );
        // A flag repeated in pg_basebackup_options overrides repmgr's, as with pg_basebackup.
        let want = (standby.pg_basebackup_options.split_whitespace())
            .find_map(|w| w.strip_prefix("--label="))
            .unwrap_or("repmgr base backup");
        let label = fs::read_to_string(standby.data.join("backup_label")).unwrap_or_default();
        assert!(
            label.contains(&format!("LABEL: {want}\n")),
            "the clone's backup_label lacks the label {want:?}:\n{label}\n{clone}"
        );
        standby.start();
        standby.write_repmgr_conf(&self.bin, &self.pgpass);
        standby.wait_for("SELECT pg_is_in_recovery()", "t");
        standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming");
        self.repmgr(standby, &[primary, standby], &["standby", "register"]);
    }
}

/// The `repmgr cluster show` row of `name`, split on `|` and trimmed.
fn cluster_row(show: &str, name: &str) -> Vec<String> {
    show.lines()
        .map(|l| {
            l.split('|')
                .map(|c| c.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .find(|cols| cols.len() > 4 && cols[1] == name)
        .unwrap_or_else(|| panic!("no row for {name} in cluster show:\n{show}"))
}

/// repmgr clones two standbys through pgclone as `pg_basebackup`: node2 with the source given
/// as `-h -p -U -d` (repmgr passes them on as `-h -p -U`), node3 with a conninfo string
/// (passed on as `-d '<conninfo>'`) and flags users set in `pg_basebackup_options` (`--waldir`,
/// `--max-rate`, `--manifest-checksums`, `--no-verify-checksums`, `--verbose`, `--progress`, and
/// `--checkpoint`/`--label` again: the last value wins, as with pg_basebackup), both with `--fast-checkpoint`, `--verify-backup` and a replication slot. Both register, show as running standbys of node1, stream through their
/// slots and see a row written on the primary after the clones.
#[test]
fn repmgr_standby_clone_through_pgclone() {
    if dropin::system_tool(&format!("{PG15}/repmgr"), "postgresql-15-repmgr").is_none() {
        return;
    }
    let started = Instant::now();
    let work = TestDir::new("repmgr");
    let setup = Setup {
        bin: dropin::bin_dir(&work, "bin", &[Path::new(PG15)]),
        pgpass: write_pgpass(&work),
        work,
    };
    let primary = start_primary(&setup.work);
    primary.write_repmgr_conf(&setup.bin, &setup.pgpass);
    setup.repmgr(&primary, &[&primary], &["primary", "register"]);

    let port = primary.port.to_string();
    let mut node2 = Node::new(&setup.work, 2, "node2");
    let by_options = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "repmgr",
        "-d",
        "repmgr",
    ];
    setup.clone_start_register(&primary, &mut node2, &by_options);
    let mut node3 = Node::new(&setup.work, 3, "node3");
    let node3_wal = setup.work.join("node3-wal");
    node3.pg_basebackup_options = format!(
        "--waldir={} --max-rate=100M --manifest-checksums=SHA256 --no-verify-checksums --verbose \
         --progress --checkpoint=fast --label=node3",
        node3_wal.display()
    );
    let conninfo = format!("host=127.0.0.1 port={port} user=repmgr dbname=repmgr");
    setup.clone_start_register(&primary, &mut node3, &["-d", &conninfo]);

    assert_eq!(
        fs::read_link(node3.data.join("pg_wal")).ok(),
        Some(node3_wal),
        "node3's pg_wal is not a link to its --waldir"
    );

    let all = [&primary, &node2, &node3];
    let show = setup.repmgr(&primary, &all, &["cluster", "show"]);
    for standby in [&node2, &node3] {
        let row = cluster_row(&show, standby.name);
        assert_eq!(
            (row[2].as_str(), row[3].as_str(), row[4].as_str()),
            ("standby", "running", "node1"),
            "{} is not a running standby of node1:\n{show}",
            standby.name
        );
    }
    assert_eq!(
        primary.psql("SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE active"),
        "repmgr_slot_2,repmgr_slot_3",
        "the standbys do not stream through repmgr's slots"
    );

    primary.psql("CREATE TABLE after_clone(v text); INSERT INTO after_clone VALUES ('seen')");
    for standby in [&node2, &node3] {
        standby.wait_for(
            "SELECT v FROM after_clone WHERE pg_is_in_recovery()",
            "seen",
        );
    }
    eprintln!("repmgr scenario took {:?}", started.elapsed());
}
