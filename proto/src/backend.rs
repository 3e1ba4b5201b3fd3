//! Backend (server → client) messages of protocol 3.0 that a replication client meets, and their
//! decoder.
//!
//! [`decode`] cuts one message off the front of a buffer and parses it. Message bodies that carry
//! bulk data ([`BackendMessage::CopyData`], the values of a [`BackendMessage::DataRow`]) are
//! zero-copy [`Bytes`] slices of the receive buffer. The length field is checked against a cap
//! before any memory is reserved for the message, so a hostile length cannot make us allocate.
//!
//! This module does not interpret CopyData payloads (see [`crate::basebackup`] and
//! [`crate::replication`]) and keeps no state between messages.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{ProtocolError, ServerError};
use crate::reader::Reader;

/// Default cap on a message length: far above anything a server sends to a replication client
/// (base backup chunks are at most 32 kB, WAL messages 128 kB with 8 kB pages, up to 512 kB
/// with 32 kB pages), far below what would hurt.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 4 << 20;

/// Most columns accepted in a row description or data row.
pub const MAX_COLUMNS: usize = 64;

/// The authentication requests (`R` messages).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authentication {
    /// Code 0: authenticated.
    Ok,
    /// Code 3: send the password in clear text.
    CleartextPassword,
    /// Code 5: send the MD5-hashed password, salted with these 4 bytes.
    Md5Password {
        /// The salt.
        salt: [u8; 4],
    },
    /// Code 10: SASL, with the mechanisms the server offers.
    Sasl {
        /// Mechanism names, such as `SCRAM-SHA-256`.
        mechanisms: Vec<String>,
    },
    /// Code 11: SASL challenge data.
    SaslContinue(Bytes),
    /// Code 12: SASL outcome data.
    SaslFinal(Bytes),
    /// Any other code (Kerberos, GSS, SSPI...).
    Other(i32),
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// Column name.
    pub name: String,
    /// Type oid (25 text, 20 int8, 23 int4, 26 oid, 17 bytea).
    pub type_oid: u32,
}

/// A CopyInResponse, CopyOutResponse or CopyBothResponse: the overall format and column count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResponse {
    /// 0 text, 1 binary.
    pub format: u8,
    /// Number of columns (0 for replication streams).
    pub columns: u16,
}

/// A backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendMessage {
    /// `R`
    Authentication(Authentication),
    /// `K`: process id and cancel key.
    BackendKeyData {
        /// Backend process id.
        pid: i32,
        /// Cancel key (4 bytes in protocol 3.0).
        key: Bytes,
    },
    /// `S`
    ParameterStatus {
        /// Parameter name.
        name: String,
        /// Its value.
        value: String,
    },
    /// `Z`, with the transaction status byte.
    ReadyForQuery(u8),
    /// `T`
    RowDescription(Vec<FieldDescription>),
    /// `D`: one value per column, `None` for NULL.
    DataRow(Vec<Option<Bytes>>),
    /// `C`, with the command tag.
    CommandComplete(String),
    /// `I`
    EmptyQueryResponse,
    /// `E`
    ErrorResponse(ServerError),
    /// `N`
    NoticeResponse(ServerError),
    /// `A`: a NOTIFY; replication connections do not get them, but they are legal.
    NotificationResponse,
    /// `G`
    CopyInResponse(CopyResponse),
    /// `H`
    CopyOutResponse(CopyResponse),
    /// `W`
    CopyBothResponse(CopyResponse),
    /// `d`: the payload.
    CopyData(Bytes),
    /// `c`
    CopyDone,
    /// `v`: the server supports an older minor protocol version.
    NegotiateProtocolVersion {
        /// Newest minor version the server supports.
        minor: i32,
    },
}

impl BackendMessage {
    /// The protocol name of this message, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Authentication(_) => "Authentication",
            Self::BackendKeyData { .. } => "BackendKeyData",
            Self::ParameterStatus { .. } => "ParameterStatus",
            Self::ReadyForQuery(_) => "ReadyForQuery",
            Self::RowDescription(_) => "RowDescription",
            Self::DataRow(_) => "DataRow",
            Self::CommandComplete(_) => "CommandComplete",
            Self::EmptyQueryResponse => "EmptyQueryResponse",
            Self::ErrorResponse(_) => "ErrorResponse",
            Self::NoticeResponse(_) => "NoticeResponse",
            Self::NotificationResponse => "NotificationResponse",
            Self::CopyInResponse(_) => "CopyInResponse",
            Self::CopyOutResponse(_) => "CopyOutResponse",
            Self::CopyBothResponse(_) => "CopyBothResponse",
            Self::CopyData(_) => "CopyData",
            Self::CopyDone => "CopyDone",
            Self::NegotiateProtocolVersion { .. } => "NegotiateProtocolVersion",
        }
    }
}

