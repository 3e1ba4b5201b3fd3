//! Connection parameters, resolved from flags, the `-d` connection string, the connection
//! service file's section (`service=` in `-d`, or `PGSERVICE`), the environment and defaults,
//! in that order of precedence (as pg_basebackup with libpq).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::conn::{conninfo, os_user, service};
use crate::error::Error;
use crate::program;

/// The database of an SQL connection when the parameters name none (or `replication`).
pub const DEFAULT_SQL_DATABASE: &str = "postgres";
/// Default PostgreSQL port.
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// A password. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The password itself, for the wire and for `primary_conninfo`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// When to ask the user for a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// `-w`: never.
    Never,
    /// Default: when the server asks and none is known, if stdin is a terminal.
    IfNeeded,
    /// `-W`: before connecting.
    Always,
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding the server's socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl Host {
    /// libpq's rule: a host starting with `/` is a socket directory.
    pub fn parse(s: &str) -> Self {
        if s.starts_with('/') {
            Self::Unix(PathBuf::from(s))
        } else {
            Self::Tcp(s.to_owned())
        }
    }

    /// The socket path for `port`, for Unix hosts.
    pub fn socket_path(dir: &Path, port: u16) -> PathBuf {
        dir.join(format!(".s.PGSQL.{port}"))
    }

    /// The host as text (for `primary_conninfo`).
    pub fn as_conninfo_value(&self) -> String {
        match self {
            Self::Tcp(h) => h.clone(),
            Self::Unix(d) => d.display().to_string(),
        }
    }
}

/// The session a connection asks for at startup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConnMode {
    /// A physical replication connection (`replication=true`); pg_hba.conf and the passfile
    /// see the database `replication`.
    #[default]
    Replication,
    /// An ordinary SQL session in this database (what `--refresh` reads the WAL summaries'
    /// limit blocks over).
    Sql(String),
}

impl ConnMode {
    /// The database name sent at startup and looked up in the passfile.
    pub fn database(&self) -> &str {
        match self {
            Self::Replication => "replication",
            Self::Sql(db) => db,
        }
    }
}

/// Everything needed to open a connection (a replication one unless `mode` says otherwise).
#[derive(Debug, Clone)]
pub struct ConnParams {
    /// Hosts to try, in order, each with its port.
    pub targets: Vec<Target>,
    /// Role name.
    pub user: String,
    /// Password, if given (flag prompt, `-d`, `PGPASSWORD`).
    pub password: Option<Secret>,
    /// The passfile the password in use came from, if it came from one (for `-R`).
    pub password_from_file: Option<PathBuf>,
    /// `passfile` / `PGPASSFILE` / `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// When to prompt.
    pub prompt: Prompt,
    /// `application_name` sent at startup.
    pub application_name: String,
    /// Whether `application_name` was set explicitly (it then goes into `primary_conninfo`).
    pub application_name_explicit: bool,
    /// `dbname` from `-d`, kept for `-R` on 17+ (physical replication ignores it).
    pub dbname: Option<String>,
    /// `options` / `PGOPTIONS`, sent at startup.
    pub options: Option<String>,
    /// Longest silence accepted from the server (connecting included); `None` waits forever.
    pub timeout: Option<std::time::Duration>,
    /// `connect_timeout`: bounds each connection attempt.
    pub connect_timeout: Option<std::time::Duration>,
    /// TCP keepalives.
    pub keepalives: Keepalives,
    /// TLS settings.
    pub tls: super::tls::TlsSettings,
    /// `--wait`: keep retrying connection failures that can heal for this long.
    pub wait: Option<std::time::Duration>,
    /// Replication (what [`ConnParams::resolve`] gives) or an ordinary SQL session.
    pub mode: ConnMode,
}

/// What the command line said about connecting.
#[derive(Debug, Default)]
pub struct ConnFlags<'a> {
    /// `-h`
    pub host: Option<&'a str>,
    /// `-p`
    pub port: Option<&'a str>,
    /// `-U`
    pub user: Option<&'a str>,
    /// `-d`
    pub connstr: Option<&'a str>,
    /// `-w`
    pub no_password: bool,
    /// `-W`
    pub password: bool,
}

