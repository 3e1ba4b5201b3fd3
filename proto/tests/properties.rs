//! Property tests: decoding does not depend on how the input was split.
//!
//! - A sequence of well-formed backend messages (CopyData, DataRow, CommandComplete,
//!   ReadyForQuery, ErrorResponse), concatenated and cut at arbitrary points, decodes with
//!   [`backend::decode`] into exactly the messages it was built from.
//! - A tar archive built with [`testutil::append_member`] (random names, kinds, modes, contents; with or
//!   without the end-of-archive marker), cut at arbitrary points, splits with [`TarSplitter`]
//!   into exactly its members (adjacent data events merged).
//! - An incremental member built with [`testutil::incremental_member`] (random truncation
//!   length and block numbers), cut at arbitrary points, decodes with [`IncrementalDecoder`]
//!   into its header and blocks; any strict prefix is reported as truncated; arbitrary bytes
//!   give events or a typed error, never a panic.
//! - [`WalChunk::split_at_segments`] pieces concatenate back to the chunk, are never empty and
//!   never cross a segment boundary.
//!
//! The case counts are modest so the file runs in seconds in debug builds; set
//! `PROPTEST_CASES` to run more.

use bytes::{Bytes, BytesMut};
use pgclone_proto::backend::{self, BackendMessage, DEFAULT_MAX_MESSAGE_LEN};
use pgclone_proto::incremental::{
    ByteOrder, Header, IncrementalDecoder, IncrementalError, IncrementalEvent, BLCKSZ,
    INCREMENTAL_MAGIC, RELSEG_SIZE,
};
use pgclone_proto::replication::WalChunk;
use pgclone_proto::tar::{Member, MemberKind, TarEvent, TarSplitter};
use pgclone_proto::testutil;
use pgclone_proto::{Lsn, ProtocolError, SegNo, ServerError, WalSegSize};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// `cases` unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// Cuts `bytes` at the given points (in any order, repeats allowed: empty chunks are fed too).
fn cut<'a>(bytes: &'a [u8], points: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = points.iter().map(|p| p.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for to in at {
        chunks.push(&bytes[from..to]);
        from = to;
    }
    chunks.push(&bytes[from..]);
    chunks
}

// ---------------------------------------------------------------------------------------------
// Backend messages

/// Text without NUL (the protocol's strings are NUL-terminated).
fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
}

fn copy_data() -> impl Strategy<Value = (Vec<u8>, BackendMessage)> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..64),
        1 => vec(any::<u8>(), 0..20_000),
    ]
    .prop_map(|payload| {
        let bytes = testutil::copy_data(&payload);
        (bytes, BackendMessage::CopyData(Bytes::from(payload)))
    })
}

fn data_row() -> impl Strategy<Value = (Vec<u8>, BackendMessage)> {
    vec(proptest::option::of(vec(any::<u8>(), 0..40)), 0..6).prop_map(|values| {
        let bytes = testutil::data_row(&values);
        let msg = BackendMessage::DataRow(values.into_iter().map(|v| v.map(Bytes::from)).collect());
        (bytes, msg)
    })
}

fn command_complete() -> impl Strategy<Value = (Vec<u8>, BackendMessage)> {
    text(24).prop_map(|tag| {
        let bytes = testutil::command_complete(&tag);
        (bytes, BackendMessage::CommandComplete(tag))
    })
}

fn ready_for_query() -> impl Strategy<Value = (Vec<u8>, BackendMessage)> {
    prop::sample::select(&b"ITE"[..]).prop_map(|status| {
        (
            testutil::ready_for_query(status),
            BackendMessage::ReadyForQuery(status),
        )
    })
}

