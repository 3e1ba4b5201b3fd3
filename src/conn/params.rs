//! Connection parameters, resolved from flags, the `-d` connection string, the environment and
//! defaults, in that order of precedence (as pg_basebackup with libpq).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::conn::conninfo;
use crate::error::Error;

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

/// Everything needed to open a replication connection.
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

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, Error> {
    value.trim().parse().map_err(|_| {
        Error::Usage(format!(
            "invalid integer value \"{value}\" for connection option \"{key}\""
        ))
    })
}

impl ConnParams {
    /// Resolves the parameters: flags over `-d` over environment (`env`) over defaults, key
    /// by key, as pg_basebackup with libpq.
    pub fn resolve(
        flags: &ConnFlags<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        // Environment first, then the connection string over it, then the flags over both.
        let mut settings: BTreeMap<String, String> = BTreeMap::new();
        for (var, key) in conninfo::ENV_VARS {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                settings.insert((*key).to_owned(), v);
            }
        }
        if let Some(s) = flags.connstr {
            let cs = conninfo::parse(s).map_err(|e| Error::Usage(e.to_string()))?;
            settings.extend(cs.into_iter().filter(|(_, v)| !v.is_empty()));
        }
        for (key, flag) in [
            ("host", flags.host),
            ("port", flags.port),
            ("user", flags.user),
        ] {
            if let Some(v) = flag.filter(|v| !v.is_empty()) {
                settings.insert(key.to_owned(), v.to_owned());
            }
        }
        let get = |key: &str| settings.get(key).cloned();

        let hosts: Vec<Host> = match get("host") {
            Some(h) => conninfo::split_list(&h)
                .iter()
                .map(|h| {
                    if h.is_empty() {
                        default_socket_dir()
                    } else {
                        Host::parse(h)
                    }
                })
                .collect(),
            None => vec![default_socket_dir()],
        };
        let ports: Vec<u16> = match get("port") {
            Some(p) => conninfo::split_list(&p)
                .iter()
                .map(|p| {
                    if p.trim().is_empty() {
                        Ok(DEFAULT_PORT)
                    } else {
                        p.trim()
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| Error::Usage(format!("invalid port number: \"{p}\"")))
                    }
                })
                .collect::<Result<_, _>>()?,
            None => vec![DEFAULT_PORT],
        };
        let addrs: Vec<Option<std::net::IpAddr>> = match get("hostaddr") {
            Some(a) => conninfo::split_list(&a)
                .iter()
                .map(|a| {
                    if a.is_empty() {
                        Ok(None)
                    } else {
                        a.parse().map(Some).map_err(|_| {
                            Error::Usage(format!("could not parse network address \"{a}\""))
                        })
                    }
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
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
        let targets = hosts
            .into_iter()
            .enumerate()
            .map(|(i, host)| Target {
                host,
                port: *ports.get(i).or(ports.first()).unwrap_or(&DEFAULT_PORT),
                hostaddr: addrs.get(i).copied().flatten(),
            })
            .collect();
        let user = match get("user") {
            Some(u) => u,
            None => os_user_name()
                .ok_or_else(|| Error::Usage("could not determine the user name; use -U".into()))?,
        };
        let password = get("password").map(Secret::new);
        let passfile = get("passfile")
            .map(PathBuf::from)
            .or_else(crate::conn::pgpass::default_path);
        let explicit_app = get("application_name");
        let application_name = explicit_app
            .clone()
            .or_else(|| get("fallback_application_name"))
            .unwrap_or_else(|| "pgclone".into());
        let tls = tls_settings(&|key, _var| get(key))?;
        let connect_timeout = match get("connect_timeout") {
            // libpq: values below 2 seconds are raised to 2; 0 or negative means none.
            Some(v) => match number::<i64>("connect_timeout", &v)? {
                n if n <= 0 => None,
                n => Some(std::time::Duration::from_secs(n.max(2) as u64)),
            },
            None => None,
        };
        let mut keepalives = Keepalives::default();
        if let Some(v) = get("keepalives") {
            keepalives.enabled = number::<i64>("keepalives", &v)? != 0;
        }
        if let Some(v) = get("keepalives_idle") {
            keepalives.idle = number("keepalives_idle", &v)?;
        }
        if let Some(v) = get("keepalives_interval") {
            keepalives.interval = number("keepalives_interval", &v)?;
        }
        if let Some(v) = get("keepalives_count") {
            keepalives.count = number("keepalives_count", &v)?;
        }
        let prompt = if flags.password {
            Prompt::Always
        } else if flags.no_password {
            Prompt::Never
        } else {
            Prompt::IfNeeded
        };
        Ok(Self {
            targets,
            user,
            password,
            password_from_file: None,
            passfile,
            prompt,
            application_name,
            application_name_explicit: explicit_app.is_some(),
            dbname: get("dbname"),
            options: get("options"),
            timeout: None,
            connect_timeout,
            keepalives,
            tls,
            wait: None,
        })
    }

    /// Looks the password up in the passfile for `target` (libpq's rules: a socket connection
    /// is `localhost`, the database is `replication`), unless one is already known. Warnings
    /// about an unsafe passfile are printed, and the file is then ignored.
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
            "replication",
            &self.user,
        ) {
            Ok(found) => found.map(Secret::new),
            Err(warning) => {
                eprintln!("{warning}");
                None
            }
        }
    }
}

