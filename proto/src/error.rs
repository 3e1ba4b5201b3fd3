//! Errors of the protocol crate: what the server sent that we cannot accept ([`ProtocolError`]),
//! and what the server reported itself ([`ServerError`]).

use std::fmt;

use crate::sqlstate;

/// The server's bytes broke the protocol, or did not make sense for the state we were in.
///
/// These are never caused by the user; they mean a broken or hostile peer (or a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message or field ended before a value that must be there.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Bytes were left over after a message was fully parsed.
    #[error("trailing data in {0}")]
    TrailingData(&'static str),
    /// A message length below the protocol minimum.
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength {
        /// The tag byte of the message, as a character.
        tag: char,
        /// The length field.
        len: u32,
    },
    /// A message longer than we accept.
    #[error("message of type {tag:?} is {len} bytes long, more than the {max} bytes accepted")]
    TooLarge {
        /// The tag byte of the message, as a character.
        tag: char,
        /// The length announced.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A message type we do not know.
    #[error("unknown message type {0:?}")]
    UnknownMessage(char),
    /// A known message in a state where it is not allowed.
    #[error("unexpected message {got} while expecting {expected}")]
    UnexpectedMessage {
        /// What the state machine waited for.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// A value that does not parse (an LSN, a number, a name).
    #[error("invalid {what}: {value:?}")]
    BadValue {
        /// What the value should have been.
        what: &'static str,
        /// The text received (cut to a reasonable length).
        value: String,
    },
    /// A result set of an unexpected shape.
    #[error("unexpected result from {command}: {problem}")]
    BadResult {
        /// The command whose result it was.
        command: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// More items than we accept (rows, columns, tablespaces).
    #[error("too many {what} (more than {max})")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The cap.
        max: usize,
    },
    /// An authentication method we do not implement.
    #[error("unsupported authentication method {0} requested by the server")]
    UnsupportedAuth(i32),
    /// The server asked for SASL without offering a mechanism we know.
    #[error("none of the server's SASL authentication mechanisms are supported ({0})")]
    UnsupportedSasl(String),
    /// The SCRAM exchange failed on our side (bad server nonce, bad server signature...).
    #[error("SCRAM authentication failed: {0}")]
    Scram(String),
}

/// An ErrorResponse or NoticeResponse from the server, with the fields libpq shows.
///
/// `Display` prints it the way libpq does by default: `SEVERITY:  message`, then `DETAIL:` and
/// `HINT:` lines when present.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    /// Localized severity (`S`), e.g. `FATAL`, `ERROR`, `WARNING`.
    pub severity: String,
    /// SQLSTATE (`C`), e.g. `28P01`.
    pub code: String,
    /// Primary message (`M`).
    pub message: String,
    /// Detail (`D`), if any.
    pub detail: Option<String>,
    /// Hint (`H`), if any.
    pub hint: Option<String>,
}

impl ServerError {
    /// Whether this is about authentication, which retrying cannot fix.
    pub fn is_auth_failure(&self) -> bool {
        self.code == sqlstate::INVALID_PASSWORD
            || self.code == sqlstate::INVALID_AUTHORIZATION_SPECIFICATION
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:  {}", self.severity, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, "\nDETAIL:  {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nHINT:  {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ServerError({} {}: {:?})",
            self.severity, self.code, self.message
        )
    }
}

impl std::error::Error for ServerError {}
