//! Replication connections (and, for `--refresh`'s WAL summaries, ordinary SQL sessions:
//! [`ConnMode`]): exchanging messages on an open one. Opening one (hosts, TLS, startup,
//! authentication, the password prompt) is [`connect`], in `open.rs`.
//!
//! [`Connection::read_message`] prints server notices as they arrive (the libpq way) and keeps
//! ParameterStatus updates, so callers only see the messages they act on.

pub mod conninfo;
mod open;
mod os_user;
mod params;
pub mod pgpass;
pub mod server;
pub mod service;
pub mod tls;
mod transport;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use pgclone_proto::backend::{self, BackendMessage, DEFAULT_MAX_MESSAGE_LEN};
use pgclone_proto::query::{QueryStatus, ResultSet, SimpleQuery};
use pgclone_proto::startup::AuthMethod;
use pgclone_proto::{frontend, ServerVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use open::connect;
pub use params::{
    ConnFlags, ConnMode, ConnParams, Host, Keepalives, Prompt, Secret, Target, DEFAULT_SQL_DATABASE,
};
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

/// An open, authenticated connection (a replication one unless opened with [`ConnMode::Sql`]).
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

    /// The TLS protocol version and cipher suite in use (as rustls names them); `None` in
    /// plaintext.
    pub fn tls_session(&self) -> Option<(String, String)> {
        let Transport::Tls(stream) = &self.io else {
            return None;
        };
        let session = &stream.get_ref().1;
        let version = session.protocol_version()?;
        let suite = session.negotiated_cipher_suite()?;
        Some((format!("{version:?}"), format!("{:?}", suite.suite())))
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