fn error_response() -> impl Strategy<Value = (Vec<u8>, BackendMessage)> {
    (
        text(8),
        text(6),
        text(60),
        proptest::option::of(text(40)),
        proptest::option::of(text(40)),
    )
        .prop_map(|(severity, code, message, detail, hint)| {
            let fields: Vec<(u8, &str)> = [
                (b'S', Some(&severity)),
                (b'V', Some(&severity)),
                (b'C', Some(&code)),
                (b'M', Some(&message)),
                (b'D', detail.as_ref()),
                (b'H', hint.as_ref()),
                (b'R', Some(&message)), // a field the decoder skips
            ]
            .into_iter()
            .filter_map(|(kind, value)| Some((kind, value?.as_str())))
            .collect();
            let bytes = testutil::error_fields(b'E', &fields);
            let e = ServerError {
                severity,
                code,
                message,
                detail,
                hint,
            };
            (bytes, BackendMessage::ErrorResponse(e))
        })
}

fn backend_message() -> impl Strategy<Value = (Vec<u8>, BackendMessage)> {
    prop_oneof![
        3 => copy_data(),
        2 => data_row(),
        1 => command_complete(),
        1 => ready_for_query(),
        1 => error_response(),
    ]
}

/// Feeds the chunks one by one, decoding all complete messages after each.
fn decode_chunks(chunks: &[&[u8]]) -> Result<(Vec<BackendMessage>, usize), ProtocolError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(msg) = backend::decode(&mut buf, DEFAULT_MAX_MESSAGE_LEN)? {
            out.push(msg);
        }
    }
    Ok((out, buf.len()))
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn backend_decode_does_not_depend_on_chunking(
        msgs in vec(backend_message(), 0..12),
        points in vec(any::<Index>(), 0..12),
        bytewise in prop::bool::weighted(0.1),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|(bytes, _)| bytes.iter().copied()).collect();
        let expected: Vec<BackendMessage> = msgs.into_iter().map(|(_, m)| m).collect();
        let chunks = if bytewise { stream.chunks(1).collect() } else { cut(&stream, &points) };
        let (decoded, left) = decode_chunks(&chunks).expect("well-formed stream");
        prop_assert_eq!(left, 0, "bytes left over");
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn backend_decode_of_a_truncated_stream_waits(
        msgs in vec(backend_message(), 1..6),
        point in any::<Index>(),
    ) {
        // A prefix decodes to the messages that are whole in it and leaves the rest buffered.
        let stream: Vec<u8> = msgs.iter().flat_map(|(bytes, _)| bytes.iter().copied()).collect();
        let end = point.index(stream.len() + 1);
        let mut whole = 0;
        let mut expected = Vec::new();
        for (bytes, msg) in msgs {
            if whole + bytes.len() > end {
                break;
            }
            whole += bytes.len();
            expected.push(msg);
        }
        let (decoded, left) = decode_chunks(&[&stream[..end]]).expect("well-formed prefix");
        prop_assert_eq!(decoded, expected);
        prop_assert_eq!(left, end - whole);
    }
}

// ---------------------------------------------------------------------------------------------
// Tar archives

/// A member to put in an archive: what the splitter must report for it, and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    name: Vec<u8>,
    kind: MemberKind,
    mode: u32,
    link_name: Option<Vec<u8>>,
    contents: Vec<u8>,
}

/// A splitter event, reduced to what the archive determines.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Member {
        name: Vec<u8>,
        kind: MemberKind,
        mode: u32,
        size: u64,
        link_name: Option<Vec<u8>>,
    },
    Data(Vec<u8>),
    End,
}

impl Event {
    fn member(m: &Member) -> Self {
        Self::Member {
            name: m.name.clone(),
            kind: m.kind,
            mode: m.mode,
            size: m.size,
            link_name: m.link_name.clone(),
        }
    }
}

fn member_name() -> impl Strategy<Value = String> {
    let component = vec(
        prop::sample::select(&b"abcdefghijklmnopqrstuvwxyz0123456789_."[..]),
        1..12,
    )
    .prop_map(|b| String::from_utf8(b).expect("ASCII"));
    vec(component, 1..5).prop_map(|parts| parts.join("/"))
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        member_name(),
        0u8..4,
        0u32..0o10000,
        prop_oneof![
            3 => vec(any::<u8>(), 0..600),
            1 => vec(any::<u8>(), 0..3000),
        ],
        0u32..100_000,
    )
        .prop_map(|(name, kind, mode, contents, oid)| {
            let (kind, name, contents, link_name) = match kind {
                0 | 1 => (MemberKind::File, name, contents, None),
                2 => (MemberKind::Directory, format!("{name}/"), Vec::new(), None),
                _ => (
                    MemberKind::Symlink,
                    format!("pg_tblspc/{oid}/"),
                    Vec::new(),
                    Some(format!("/srv/ts{oid}").into_bytes()),
                ),
            };
            Spec {
                name: name.into_bytes(),
                kind,
                mode,
                link_name,
                contents,
            }
        })
}

