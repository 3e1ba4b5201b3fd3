//! Replication connections: opening one (transport, startup, authentication, password prompt)
//! and exchanging messages on it.
//!
//! [`Connection::read_message`] prints server notices as they arrive (the libpq way) and keeps
//! ParameterStatus updates, so callers only see the messages they act on.

pub mod conninfo;
mod params;
pub mod pgpass;
pub mod server;
pub mod tls;
mod transport;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use bytes::BytesMut;
use pgclone_proto::backend::{self, BackendMessage, DEFAULT_MAX_MESSAGE_LEN};
use pgclone_proto::query::{QueryStatus, ResultSet, SimpleQuery};
use pgclone_proto::startup::{AuthMethod, Binding, Startup, StartupError, StartupStatus};
use pgclone_proto::{frontend, ServerVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

pub use params::{ConnFlags, ConnParams, Host, Keepalives, Prompt, Secret, Target};
pub use tls::{ChannelBinding, RootCert, SslMode, TlsSettings};
use transport::Transport;

use crate::error::Error;
use crate::output;

/// Read buffer growth step: large reads keep syscalls few on a fast stream.
const READ_CHUNK: usize = 256 * 1024;

/// What the server told us at startup.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `server_version`, as libpq computes it.
    pub version: ServerVersion,
    /// The `server_version` text.
    pub version_text: String,
    /// ParameterStatus values, updated as they change.
    pub params: BTreeMap<String, String>,
    /// Our walsender's process id.
    pub backend_pid: Option<i32>,
    /// How we authenticated.
    pub auth: AuthMethod,
    /// The host that answered.
    pub host: Host,
    /// Its port.
    pub port: u16,
    /// The password used, if any, and the passfile it came from.
    pub password: Option<(Secret, Option<std::path::PathBuf>)>,
    /// Whether the connection is encrypted.
    pub tls: bool,
}

/// An open, authenticated replication connection.
#[derive(Debug)]
pub struct Connection {
    io: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    info: ServerInfo,
    label: &'static str,
    read_timeout: Option<Duration>,
}

impl Connection {
    /// Names the connection in stall errors (`main`, `WAL`).
    pub fn set_label(&mut self, label: &'static str) {
        self.label = label;
    }

    /// Longest silence accepted from the server before a read fails with
    /// [`Error::Stalled`]; `None` waits forever. Any byte received resets the clock.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// What the server told us at startup.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Reads the next message, printing notices and recording parameter changes on the way.
    ///
    /// # Cancel safety
    /// Cancel-safe: a partly received message stays in the connection's buffer and is
    /// completed by the next call.
    pub async fn read_message(&mut self, phase: &'static str) -> Result<BackendMessage, Error> {
        loop {
            let limit = Limit {
                timeout: self.read_timeout,
                label: self.label,
            };
            let msg = read_raw(&mut self.io, &mut self.rbuf, phase, limit).await?;
            if let Some(msg) = self.absorb(msg) {
                return Ok(msg);
            }
        }
    }

    /// Prints a notice or records a parameter change; any other message is the caller's.
    fn absorb(&mut self, msg: BackendMessage) -> Option<BackendMessage> {
        match msg {
            BackendMessage::NoticeResponse(n) => output::notice(&n),
            BackendMessage::ParameterStatus { name, value } => {
                self.info.params.insert(name, value);
            }
            msg => return Some(msg),
        }
        None
    }

    /// Returns the next message if it can be had without waiting: one already buffered, or
    /// completed by bytes the socket holds right now. `None` means the next read would wait.
    ///
    /// The backup task uses it to hand its batch to the writer exactly when the socket runs
    /// dry, so it reads what accumulated in one go instead of waking for every few kilobytes
    /// the server sends (an eager reader on a fast stream costs a context switch per segment).
    pub async fn read_message_now(
        &mut self,
        phase: &'static str,
    ) -> Result<Option<BackendMessage>, Error> {
        loop {
            let Some(msg) = self.decode_buffered(phase)? else {
                if !self.read_ready(phase).await? {
                    return Ok(None);
                }
                continue;
            };
            if let Some(msg) = self.absorb(msg) {
                return Ok(Some(msg));
            }
        }
    }

    fn decode_buffered(&mut self, phase: &'static str) -> Result<Option<BackendMessage>, Error> {
        backend::decode(&mut self.rbuf, DEFAULT_MAX_MESSAGE_LEN).map_err(Error::protocol(phase))
    }

