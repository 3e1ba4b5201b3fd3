//! Opening a replication connection (or, as [`ConnParams::mode`] says, an SQL session): `--wait` retries, the password prompt, each host in turn
//! (a Unix socket, or every address of a TCP host), TLS as `sslmode` says, then the startup
//! exchange and authentication.
//!
//! A failed attempt is an [`Error::Connect`] naming the target the way libpq does
//! (`connection to server at "h" (ip), port p failed`), marked `transient` when it may heal
//! (what `--wait` retries) and `auth` when the server refused the credentials.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use pgclone_proto::backend::BackendMessage;
use pgclone_proto::startup::{Binding, Startup, StartupError, StartupStatus};
use pgclone_proto::{frontend, sqlstate, ServerVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::transport::Transport;
use super::{
    read_raw, tls, ChannelBinding, ConnMode, ConnParams, Connection, Host, Keepalives, Limit,
    Prompt, Secret, ServerInfo, SslMode, Target, TlsSettings,
};
use crate::error::{os_text, Error};
use crate::output;

/// Opens a replication connection (an SQL session when `params.mode` says so), trying each
/// host in turn. Prompts for a password when the
/// server wants one and `params.prompt` allows it; the password is then kept in `params` for
/// later connections.
pub async fn connect(params: &mut ConnParams) -> Result<Connection, Error> {
    let Some(wait) = params.wait else {
        return connect_once(params).await;
    };
    // --wait: retry failures that can heal, with capped exponential backoff.
    let deadline = std::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match connect_once(params).await {
            Err(Error::Connect {
                transient: true,
                target,
                reason,
                ..
            }) if std::time::Instant::now() + delay < deadline => {
                let first = reason.lines().next().unwrap_or_default();
                tracing::warn!(
                    "{target}: {first} (attempt {attempt}; retrying in {:.1} s)",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn connect_once(params: &mut ConnParams) -> Result<Connection, Error> {
    if params.prompt == Prompt::Always && params.password.is_none() {
        params.password = Some(prompt_password()?);
    }
    loop {
        match connect_any(params).await {
            Err(Attempt::NoPassword(_))
                if params.prompt == Prompt::IfNeeded
                    && params.password.is_none()
                    && std::io::stdin().is_terminal() =>
            {
                params.password = Some(prompt_password()?);
            }
            Err(Attempt::NoPassword(target)) => {
                return Err(Error::Connect {
                    target,
                    reason: "fe_sendauth: no password supplied".into(),
                    auth: true,
                    transient: false,
                })
            }
            Err(Attempt::Failed(e)) => return Err(e),
            Ok(conn) => {
                // Reuse a passfile password for later connections (the WAL one), and remember
                // where it came from for -R.
                if params.password.is_none() {
                    if let Some((secret, file)) = &conn.info.password {
                        params.password = Some(secret.clone());
                        params.password_from_file = file.clone();
                    }
                }
                return Ok(conn);
            }
        }
    }
}

fn prompt_password() -> Result<Secret, Error> {
    tokio::task::block_in_place(|| rpassword::prompt_password("Password: "))
        .map(Secret::new)
        .map_err(Error::fs("read the password from", "/dev/tty"))
}

/// Why one round over the hosts did not give a connection.
enum Attempt {
    /// The server wants a password and none is known (the caller may prompt and retry).
    NoPassword(String),
    /// Anything else; the last host's error is the one reported.
    Failed(Error),
}

/// The failed attempt at `target`, as an [`Error::Connect`].
fn failed(target: &str, reason: String, auth: bool, transient: bool) -> Attempt {
    Attempt::Failed(Error::Connect {
        target: target.to_owned(),
        reason,
        auth,
        transient,
    })
}

/// Tries every host in turn and returns the first connection; else the last host's error.
async fn connect_any(params: &ConnParams) -> Result<Connection, Attempt> {
    let mut last = None;
    for target in &params.targets {
        let result = match &target.host {
            Host::Unix(dir) => connect_unix(params, target, dir).await.map_err(Some),
            Host::Tcp(name) => connect_host(params, target, name).await,
        };
        match result {
            Ok(c) => return Ok(c),
            Err(e) => last = e.or(last),
        }
    }
    Err(last.unwrap_or_else(|| Attempt::Failed(Error::Usage("no host to connect to".into()))))
}

/// The server's socket in directory `dir`.
async fn connect_unix(
    params: &ConnParams,
    target: &Target,
    dir: &std::path::Path,
) -> Result<Connection, Attempt> {
    let path = Host::socket_path(dir, target.port);
    let shown = format!(
        "connection to server on socket \"{}\" failed",
        path.display()
    );
    match UnixStream::connect(&path).await {
        Ok(s) => startup(Transport::Unix(s), params, target, &shown, Binding::None).await,
        Err(e) => Err(failed(
            &shown,
            format!(
                "{}\n\tIs the server running locally and accepting connections on that socket?",
                io_reason(&e)
            ),
            false,
            true,
        )),
    }
}

/// Every address of host `name` (or its `hostaddr`) in turn. `Err(None)`: the name resolved
/// to no address, so nothing was tried.
async fn connect_host(
    params: &ConnParams,
    target: &Target,
    name: &str,
) -> Result<Connection, Option<Attempt>> {
    let port = target.port;
    let lookup = match target.hostaddr {
        Some(ip) => Ok(vec![SocketAddr::new(ip, port)]),
        None => tokio::net::lookup_host((name, port))
            .await
            .map(Iterator::collect),
    };
    let addrs: Vec<SocketAddr> = lookup.map_err(|e| {
        Some(failed(
            &format!("could not translate host name \"{name}\" to address"),
            io_reason(&e),
            false,
            true,
        ))
    })?;
    let mut last = None;
    for addr in addrs {
        let ip = addr.ip().to_string();
        let shown = if name == ip {
            format!("connection to server at \"{ip}\", port {port} failed")
        } else {
            format!("connection to server at \"{name}\" ({ip}), port {port} failed")
        };
        let tcp = TcpAttempt {
            addr,
            name,
            params,
            target,
            shown: &shown,
        };
        match tcp.session().await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last)
}

/// One TCP address being tried, with what every step of it needs.
struct TcpAttempt<'a> {
    addr: SocketAddr,
    /// The host name, for TLS (SNI and verification).
    name: &'a str,
    params: &'a ConnParams,
    target: &'a Target,
    /// The target as errors name it.
    shown: &'a str,
}

impl TcpAttempt<'_> {
    /// Plaintext or TLS as `sslmode` says (with libpq's fallbacks for `allow` and `prefer`),
    /// then startup. Each try opens a new socket.
    async fn session(&self) -> Result<Connection, Attempt> {
        match self.params.tls.mode {
            SslMode::Disable => self.plaintext(self.open().await?).await,
            SslMode::Allow => match self.plaintext(self.open().await?).await {
                // The server refused the plaintext connection: try again with TLS.
                Err(Attempt::Failed(Error::Connect { .. })) => {
                    self.encrypted(self.open().await?, true).await
                }
                other => other,
            },
            SslMode::Prefer => match self.encrypted(self.open().await?, false).await {
                // The handshake failed, or the server refused the encrypted connection (a
                // `hostnossl` line): libpq retries in plaintext. A connection that broke
                // (transient) is not retried this way.
                Err(Attempt::Failed(Error::Connect {
                    transient: false, ..
                })) if self.params.tls.channel_binding != ChannelBinding::Require => {
                    self.plaintext(self.open().await?).await
                }
                other => other,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                self.encrypted(self.open().await?, true).await
            }
        }
    }

    /// A new TCP connection to the address (a transient failure if it cannot be made).
    async fn open(&self) -> Result<TcpStream, Attempt> {
        let params = self.params;
        connect_tcp(
            self.addr,
            params.connect_timeout.or(params.timeout),
            params.keepalives,
        )
        .await
        .map_err(|e| {
            failed(
                self.shown,
                format!(
                    "{}\n\tIs the server running on that host and accepting TCP/IP connections?",
                    io_reason(&e)
                ),
                false,
                true,
            )
        })
    }

    /// Startup in plaintext on `stream`.
    async fn plaintext(&self, stream: TcpStream) -> Result<Connection, Attempt> {
        let io = Transport::Tcp(stream);
        startup(io, self.params, self.target, self.shown, Binding::None).await
    }

    /// TLS on `stream`, then startup; `required`: fail if the server declines TLS rather
    /// than go on in plaintext.
    async fn encrypted(&self, stream: TcpStream, required: bool) -> Result<Connection, Attempt> {
        let settings = &self.params.tls;
        let (io, binding) = negotiate(stream, self.name, settings, required, self.shown).await?;
        startup(io, self.params, self.target, self.shown, binding).await
    }
}

/// SSLRequest (or direct TLS) and the handshake. Returns a plaintext transport when the server
/// declines and TLS is not `required`.
async fn negotiate(
    mut stream: TcpStream,
    name: &str,
    settings: &TlsSettings,
    required: bool,
    shown: &str,
) -> Result<(Transport, Binding), Attempt> {
    let fail = |reason: String| failed(shown, reason, false, false);
    let config = tls::client_config(settings).map_err(|e| fail(crate::error::chain(&e)))?;
    if !settings.direct && !ssl_request(&mut stream, required, shown).await? {
        return Ok((Transport::Tcp(stream), Binding::None));
    }
    let server_name = tls::server_name(name).map_err(|e| fail(crate::error::chain(&e)))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = connector
        .connect(server_name, stream)
        .await
        .map_err(|e| fail(tls::handshake_error(&e, name)))?;
    let end_point = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| tls::server_end_point(cert));
    let binding = match settings.channel_binding {
        ChannelBinding::Disable => Binding::None,
        ChannelBinding::Prefer => Binding::Tls {
            server_end_point: end_point,
            require: false,
        },
        ChannelBinding::Require => Binding::Tls {
            server_end_point: end_point,
            require: true,
        },
    };
    Ok((Transport::Tls(Box::new(tls)), binding))
}

/// Sends SSLRequest and reads the answer: `true` when the server agrees to TLS, `false` when
/// it declines and TLS is not `required`.
async fn ssl_request(stream: &mut TcpStream, required: bool, shown: &str) -> Result<bool, Attempt> {
    let fail = |reason: String| failed(shown, reason, false, false);
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|e| fail(io_reason(&e)))?;
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(|e| fail(io_reason(&e)))?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' if required => Err(fail(
            "server does not support SSL, but SSL was required".into(),
        )),
        b'N' => Ok(false),
        other => Err(fail(format!(
            "received invalid response to SSL negotiation: {}",
            char::from(other).escape_default()
        ))),
    }
}