/// Cuts one complete message off the front of `buf` and parses it.
///
/// Returns `Ok(None)` when `buf` does not hold a whole message yet; it then reserves room for the
/// rest of the message (never more than `max_len`), so the caller can read into `buf` again.
/// Calling it again with more bytes appended gives the same result as if they had all been there
/// at first: decoding does not depend on how the input was split.
pub fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<BackendMessage>, ProtocolError> {
    let Some(&[tag, l0, l1, l2, l3]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if len < 4 {
        return Err(ProtocolError::BadLength {
            tag: char::from(tag),
            len,
        });
    }
    let body_len = len as usize - 4;
    if body_len > max_len {
        return Err(ProtocolError::TooLarge {
            tag: char::from(tag),
            len: body_len,
            max: max_len,
        });
    }
    let total = 5 + body_len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(5);
    parse(tag, frame).map(Some)
}

fn parse(tag: u8, body: Bytes) -> Result<BackendMessage, ProtocolError> {
    let msg = match tag {
        b'd' => BackendMessage::CopyData(body),
        b'D' => BackendMessage::DataRow(parse_data_row(&body)?),
        b'c' => empty(body, BackendMessage::CopyDone, "CopyDone")?,
        b'R' => BackendMessage::Authentication(parse_auth(&body)?),
        b'S' => {
            let mut r = Reader::new(&body, "ParameterStatus");
            let name = r.string()?;
            let value = r.string()?;
            r.finish()?;
            BackendMessage::ParameterStatus { name, value }
        }
        b'K' => {
            let mut r = Reader::new(&body, "BackendKeyData");
            let pid = r.i32()?;
            let key = body.slice(4..);
            if key.len() < 4 || key.len() > 256 {
                return Err(ProtocolError::BadValue {
                    what: "cancel key length",
                    value: key.len().to_string(),
                });
            }
            BackendMessage::BackendKeyData { pid, key }
        }
        b'Z' => {
            let mut r = Reader::new(&body, "ReadyForQuery");
            let status = r.u8()?;
            r.finish()?;
            BackendMessage::ReadyForQuery(status)
        }
        b'T' => BackendMessage::RowDescription(parse_row_description(&body)?),
        b'C' => {
            let mut r = Reader::new(&body, "CommandComplete");
            let tag = r.string()?;
            r.finish()?;
            BackendMessage::CommandComplete(tag)
        }
        b'I' => empty(
            body,
            BackendMessage::EmptyQueryResponse,
            "EmptyQueryResponse",
        )?,
        b'E' => BackendMessage::ErrorResponse(parse_fields(&body, "ErrorResponse")?),
        b'N' => BackendMessage::NoticeResponse(parse_fields(&body, "NoticeResponse")?),
        b'A' => BackendMessage::NotificationResponse,
        b'G' => BackendMessage::CopyInResponse(parse_copy_response(&body, "CopyInResponse")?),
        b'H' => BackendMessage::CopyOutResponse(parse_copy_response(&body, "CopyOutResponse")?),
        b'W' => BackendMessage::CopyBothResponse(parse_copy_response(&body, "CopyBothResponse")?),
        b'v' => {
            let mut r = Reader::new(&body, "NegotiateProtocolVersion");
            let minor = r.i32()?;
            BackendMessage::NegotiateProtocolVersion { minor }
        }
        other => return Err(ProtocolError::UnknownMessage(char::from(other))),
    };
    Ok(msg)
}

fn empty(
    body: Bytes,
    msg: BackendMessage,
    what: &'static str,
) -> Result<BackendMessage, ProtocolError> {
    Reader::new(&body, what).finish()?;
    Ok(msg)
}

fn parse_auth(body: &Bytes) -> Result<Authentication, ProtocolError> {
    let mut r = Reader::new(body, "Authentication");
    let code = r.i32()?;
    let auth = match code {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => {
            let mut salt = [0u8; 4];
            salt.copy_from_slice(r.take(4)?);
            Authentication::Md5Password { salt }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                if mechanisms.len() >= 16 {
                    return Err(ProtocolError::TooMany {
                        what: "SASL mechanisms",
                        max: 16,
                    });
                }
                mechanisms.push(String::from_utf8_lossy(name).into_owned());
            }
            Authentication::Sasl { mechanisms }
        }
        11 => return Ok(Authentication::SaslContinue(body.slice(4..))),
        12 => return Ok(Authentication::SaslFinal(body.slice(4..))),
        other => return Ok(Authentication::Other(other)),
    };
    r.finish()?;
    Ok(auth)
}

fn parse_fields(body: &[u8], what: &'static str) -> Result<ServerError, ProtocolError> {
    let mut r = Reader::new(body, what);
    let mut e = ServerError::default();
    let mut localized_severity = None;
    loop {
        let kind = r.u8()?;
        if kind == 0 {
            break;
        }
        let value = r.string()?;
        match kind {
            b'S' => localized_severity = Some(value),
            b'V' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    r.finish()?;
    if let Some(s) = localized_severity {
        e.severity = s;
    }
    Ok(e)
}

fn parse_row_description(body: &[u8]) -> Result<Vec<FieldDescription>, ProtocolError> {
    let mut r = Reader::new(body, "RowDescription");
    let n = r.i16()?;
    let n = column_count(n)?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string()?;
        let _table_oid = r.u32()?;
        let _column = r.i16()?;
        let type_oid = r.u32()?;
        let _type_len = r.i16()?;
        let _type_mod = r.i32()?;
        let _format = r.i16()?;
        fields.push(FieldDescription { name, type_oid });
    }
    r.finish()?;
    Ok(fields)
}

fn parse_data_row(body: &Bytes) -> Result<Vec<Option<Bytes>>, ProtocolError> {
    let mut r = Reader::new(body, "DataRow");
    let n = column_count(r.i16()?)?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32()?;
        if len == -1 {
            values.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| ProtocolError::BadValue {
            what: "DataRow value length",
            value: len.to_string(),
        })?;
        let start = body.len() - r.remaining();
        r.take(len)?;
        values.push(Some(body.slice(start..start + len)));
    }
    r.finish()?;
    Ok(values)
}

