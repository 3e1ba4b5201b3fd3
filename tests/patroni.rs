//! Patroni 4.1 (etcd3 DCS, Debian's etcd 3.4) with pgclone installed as `pg_basebackup` in
//! `postgresql.bin_dir`: a two-node cluster on loopback whose replica is created by Patroni's
//! default `basebackup` method, that survives a switchover, and whose old leader is
//! reinitialised (`patronictl reinit`) through pgclone too. Every step is proven with a row
//! written on the leader and read on the replica.
//!
//! The second test runs the same scenario with `scripts/patroni-pgclone` as a custom
//! `create_replica_methods` entry: the reinit refreshes the kept data directory in place
//! (`pgclone --refresh`) instead of copying it all, and falls back to `basebackup` when the
//! leader refuses a refresh.
//!
//! Patroni and PostgreSQL 17 (the PyPI toolset) run as the unprivileged account; the
//! replication user authenticates with SCRAM through the pgpass file Patroni writes.
//! With `PGCLONE_STAND_IN=/bin/false` the replica is never created and both tests fail with
//! the Patroni log saying `pg_basebackup exited with code=1`.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::{as_pg_user, dropin, free_port, pg_ctl, psql_cmd, tools_bin, TestDir};

const SCOPE: &str = "pgclone-patroni";
const MAJOR: u32 = 17;
const REPL_USER: &str = "replicator";
const REPL_PASSWORD: &str = "rep-secret";
const SUPER_PASSWORD: &str = "super-secret";
/// How long one step (bootstrap, clone, switchover, reinit) may take.
const STEP: Duration = Duration::from_secs(60);

/// A process started in its own process group (so runuser and what it runs get the signal),
/// stopped with SIGTERM, then SIGKILL after `grace`.
struct Group {
    child: Child,
    grace: Duration,
}

impl Group {
    fn spawn(mut cmd: Command, log: &Path, grace: Duration) -> Self {
        let out = fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().expect("spawn");
        Self { child, grace }
    }