/// TCP connect bounded by `timeout`, with TCP_NODELAY and keepalives (idle 60 s, then every
/// 10 s, 6 probes): a peer that vanished without FIN or RST is noticed even while idle.
async fn connect_tcp(
    addr: std::net::SocketAddr,
    timeout: Option<Duration>,
    keepalives: Keepalives,
) -> std::io::Result<TcpStream> {
    let connect = TcpStream::connect(addr);
    let stream = match timeout {
        Some(t) => tokio::time::timeout(t, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout expired"))??,
        None => connect.await?,
    };
    stream.set_nodelay(true)?;
    if keepalives.enabled {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(keepalives.idle.max(1)))
            .with_interval(Duration::from_secs(keepalives.interval.max(1)))
            .with_retries(keepalives.count.max(1));
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    }
    Ok(stream)
}

/// The system error text the way libpq shows it: without Rust's ` (os error N)` suffix
/// ([`os_text`]) and the resolver's prefix, capitalized.
fn io_reason(e: &std::io::Error) -> String {
    let text = os_text(e);
    let text = text
        .strip_prefix("failed to lookup address information: ")
        .or_else(|| text.strip_prefix("Failed to lookup address information: "))
        .map(str::to_owned)
        .unwrap_or(text);
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

/// Startup on an open transport: the startup message, authentication (with the password
/// given or found in the passfile), and the server's parameters.
async fn startup(
    mut io: Transport,
    params: &ConnParams,
    target: &Target,
    shown: &str,
    binding: Binding,
) -> Result<Connection, Attempt> {
    let tls = matches!(io, Transport::Tls(_));
    if params.tls.channel_binding == ChannelBinding::Require && !tls {
        let reason = "channel binding required, but SSL not in use".into();
        return Err(failed(shown, reason, true, false));
    }
    let fail = |reason: String| failed(shown, reason, false, false);
    let secret = params.password_for(target);
    let from_file = (params.password.is_none() && secret.is_some())
        .then(|| params.passfile.clone())
        .flatten();
    let password = secret.as_ref().map(|p| p.expose().as_bytes());
    let mut out = BytesMut::new();
    let mut machine = Startup::with_binding(&startup_params(params), password, binding, &mut out)
        .map_err(|e| fail(e.to_string()))?;
    let mut rbuf = BytesMut::with_capacity(8192);
    let mut exchange = Exchange {
        io: &mut io,
        rbuf: &mut rbuf,
        out: &mut out,
        timeout: params.timeout,
        shown,
    };
    exchange.run(&mut machine).await?;
    let server_params = machine.parameters().clone();
    let version_text = server_params
        .get("server_version")
        .cloned()
        .unwrap_or_default();
    let version = ServerVersion::parse(&version_text).map_err(|e| fail(e.to_string()))?;
    Ok(Connection {
        io,
        rbuf,
        label: "main",
        read_timeout: params.timeout,
        wbuf: BytesMut::new(),
        info: ServerInfo {
            version,
            version_text,
            params: server_params,
            backend_pid: machine.backend_pid(),
            auth: machine.auth_method(),
            host: target.host.clone(),
            port: target.port,
            password: secret.map(|p| (p, from_file)),
            tls,
        },
    })
}

/// The startup message's parameters: a physical replication connection (or an SQL session in
/// its database, as `params.mode` says) as `user`, with `options` if set, and
/// `application_name`.
fn startup_params(params: &ConnParams) -> Vec<(&'static str, &str)> {
    let mut startup_params = vec![
        ("user", params.user.as_str()),
        ("database", params.mode.database()),
    ];
    if params.mode == ConnMode::Replication {
        startup_params.push(("replication", "true"));
    }
    if let Some(o) = &params.options {
        startup_params.push(("options", o.as_str()));
    }
    startup_params.push(("application_name", params.application_name.as_str()));
    startup_params
}

/// The startup exchange on one transport: what it reads into and writes from.
struct Exchange<'a> {
    io: &'a mut Transport,
    rbuf: &'a mut BytesMut,
    /// Bytes the startup machine wants sent.
    out: &'a mut BytesMut,
    timeout: Option<Duration>,
    shown: &'a str,
}

