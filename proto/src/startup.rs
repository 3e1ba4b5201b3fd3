//! The startup and authentication exchange, as a state machine without I/O.
//!
//! Call order: [`Startup::new`] writes the StartupMessage into `out`; send it. Then feed every
//! message read from the server to [`Startup::handle_message`], sending whatever it wrote to `out`
//! after each call, until it returns [`StartupStatus::Ready`]. The server's parameters
//! (`server_version` and friends) are then available from [`Startup::parameters`].
//!
//! Supported: trust (no request), cleartext password, MD5, SCRAM-SHA-256 (the hashing is
//! `postgres-protocol`'s). Not supported: Kerberos, GSSAPI, SSPI, channel binding (needs TLS).
//! The password is only kept until authentication is over.

use std::collections::BTreeMap;
use std::fmt;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use crate::backend::{Authentication, BackendMessage};
use crate::error::{ProtocolError, ServerError};
use crate::frontend::{self, EncodeError};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Channel binding for SCRAM (libpq's `channel_binding`), and what the TLS layer provides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Binding {
    /// Not over TLS, or `channel_binding=disable`.
    #[default]
    None,
    /// Over TLS; bind if the server offers SCRAM-SHA-256-PLUS (`prefer`) or fail (`require`).
    Tls {
        /// The `tls-server-end-point` data (hash of the server certificate), if computable.
        server_end_point: Option<Vec<u8>>,
        /// Whether binding is required.
        require: bool,
    },
}

/// Why startup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The server refused us (bad password, no pg_hba entry, not a replication role...).
    #[error("{0}")]
    Server(ServerError),
    /// The server wants a password and none was given: the caller may prompt and reconnect.
    #[error("fe_sendauth: no password supplied")]
    NoPasswordSupplied,
    /// `channel_binding=require` could not be honoured.
    #[error("{0}")]
    ChannelBindingRequired(&'static str),
    /// The server broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Progress of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupStatus {
    /// Keep feeding messages.
    Pending,
    /// ReadyForQuery arrived: the connection is usable.
    Ready,
}

/// How the server made us authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password was asked for.
    Trust,
    /// Cleartext password.
    Cleartext,
    /// MD5.
    Md5,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// SCRAM-SHA-256-PLUS (with channel binding).
    ScramSha256Plus,
}

enum State {
    ExpectAuth,
    ExpectSaslContinue(Box<ScramSha256>),
    ExpectSaslFinal(Box<ScramSha256>),
    ExpectAuthOk,
    ExpectReady,
    Ready,
}

/// The client side of startup and authentication. See the module docs for the call order.
pub struct Startup {
    state: State,
    user: String,
    password: Option<Vec<u8>>,
    binding: Binding,
    method: AuthMethod,
    parameters: BTreeMap<String, String>,
    backend_pid: Option<i32>,
}

