//! The harnesses behind the fuzz targets in `fuzz_targets/`: each takes the fuzzer's bytes,
//! feeds them where server bytes go in pgclone, and asserts what must hold for any input.
//! A panic (including a failed assertion or an arithmetic overflow) is a finding.

use std::os::unix::ffi::OsStrExt;
use std::path::Component;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pgclone_proto::backend::{decode, BackendMessage, DEFAULT_MAX_MESSAGE_LEN};
use pgclone_proto::basebackup::{BackupEvent, BaseBackupDecoder, Dialect};
use pgclone_proto::incremental::{IncrementalDecoder, IncrementalEvent, BLCKSZ};
use pgclone_proto::replication::{parse_copy_both, ReceiverConfig, WalReceiver};
use pgclone_proto::tar::{TarEvent, TarSplitter};
use pgclone_proto::{Lsn, ProtocolError, TimelineId, WalSegSize};

/// Where the fuzzed WAL receiver starts (segment 1 of 1 MiB segments).
pub const WAL_START: u64 = 1 << 20;
/// Where it is told to stop.
pub const WAL_STOP: u64 = WAL_START + 256;

/// Decodes `bytes` fed in chunks of `chunk` bytes (all at once if 0) until `None` or an error.
pub fn decode_all(bytes: &[u8], chunk: usize) -> (Vec<BackendMessage>, Option<ProtocolError>) {
    let chunk = if chunk == 0 {
        bytes.len().max(1)
    } else {
        chunk
    };
    let mut buf = BytesMut::new();
    let mut msgs = Vec::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf, DEFAULT_MAX_MESSAGE_LEN) {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(e) => return (msgs, Some(e)),
            }
        }
    }
    (msgs, None)
}

/// `backend_decode`: decodes the bytes, whole and split into chunks (size from the first
/// byte), and asserts both give the same messages and the same error.
pub fn backend_decode(data: &[u8]) {
    let whole = decode_all(data, 0);
    let chunk = usize::from(data.first().copied().unwrap_or(0) % 64) + 1;
    assert_eq!(
        whole,
        decode_all(data, chunk),
        "chunking changed the result"
    );
}

/// `basebackup_*`: decodes messages, feeds them to a [`BaseBackupDecoder`] and the archive
/// bytes to a [`TarSplitter`], as pgclone does; stops at the first error. Asserts that the
/// decoder's events come in a consistent order.
pub fn basebackup(data: &[u8], dialect: Dialect) {
    let mut buf = BytesMut::from(data);
    let mut decoder = BaseBackupDecoder::new(dialect);
    let mut tar = TarSplitter::new();
    let (mut tablespaces, mut in_archive, mut in_manifest) = (None, false, false);
    while let Ok(Some(msg)) = decode(&mut buf, DEFAULT_MAX_MESSAGE_LEN) {
        if decoder.handle_message(msg).is_err() {
            return;
        }
        while let Some(event) = decoder.poll_event() {
            match event {
                BackupEvent::Tablespaces(list) => {
                    assert!(tablespaces.is_none(), "tablespace list twice");
                    tablespaces = Some(list.len());
                }
                BackupEvent::ArchiveStart(info) => {
                    assert!(
                        !in_archive && !in_manifest,
                        "archive inside archive/manifest"
                    );
                    assert!(
                        info.tablespace < tablespaces.unwrap_or(0),
                        "bad tablespace index"
                    );
                    in_archive = true;
                    tar = TarSplitter::new();
                }
                BackupEvent::ArchiveData(bytes) => {
                    assert!(in_archive, "archive data outside an archive");
                    if tar.handle_data(bytes).is_err() {
                        return;
                    }
                    while tar.poll_event().is_some() {}
                }
                BackupEvent::ArchiveEnd => {
                    assert!(in_archive, "archive end outside an archive");
                    in_archive = false;
                    if tar.finish().is_err() {
                        return;
                    }
                }
                BackupEvent::ManifestStart => {
                    assert!(
                        !in_archive && !in_manifest,
                        "manifest inside archive/manifest"
                    );
                    in_manifest = true;
                }
                BackupEvent::ManifestData(_) => assert!(in_manifest, "manifest data outside"),
                BackupEvent::ManifestEnd => {
                    assert!(in_manifest, "manifest end outside the manifest");
                    in_manifest = false;
                }
                _ => {}
            }
        }
    }
}