    fn signal(&self, signo: i32) {
        let pgid = self.child.id() as i32;
        // SAFETY: signals the process group this test created (process_group(0)).
        unsafe { libc::kill(-pgid, signo) };
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while self.running() && Instant::now() < deadline {
            sleep(Duration::from_millis(100));
        }
        if self.running() {
            self.signal(libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A one-member etcd on loopback, its data in the test directory, run as the server account.
struct Etcd {
    port: u16,
    _process: Group,
}

impl Etcd {
    fn start(etcd: &Path, work: &TestDir) -> Self {
        let (port, peer) = (free_port(), free_port());
        let data = work.mkdir("etcd");
        let client = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = as_pg_user(etcd);
        cmd.args(["--name", "default", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")]);
        let log = work.join("etcd.log");
        let process = Group::spawn(cmd, &log, Duration::from_secs(5));
        let etcd = Self {
            port,
            _process: process,
        };
        wait_until(Duration::from_secs(20), || {
            let health = http_get(port, "/health")?;
            health.contains("\"health\":\"true\"").then_some(())
        })
        .unwrap_or_else(|| panic!("etcd did not start:\n{}", tail(&log, 30)));
        etcd
    }
}

/// The body of `GET path` on 127.0.0.1:port, or None when it does not answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Calls `probe` every 300 ms until it gives a value or `timeout` passes.
fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(300));
    }
}

/// The last `n` lines of a Patroni log without its DEBUG chatter (DCS requests), keeping
/// the `calling: [...]` lines that show the pg_basebackup command.
fn patroni_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(" DEBUG: ") || l.contains("calling: ["))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a file (empty when missing).
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What every node shares: the Patroni virtualenv, the bin directory where `pg_basebackup`
/// is pgclone, etcd's port.
struct Setup {
    venv: PathBuf,
    bin: PathBuf,
    etcd_port: u16,
}

/// One Patroni member: its configuration, data directory, socket directory and logs.
struct Node {
    name: String,
    yml: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    pg_port: u16,
    log: PathBuf,
    pg_log: PathBuf,
    bin: PathBuf,
    process: Option<Group>,
}

impl Node {
    /// Writes `<name>.yml` in `work` (extra YAML under `postgresql:` in `pg_extra`).
    fn new(work: &TestDir, setup: &Setup, name: &str, pg_extra: &str) -> Self {
        let node = Self {
            name: name.to_owned(),
            yml: work.join(&format!("{name}.yml")),
            data: work.join(&format!("{name}-data")),
            sock: work.mkdir(&format!("{name}-sock")),
            pg_port: free_port(),
            log: work.join(&format!("{name}.log")),
            pg_log: work.mkdir(&format!("{name}-pglog")),
            bin: setup.bin.clone(),
            process: None,
        };
        let text = node_yaml(&node, setup, free_port(), pg_extra);
        fs::write(&node.yml, text).expect("write patroni yml");
        support::chown_to_pg_user(&node.yml);
        node
    }

    fn start(&mut self, setup: &Setup) {
        let mut cmd = as_pg_user(setup.venv.join("patroni"));
        // The PyPI toolset's libpqwalreceiver.so looks for libpq in its build prefix
        // (RUNPATH /opt/postgresql/lib) and else loads the system's libpq 15, which rejects
        // the `sslnegotiation` Patroni 4.1 puts in primary_conninfo for 17+: give the server
        // the toolset's own libpq.
        let lib = tools_bin(MAJOR).join("../lib");
        cmd.env("LD_LIBRARY_PATH", lib).arg(&self.yml);
        self.process = Some(Group::spawn(cmd, &self.log, Duration::from_secs(30)));
    }

    /// psql 18 as `postgres` over the node's socket.
    fn psql(&self, sql: &str) -> Result<String, String> {
        let out = psql_cmd(&self.sock, self.pg_port, "postgres", sql)
            .output()
            .expect("run psql");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The tails of the Patroni log and of the newest PostgreSQL log.
    fn logs(&self) -> String {
        let mut pg_logs: Vec<PathBuf> = fs::read_dir(&self.pg_log)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        pg_logs.sort();
        let pg = pg_logs.last().map(|p| tail(p, 25)).unwrap_or_default();
        format!(
            "--- {} patroni log ---\n{}\n--- {} postgres log ---\n{}\n",
            self.name,
            patroni_tail(&self.log, 30),
            self.name,
            pg
        )
    }

    /// Stops Patroni (which stops its postgres), then any postgres left behind.
    fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
        if self.data.join("postmaster.pid").exists() {
            let _ = pg_ctl(&self.bin, &self.data)
                .args(["stop", "-m", "immediate", "-w"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Patroni configuration of `node`: etcd3, REST API (on `api_port`) and PostgreSQL on
/// loopback, a replication user with a SCRAM password, the socket and logs in the test
/// directory, `pg_extra` added under `postgresql:`.
fn node_yaml(node: &Node, setup: &Setup, api_port: u16, pg_extra: &str) -> String {
    format!(
        r#"scope: {SCOPE}
name: {name}
log:
  level: DEBUG
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        summarize_wal: 'on'
        wal_keep_size: 64MB
  initdb:
  - encoding: UTF8
  - no-locale
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: postgres
      password: {SUPER_PASSWORD}
    replication:
      username: {REPL_USER}
      password: {REPL_PASSWORD}
  parameters:
    unix_socket_directories: '{sock}'
    password_encryption: scram-sha-256
    logging_collector: 'on'
    log_directory: '{pg_log}'
    fsync: 'off'
  basebackup:
    checkpoint: fast
  pg_hba:
  - local all all trust
  - host replication {REPL_USER} 127.0.0.1/32 scram-sha-256
  - host postgres {REPL_USER} 127.0.0.1/32 scram-sha-256
  - host all postgres 127.0.0.1/32 scram-sha-256
{pg_extra}"#,
        name = node.name,
        pg_port = node.pg_port,
        etcd = setup.etcd_port,
        data = node.data.display(),
        bin = setup.bin.display(),
        pgpass = node.yml.with_extension("pgpass").display(),
        sock = node.sock.display(),
        pg_log = node.pg_log.display(),
    )
}

/// One row of `patronictl list --format json`.
#[derive(Debug)]
struct Member {
    name: String,
    role: String,
    state: String,
}

/// The string value of `"key": "..."` in one JSON object of patronictl's output.
fn json_field(object: &str, key: &str) -> String {
    let needle = format!("\"{key}\": \"");
    object
        .find(&needle)
        .map(|i| {
            let rest = &object[i + needle.len()..];
            rest[..rest.find('"').unwrap_or(rest.len())].to_owned()
        })
        .unwrap_or_default()
}

/// `patronictl -c <yml> <args>` as the server account: its stdout, or its stderr as the error.
fn patronictl(setup: &Setup, yml: &Path, args: &[&str]) -> Result<String, String> {
    let out = as_pg_user(setup.venv.join("patronictl"))
        .arg("-c")
        .arg(yml)
        .args(args)
        .output()
        .expect("run patronictl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The members `patronictl list` shows.
fn members(setup: &Setup, yml: &Path) -> Vec<Member> {
    let Ok(out) = patronictl(setup, yml, &["list", "--format", "json"]) else {
        return Vec::new();
    };
    out.split("{\"Cluster\"")
        .skip(1)
        .map(|obj| Member {
            name: json_field(obj, "Member"),
            role: json_field(obj, "Role"),
            state: json_field(obj, "State"),
        })
        .collect()
}

/// Waits until `patronictl list` shows `name` with `role` and `state`; panics with every
/// node's logs otherwise.
fn wait_member(setup: &Setup, nodes: &[&Node], name: &str, role: &str, state: &str) {
    let found = wait_until(STEP, || {
        let list = members(setup, &nodes[0].yml);
        list.iter()
            .any(|m| m.name == name && m.role == role && m.state == state)
            .then_some(())
    });
    if found.is_none() {
        panic!(
            "patronictl list never showed {name} as {role}/{state}; last list: {:?}\n{}",
            members(setup, &nodes[0].yml),
            all_logs(nodes)
        );
    }
}

fn all_logs(nodes: &[&Node]) -> String {
    nodes.iter().map(|n| n.logs()).collect()
}

/// Writes `value` into table `t` on `leader` and waits until `replica` shows it.
fn row_reaches(leader: &Node, replica: &Node, value: &str, nodes: &[&Node]) {
    let sql = format!("CREATE TABLE IF NOT EXISTS t (v text); INSERT INTO t VALUES ('{value}')");
    leader
        .psql(&sql)
        .unwrap_or_else(|e| panic!("write on {}: {e}\n{}", leader.name, all_logs(nodes)));
    let query = format!("SELECT count(*) FROM t WHERE v = '{value}'");
    let seen = wait_until(STEP, || (replica.psql(&query).ok()? == "1").then_some(()));
    assert!(
        seen.is_some(),
        "row {value} written on {} never reached {}: {:?}\n{}",
        leader.name,
        replica.name,
        replica.psql(&query),
        all_logs(nodes)
    );
    assert_eq!(
        replica.psql("SELECT pg_is_in_recovery()").as_deref(),
        Ok("t"),
        "{} is not in recovery",
        replica.name
    );
}

/// The lines of the node's Patroni log (the script's and pgclone's messages included) that
/// contain every one of `needles`.
fn log_lines(node: &Node, needles: &[&str]) -> Vec<String> {
    fs::read_to_string(&node.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Waits until the node's Patroni log says `replica has been created using <method>` `count`
/// times; panics with every node's logs otherwise.
fn wait_created(node: &Node, method: &str, count: usize, nodes: &[&Node]) {
    let line = format!("replica has been created using {method}");
    let done = wait_until(STEP, || {
        (log_lines(node, &[&line]).len() >= count).then_some(())
    });
    assert!(
        done.is_some(),
        "{}: never '{line}' ({count} times)\n{}",
        node.name,
        all_logs(nodes)
    );
}

/// etcd and the Patroni virtualenv, or None (a loud skip outside CI).
fn tools() -> Option<(PathBuf, PathBuf)> {
    let etcd = dropin::system_tool("/usr/bin/etcd", "etcd-server")?;
    let venv = dropin::venv("patroni")?;
    Some((etcd, venv))
}

/// How a replica is made: the name Patroni logs (`replica has been created using <name>`) and
/// the YAML added under `postgresql:`.
struct Method {
    name: &'static str,
    yaml: String,
}

/// `patronictl reinit` of `replica`: waits until its log says it was created by `method` for
/// the `count`th time, it streams again and sees a row written on `leader` afterwards.
fn reinit(setup: &Setup, replica: &Node, leader: &Node, method: &str, count: usize, row: &str) {
    let nodes = [replica, leader];
    let args = ["reinit", SCOPE, &replica.name, "--force"];
    patronictl(setup, &replica.yml, &args)
        .unwrap_or_else(|e| panic!("reinit: {e}\n{}", all_logs(&nodes)));
    wait_created(replica, method, count, &nodes);
    wait_member(setup, &nodes, &replica.name, "Replica", "streaming");
    row_reaches(leader, replica, row, &nodes);
}

/// The scenario both tests run: node1 bootstraps and leads; node2 is created by `method`,
/// streams and sees a row; switchover to node2; `between` runs on node2; `patronictl reinit`
/// of node1 by `method`; node1 streams and sees a row written on node2. `finish` gets node1
/// (now a replica) and node2 (the leader) at the end.
fn scenario(
    method: impl Fn(&TestDir, &Setup) -> Method,
    between: &str,
    finish: impl FnOnce(&Setup, &Node, &Node),
) {
    let Some((etcd_exe, venv)) = tools() else {
        return;
    };
    let work = TestDir::new("patroni");
    eprintln!("test directory: {}", work.path().display());
    let etcd = Etcd::start(&etcd_exe, &work);
    let setup = Setup {
        venv,
        bin: dropin::bin_dir(&work, "bin", &[&tools_bin(MAJOR)]),
        etcd_port: etcd.port,
    };
    let method = method(&work, &setup);
    let mut node1 = Node::new(&work, &setup, "node1", &method.yaml);
    let mut node2 = Node::new(&work, &setup, "node2", &method.yaml);

    node1.start(&setup);
    wait_member(&setup, &[&node1], "node1", "Leader", "running");
    node1
        .psql("CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g")
        .expect("filler table");
    // Hint bits set now, not by the first scan after the switchover (wal_log_hints, which
    // use_pg_rewind turns on, would log every page of the table again).
    node1.psql("VACUUM (FREEZE) filler").expect("vacuum filler");
    node2.start(&setup);
    let nodes = [&node1, &node2];
    wait_created(&node2, method.name, 1, &nodes);
    wait_member(&setup, &nodes, "node2", "Replica", "streaming");
    row_reaches(&node1, &node2, "before-switchover", &nodes);

    patronictl(
        &setup,
        &node1.yml,
        &[
            "switchover",
            "--leader",
            "node1",
            "--candidate",
            "node2",
            "--force",
        ],
    )
    .unwrap_or_else(|e| panic!("switchover: {e}\n{}", all_logs(&nodes)));
    wait_member(&setup, &nodes, "node2", "Leader", "running");
    wait_member(&setup, &nodes, "node1", "Replica", "streaming");
    node2.psql(between).expect("write on the new leader");

    reinit(&setup, &node1, &node2, method.name, 1, "after-reinit");
    finish(&setup, &node1, &node2);

    node1.stop();
    node2.stop();
    drop(etcd);
}

/// Patroni's default `basebackup` method runs pgclone (as `pg_basebackup`, with Patroni's
/// own flags) to create the replica and, after a switchover, to reinitialise the old leader;
/// both stream and see rows written on the leader afterwards.
#[test]
fn patroni_basebackup_switchover_reinit() {
    let method = |_: &TestDir, _: &Setup| Method {
        name: "basebackup",
        yaml: String::new(),
    };
    scenario(method, "SELECT 1", |_, node1, node2| {
        for node in [node1, node2] {
            let calls = log_lines(node, &["calling: [", "/pg_basebackup'"]);
            assert_eq!(calls.len(), 1, "{}", node.logs());
        }
    });
}

/// `scripts/patroni-pgclone` as a custom `create_replica_methods` entry with `keep_data`:
/// the replica is cloned by pgclone, and `patronictl reinit` of the old leader (now a
/// replica) refreshes its kept data directory in place (`pgclone --refresh`, 17+ with
/// `summarize_wal`), receiving far fewer bytes than the directory holds. Once the leader stops
/// summarizing WAL, the refresh is refused and Patroni falls back to `basebackup` (pgclone).
#[test]
fn patroni_pgclone_method_refreshes_on_reinit() {
    let method = |work: &TestDir, setup: &Setup| {
        let script = work.join("patroni-pgclone");
        fs::copy(support::repo().join("scripts/patroni-pgclone"), &script).expect("copy script");
        support::chown_to_pg_user(&script);
        Method {
            name: "pgclone",
            yaml: format!(
                "  create_replica_methods: [pgclone, basebackup]\n  pgclone:\n    command: {}\n    keep_data: true\n    pgclone: {}\n",
                script.display(),
                setup.bin.join("pg_basebackup").display()
            ),
        }
    };
    let between = "UPDATE filler SET pad = 'changed' WHERE g % 1000 = 0";
    scenario(method, between, |setup, node1, node2| {
        for node in [node1, node2] {
            let calls = log_lines(node, &["calling: [", "/pg_basebackup'"]);
            assert!(calls.is_empty(), "{}", node.logs());
        }
        assert_refreshed(node1);

        node2
            .psql("ALTER SYSTEM SET summarize_wal = off")
            .and_then(|_| node2.psql("SELECT pg_reload_conf()"))
            .expect("summarize_wal off");
        reinit(setup, node1, node2, "basebackup", 1, "after-fallback");
        let refused = log_lines(node1, &["pg_basebackup: error:", "summarize_wal"]);
        assert_eq!(refused.len(), 1, "{}", node1.logs());
        eprintln!("{}: {}", node1.name, refused[0]);
    });
}

/// node1's reinit was a refresh in place that received less than a quarter of its size.
fn assert_refreshed(node: &Node) {
    let done = log_lines(node, &["refresh complete:"]);
    assert_eq!(done.len(), 1, "{}", node.logs());
    let received: u64 = done[0]
        .split("refresh complete: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {:?}", done[0]));
    let size = support::data_size(&node.data);
    eprintln!("{}: {}; data directory {size} bytes", node.name, done[0]);
    assert!(
        received * 4 < size,
        "refresh received {received} of {size} bytes"
    );
}