    /// Reads what the socket holds without waiting; `false` when it holds nothing.
    async fn read_ready(&mut self, phase: &'static str) -> Result<bool, Error> {
        reserve_read(&mut self.rbuf);
        let io = &mut self.io;
        let rbuf = &mut self.rbuf;
        let polled = std::future::poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *io), cx, rbuf) {
                std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                std::task::Poll::Pending => std::task::Poll::Ready(None),
            }
        })
        .await;
        match polled {
            None => Ok(false),
            Some(Ok(0)) => Err(eof_error(phase, &self.rbuf)),
            Some(Ok(_)) => Ok(true),
            Some(Err(source)) => Err(Error::ConnectionLost { phase, source }),
        }
    }

    /// Sends a simple Query.
    pub async fn send_query(&mut self, sql: &str, phase: &'static str) -> Result<(), Error> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush(phase).await
    }

    /// Sends raw frontend bytes already encoded into `bytes`.
    pub async fn send_raw(&mut self, bytes: &[u8], phase: &'static str) -> Result<(), Error> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|source| Error::ConnectionLost { phase, source })
    }

    async fn flush(&mut self, phase: &'static str) -> Result<(), Error> {
        let result = self.io.write_all(&self.wbuf).await;
        self.wbuf.clear();
        result.map_err(|source| Error::ConnectionLost { phase, source })
    }

    /// Runs a replication command and collects its result sets. A server error becomes
    /// `could not send replication command "<command>": ERROR: ...`, as in pg_basebackup.
    pub async fn simple_query(
        &mut self,
        command: &'static str,
        sql: &str,
    ) -> Result<Vec<ResultSet>, Error> {
        self.send_query(sql, command).await?;
        let mut q = SimpleQuery::new(command);
        loop {
            let msg = self.read_message(command).await?;
            if q.handle_message(msg).map_err(Error::protocol(command))? == QueryStatus::Done {
                break;
            }
        }
        q.finish().map_err(|source| Error::Server {
            context: format!("could not send replication command \"{command}\""),
            source: Box::new(source),
        })
    }

    /// `SHOW name`, returning the single value.
    pub async fn show(&mut self, name: &'static str) -> Result<String, Error> {
        const CMD: &str = "SHOW";
        let sets = self.simple_query(CMD, &format!("SHOW {name}")).await?;
        let set = sets.first().ok_or_else(|| Error::Protocol {
            phase: CMD,
            source: pgclone_proto::ProtocolError::BadResult {
                command: CMD,
                problem: "no result".into(),
            },
        })?;
        set.expect_shape(CMD, Some(1), 1)
            .and_then(|()| set.required_text(CMD, 0, 0).map(str::to_owned))
            .map_err(Error::protocol(CMD))
    }

    /// Sends Terminate and closes the socket (errors are irrelevant at this point).
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.io.write_all(&self.wbuf).await;
        let _ = self.io.shutdown().await;
    }
}

/// How long a read may wait, and the connection's name for the error.
#[derive(Debug, Clone, Copy)]
struct Limit {
    timeout: Option<Duration>,
    label: &'static str,
}

/// Reads one raw message into/out of `rbuf`.
async fn read_raw(
    io: &mut Transport,
    rbuf: &mut BytesMut,
    phase: &'static str,
    limit: Limit,
) -> Result<BackendMessage, Error> {
    loop {
        if let Some(msg) =
            backend::decode(rbuf, DEFAULT_MAX_MESSAGE_LEN).map_err(Error::protocol(phase))?
        {
            return Ok(msg);
        }
        reserve_read(rbuf);
        let read = io.read_buf(rbuf);
        let n = match limit.timeout {
            None => read.await,
            Some(t) => tokio::time::timeout(t, read)
                .await
                .map_err(|_| Error::Stalled {
                    connection: limit.label,
                    secs: t.as_secs(),
                    phase,
                })?,
        }
        .map_err(|source| Error::ConnectionLost { phase, source })?;
        if n == 0 {
            return Err(eof_error(phase, rbuf));
        }
    }
}

/// Makes room for a large read.
fn reserve_read(rbuf: &mut BytesMut) {
    if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
        rbuf.reserve(READ_CHUNK);
    }
}

/// The error for a connection the server closed, saying whether a message was cut.
fn eof_error(phase: &'static str, rbuf: &BytesMut) -> Error {
    let what = if rbuf.is_empty() {
        "server closed the connection unexpectedly"
    } else {
        "server closed the connection in the middle of a message"
    };
    Error::ConnectionLost {
        phase,
        source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what),
    }
}

/// Opens a replication connection, trying each host in turn. Prompts for a password when the
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

enum Attempt {
    NoPassword(String),
    Failed(Error),
}