impl fmt::Debug for Startup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Startup")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl Startup {
    /// Writes the StartupMessage with `params` (which must include `user`) into `out`.
    /// `password` is used if the server asks for one.
    pub fn new(
        params: &[(&str, &str)],
        password: Option<&[u8]>,
        out: &mut BytesMut,
    ) -> Result<Self, EncodeError> {
        Self::with_binding(params, password, Binding::None, out)
    }

    /// As [`Self::new`], over TLS with channel binding as `binding` says.
    pub fn with_binding(
        params: &[(&str, &str)],
        password: Option<&[u8]>,
        binding: Binding,
        out: &mut BytesMut,
    ) -> Result<Self, EncodeError> {
        frontend::startup_message(params, out)?;
        let user = params
            .iter()
            .find(|(k, _)| *k == "user")
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_default();
        Ok(Self {
            state: State::ExpectAuth,
            user,
            password: password.map(<[u8]>::to_vec),
            binding,
            method: AuthMethod::Trust,
            parameters: BTreeMap::new(),
            backend_pid: None,
        })
    }

    /// Feeds one server message; replies, if any, are appended to `out`.
    pub fn handle_message(
        &mut self,
        msg: BackendMessage,
        out: &mut BytesMut,
    ) -> Result<StartupStatus, StartupError> {
        if let BackendMessage::ErrorResponse(e) = msg {
            return Err(StartupError::Server(e));
        }
        if matches!(msg, BackendMessage::NoticeResponse(_)) {
            return Ok(StartupStatus::Pending);
        }
        let state = std::mem::replace(&mut self.state, State::ExpectAuth);
        self.state = match (state, msg) {
            (State::ExpectAuth, BackendMessage::Authentication(auth)) => self.on_auth(auth, out)?,
            (State::ExpectAuth, BackendMessage::NegotiateProtocolVersion { .. }) => {
                State::ExpectAuth
            }
            (
                State::ExpectSaslContinue(mut scram),
                BackendMessage::Authentication(Authentication::SaslContinue(data)),
            ) => {
                scram
                    .update(&data)
                    .map_err(|e| ProtocolError::Scram(e.to_string()))?;
                frontend::sasl_response(scram.message(), out)?;
                State::ExpectSaslFinal(scram)
            }
            (
                State::ExpectSaslFinal(mut scram),
                BackendMessage::Authentication(Authentication::SaslFinal(data)),
            ) => {
                scram
                    .finish(&data)
                    .map_err(|e| ProtocolError::Scram(e.to_string()))?;
                State::ExpectAuthOk
            }
            (State::ExpectAuthOk, BackendMessage::Authentication(Authentication::Ok)) => {
                self.password = None;
                State::ExpectReady
            }
            (State::ExpectReady, BackendMessage::ParameterStatus { name, value }) => {
                if self.parameters.len() >= 256 {
                    return Err(ProtocolError::TooMany {
                        what: "server parameters",
                        max: 256,
                    }
                    .into());
                }
                self.parameters.insert(name, value);
                State::ExpectReady
            }
            (State::ExpectReady, BackendMessage::BackendKeyData { pid, .. }) => {
                self.backend_pid = Some(pid);
                State::ExpectReady
            }
            (State::ExpectReady, BackendMessage::ReadyForQuery(_)) => State::Ready,
            (state, msg) => {
                return Err(ProtocolError::UnexpectedMessage {
                    expected: state.expects(),
                    got: msg.name(),
                }
                .into())
            }
        };
        Ok(if matches!(self.state, State::Ready) {
            StartupStatus::Ready
        } else {
            StartupStatus::Pending
        })
    }

    fn on_auth(&mut self, auth: Authentication, out: &mut BytesMut) -> Result<State, StartupError> {
        let require = matches!(self.binding, Binding::Tls { require: true, .. });
        if require && !matches!(auth, Authentication::Sasl { .. }) {
            return Err(StartupError::ChannelBindingRequired(
                "channel binding required but not supported by server's authentication request",
            ));
        }
        match auth {
            Authentication::Ok => {
                self.password = None;
                Ok(State::ExpectReady)
            }
            Authentication::CleartextPassword => {
                let password = self.password()?;
                frontend::password_message(password, out)?;
                self.method = AuthMethod::Cleartext;
                Ok(State::ExpectAuthOk)
            }
            Authentication::Md5Password { salt } => {
                let hash = md5_hash(self.user.as_bytes(), self.password()?, salt);
                frontend::password_message(hash.as_bytes(), out)?;
                self.method = AuthMethod::Md5;
                Ok(State::ExpectAuthOk)
            }
            Authentication::Sasl { mechanisms } => {
                let offers = |m: &str| mechanisms.iter().any(|x| x == m);
                let (mechanism, binding, method) = match &self.binding {
                    Binding::Tls {
                        server_end_point: Some(data),
                        ..
                    } if offers(SCRAM_SHA_256_PLUS) => (
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(data.clone()),
                        AuthMethod::ScramSha256Plus,
                    ),
                    Binding::Tls { require: true, .. } => {
                        return Err(StartupError::ChannelBindingRequired(
                            "channel binding is required, but server did not offer an authentication method that supports channel binding",
                        ))
                    }
                    // Over TLS without binding: tell the server we could have bound ("y").
                    Binding::Tls { .. } => (SCRAM_SHA_256, ChannelBinding::unrequested(), AuthMethod::ScramSha256),
                    Binding::None => (SCRAM_SHA_256, ChannelBinding::unsupported(), AuthMethod::ScramSha256),
                };
                if !offers(SCRAM_SHA_256) && mechanism == SCRAM_SHA_256 {
                    return Err(ProtocolError::UnsupportedSasl(mechanisms.join(", ")).into());
                }
                let scram = ScramSha256::new(self.password()?, binding);
                frontend::sasl_initial_response(mechanism, scram.message(), out)?;
                self.method = method;
                Ok(State::ExpectSaslContinue(Box::new(scram)))
            }
            Authentication::SaslContinue(_) | Authentication::SaslFinal(_) => {
                Err(ProtocolError::UnexpectedMessage {
                    expected: "an authentication request",
                    got: "SASL data outside a SASL exchange",
                }
                .into())
            }
            Authentication::Other(code) => Err(ProtocolError::UnsupportedAuth(code).into()),
        }
    }

    fn password(&self) -> Result<&[u8], StartupError> {
        self.password
            .as_deref()
            .ok_or(StartupError::NoPasswordSupplied)
    }

    /// The ParameterStatus values received (`server_version`, `integer_datetimes`...).
    pub fn parameters(&self) -> &BTreeMap<String, String> {
        &self.parameters
    }

    /// The process id of our backend (the walsender), from BackendKeyData.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// How we authenticated.
    pub fn auth_method(&self) -> AuthMethod {
        self.method
    }
}