impl Exchange<'_> {
    /// Sends what `machine` wants sent and feeds it the server's answers (printing notices)
    /// until the server is ready for queries.
    async fn run(&mut self, machine: &mut Startup) -> Result<(), Attempt> {
        loop {
            if !self.out.is_empty() {
                self.io
                    .write_all(self.out)
                    .await
                    .map_err(|e| failed(self.shown, io_reason(&e), false, false))?;
                self.out.clear();
            }
            let limit = Limit {
                timeout: self.timeout,
                label: "main",
            };
            // A connection closed during startup is often a server still starting: transient.
            let msg = read_raw(self.io, self.rbuf, "startup", limit)
                .await
                .map_err(|e| failed(self.shown, crate::error::chain(&e), false, true))?;
            if let BackendMessage::NoticeResponse(n) = &msg {
                output::notice(n);
                continue;
            }
            match machine.handle_message(msg, self.out) {
                Ok(StartupStatus::Pending) => {}
                Ok(StartupStatus::Ready) => return Ok(()),
                Err(e) => return Err(startup_failure(e, self.shown)),
            }
        }
    }
}

/// What a failed startup means: no password (the caller may prompt), or an error that may be
/// an authentication failure and may heal.
fn startup_failure(e: StartupError, shown: &str) -> Attempt {
    match e {
        StartupError::NoPasswordSupplied => Attempt::NoPassword(shown.to_owned()),
        e @ StartupError::ChannelBindingRequired(_) => failed(shown, e.to_string(), true, false),
        StartupError::Server(e) => {
            let auth = e.is_auth_failure();
            // 57P03 the database system is starting up / shutting down; 53300 too many
            // connections (or WAL senders).
            let transient = matches!(
                e.code.as_str(),
                sqlstate::CANNOT_CONNECT_NOW | sqlstate::TOO_MANY_CONNECTIONS
            );
            failed(shown, e.to_string(), auth, transient)
        }
        e => failed(shown, e.to_string(), false, false),
    }
}