fn archive(specs: &[Spec], terminated: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for s in specs {
        let name = std::str::from_utf8(&s.name).expect("ASCII name");
        let link = s
            .link_name
            .as_deref()
            .map(|l| std::str::from_utf8(l).expect("ASCII link"));
        let member = (name, s.kind, &s.contents[..], link);
        testutil::append_member(&mut out, &member, s.mode, 1_700_000_000);
    }
    if terminated {
        testutil::terminate(&mut out);
    }
    out
}

fn expected_events(specs: Vec<Spec>) -> Vec<Event> {
    let mut events = Vec::new();
    for s in specs {
        events.push(Event::Member {
            name: s.name,
            kind: s.kind,
            mode: s.mode,
            size: s.contents.len() as u64,
            link_name: s.link_name,
        });
        if !s.contents.is_empty() {
            events.push(Event::Data(s.contents));
        }
        events.push(Event::End);
    }
    events
}

/// Splits the chunks one by one, draining events after each, adjacent data events merged.
fn split_chunks(chunks: &[&[u8]]) -> Vec<Event> {
    let mut tar = TarSplitter::new();
    let mut events: Vec<Event> = Vec::new();
    for chunk in chunks {
        tar.handle_data(Bytes::copy_from_slice(chunk))
            .expect("well-formed archive");
        while let Some(e) = tar.poll_event() {
            match (events.last_mut(), e) {
                (Some(Event::Data(prev)), TarEvent::Data(d)) => prev.extend_from_slice(&d),
                (_, TarEvent::Data(d)) => events.push(Event::Data(d.to_vec())),
                (_, TarEvent::Member(m)) => events.push(Event::member(&m)),
                (_, TarEvent::MemberEnd) => events.push(Event::End),
            }
        }
    }
    tar.finish().expect("archive ends at a member boundary");
    events
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn tar_splitting_does_not_depend_on_chunking(
        specs in vec(spec(), 0..8),
        terminated in any::<bool>(),
        points in vec(any::<Index>(), 0..16),
        bytewise in prop::bool::weighted(0.05),
    ) {
        let bytes = archive(&specs, terminated);
        let chunks = if bytewise { bytes.chunks(1).collect() } else { cut(&bytes, &points) };
        prop_assert_eq!(split_chunks(&chunks), expected_events(specs));
    }
}

// ---------------------------------------------------------------------------------------------
// WAL chunks

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn wal_chunk_pieces_stay_inside_segments(
        shift in 20u32..=22,
        segno in 0u64..(1 << 40),
        offset in any::<u64>(),
        near_end in any::<bool>(),
        len in prop_oneof![4 => 0usize..6000, 1 => (1usize << 20)..(5usize << 19)],
        seed in any::<u8>(),
    ) {
        let seg = WalSegSize::from_bytes(1 << shift).expect("valid segment size");
        let size = u64::from(seg.bytes());
        let offset = if near_end { size - 1 - offset % 5000 } else { offset % size };
        let start = (segno << shift) + offset;
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let chunk = WalChunk { start: Lsn(start), data: Bytes::from(data.clone()) };
        prop_assert_eq!(chunk.end(), Lsn(start + len as u64));

        let mut joined = Vec::with_capacity(len);
        let mut pieces = 0;
        for (segment, piece_offset, piece) in chunk.split_at_segments(seg) {
            let pos = start + joined.len() as u64;
            prop_assert!(!piece.is_empty(), "empty piece");
            prop_assert_eq!(segment, SegNo(pos / size));
            prop_assert_eq!(piece_offset, pos % size);
            prop_assert!(piece_offset + piece.len() as u64 <= size, "piece crosses a boundary");
            // Only the last piece may end before the segment does.
            let ends_segment = piece_offset + piece.len() as u64 == size;
            prop_assert!(ends_segment || joined.len() + piece.len() == len, "short piece");
            joined.extend_from_slice(&piece);
            pieces += 1;
        }
        prop_assert_eq!(joined, data);
        let first_seg = start / size;
        let last_seg = (start + len as u64).saturating_sub(1) / size;
        let want = if len == 0 { 0 } else { last_seg - first_seg + 1 };
        prop_assert_eq!(pieces, want);
    }
}

