//! Builders of server bytes for tests only: backend messages as the server frames them, tar
//! archives as the server sends them, and incremental members (17+) as a little-endian server
//! writes them. Shared by proto's tests, pgclone's tests and the
//! integration tests' fake server, so that every test writes these bytes one way.
//!
//! Compiled for proto's own unit tests and with the `test-util` feature, which only
//! dev-dependencies enable; a normal build of proto or pgclone does not contain it. The
//! builders panic on input a test would never give (a message over 4 GiB, a link name too long
//! for a tar header): they are not for bytes from a server.

use crate::incremental::{BLCKSZ, INCREMENTAL_MAGIC};
use crate::replication::{KEEPALIVE_TAG, XLOG_DATA_TAG};
use crate::tar::{build_header, MemberKind, BLOCK};

/// One backend message: the tag byte, the length (counting itself, not the tag), the body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len() + 4).expect("a test message under 4 GiB");
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// `s` followed by the NUL that ends a protocol string.
fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// RowDescription (`T`) of text columns (type 25, text format) named `cols`.
pub fn row_description(cols: &[&str]) -> Vec<u8> {
    let count = i16::try_from(cols.len()).expect("few columns");
    let mut body = count.to_be_bytes().to_vec();
    for c in cols {
        cstr(&mut body, c);
        body.extend_from_slice(&0u32.to_be_bytes()); // table OID
        body.extend_from_slice(&0i16.to_be_bytes()); // column number
        body.extend_from_slice(&25u32.to_be_bytes()); // type OID: text
        body.extend_from_slice(&(-1i16).to_be_bytes()); // type size
        body.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
        body.extend_from_slice(&0i16.to_be_bytes()); // format: text
    }
    frame(b'T', &body)
}

/// DataRow (`D`); `None` is NULL.
pub fn data_row<V: AsRef<[u8]>>(values: &[Option<V>]) -> Vec<u8> {
    let count = i16::try_from(values.len()).expect("few columns");
    let mut body = count.to_be_bytes().to_vec();
    for v in values {
        match v {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                let v = v.as_ref();
                let len = i32::try_from(v.len()).expect("a short value");
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(v);
            }
        }
    }
    frame(b'D', &body)
}

/// CommandComplete (`C`) with this command tag.
pub fn command_complete(tag: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, tag);
    frame(b'C', &body)
}

/// ReadyForQuery (`Z`) with this transaction status (`I`, `T` or `E`).
pub fn ready_for_query(status: u8) -> Vec<u8> {
    frame(b'Z', &[status])
}

/// ErrorResponse (`E`) or, with tag `N`, NoticeResponse: `(field type, value)` pairs, in order.
pub fn error_fields(tag: u8, fields: &[(u8, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (kind, value) in fields {
        body.push(*kind);
        cstr(&mut body, value);
    }
    body.push(0);
    frame(tag, &body)
}

/// ParameterStatus (`S`): `name` is `value`.
pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, value);
    frame(b'S', &body)
}

/// CopyOutResponse (`H`), binary overall format, no columns.
pub fn copy_out() -> Vec<u8> {
    frame(b'H', &[0, 0, 0])
}

/// CopyData (`d`).
pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    frame(b'd', payload)
}

/// CopyDone (`c`).
pub fn copy_done() -> Vec<u8> {
    frame(b'c', &[])
}

/// CopyBothResponse (`W`), binary overall format, no columns: START_REPLICATION's answer.
pub fn copy_both() -> Vec<u8> {
    frame(b'W', &[0, 0, 0])
}

/// The server clock that [`xlog_data`] and [`keepalive`] payloads carry.
pub const SERVER_CLOCK: i64 = 7;

/// An XLogData payload (`w`, inside CopyData): `wal` starting at `start`, the server's WAL end
/// just after it, the clock [`SERVER_CLOCK`].
pub fn xlog_data(start: u64, wal: &[u8]) -> Vec<u8> {
    let mut v = vec![XLOG_DATA_TAG];
    v.extend_from_slice(&start.to_be_bytes());
    v.extend_from_slice(&(start + wal.len() as u64).to_be_bytes());
    v.extend_from_slice(&SERVER_CLOCK.to_be_bytes());
    v.extend_from_slice(wal);
    v
}

/// A primary keepalive payload (`k`, inside CopyData): the server's WAL end, the clock
/// [`SERVER_CLOCK`], whether it asks for a reply.
pub fn keepalive(wal_end: u64, reply: bool) -> Vec<u8> {
    let mut v = vec![KEEPALIVE_TAG];
    v.extend_from_slice(&wal_end.to_be_bytes());
    v.extend_from_slice(&SERVER_CLOCK.to_be_bytes());
    v.push(u8::from(reply));
    v
}

/// A tar member as tests write it: name, kind, contents, link target (symbolic links).
pub type TarMember<'a> = (&'a str, MemberKind, &'a [u8], Option<&'a str>);

/// Appends one member: its header (ustar, owner postgres, this mode and mtime), its contents
/// and the zeros that pad them to a whole block.
pub fn append_member(out: &mut Vec<u8>, member: &TarMember<'_>, mode: u32, mtime: u64) {
    let (name, kind, contents, link) = *member;
    let mut h = build_header(name, kind, mode, contents.len() as u64, mtime);
    if let Some(link) = link {
        h.set_link_name(link)
            .expect("a link name that fits the header");
        h.set_cksum();
    }
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(contents);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
}

/// An archive of `members`, each with `mode` and mtime 0, without the end-of-archive marker
/// (PostgreSQL 15+ servers and truncated streams end this way; see [`terminate`]).
pub fn tar(members: &[TarMember<'_>], mode: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        append_member(&mut out, m, mode, 0);
    }
    out
}

/// Appends the end-of-archive marker: two zero blocks.
pub fn terminate(out: &mut Vec<u8>) {
    out.resize(out.len() + 2 * BLOCK, 0);
}

/// An `INCREMENTAL.` member as a little-endian server writes it: magic, block count,
/// `truncation_block_length`, the block numbers, zeros up to a whole block (only when there are
/// blocks), then each block's bytes (a test passes [`BLCKSZ`] bytes per block).
pub fn incremental_member(truncation_block_length: u32, blocks: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let count = u32::try_from(blocks.len()).expect("a test member under 4G blocks");
    let mut out = Vec::new();
    for word in [INCREMENTAL_MAGIC, count, truncation_block_length] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (number, _) in blocks {
        out.extend_from_slice(&number.to_le_bytes());
    }
    if !blocks.is_empty() {
        out.resize(out.len().next_multiple_of(BLCKSZ), 0);
    }
    for (_, data) in blocks {
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_count_their_length_but_not_the_tag() {
        assert_eq!(ready_for_query(b'I'), [b'Z', 0, 0, 0, 5, b'I']);
        assert_eq!(copy_done(), [b'c', 0, 0, 0, 4]);
        assert_eq!(
            data_row(&[Some("ab"), None]),
            [b'D', 0, 0, 0, 16, 0, 2, 0, 0, 0, 2, b'a', b'b', 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn members_fill_whole_blocks() {
        let mut t = tar(&[("a", MemberKind::File, b"hello", None)], 0o600);
        assert_eq!(t.len(), 2 * BLOCK);
        terminate(&mut t);
        assert_eq!(t.len(), 4 * BLOCK);
        assert!(t[BLOCK + 5..].iter().all(|&b| b == 0));
    }
}
