//! pgclone's error type: one enum whose variants carry the context of the failure (phase,
//! command, path), and the exit-code mapping.
//!
//! Display strings are lowercase, have no trailing period and do not repeat their source;
//! `main` prints the chain, `: `-separated, after `pgclone: error: `.

use std::io;
use std::path::PathBuf;

use pgclone_proto::basebackup::OptionError;
use pgclone_proto::frontend::EncodeError;
use pgclone_proto::incremental::IncrementalError;
use pgclone_proto::tar::TarError;
use pgclone_proto::{ProtocolError, ServerError};

/// Why pgclone failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad flag or flag combination; followed by a `--help` hint.
    #[error("{0}")]
    Usage(String),
    /// `--refresh` will not touch this directory: why, and what to do instead.
    #[error("{0}")]
    Refused(String),
    /// Could not connect or authenticate. `target` reads like libpq's
    /// `connection to server at "h" (addr), port p failed`.
    #[error("{target}: {reason}")]
    Connect {
        /// Where we tried.
        target: String,
        /// Why it failed (a server message or a system error, preformatted).
        reason: String,
        /// Whether this is an authentication failure (never worth retrying).
        auth: bool,
        /// Whether waiting may heal it (nothing listening yet, the server starting up, too
        /// many connections, a name not resolvable yet).
        transient: bool,
    },
    /// TLS could not be set up (certificate files, configuration).
    #[error("{0}")]
    Tls(String),
    /// The connection service file could not give the named service (no `--help` hint).
    #[error(transparent)]
    Service(#[from] crate::conn::service::ServiceError),
    /// The server is older than 10, or lacks what we need.
    #[error("{0}")]
    IncompatibleServer(String),
    /// The server reported an error for a command.
    #[error("{context}")]
    Server {
        /// What we were doing, e.g. `could not initiate base backup`.
        context: String,
        /// The server's error.
        #[source]
        source: Box<ServerError>,
    },
    /// The server sent something that breaks the protocol.
    #[error("protocol violation during {phase}")]
    Protocol {
        /// What we were doing.
        phase: &'static str,
        /// What was wrong.
        #[source]
        source: ProtocolError,
    },
    /// The connection broke.
    #[error("connection lost during {phase}")]
    ConnectionLost {
        /// What we were doing.
        phase: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A BASE_BACKUP option the server cannot take.
    #[error(transparent)]
    BackupOption(#[from] OptionError),
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A file-system operation failed.
    #[error("could not {op} \"{}\"", path.display())]
    Fs {
        /// What we tried, e.g. `create directory`.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The destination (or a tablespace directory) exists and is not empty.
    #[error("directory \"{}\" exists but is not empty", .0.display())]
    NotEmpty(PathBuf),
    /// A tar member that pgclone refuses to write.
    #[error("tar member \"{member}\" in {archive} is unsafe: {reason}")]
    UnsafeMember {
        /// Archive name.
        archive: String,
        /// Member name, lossily decoded.
        member: String,
        /// Why it is refused.
        reason: String,
    },
    /// A tablespace location from the server that pgclone refuses to use.
    #[error("tablespace location \"{location}\" from the server is unsafe: {reason}")]
    UnsafeTablespace {
        /// The location as sent.
        location: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A tar stream that does not parse.
    #[error("invalid archive {archive}")]
    Tar {
        /// Archive name.
        archive: String,
        /// What is wrong.
        #[source]
        source: TarError,
    },
    /// An `INCREMENTAL.` member that does not decode, or cannot rebuild its file in place.
    #[error("cannot apply incremental file \"{}\"", path.display())]
    Incremental {
        /// The member's path in the directory.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: IncrementalError,
    },
    /// `-D - -Ft` of a server with tablespaces: one tar stream holds one archive.
    #[error("can only write single tablespace to stdout, database has {0}")]
    StdoutTablespaces(usize),
    /// The server found page checksum failures; the data is kept.
    #[error("checksum error occurred")]
    ChecksumFailure,
    /// The WAL task failed; the source says why. pg_basebackup's words (scripts match them),
    /// pgclone's detail after them.
    #[error("background process terminated unexpectedly")]
    WalReceiver(#[source] Box<Self>),
    /// A connection broke while data streamed in, in pg_basebackup's words: `context` is
    /// `could not read COPY data` (the backup) or `could not receive data from WAL stream`.
    #[error("{context}")]
    ReceiveFailed {
        /// pg_basebackup's words for what failed.
        context: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A termination signal arrived; what was created has been removed.
    #[error("interrupted by {}", signal_name(*.0))]
    Interrupted(i32),
    /// The server sent nothing for too long.
    #[error("no data received from the server for {secs} s on the {connection} connection during {phase}; giving up (see --timeout)")]
    Stalled {
        /// Which connection (`main` or `WAL`).
        connection: &'static str,
        /// How long it was silent.
        secs: u64,
        /// What we were doing.
        phase: &'static str,
    },
    /// The WAL-retention guard found the WAL a `-X fetch` backup needs removed from the
    /// server: the copy stops now instead of failing at its end.
    #[error("the server has removed WAL segment {segment} that this backup needs (it started at {start}; the server has written {written} since and keeps {keep}): stopping now rather than failing at the end; use -X stream or a replication slot (-X stream -S name) to keep the WAL, or raise the setting")]
    WalRemoved {
        /// The start segment's file name.
        segment: String,
        /// The backup's start position.
        start: pgclone_proto::Lsn,
        /// WAL written since the start, as text (`80 MB`).
        written: String,
        /// What the server keeps (`wal_keep_size = 16MB`).
        keep: String,
    },
    /// Another task failed first, or the user interrupted; not a root cause by itself.
    #[error("cancelled")]
    Cancelled,
    /// The unpacker stopped taking chunks; its own result holds the root cause.
    #[error("the unpacker stopped")]
    UnpackerStopped,
    /// The backup manifest is malformed or fails its own checksum.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// What was written differs from the manifest (each problem already reported).
    #[error("the backup does not match its manifest ({0} problems)")]
    ManifestMismatch(usize),
    /// An internal task ended without saying why (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Interrupted(signo) => u8::try_from(128 + signo).unwrap_or(1),
            _ => 1,
        }
    }

    /// Whether a `--help` hint should follow the message.
    pub fn wants_help_hint(&self) -> bool {
        matches!(self, Self::Usage(_))
    }

    /// Whether the destination must be kept even without `--no-clean` (pg_basebackup keeps the
    /// data after checksum failures so they can be examined).
    pub fn keeps_data(&self) -> bool {
        matches!(self, Self::ChecksumFailure)
    }

    /// A file-system error with context.
    pub fn fs(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Fs { op, path, source }
    }

    /// Rewords a connection lost while receiving as pg_basebackup does (`context`, e.g.
    /// `could not read COPY data`); other errors pass unchanged.
    pub fn lost_while(context: &'static str) -> impl FnOnce(Self) -> Self {
        move |e| match e {
            Self::ConnectionLost { source, .. } => Self::ReceiveFailed { context, source },
            other => other,
        }
    }

    /// A protocol error with context.
    pub fn protocol(phase: &'static str) -> impl FnOnce(ProtocolError) -> Self {
        move |source| Self::Protocol { phase, source }
    }
}

/// Formats an error and its sources as one `: `-joined chain, skipping a source whose text the
/// previous link already contains. A system error reads as PostgreSQL's `%m` prints it
/// ([`os_text`]).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = match e.downcast_ref::<io::Error>() {
            Some(io) => os_text(io),
            None => e.to_string(),
        };
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

/// An I/O error's text the way PostgreSQL's `%m` prints it: without Rust's ` (os error N)`.
pub fn os_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Name of a signal number, for messages.
pub fn signal_name(signo: i32) -> &'static str {
    match signo {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources_once() {
        let e = Error::Fs {
            op: "create directory",
            path: "/x/y".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(
            chain(&e),
            "could not create directory \"/x/y\": permission denied"
        );
        let e = Error::Server {
            context: "could not initiate base backup".into(),
            source: Box::new(ServerError {
                severity: "ERROR".into(),
                message: "boom".into(),
                ..ServerError::default()
            }),
        };
        assert_eq!(chain(&e), "could not initiate base backup: ERROR:  boom");
        let e = Error::Fs {
            op: "create directory",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            chain(&e),
            "could not create directory \"/x\": Permission denied"
        );
    }

    /// A failed WAL task reads as pg_basebackup's two messages do, in one line.
    #[test]
    fn a_dead_wal_task_says_what_pg_basebackup_says() {
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed the connection unexpectedly",
        );
        let lost = Error::ConnectionLost {
            phase: "WAL streaming",
            source: eof,
        };
        let stream = Error::lost_while("could not receive data from WAL stream")(lost);
        let e = Error::WalReceiver(Box::new(stream));
        assert_eq!(
            chain(&e),
            "background process terminated unexpectedly: could not receive data from WAL \
             stream: server closed the connection unexpectedly"
        );
    }
}