/// One place to try: a host (name or socket directory), its port, and optionally the address to
/// use instead of resolving the name (`hostaddr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name, address or socket directory.
    pub host: Host,
    /// Port.
    pub port: u16,
    /// `hostaddr`: connect here; `host` still names the server (TLS, passfile).
    pub hostaddr: Option<std::net::IpAddr>,
}

/// TCP keepalive settings (libpq's `keepalives*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalives {
    /// Whether keepalives are on (default yes).
    pub enabled: bool,
    /// Idle seconds before the first probe.
    pub idle: u64,
    /// Seconds between probes.
    pub interval: u64,
    /// Probes before giving up.
    pub count: u32,
}

impl Default for Keepalives {
    fn default() -> Self {
        Self {
            enabled: true,
            idle: 60,
            interval: 10,
            count: 6,
        }
    }
}

impl Prompt {
    /// `-W` wins over `-w`; neither means "if needed".
    fn from_flags(flags: &ConnFlags<'_>) -> Self {
        if flags.password {
            Self::Always
        } else if flags.no_password {
            Self::Never
        } else {
            Self::IfNeeded
        }
    }
}

/// The connection settings in force, key by key (libpq's names): the environment, the
/// service's section over it, the `-d` connection string over both, the `-h`/`-p`/`-U` flags
/// over all. An empty value counts as unset in the environment, `-d` and the flags (as
/// pg_basebackup drops empty ones before libpq sees them); an empty value in the service file
/// is set to empty, as libpq sets it, so it hides the environment's value and the default
/// applies. No defaults are filled in.
struct Settings(BTreeMap<String, String>);

impl Settings {
    /// Layers the sources in order of precedence, lowest first.
    fn layer(flags: &ConnFlags<'_>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let connstr = match flags.connstr {
            Some(s) => conninfo::parse(s).map_err(|e| Error::Usage(e.to_string()))?,
            None => BTreeMap::new(),
        };
        let mut settings = BTreeMap::new();
        for (var, key) in conninfo::ENV_VARS {
            // `PGSERVICE` is read below, the service file's variables by the lookup.
            let Some(key) = key.filter(|k| *k != "service") else {
                continue;
            };
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                settings.insert((*key).to_owned(), v);
            }
        }
        if let Some(service) = Self::service(&connstr, env)? {
            for (key, value) in service.settings {
                if value.is_empty() {
                    settings.remove(&key);
                } else {
                    settings.insert(key, value);
                }
            }
        }
        settings.extend(connstr.into_iter().filter(|(_, v)| !v.is_empty()));
        for (key, flag) in [
            ("host", flags.host),
            ("port", flags.port),
            ("user", flags.user),
        ] {
            if let Some(v) = flag.filter(|v| !v.is_empty()) {
                settings.insert(key.to_owned(), v.to_owned());
            }
        }
        Ok(Self(settings))
    }

    /// The service named by `-d`'s `service`, else by `PGSERVICE`, looked up (libpq's
    /// `parseServiceInfo`; `PGSERVICE` set to an empty string names the service `""`, as in
    /// libpq). `None` when no service is named.
    fn service(
        connstr: &BTreeMap<String, String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<service::Service>, Error> {
        let name = match connstr.get("service").filter(|v| !v.is_empty()) {
            Some(name) => name.clone(),
            None => match env("PGSERVICE") {
                Some(name) => name,
                None => return Ok(None),
            },
        };
        Ok(Some(service::lookup(&name, env)?))
    }

    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `key` as a number, if set; `invalid integer value` names the key.
    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, Error> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        value.trim().parse().map(Some).map_err(|_| {
            Error::Usage(format!(
                "invalid integer value \"{value}\" for connection option \"{key}\""
            ))
        })
    }
}

impl ConnParams {
    /// The same server, role and credentials (host, port, user, password or passfile, TLS) for
    /// an ordinary SQL connection: to `dbname`, or [`DEFAULT_SQL_DATABASE`] when it names none
    /// or `replication`. It never prompts: the replication connection asked already if a
    /// password was needed. Returns the parameters and the database.
    pub fn for_sql(&self) -> (Self, String) {
        let mut params = self.clone();
        let database = params
            .dbname
            .clone()
            .filter(|d| d != "replication")
            .unwrap_or_else(|| DEFAULT_SQL_DATABASE.to_owned());
        params.mode = ConnMode::Sql(database.clone());
        params.prompt = Prompt::Never;
        (params, database)
    }