/// `replication_message`: parses the bytes as one CopyBoth payload, then decodes them as
/// messages and drives a [`WalReceiver`] with them, draining everything it offers after each
/// message as pgclone's WAL task does. Asserts that written WAL is contiguous and that no
/// per-segment piece crosses a segment boundary.
pub fn replication(data: &[u8]) {
    let _ = parse_copy_both(Bytes::copy_from_slice(data));
    let seg = WalSegSize::from_bytes(1 << 20).expect("1 MiB is a valid segment size");
    let t0 = Instant::now();
    let config = ReceiverConfig::default();
    let mut rx = WalReceiver::new(Lsn(WAL_START), TimelineId(1), seg, config, t0);
    rx.stop_at(Lsn(WAL_STOP));
    let mut buf = BytesMut::from(data);
    let mut out = BytesMut::new();
    let mut expect = Lsn(WAL_START);
    for i in 0u64.. {
        let now = t0 + Duration::from_secs(i);
        let Ok(Some(msg)) = decode(&mut buf, DEFAULT_MAX_MESSAGE_LEN) else {
            return;
        };
        if rx.handle_message(now, msg).is_err() || rx.poll_server_error().is_some() {
            return;
        }
        while let Some(chunk) = rx.poll_write() {
            assert_eq!(
                chunk.start, expect,
                "WAL chunk does not continue the last one"
            );
            expect = chunk.end();
            let mut joined = Vec::new();
            for (segno, offset, piece) in chunk.clone().split_at_segments(seg) {
                assert!(!piece.is_empty(), "empty piece");
                assert!(
                    offset + piece.len() as u64 <= u64::from(seg.bytes()),
                    "crosses"
                );
                assert_eq!(Lsn(chunk.start.0 + joined.len() as u64).segment(seg), segno);
                joined.extend_from_slice(&piece);
            }
            assert_eq!(joined, chunk.data, "pieces do not add up to the chunk");
            rx.handle_flushed(chunk.end());
        }
        assert!(rx.written() >= rx.flushed(), "flushed past written");
        rx.handle_timeout(now);
        let _ = rx.poll_transmit(0, &mut out);
        if rx.is_done() {
            let _ = rx.poll_timeline_switch();
            return;
        }
    }
}

/// `incremental_member`: the bytes after the first two as one `INCREMENTAL.<relfile>` member,
/// fed in chunks of 1 + the first byte, its size told to the decoder when the second byte is
/// odd. Whatever the input, the decoder returns a typed error or events that agree with the
/// header: one header first, then whole blocks in the header's strictly increasing order, as
/// many bytes as the header implies; the reconstruction plan never keeps more of the prior file
/// than the result holds.
pub fn incremental_member(data: &[u8]) {
    let [chunk, sized, body @ ..] = data else {
        return;
    };
    let mut decoder = if sized & 1 == 1 {
        IncrementalDecoder::with_member_size(body.len() as u64)
    } else {
        IncrementalDecoder::new()
    };
    let mut header = None;
    let mut blocks = Vec::new();
    let mut drain = |decoder: &mut IncrementalDecoder| {
        while let Some(event) = decoder.poll_event() {
            match event {
                IncrementalEvent::Header(h) => {
                    assert!(header.is_none(), "a second header");
                    header = Some(h);
                }
                IncrementalEvent::Block { number, data } => {
                    assert!(header.is_some(), "a block before the header");
                    assert_eq!(data.len(), BLCKSZ, "a partial block");
                    blocks.push(number);
                }
            }
        }
    };
    for piece in body.chunks(usize::from(*chunk) + 1) {
        if decoder.handle_data(Bytes::copy_from_slice(piece)).is_err() {
            return;
        }
        drain(&mut decoder);
    }
    let finished = decoder.finish();
    drain(&mut decoder);
    if finished.is_err() {
        return;
    }
    let header = header.expect("a complete member has a header");
    assert_eq!(blocks, header.blocks, "blocks out of the header's order");
    assert!(header.blocks.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(header.member_len(), body.len() as u64, "member length");
    for prior in [None, Some(0), Some(body.len() as u64 * 2 + 5)] {
        if let Ok(plan) = header.plan(prior) {
            assert!(plan.keep_len() <= plan.final_len, "{plan:?}");
        }
    }
}

/// `tar_path_policy`: the member-name policy on the bytes as a name (an accepted name is a
/// relative path of normal components without NUL), then the bytes as an archive, whole and
/// in chunks, with the same events; every member name goes through the policy too.
pub fn tar_path_policy(data: &[u8]) {
    check_member_path(data);
    let whole = split_tar(data, 0);
    let chunk = usize::from(data.first().copied().unwrap_or(0)) * 3 + 1;
    assert_eq!(
        whole,
        split_tar(data, chunk),
        "chunking changed the tar events"
    );
    for event in whole.0 {
        if let TarEvent::Member(m) = event {
            check_member_path(&m.name);
        }
    }
}

fn check_member_path(name: &[u8]) {
    if let Ok(path) = pgclone::sink::plain::path::member_path(name) {
        assert!(path.is_relative(), "accepted an absolute path: {path:?}");
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "accepted a path with a root, `.` or `..` component: {path:?}"
        );
        assert!(!path.as_os_str().as_bytes().contains(&0), "NUL in {path:?}");
        assert!(!path.as_os_str().is_empty(), "accepted an empty path");
    }
}

/// Splits an archive fed in chunks of `chunk` bytes (all at once if 0), with adjacent data
/// events merged; the error, if any, ends it (including the one from `finish`).
pub fn split_tar(bytes: &[u8], chunk: usize) -> (Vec<TarEvent>, Option<String>) {
    let chunk = if chunk == 0 {
        bytes.len().max(1)
    } else {
        chunk
    };
    let mut tar = TarSplitter::new();
    let mut events: Vec<TarEvent> = Vec::new();
    let push = |events: &mut Vec<TarEvent>, e| match (events.last_mut(), e) {
        (Some(TarEvent::Data(prev)), TarEvent::Data(d)) => {
            let mut v = prev.to_vec();
            v.extend_from_slice(&d);
            *prev = Bytes::from(v);
        }
        (_, e) => events.push(e),
    };
    for piece in bytes.chunks(chunk) {
        let res = tar.handle_data(Bytes::copy_from_slice(piece));
        while let Some(e) = tar.poll_event() {
            push(&mut events, e);
        }
        if let Err(e) = res {
            return (events, Some(e.to_string()));
        }
    }
    (events, tar.finish().err().map(|e| e.to_string()))
}
