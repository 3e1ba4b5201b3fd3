//! repmgr 5.3 (Debian's `postgresql-15-repmgr`) with Debian's PostgreSQL 15 seeds a standby
//! through pgclone installed as `pg_basebackup` in its `pg_bindir`, unchanged otherwise.
//!
//! `repmgr standby clone` runs `<pg_bindir>/pg_basebackup -l "repmgr base backup" -D <data>
//! -h <host> -p <port> -U repmgr -c fast -X stream -S repmgr_slot_2` through the shell (the slot,
//! created beforehand by repmgr, because of `use_replication_slots=true`; `-c fast` because of
//! `--fast-checkpoint`), then `--verify-backup` runs PostgreSQL 15's own `pg_verifybackup` on
//! what pgclone wrote. The standby must start in recovery, register, show as a running standby
//! attached to node1 in `repmgr cluster show`, stream through repmgr's slot and see a row
//! written on the primary after the clone. With `PGCLONE_STAND_IN=/bin/false` the clone fails.

mod support;

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
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
            panic!("psql on {}: {e}\nSQL: {sql}\n{}", self.name, self.log_tail())
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
             use_replication_slots=true\nlog_level=INFO\n",
            self.id,
            self.name,
            self.port,
            self.data.display(),
            bin.display(),
            pgpass.display()
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

/// Runs repmgr as the unprivileged account in `work` with `PGPASSFILE`; panics with its output
/// and the servers' log tails unless it exits 0. Returns stdout followed by stderr.
fn repmgr(work: &TestDir, pgpass: &Path, nodes: &[&Node], args: &[&str]) -> String {
    let mut cmd: Command = as_pg_user(PG15.to_owned() + "/repmgr");
    cmd.current_dir(work.path())
        .env("PGPASSFILE", pgpass)
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

/// The `repmgr cluster show` row of `name`, split on `|` and trimmed.
fn cluster_row(show: &str, name: &str) -> Vec<String> {
    show.lines()
        .map(|l| l.split('|').map(|c| c.trim().to_owned()).collect::<Vec<_>>())
        .find(|cols| cols.len() > 4 && cols[1] == name)
        .unwrap_or_else(|| panic!("no row for {name} in cluster show:\n{show}"))
}

/// `repmgr standby clone --fast-checkpoint --verify-backup` with `use_replication_slots`, through
/// pgclone as `pg_basebackup`; then the standby starts, registers, and streams from node1.
#[test]
fn repmgr_standby_clone_through_pgclone() {
    let Some(_repmgr) = dropin::system_tool(&format!("{PG15}/repmgr"), "postgresql-15-repmgr")
    else {
        return;
    };
    let started = Instant::now();
    let work = TestDir::new("repmgr");
    let bin = dropin::bin_dir(&work, "bin", &[Path::new(PG15)]);
    let pgpass = write_pgpass(&work);
    let primary = start_primary(&work);
    primary.write_repmgr_conf(&bin, &pgpass);
    let mut standby = Node::new(&work, 2, "node2");
    standby.write_repmgr_conf(&bin, &pgpass);

    let node1_conf = primary.conf.to_str().expect("utf8 path").to_owned();
    let node2_conf = standby.conf.to_str().expect("utf8 path").to_owned();
    repmgr(&work, &pgpass, &[&primary], &["-f", &node1_conf, "primary", "register"]);

    let port = primary.port.to_string();
    let clone = repmgr(
        &work,
        &pgpass,
        &[&primary],
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "repmgr",
            "-d",
            "repmgr",
            "-f",
            &node2_conf,
            "standby",
            "clone",
            "--fast-checkpoint",
            "--verify-backup",
        ],
    );
    let ran = format!("{}/pg_basebackup ", bin.display());
    assert!(
        clone.contains(&ran) && clone.contains(" -S repmgr_slot_2") && clone.contains(" -c fast"),
        "repmgr did not run {ran} with -c fast -S repmgr_slot_2:\n{clone}"
    );

    standby.start();
    standby.write_repmgr_conf(&bin, &pgpass);
    standby.wait_for("SELECT pg_is_in_recovery()", "t");
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming");
    repmgr(
        &work,
        &pgpass,
        &[&primary, &standby],
        &["-f", &node2_conf, "standby", "register"],
    );

    let show = repmgr(
        &work,
        &pgpass,
        &[&primary, &standby],
        &["-f", &node1_conf, "cluster", "show"],
    );
    let row = cluster_row(&show, "node2");
    assert_eq!(
        (row[2].as_str(), row[3].as_str(), row[4].as_str()),
        ("standby", "running", "node1"),
        "node2 is not a running standby of node1:\n{show}"
    );
    assert_eq!(
        primary.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'repmgr_slot_2'"),
        "t",
        "node2 does not stream through repmgr's slot"
    );

    primary.psql("CREATE TABLE after_clone(v text); INSERT INTO after_clone VALUES ('seen')");
    standby.wait_for(
        "SELECT coalesce((SELECT v FROM after_clone), 'missing') WHERE pg_is_in_recovery()",
        "seen",
    );
    eprintln!("{clone}\n{show}\nrepmgr scenario took {:?}", started.elapsed());
}