    /// Resolves the parameters: flags over `-d` over the service file over environment
    /// (`env`, which also gives `HOME` for `~/.pg_service.conf`) over defaults, key by key, as
    /// pg_basebackup with libpq. The first invalid setting fails, checked in the
    /// order hosts and ports, user, TLS, `connect_timeout`, keepalives.
    pub fn resolve(
        flags: &ConnFlags<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let settings = Settings::layer(flags, env)?;
        let get = |key: &str| settings.get(key).map(str::to_owned);
        let targets = targets(&settings)?;
        let user = match get("user") {
            Some(u) => u,
            None => os_user::name()
                .ok_or_else(|| Error::Usage("could not determine the user name; use -U".into()))?,
        };
        // As pg_basebackup: its program name is the fallback, and it overrides any
        // `fallback_application_name` in `-d`.
        let explicit_app = get("application_name");
        let application_name = explicit_app
            .clone()
            .unwrap_or_else(|| program::current().application_name().into());
        let tls = tls_settings(&settings)?;
        let connect_timeout = connect_timeout(&settings)?;
        let keepalives = keepalives(&settings)?;
        Ok(Self {
            targets,
            user,
            password: get("password").map(Secret::new),
            password_from_file: None,
            passfile: get("passfile")
                .map(PathBuf::from)
                .or_else(crate::conn::pgpass::default_path),
            prompt: Prompt::from_flags(flags),
            application_name,
            application_name_explicit: explicit_app.is_some(),
            dbname: get("dbname"),
            options: get("options"),
            timeout: None,
            connect_timeout,
            keepalives,
            tls,
            wait: None,
            mode: ConnMode::Replication,
        })
    }

    /// Looks the password up in the passfile for `target` (libpq's rules: a socket connection
    /// is `localhost`; the database is `replication`, or the SQL session's), unless one is
    /// already known. A passfile
    /// that is unsafe or unreadable is ignored after a warning, worded as libpq's and logged
    /// as it is (no `pgclone:` prefix).
    pub fn password_for(&self, target: &Target) -> Option<Secret> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let path = self.passfile.as_ref()?;
        let host = match &target.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(_) => "localhost".to_owned(),
        };
        match crate::conn::pgpass::lookup(
            path,
            &host,
            &target.port.to_string(),
            self.mode.database(),
            &self.user,
        ) {
            Ok(found) => found.map(Secret::new),
            Err(warning) => {
                tracing::warn!(target: crate::output::VERBATIM, "{warning}");
                None
            }
        }
    }
}

/// The hosts to try with their ports and addresses: `host`, `port` and `hostaddr` are
/// comma-separated lists; one port serves every host, otherwise the counts must match.
fn targets(settings: &Settings) -> Result<Vec<Target>, Error> {
    let hosts = hosts(settings.get("host"));
    let ports = ports(settings.get("port"))?;
    let addrs = hostaddrs(settings.get("hostaddr"))?;
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(Error::Usage(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            hosts.len()
        )));
    }
    if !addrs.is_empty() && addrs.len() != hosts.len() {
        return Err(Error::Usage(format!(
            "could not match {} host names to {} hostaddr values",
            hosts.len(),
            addrs.len()
        )));
    }
    Ok(hosts
        .into_iter()
        .enumerate()
        .map(|(i, host)| Target {
            host,
            port: *ports.get(i).or(ports.first()).unwrap_or(&DEFAULT_PORT),
            hostaddr: addrs.get(i).copied().flatten(),
        })
        .collect())
}

/// The `host` list; an empty element (or no `host`) is the default socket directory.
fn hosts(value: Option<&str>) -> Vec<Host> {
    let Some(value) = value else {
        return vec![default_socket_dir()];
    };
    conninfo::split_list(value)
        .iter()
        .map(|h| {
            if h.is_empty() {
                default_socket_dir()
            } else {
                Host::parse(h)
            }
        })
        .collect()
}

/// The `port` list; an empty element (or no `port`) is 5432, 0 is invalid.
fn ports(value: Option<&str>) -> Result<Vec<u16>, Error> {
    let Some(value) = value else {
        return Ok(vec![DEFAULT_PORT]);
    };
    conninfo::split_list(value)
        .iter()
        .map(|p| {
            if p.trim().is_empty() {
                return Ok(DEFAULT_PORT);
            }
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Error::Usage(format!("invalid port number: \"{p}\"")))
        })
        .collect()
}