impl State {
    fn expects(&self) -> &'static str {
        match self {
            Self::ExpectAuth => "an authentication request",
            Self::ExpectSaslContinue(_) => "SASL continue",
            Self::ExpectSaslFinal(_) => "SASL final",
            Self::ExpectAuthOk => "authentication ok",
            Self::ExpectReady => "ParameterStatus, BackendKeyData or ReadyForQuery",
            Self::Ready => "nothing (startup is over)",
        }
    }
}

/// A server version as libpq computes it (`PQserverVersion`): 150018 for 15.18, 90624 for
/// 9.6.24, 170000 for 17devel or 17beta1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u32);

impl ServerVersion {
    /// Parses the `server_version` parameter (`15.18 (Debian 15.18-0+deb12u1)`, `18beta1`...).
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError::BadValue {
            what: "server_version",
            value: text.chars().take(64).collect(),
        };
        let mut parts = [0u32; 3];
        let mut count = 0;
        for (i, part) in text.split('.').take(3).enumerate() {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() {
                break;
            }
            let value = digits.parse::<u32>().map_err(|_| bad())?;
            if let Some(slot) = parts.get_mut(i) {
                *slot = value;
            }
            count = i + 1;
            if digits.len() != part.len() {
                break;
            }
        }
        let [major, minor, patch] = parts;
        match count {
            0 => Err(bad()),
            _ if major >= 10 => Ok(Self(major * 10000 + minor.min(9999))),
            1 => Err(bad()),
            _ => Ok(Self(major * 10000 + minor.min(99) * 100 + patch.min(99))),
        }
    }

    /// The major version: 15 for 150018, 9 for 90624 (see [`Self::is_at_least`] for 9.x).
    pub fn major(self) -> u32 {
        self.0 / 10000
    }

    /// Whether this server is at least major `major` (10 and up).
    pub fn is_at_least(self, major: u32) -> bool {
        self.0 >= major * 10000
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 100_000 {
            write!(f, "{}.{}", self.0 / 10000, self.0 % 10000)
        } else {
            write!(
                f,
                "{}.{}.{}",
                self.0 / 10000,
                self.0 / 100 % 100,
                self.0 % 100
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn server_versions_parse_like_libpq() {
        for (text, num) in [
            ("15.18 (Debian 15.18-0+deb12u1)", 150018),
            ("10.23", 100023),
            ("18.4", 180004),
            ("17devel", 170000),
            ("18beta1", 180000),
            ("9.6.24", 90624),
            ("9.6beta2", 90600),
        ] {
            assert_eq!(
                ServerVersion::parse(text).ok(),
                Some(ServerVersion(num)),
                "{text}"
            );
        }
        assert!(ServerVersion::parse("").is_err());
        assert!(ServerVersion::parse("x").is_err());
        assert!(ServerVersion::parse("9").is_err());
        assert_eq!(ServerVersion(150018).to_string(), "15.18");
        assert_eq!(ServerVersion(90624).to_string(), "9.6.24");
        assert!(ServerVersion(100023).is_at_least(10));
        assert!(!ServerVersion(90624).is_at_least(10));
    }

    fn params() -> [(&'static str, &'static str); 3] {
        [
            ("user", "md5_user"),
            ("database", "replication"),
            ("replication", "true"),
        ]
    }

    #[test]
    fn md5_reply_matches_recorded_trace() {
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(), Some(b"sekret"), &mut out).expect("encode");
        out.clear();
        let status = s
            .handle_message(
                BackendMessage::Authentication(Authentication::Md5Password {
                    salt: [0x14, 0x7a, 0x00, 0x14],
                }),
                &mut out,
            )
            .expect("md5");
        assert_eq!(status, StartupStatus::Pending);
        // 'p', length, then the hash observed on a PostgreSQL 15 trace, NUL-terminated.
        assert_eq!(&out[5..], b"md59fced5f369bbd8d4e9f0b5ad24c76dd4\0");
        s.handle_message(BackendMessage::Authentication(Authentication::Ok), &mut out)
            .expect("ok");
        s.handle_message(
            BackendMessage::ParameterStatus {
                name: "server_version".into(),
                value: "15.18".into(),
            },
            &mut out,
        )
        .expect("param");
        let status = s
            .handle_message(BackendMessage::ReadyForQuery(b'I'), &mut out)
            .expect("ready");
        assert_eq!(status, StartupStatus::Ready);
        assert_eq!(s.auth_method(), AuthMethod::Md5);
        assert_eq!(
            s.parameters().get("server_version").map(String::as_str),
            Some("15.18")
        );
    }

    #[test]
    fn missing_password_is_reported_for_a_prompt() {
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(), None, &mut out).expect("encode");
        let err = s
            .handle_message(
                BackendMessage::Authentication(Authentication::CleartextPassword),
                &mut out,
            )
            .expect_err("no password");
        assert!(matches!(err, StartupError::NoPasswordSupplied));
    }

    #[test]
    fn out_of_order_messages_are_rejected() {
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(), None, &mut out).expect("encode");
        let err = s
            .handle_message(BackendMessage::CopyData(Bytes::new()), &mut out)
            .expect_err("copy data");
        assert!(matches!(
            err,
            StartupError::Protocol(ProtocolError::UnexpectedMessage {
                got: "CopyData",
                ..
            })
        ));
        let mut s = Startup::new(&params(), Some(b"x"), &mut out).expect("encode");
        let err = s
            .handle_message(
                BackendMessage::Authentication(Authentication::Other(7)),
                &mut out,
            )
            .expect_err("gss");
        assert!(matches!(
            err,
            StartupError::Protocol(ProtocolError::UnsupportedAuth(7))
        ));
    }

    #[test]
    fn channel_binding_picks_plus_or_fails_when_required() {
        let sasl = |m: &[&str]| {
            BackendMessage::Authentication(Authentication::Sasl {
                mechanisms: m.iter().map(|s| (*s).to_owned()).collect(),
            })
        };
        let tls = |require| Binding::Tls {
            server_end_point: Some(vec![1; 32]),
            require,
        };
        let mut out = BytesMut::new();
        let mut s =
            Startup::with_binding(&params(), Some(b"pw"), tls(false), &mut out).expect("encode");
        out.clear();
        s.handle_message(sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]), &mut out)
            .expect("plus");
        assert_eq!(s.auth_method(), AuthMethod::ScramSha256Plus);
        assert!(out.windows(18).any(|w| w == b"SCRAM-SHA-256-PLUS"));
        assert!(out.windows(24).any(|w| w == b"p=tls-server-end-point,,"));

        let mut s =
            Startup::with_binding(&params(), Some(b"pw"), tls(true), &mut out).expect("encode");
        let err = s
            .handle_message(sasl(&["SCRAM-SHA-256"]), &mut out)
            .expect_err("required");
        assert!(matches!(err, StartupError::ChannelBindingRequired(_)));
        let mut s =
            Startup::with_binding(&params(), Some(b"pw"), tls(true), &mut out).expect("encode");
        let err = s
            .handle_message(
                BackendMessage::Authentication(Authentication::Md5Password { salt: [0; 4] }),
                &mut out,
            )
            .expect_err("md5 cannot bind");
        assert!(matches!(err, StartupError::ChannelBindingRequired(_)));

        let mut s =
            Startup::with_binding(&params(), Some(b"pw"), tls(false), &mut out).expect("encode");
        out.clear();
        s.handle_message(sasl(&["SCRAM-SHA-256"]), &mut out)
            .expect("no plus offered");
        assert!(
            out.windows(3).any(|w| w == b"y,,"),
            "tells the server it could have bound"
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let mut out = BytesMut::new();
        let s = Startup::new(&params(), Some(b"hunter2"), &mut out).expect("encode");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
