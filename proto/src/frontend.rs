//! Frontend (client → server) messages, written into a caller's buffer.
//!
//! Thin wrappers over `postgres_protocol::message::frontend` plus what it lacks: the standby
//! status update sent inside CopyData during WAL streaming, and quoting for replication commands.

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend as pp;

use crate::lsn::Lsn;

/// A string could not be encoded (it contains a NUL byte, or is too long for a message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {what}: {reason}")]
pub struct EncodeError {
    /// What was being encoded.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

fn wrap(what: &'static str) -> impl FnOnce(std::io::Error) -> EncodeError {
    move |e| EncodeError {
        what,
        reason: e.to_string(),
    }
}

/// The StartupMessage of protocol 3.0 with these parameters, in order.
pub fn startup_message(params: &[(&str, &str)], out: &mut BytesMut) -> Result<(), EncodeError> {
    pp::startup_message(params.iter().copied(), out).map_err(wrap("startup message"))
}

/// A PasswordMessage holding `password` (cleartext, or the md5 hash string).
pub fn password_message(password: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    pp::password_message(password, out).map_err(wrap("password message"))
}

/// SASLInitialResponse.
pub fn sasl_initial_response(
    mechanism: &str,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    pp::sasl_initial_response(mechanism, data, out).map_err(wrap("SASL initial response"))
}

/// SASLResponse.
pub fn sasl_response(data: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    pp::sasl_response(data, out).map_err(wrap("SASL response"))
}

/// A simple Query.
pub fn query(sql: &str, out: &mut BytesMut) -> Result<(), EncodeError> {
    pp::query(sql, out).map_err(wrap("query"))
}

/// CopyData with this payload.
pub fn copy_data(data: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    pp::CopyData::new(data)
        .map_err(wrap("CopyData"))?
        .write(out);
    Ok(())
}

/// CopyDone.
pub fn copy_done(out: &mut BytesMut) {
    pp::copy_done(out);
}

/// Terminate.
pub fn terminate(out: &mut BytesMut) {
    pp::terminate(out);
}

/// SSLRequest.
pub fn ssl_request(out: &mut BytesMut) {
    pp::ssl_request(out);
}

/// Tag of a standby status update inside CopyData.
pub const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';

/// A standby status update (`r`), wrapped in CopyData: the positions written, flushed and
/// applied, the client's clock in microseconds since 2000-01-01, and whether we ask for a reply.
pub fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now_pg_micros: i64,
    reply_requested: bool,
    out: &mut BytesMut,
) {
    out.put_u8(b'd');
    out.put_u32(4 + 34);
    out.put_u8(STANDBY_STATUS_UPDATE_TAG);
    out.put_u64(write.0);
    out.put_u64(flush.0);
    out.put_u64(apply.0);
    out.put_i64(now_pg_micros);
    out.put_u8(u8::from(reply_requested));
}

/// A string literal for a replication command: `'...'` with `'` doubled. The replication
/// grammar knows no backslash escapes.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A quoted identifier for a replication command: `"..."` with `"` doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_update_layout() {
        let mut out = BytesMut::new();
        standby_status_update(Lsn(0x200_0000), Lsn(0x100_0000), Lsn(0), 7, true, &mut out);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&out[6..14], &0x200_0000u64.to_be_bytes());
        assert_eq!(&out[14..22], &0x100_0000u64.to_be_bytes());
        assert_eq!(&out[30..38], &7i64.to_be_bytes());
        assert_eq!(out[38], 1);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"'a\b'");
        assert_eq!(quote_ident("s\"x"), "\"s\"\"x\"");
    }

    #[test]
    fn nul_in_query_is_an_error() {
        let mut out = BytesMut::new();
        assert!(query("SHOW\0x", &mut out).is_err());
    }
}