/// The `hostaddr` list (empty when not set); an empty element means "resolve the host name".
fn hostaddrs(value: Option<&str>) -> Result<Vec<Option<std::net::IpAddr>>, Error> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    conninfo::split_list(value)
        .iter()
        .map(|a| {
            if a.is_empty() {
                return Ok(None);
            }
            a.parse()
                .map(Some)
                .map_err(|_| Error::Usage(format!("could not parse network address \"{a}\"")))
        })
        .collect()
}

/// `connect_timeout`, as libpq reads it: values below 2 seconds are raised to 2; 0 or
/// negative means none.
fn connect_timeout(settings: &Settings) -> Result<Option<std::time::Duration>, Error> {
    Ok(match settings.number::<i64>("connect_timeout")? {
        None => None,
        Some(n) if n <= 0 => None,
        Some(n) => Some(std::time::Duration::from_secs(n.max(2) as u64)),
    })
}

/// `keepalives` (0 turns them off) and `keepalives_{idle,interval,count}` over the defaults.
fn keepalives(settings: &Settings) -> Result<Keepalives, Error> {
    let mut keepalives = Keepalives::default();
    if let Some(n) = settings.number::<i64>("keepalives")? {
        keepalives.enabled = n != 0;
    }
    if let Some(n) = settings.number("keepalives_idle")? {
        keepalives.idle = n;
    }
    if let Some(n) = settings.number("keepalives_interval")? {
        keepalives.interval = n;
    }
    if let Some(n) = settings.number("keepalives_count")? {
        keepalives.count = n;
    }
    Ok(keepalives)
}

/// TLS settings from the connection string and environment, with libpq's defaults:
/// `sslmode=prefer`, `~/.postgresql/root.crt` and `postgresql.{crt,key}` when they exist,
/// `sslrootcert=system` implying `verify-full`.
fn tls_settings(settings: &Settings) -> Result<super::tls::TlsSettings, Error> {
    use super::tls::{default_file, ChannelBinding, RootCert, SslMode, TlsSettings};
    let root = settings.get("sslrootcert");
    let mode = match settings.get("sslmode") {
        Some(m) => SslMode::parse(m)?,
        None if root == Some("system") => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    let root_cert = match root {
        Some("system") => Some(RootCert::System),
        Some(path) => Some(RootCert::File(PathBuf::from(path))),
        None => default_file("root.crt")
            .filter(|p| p.is_file())
            .map(RootCert::File),
    };
    let client_cert = client_cert(settings)?;
    let direct = match settings.get("sslnegotiation") {
        None | Some("postgres") => false,
        Some("direct") => true,
        Some(other) => {
            return Err(Error::Usage(format!(
                "invalid sslnegotiation value: \"{other}\""
            )))
        }
    };
    let channel_binding = match settings.get("channel_binding") {
        Some(v) => ChannelBinding::parse(v)?,
        None => ChannelBinding::Prefer,
    };
    if direct && !mode.requires_tls() {
        return Err(Error::Usage(
            "weak sslmode \"prefer\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")".into(),
        ));
    }
    if channel_binding == ChannelBinding::Require && mode == SslMode::Disable {
        return Err(Error::Usage(
            "channel_binding=require requires SSL, but sslmode is disable".into(),
        ));
    }
    Ok(TlsSettings {
        crl: settings.get("sslcrl").map(PathBuf::from),
        mode,
        root_cert_explicit: root.is_some(),
        root_cert,
        client_cert,
        direct,
        channel_binding,
    })
}

/// `sslcert` and `sslkey`, or `~/.postgresql/postgresql.{crt,key}`: used when both files
/// exist. A certificate given explicitly (either setting) that does not exist is an error.
fn client_cert(settings: &Settings) -> Result<Option<(PathBuf, PathBuf)>, Error> {
    use super::tls::default_file;
    let cert = settings.get("sslcert");
    let key = settings.get("sslkey");
    let explicit = cert.is_some() || key.is_some();
    let cert = cert
        .map(PathBuf::from)
        .or_else(|| default_file("postgresql.crt"));
    let key = key
        .map(PathBuf::from)
        .or_else(|| default_file("postgresql.key"));
    match (cert, key) {
        (Some(c), Some(k)) if c.is_file() && k.is_file() => Ok(Some((c, k))),
        (Some(c), _) if explicit && !c.is_file() => Err(Error::Tls(format!(
            "could not open certificate file \"{}\"",
            c.display()
        ))),
        _ => Ok(None),
    }
}