/// TLS settings from the connection string and environment, with libpq's defaults:
/// `sslmode=prefer`, `~/.postgresql/root.crt` and `postgresql.{crt,key}` when they exist,
/// `sslrootcert=system` implying `verify-full`.
fn tls_settings(
    pick: &dyn Fn(&str, &str) -> Option<String>,
) -> Result<super::tls::TlsSettings, Error> {
    use super::tls::{default_file, ChannelBinding, RootCert, SslMode, TlsSettings};
    let root = pick("sslrootcert", "PGSSLROOTCERT");
    let mode = match pick("sslmode", "PGSSLMODE") {
        Some(m) => SslMode::parse(&m)?,
        None if root.as_deref() == Some("system") => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    let root_cert = match root.as_deref() {
        Some("system") => Some(RootCert::System),
        Some(path) => Some(RootCert::File(PathBuf::from(path))),
        None => default_file("root.crt")
            .filter(|p| p.is_file())
            .map(RootCert::File),
    };
    let cert = pick("sslcert", "PGSSLCERT");
    let key = pick("sslkey", "PGSSLKEY");
    let explicit = cert.is_some() || key.is_some();
    let cert = cert
        .map(PathBuf::from)
        .or_else(|| default_file("postgresql.crt"));
    let key = key
        .map(PathBuf::from)
        .or_else(|| default_file("postgresql.key"));
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) if c.is_file() && k.is_file() => Some((c, k)),
        (Some(c), _) if explicit && !c.is_file() => {
            return Err(Error::Tls(format!(
                "could not open certificate file \"{}\"",
                c.display()
            )))
        }
        _ => None,
    };
    let direct = match pick("sslnegotiation", "PGSSLNEGOTIATION").as_deref() {
        None | Some("postgres") => false,
        Some("direct") => true,
        Some(other) => {
            return Err(Error::Usage(format!(
                "invalid sslnegotiation value: \"{other}\""
            )))
        }
    };
    let channel_binding = match pick("channel_binding", "PGCHANNELBINDING") {
        Some(v) => ChannelBinding::parse(&v)?,
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
        crl: pick("sslcrl", "PGSSLCRL").map(PathBuf::from),
        mode,
        root_cert_explicit: root.is_some(),
        root_cert,
        client_cert,
        direct,
        channel_binding,
    })
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

/// The name of the effective user, as libpq finds it (getpwuid).
fn os_user_name() -> Option<String> {
    let uid = passwd::geteuid();
    passwd::user_name(uid).or_else(|| std::env::var("USER").ok())
}

/// The libc calls needed for the user name, kept in one place.
mod passwd {
    use std::ffi::CStr;

    pub(super) fn geteuid() -> libc::uid_t {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    pub(super) fn user_name(uid: libc::uid_t) -> Option<String> {
        let mut buf = vec![0 as libc::c_char; 4096];
        // SAFETY: all-zero is a valid passwd value (null pointers, zero ids).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: buf and pwd outlive the call, buflen is buf's length; getpwuid_r writes only
        // into them and sets result to &pwd or null.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside buf.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        name.to_str().ok().map(str::to_owned)
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