// ---------------------------------------------------------------------------------------------
// Incremental members

/// A well-formed member: a truncation block length and strictly increasing block numbers, each
/// block filled with a byte derived from its number.
fn incremental_spec() -> impl Strategy<Value = (u32, Vec<(u32, Vec<u8>)>)> {
    (
        0..RELSEG_SIZE,
        proptest::collection::btree_set(0..RELSEG_SIZE, 0..5),
    )
        .prop_map(|(tbl, numbers)| {
            let blocks = numbers
                .into_iter()
                .map(|n| (n, vec![n.to_le_bytes()[0] ^ 0x5a; BLCKSZ]))
                .collect();
            (tbl, blocks)
        })
}

proptest! {
    #![proptest_config(config(100))]

    #[test]
    fn incremental_decode_does_not_depend_on_chunking(
        (tbl, blocks) in incremental_spec(),
        points in vec(any::<Index>(), 0..8),
    ) {
        let bytes = testutil::incremental_member(tbl, &blocks);
        let mut d = IncrementalDecoder::with_member_size(bytes.len() as u64);
        let mut events = Vec::new();
        for chunk in cut(&bytes, &points) {
            d.handle_data(Bytes::copy_from_slice(chunk)).expect("well-formed member");
            while let Some(e) = d.poll_event() {
                events.push(e);
            }
        }
        d.finish().expect("complete member");
        let mut expected = vec![IncrementalEvent::Header(Header {
            byte_order: ByteOrder::Little,
            truncation_block_length: tbl,
            blocks: blocks.iter().map(|(n, _)| *n).collect(),
        })];
        expected.extend(blocks.into_iter().map(|(number, data)| IncrementalEvent::Block {
            number,
            data: Bytes::from(data),
        }));
        prop_assert_eq!(events, expected);
    }

    #[test]
    fn incremental_decode_of_arbitrary_bytes_never_panics(
        words in vec(prop_oneof![Just(INCREMENTAL_MAGIC), 0..4u32, any::<u32>()], 0..6),
        tail in vec(any::<u8>(), 0..20_000),
        points in vec(any::<Index>(), 0..8),
        size in proptest::option::of(0..40_000u64),
    ) {
        // Hostile bytes (often with the magic first): typed errors or events, whatever the cut.
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend_from_slice(&tail);
        let mut d = size.map_or_else(IncrementalDecoder::new, IncrementalDecoder::with_member_size);
        let mut result = Ok(());
        for chunk in cut(&bytes, &points) {
            result = d.handle_data(Bytes::copy_from_slice(chunk));
            while let Some(e) = d.poll_event() {
                if let IncrementalEvent::Block { data, .. } = e {
                    prop_assert_eq!(data.len(), BLCKSZ);
                }
            }
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            let _ = d.finish();
        }
    }

    #[test]
    fn incremental_decode_of_a_prefix_reports_truncation(
        (tbl, blocks) in incremental_spec(),
        point in any::<Index>(),
    ) {
        let bytes = testutil::incremental_member(tbl, &blocks);
        let end = point.index(bytes.len());
        let mut d = IncrementalDecoder::new();
        d.handle_data(Bytes::copy_from_slice(&bytes[..end])).expect("well-formed prefix");
        let truncated = matches!(d.finish(), Err(IncrementalError::Truncated { .. }));
        prop_assert!(truncated);
    }
}