async fn connect_any(params: &ConnParams) -> Result<Connection, Attempt> {
    let mut last = None;
    for target_info in &params.targets {
        let host = &target_info.host;
        let port = target_info.port;
        match host {
            Host::Unix(dir) => {
                let path = Host::socket_path(dir, port);
                let target = format!(
                    "connection to server on socket \"{}\" failed",
                    path.display()
                );
                match UnixStream::connect(&path).await {
                    Ok(s) => match startup(Transport::Unix(s), params, target_info, &target, Binding::None).await {
                        Ok(c) => return Ok(c),
                        Err(e) => last = Some(e),
                    },
                    Err(e) => {
                        last = Some(Attempt::Failed(Error::Connect {
                            reason: format!(
                                "{}\n\tIs the server running locally and accepting connections on that socket?",
                                io_reason(&e)
                            ),
                            target,
                            auth: false,
                            transient: true,
                        }))
                    }
                }
            }
            Host::Tcp(name) => {
                let lookup = match target_info.hostaddr {
                    Some(ip) => Ok(vec![std::net::SocketAddr::new(ip, port)]),
                    None => tokio::net::lookup_host((name.as_str(), port))
                        .await
                        .map(Iterator::collect),
                };
                let addrs: Vec<std::net::SocketAddr> = match lookup {
                    Ok(a) => a,
                    Err(e) => {
                        last = Some(Attempt::Failed(Error::Connect {
                            target: format!("could not translate host name \"{name}\" to address"),
                            reason: io_reason(&e),
                            auth: false,
                            transient: true,
                        }));
                        continue;
                    }
                };
                for addr in addrs {
                    let ip = addr.ip().to_string();
                    let target = if *name == ip {
                        format!("connection to server at \"{ip}\", port {port} failed")
                    } else {
                        format!("connection to server at \"{name}\" ({ip}), port {port} failed")
                    };
                    match tcp_session(addr, name, params, target_info, &target).await {
                        Ok(c) => return Ok(c),
                        Err(e) => last = Some(e),
                    }
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| Attempt::Failed(Error::Usage("no host to connect to".into()))))
}

/// One TCP address: plaintext or TLS as `sslmode` says, then startup.
async fn tcp_session(
    addr: std::net::SocketAddr,
    name: &str,
    params: &ConnParams,
    host: &Target,
    target: &str,
) -> Result<Connection, Attempt> {
    let open = || async {
        connect_tcp(
            addr,
            params.connect_timeout.or(params.timeout),
            params.keepalives,
        )
        .await
        .map_err(|e| {
            Attempt::Failed(Error::Connect {
                target: target.to_owned(),
                reason: format!(
                    "{}\n\tIs the server running on that host and accepting TCP/IP connections?",
                    io_reason(&e)
                ),
                auth: false,
                transient: true,
            })
        })
    };
    let settings = &params.tls;
    match settings.mode {
        SslMode::Disable => {
            startup(
                Transport::Tcp(open().await?),
                params,
                host,
                target,
                Binding::None,
            )
            .await
        }
        SslMode::Allow => {
            match startup(
                Transport::Tcp(open().await?),
                params,
                host,
                target,
                Binding::None,
            )
            .await
            {
                // The server refused the plaintext connection: try again with TLS.
                Err(Attempt::Failed(Error::Connect { .. })) => {
                    let stream = open().await?;
                    let (io, binding) = negotiate(stream, name, settings, true, target).await?;
                    startup(io, params, host, target, binding).await
                }
                other => other,
            }
        }
        SslMode::Prefer => {
            let stream = open().await?;
            let encrypted = match negotiate(stream, name, settings, false, target).await {
                Ok((io, binding)) => startup(io, params, host, target, binding).await,
                Err(e) => Err(e),
            };
            match encrypted {
                // The handshake failed, or the server refused the encrypted connection (a
                // `hostnossl` line): libpq retries in plaintext. A connection that broke
                // (transient) is not retried this way.
                Err(Attempt::Failed(Error::Connect {
                    transient: false, ..
                })) if settings.channel_binding != ChannelBinding::Require => {
                    startup(
                        Transport::Tcp(open().await?),
                        params,
                        host,
                        target,
                        Binding::None,
                    )
                    .await
                }
                other => other,
            }
        }
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            let stream = open().await?;
            let (io, binding) = negotiate(stream, name, settings, true, target).await?;
            startup(io, params, host, target, binding).await
        }
    }
}

/// SSLRequest (or direct TLS) and the handshake. Returns a plaintext transport when the server
/// declines and TLS is not `required`.
async fn negotiate(
    mut stream: TcpStream,
    name: &str,
    settings: &TlsSettings,
    required: bool,
    target: &str,
) -> Result<(Transport, Binding), Attempt> {
    let fail = |reason: String| {
        Attempt::Failed(Error::Connect {
            target: target.to_owned(),
            reason,
            auth: false,
            transient: false,
        })
    };
    let config = tls::client_config(settings).map_err(|e| fail(crate::error::chain(&e)))?;
    if !settings.direct {
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
            b'S' => {}
            b'N' if required => {
                return Err(fail(
                    "server does not support SSL, but SSL was required".into(),
                ))
            }
            b'N' => return Ok((Transport::Tcp(stream), Binding::None)),
            other => {
                return Err(fail(format!(
                    "received invalid response to SSL negotiation: {}",
                    char::from(other).escape_default()
                )))
            }
        }
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

/// The system error text without Rust's " (os error N)" suffix and resolver prefix,
/// capitalized like libpq's.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text
        .strip_prefix("failed to lookup address information: ")
        .or_else(|| text.strip_prefix("Failed to lookup address information: "))
        .map(str::to_owned)
        .unwrap_or(text);
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

async fn startup(
    mut io: Transport,
    params: &ConnParams,
    host: &Target,
    target: &str,
    binding: Binding,
) -> Result<Connection, Attempt> {
    let tls = matches!(io, Transport::Tls(_));
    if params.tls.channel_binding == ChannelBinding::Require && !tls {
        return Err(Attempt::Failed(Error::Connect {
            target: target.to_owned(),
            reason: "channel binding required, but SSL not in use".into(),
            auth: true,
            transient: false,
        }));
    }
    let fail_with = |reason: String, auth: bool, transient: bool| {
        Attempt::Failed(Error::Connect {
            target: target.to_owned(),
            reason,
            auth,
            transient,
        })
    };
    let fail = |reason: String, auth: bool| fail_with(reason, auth, false);
    let mut out = BytesMut::new();
    let mut startup_params = vec![
        ("user", params.user.as_str()),
        ("database", "replication"),
        ("replication", "true"),
    ];
    if let Some(o) = &params.options {
        startup_params.push(("options", o.as_str()));
    }
    startup_params.push(("application_name", params.application_name.as_str()));
    let secret = params.password_for(host);
    let from_file = (params.password.is_none() && secret.is_some())
        .then(|| params.passfile.clone())
        .flatten();
    let password = secret.as_ref().map(|p| p.expose().as_bytes());
    let mut machine = Startup::with_binding(&startup_params, password, binding, &mut out)
        .map_err(|e| fail(e.to_string(), false))?;
    let mut rbuf = BytesMut::with_capacity(8192);
    loop {
        if !out.is_empty() {
            io.write_all(&out)
                .await
                .map_err(|e| fail(io_reason(&e), false))?;
            out.clear();
        }
        let limit = Limit {
            timeout: params.timeout,
            label: "main",
        };
        // A connection closed during startup is often a server still starting: transient.
        let msg = read_raw(&mut io, &mut rbuf, "startup", limit)
            .await
            .map_err(|e| fail_with(crate::error::chain(&e), false, true))?;
        if let BackendMessage::NoticeResponse(n) = &msg {
            output::notice(n);
            continue;
        }
        match machine.handle_message(msg, &mut out) {
            Ok(StartupStatus::Pending) => {}
            Ok(StartupStatus::Ready) => break,
            Err(StartupError::NoPasswordSupplied) => {
                return Err(Attempt::NoPassword(target.to_owned()))
            }
            Err(e @ StartupError::ChannelBindingRequired(_)) => {
                return Err(fail(e.to_string(), true))
            }
            Err(StartupError::Server(e)) => {
                let auth = e.is_auth_failure();
                // 57P03 the database system is starting up / shutting down; 53300 too many
                // connections (or WAL senders).
                use pgclone_proto::sqlstate::{CANNOT_CONNECT_NOW, TOO_MANY_CONNECTIONS};
                let transient =
                    matches!(e.code.as_str(), CANNOT_CONNECT_NOW | TOO_MANY_CONNECTIONS);
                return Err(fail_with(e.to_string(), auth, transient));
            }
            Err(e) => return Err(fail(e.to_string(), false)),
        }
    }
    let params_map = machine.parameters().clone();
    let version_text = params_map
        .get("server_version")
        .cloned()
        .unwrap_or_default();
    let version = ServerVersion::parse(&version_text).map_err(|e| fail(e.to_string(), false))?;
    Ok(Connection {
        io,
        rbuf,
        label: "main",
        read_timeout: params.timeout,
        wbuf: BytesMut::new(),
        info: ServerInfo {
            version,
            version_text,
            params: params_map,
            backend_pid: machine.backend_pid(),
            auth: machine.auth_method(),
            host: host.host.clone(),
            port: host.port,
            password: secret.map(|p| (p, from_file)),
            tls,
        },
    })
}