fn column_count(n: i16) -> Result<usize, ProtocolError> {
    let n = usize::try_from(n).map_err(|_| ProtocolError::BadValue {
        what: "column count",
        value: n.to_string(),
    })?;
    if n > MAX_COLUMNS {
        return Err(ProtocolError::TooMany {
            what: "columns",
            max: MAX_COLUMNS,
        });
    }
    Ok(n)
}

fn parse_copy_response(body: &[u8], what: &'static str) -> Result<CopyResponse, ProtocolError> {
    let mut r = Reader::new(body, what);
    let format = r.u8()?;
    let columns = r.i16()?;
    let columns = u16::try_from(columns).map_err(|_| ProtocolError::BadValue {
        what: "copy column count",
        value: columns.to_string(),
    })?;
    for _ in 0..columns {
        r.i16()?;
    }
    r.finish()?;
    Ok(CopyResponse { format, columns })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::frame;

    fn decode_one(bytes: &[u8]) -> Result<Option<BackendMessage>, ProtocolError> {
        decode(&mut BytesMut::from(bytes), DEFAULT_MAX_MESSAGE_LEN)
    }

    #[test]
    fn decodes_error_response_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0Rauth_failed\0\0";
        let msg = decode_one(&frame(b'E', body))
            .expect("valid")
            .expect("complete");
        let BackendMessage::ErrorResponse(e) = msg else {
            panic!("wrong message {msg:?}")
        };
        assert_eq!(e.code, crate::sqlstate::INVALID_PASSWORD);
        assert_eq!(
            e.to_string(),
            "FATAL:  password authentication failed for user \"x\""
        );
        assert!(e.is_auth_failure());
    }

    #[test]
    fn decodes_data_row_with_null() {
        let mut body = vec![0, 3];
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"16388");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        let msg = decode_one(&frame(b'D', &body)).expect("valid");
        assert_eq!(
            msg,
            Some(BackendMessage::DataRow(vec![
                Some(Bytes::from_static(b"16388")),
                None,
                Some(Bytes::new())
            ]))
        );
    }

    #[test]
    fn incomplete_input_waits() {
        let full = frame(b'Z', b"I");
        for cut in 0..full.len() {
            assert_eq!(decode_one(&full[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(
            decode_one(&full),
            Ok(Some(BackendMessage::ReadyForQuery(b'I')))
        );
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        assert_eq!(
            decode_one(&[b'Z', 0, 0, 0, 3]),
            Err(ProtocolError::BadLength { tag: 'Z', len: 3 })
        );
        assert_eq!(
            decode_one(&[b'd', 0x7f, 0xff, 0xff, 0xff]),
            Err(ProtocolError::TooLarge {
                tag: 'd',
                len: 0x7fff_fffb,
                max: DEFAULT_MAX_MESSAGE_LEN
            })
        );
        assert_eq!(
            decode_one(&frame(b'?', b"")),
            Err(ProtocolError::UnknownMessage('?'))
        );
        assert_eq!(
            decode_one(&frame(b'Z', b"")),
            Err(ProtocolError::Truncated("ReadyForQuery"))
        );
        assert_eq!(
            decode_one(&frame(b'c', b"x")),
            Err(ProtocolError::TrailingData("CopyDone"))
        );
        let mut body = vec![0, 1];
        body.extend_from_slice(&100i32.to_be_bytes());
        body.extend_from_slice(b"short");
        assert_eq!(
            decode_one(&frame(b'D', &body)),
            Err(ProtocolError::Truncated("DataRow"))
        );
        assert_eq!(
            decode_one(&frame(b'D', &[0xff, 0xff])),
            Err(ProtocolError::BadValue {
                what: "column count",
                value: "-1".into()
            })
        );
        assert_eq!(
            decode_one(&frame(b'E', b"Mno terminator")),
            Err(ProtocolError::Truncated("ErrorResponse"))
        );
    }

    #[test]
    fn a_huge_length_reserves_nothing() {
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        let cap = buf.capacity();
        assert!(decode(&mut buf, DEFAULT_MAX_MESSAGE_LEN).is_err());
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn decodes_sasl_request() {
        let mut body = 10i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(
            decode_one(&frame(b'R', &body)),
            Ok(Some(BackendMessage::Authentication(Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            })))
        );
    }
}