/// libpq's default: the Unix socket directory (Debian's, else the upstream default).
fn default_socket_dir() -> Host {
    let debian = Path::new("/var/run/postgresql");
    if debian.is_dir() {
        Host::Unix(debian.to_path_buf())
    } else {
        Host::Unix(PathBuf::from("/tmp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn flags_beat_connstr_beat_environment() {
        let env = env_of(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
        ]);
        let p = ConnParams::resolve(&ConnFlags::default(), &env).expect("resolves");
        assert_eq!(p.targets[0].host, Host::Tcp("envhost".into()));
        assert_eq!((p.targets[0].port, p.user.as_str()), (6000, "envuser"));
        assert_eq!(p.password.as_ref().map(Secret::expose), Some("envpw"));

        let flags = ConnFlags {
            connstr: Some("host=cshost port=7000 user=csuser password=cspw application_name=app"),
            ..ConnFlags::default()
        };
        let p = ConnParams::resolve(&flags, &env).expect("resolves");
        assert_eq!(p.targets[0].host, Host::Tcp("cshost".into()));
        assert_eq!((p.targets[0].port, p.user.as_str()), (7000, "csuser"));
        assert_eq!(p.password.as_ref().map(Secret::expose), Some("cspw"));
        assert_eq!(p.application_name, "app");
        assert!(p.application_name_explicit);

        let flags = ConnFlags {
            host: Some("/sock"),
            port: Some("8000"),
            user: Some("flaguser"),
            connstr: Some("host=cshost port=7000 user=csuser"),
            ..ConnFlags::default()
        };
        let p = ConnParams::resolve(&flags, &env).expect("resolves");
        assert_eq!(p.targets[0].host, Host::Unix("/sock".into()));
        assert_eq!((p.targets[0].port, p.user.as_str()), (8000, "flaguser"));
        assert_eq!(p.application_name, "pgclone");
        assert!(!p.application_name_explicit);
    }

    /// Without `application_name`, the server sees the program's name (`pgclone` in unit
    /// tests, which never run as `pg_basebackup`), even over a `fallback_application_name` in
    /// `-d`: pg_basebackup passes its own name as the fallback after the connection string.
    #[test]
    fn the_default_application_name_is_the_program_name() {
        let flags = ConnFlags {
            connstr: Some("host=h fallback_application_name=other"),
            ..ConnFlags::default()
        };
        let p = ConnParams::resolve(&flags, &env_of(&[("PGUSER", "u")])).expect("resolves");
        assert_eq!(p.application_name, program::current().application_name());
        assert_eq!(p.application_name, "pgclone");
        assert!(!p.application_name_explicit);
        let p = ConnParams::resolve(&flags, &env_of(&[("PGUSER", "u"), ("PGAPPNAME", "mine")]))
            .expect("resolves");
        assert_eq!(
            (p.application_name.as_str(), p.application_name_explicit),
            ("mine", true)
        );
    }

    /// The variables read are those of `ENV_VARS` (and `HOME`, for `~/.pg_service.conf`):
    /// without a service, all of them but the service file's; with one, all of them.
    #[test]
    fn the_environment_read_is_exactly_env_vars() {
        // The user file lacks the service, so the system file is read too.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("services");
        std::fs::write(&file, "[other]\nport=1\n").expect("write");
        std::fs::write(dir.path().join("pg_service.conf"), "[s]\nport=2\n").expect("write");
        let listed: Vec<&str> = conninfo::ENV_VARS.iter().map(|(var, _)| *var).collect();
        let flags = ConnFlags {
            user: Some("u"),
            ..ConnFlags::default()
        };
        for service in [None, Some("s")] {
            let asked = std::cell::RefCell::new(Vec::new());
            let env = |var: &str| {
                asked.borrow_mut().push(var.to_owned());
                match var {
                    "PGSERVICE" => service.map(str::to_owned),
                    "PGSERVICEFILE" => Some(file.display().to_string()),
                    "PGSYSCONFDIR" => Some(dir.path().display().to_string()),
                    _ => None,
                }
            };
            ConnParams::resolve(&flags, &env).expect("resolves");
            let mut asked = asked.into_inner();
            asked.sort();
            asked.dedup();
            let mut want: Vec<&str> = listed.clone();
            if service.is_none() {
                want.retain(|v| !matches!(*v, "PGSERVICEFILE" | "PGSYSCONFDIR"));
            }
            want.sort_unstable();
            assert_eq!(asked, want, "service {service:?}");
        }
    }

    /// What a resolved key came to, as text ("" when unset).
    fn resolved(p: &ConnParams, key: &str) -> String {
        let or_empty = |v: &Option<String>| v.clone().unwrap_or_default();
        match key {
            "host" => p.targets[0].host.as_conninfo_value(),
            "port" => p.targets[0].port.to_string(),
            "user" => p.user.clone(),
            "password" => p.password.as_ref().map_or("", Secret::expose).to_owned(),
            "dbname" => or_empty(&p.dbname),
            "options" => or_empty(&p.options),
            "application_name" => p.application_name.clone(),
            "sslmode" => p.tls.mode.name().to_owned(),
            "connect_timeout" => p
                .connect_timeout
                .map_or(String::new(), |d| d.as_secs().to_string()),
            other => panic!("no view of {other}"),
        }
    }

    /// Resolves with `key` set by the sources in `sources` (`F` its flag, `D` `-d`, `S` the
    /// service file, `s` the service file with an empty value, `E` the environment) to the
    /// values in `values` (flag, `-d`, service, environment), and returns what `key` came to.
    fn resolve_key(key: &str, sources: &str, values: [&str; 4]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("services");
        let mut section = "[svc]\n".to_owned();
        if sources.contains('S') {
            section.push_str(&format!("{key}={}\n", values[2]));
        }
        if sources.contains('s') {
            section.push_str(&format!("{key}=\n"));
        }
        std::fs::write(&file, section).expect("write");
        let mut connstr = "service=svc".to_owned();
        if sources.contains('D') {
            connstr.push_str(&format!(" {key}={}", conninfo::quote_value(values[1])));
        }
        let flag = sources.contains('F').then_some(values[0]);
        let flags = ConnFlags {
            host: flag.filter(|_| key == "host"),
            port: flag.filter(|_| key == "port"),
            user: flag.filter(|_| key == "user"),
            connstr: Some(&connstr),
            ..ConnFlags::default()
        };
        let var = conninfo::ENV_VARS
            .iter()
            .find(|(_, k)| *k == Some(key))
            .map(|(v, _)| *v);
        let env = |name: &str| match name {
            "PGSERVICEFILE" => Some(file.display().to_string()),
            "PGSYSCONFDIR" | "HOME" => Some(dir.path().display().to_string()),
            _ if Some(name) == var && sources.contains('E') => Some(values[3].to_owned()),
            _ => None,
        };
        let p = ConnParams::resolve(&flags, &env).expect("resolves");
        resolved(&p, key)
    }

    /// The precedence table: for each key, which source wins. libpq documents it in "The
    /// Connection Service File" (libpq.sgml): "A service file setting overrides the
    /// corresponding environment variable, and in turn can be overridden by a value given
    /// directly in the connection string." `-h`/`-p`/`-U` are values given directly too:
    /// pg_basebackup passes them to libpq after `-d`'s keys, so they beat `-d`
    /// (streamutil.c `GetConnection`). Environment variables are used "if a parameter is not
    /// specified in the connection string" (the doc's "Environment Variables"); otherwise the
    /// default. An empty value in the service file is a value: it hides the environment's and
    /// the default applies (libpq stores it, and an empty host or port means the default).
    #[test]
    fn precedence_table() {
        // Sources that set the key -> the source whose value wins ('-' for the default).
        let table: &[(&str, char)] = &[
            ("FDSE", 'F'),
            ("FS", 'F'),
            ("FE", 'F'),
            ("DSE", 'D'),
            ("DS", 'D'),
            ("DE", 'D'),
            ("SE", 'S'),
            ("S", 'S'),
            ("E", 'E'),
            ("sE", '-'),
            ("Ds", 'D'),
            ("", '-'),
        ];
        let os_user = os_user::name().expect("a user name");
        let socket_dir = default_socket_dir().as_conninfo_value();
        // key, values set by (flag, -d, service file, environment), and the default.
        let keys: &[(&str, [&str; 4], &str)] = &[
            ("host", ["/flag", "dhost", "shost", "ehost"], &socket_dir),
            ("port", ["1001", "1002", "1003", "1004"], "5432"),
            ("user", ["fuser", "duser", "suser", "euser"], &os_user),
            ("password", ["", "dpw", "spw", "epw"], ""),
            ("dbname", ["", "ddb", "sdb", "edb"], ""),
            ("options", ["", "-c a=1", "-c a=2", "-c a=3"], ""),
            ("application_name", ["", "dapp", "sapp", "eapp"], "pgclone"),
            ("sslmode", ["", "disable", "require", "allow"], "prefer"),
            ("connect_timeout", ["", "11", "12", "13"], ""),
        ];
        for (key, values, default) in keys {
            let has_flag = matches!(*key, "host" | "port" | "user");
            for (sources, winner) in table {
                if sources.contains('F') && !has_flag {
                    continue;
                }
                let want = match winner {
                    'F' => values[0],
                    'D' => values[1],
                    'S' => values[2],
                    'E' => values[3],
                    _ => default,
                };
                assert_eq!(
                    resolve_key(key, sources, *values),
                    want,
                    "{key} set by {sources:?}"
                );
            }
        }
    }

    /// The service is named by `-d`'s `service`, else by `PGSERVICE`; an empty `service=` in
    /// `-d` counts as unset. A service that no file defines, a nested one, and a
    /// `PGSERVICEFILE` that does not exist fail with libpq's words.
    #[test]
    fn the_service_is_named_by_connstr_then_pgservice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("services");
        std::fs::write(&file, "[a]\nport=1001\n[b]\nport=1002\n[n]\nservice=a\n").expect("write");
        let file_name = file.display().to_string();
        let run = |connstr: Option<&str>, pgservice: Option<&str>, file: &str| {
            let env = |name: &str| match name {
                "PGSERVICE" => pgservice.map(str::to_owned),
                "PGSERVICEFILE" => Some(file.to_owned()),
                "PGSYSCONFDIR" => Some(dir.path().display().to_string()),
                _ => None,
            };
            let flags = ConnFlags {
                connstr,
                user: Some("u"),
                ..ConnFlags::default()
            };
            ConnParams::resolve(&flags, &env)
                .map(|p| p.targets[0].port)
                .map_err(|e| e.to_string())
        };
        assert_eq!(run(Some("service=a"), Some("b"), &file_name), Ok(1001));
        assert_eq!(
            run(Some("postgresql://?service=a"), None, &file_name),
            Ok(1001)
        );
        assert_eq!(run(Some("host=h"), Some("b"), &file_name), Ok(1002));
        assert_eq!(run(Some("service="), Some("b"), &file_name), Ok(1002));
        assert_eq!(run(None, None, &file_name), Ok(5432));
        assert_eq!(
            run(Some("service=zz"), None, &file_name),
            Err("definition of service \"zz\" not found".into())
        );
        assert_eq!(
            run(None, Some(""), &file_name),
            Err("definition of service \"\" not found".into())
        );
        assert_eq!(
            run(Some("service=n"), None, &file_name),
            Err(format!(
                "nested service specifications not supported in service file \"{file_name}\", line 6"
            ))
        );
        let missing = dir.path().join("missing").display().to_string();
        assert_eq!(
            run(Some("service=a"), None, &missing),
            Err(format!("service file \"{missing}\" not found"))
        );
        // Without a service named, PGSERVICEFILE is never read.
        assert_eq!(run(Some("port=7"), None, &missing), Ok(7));
    }

    #[test]
    fn bad_port_is_a_usage_error() {
        let env = env_of(&[]);
        let flags = ConnFlags {
            port: Some("x"),
            user: Some("u"),
            ..ConnFlags::default()
        };
        assert!(
            matches!(ConnParams::resolve(&flags, &env), Err(Error::Usage(m)) if m.contains("invalid port"))
        );
    }

    #[test]
    fn debug_hides_password() {
        assert_eq!(
            format!("{:?}", Secret::new("hunter2".into())),
            "Secret(<redacted>)"
        );
    }
}
