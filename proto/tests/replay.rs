//! Offline replay of byte streams recorded from real servers (see `fixtures/README.md`):
//! PostgreSQL 10 and 14 (legacy BASE_BACKUP) and 17 (the 15+ protocol).
//!
//! Each stream is decoded whole, byte by byte, and in seeded random chunkings, with identical
//! results; the framing layer is also checked at every two-part split of the protocol-dense
//! start and end of each stream. Corrupted copies give typed errors, never a panic.

use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;

use bytes::BytesMut;
use pgclone_proto::backend::{self, BackendMessage, DEFAULT_MAX_MESSAGE_LEN};
use pgclone_proto::basebackup::{BackupEvent, BaseBackupDecoder, Dialect};
use pgclone_proto::query::{QueryStatus, SimpleQuery};
use pgclone_proto::startup::{Startup, StartupStatus};
use pgclone_proto::tar::{TarEvent, TarSplitter};
use pgclone_proto::{ProtocolError, ServerVersion};

fn fixture(major: u32, side: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../fixtures/pg{major}/backup.{side}.bin.gz"));
    let gz = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .expect("gunzip fixture");
    out
}

/// The SQL of every Query message the client sent, in order.
fn client_queries(client: &[u8]) -> Vec<String> {
    let startup_len = u32::from_be_bytes(client[..4].try_into().expect("len")) as usize;
    let mut rest = &client[startup_len..];
    let mut queries = Vec::new();
    while rest.len() >= 5 {
        let tag = rest[0];
        let len = u32::from_be_bytes(rest[1..5].try_into().expect("len")) as usize;
        let body = &rest[5..1 + len];
        if tag == b'Q' {
            queries.push(String::from_utf8(body[..body.len() - 1].to_vec()).expect("utf8"));
        }
        rest = &rest[1 + len..];
    }
    queries
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

enum Phase {
    Startup(Box<Startup>),
    Query(String, SimpleQuery),
    Backup(BaseBackupDecoder),
    Idle,
}

/// Drives the client state machines over a server stream and summarizes what they saw.
struct Replay {
    phase: Phase,
    queries: VecDeque<String>,
    version: Option<ServerVersion>,
    summary: Vec<String>,
    tar: Option<(String, TarSplitter, u64, u64, Vec<String>)>,
    manifest: Option<Vec<u8>>,
}

impl Replay {
    fn new(queries: Vec<String>) -> Self {
        let mut out = BytesMut::new();
        let startup = Startup::new(
            &[
                ("user", "postgres"),
                ("database", "replication"),
                ("replication", "true"),
            ],
            None,
            &mut out,
        )
        .expect("startup");
        Self {
            phase: Phase::Startup(Box::new(startup)),
            queries: queries.into(),
            version: None,
            summary: Vec::new(),
            tar: None,
            manifest: None,
        }
    }

    fn next_query(&mut self) {
        self.phase = match self.queries.pop_front() {
            None => Phase::Idle,
            Some(sql) if sql.starts_with("BASE_BACKUP") => {
                let version = self.version.expect("version known");
                Phase::Backup(BaseBackupDecoder::new(Dialect::for_version(version)))
            }
            Some(sql) => Phase::Query(sql, SimpleQuery::new("replay")),
        };
    }

    fn handle(&mut self, msg: BackendMessage) -> Result<(), ProtocolError> {
        if let BackendMessage::NoticeResponse(n) = &msg {
            self.summary.push(format!("notice {}", n.message));
            return Ok(());
        }
        match &mut self.phase {
            Phase::Startup(s) => {
                let mut out = BytesMut::new();
                let status = s.handle_message(msg, &mut out).map_err(|e| match e {
                    pgclone_proto::startup::StartupError::Protocol(p) => p,
                    other => panic!("startup failed: {other}"),
                })?;
                if status == StartupStatus::Ready {
                    let v = s
                        .parameters()
                        .get("server_version")
                        .expect("server_version");
                    self.version = Some(ServerVersion::parse(v)?);
                    self.summary.push(format!("ready {v}"));
                    self.next_query();
                }
            }
            Phase::Query(sql, q) => {
                if q.handle_message(msg)? == QueryStatus::Done {
                    let sql = sql.clone();
                    let q = std::mem::replace(q, SimpleQuery::new("replay"));
                    let sets = q.finish().expect("query succeeded");
                    let rows: usize = sets.iter().map(|s| s.rows.len()).sum();
                    self.summary.push(format!("{sql}: {rows} rows"));
                    self.next_query();
                }
            }
            Phase::Backup(d) => {
                d.handle_message(msg)?;
                let mut events = Vec::new();
                while let Some(e) = d.poll_event() {
                    events.push(e);
                }
                let done = d.is_done();
                for e in events {
                    self.on_backup_event(e);
                }
                if done {
                    self.next_query();
                }
            }
            Phase::Idle => panic!("message after the session: {msg:?}"),
        }
        Ok(())
    }

    fn on_backup_event(&mut self, e: BackupEvent) {
        match e {
            BackupEvent::ArchiveStart(a) => {
                self.summary.push(format!(
                    "archive {} (terminated: {})",
                    a.name, a.server_terminated
                ));
                self.tar = Some((
                    a.name,
                    TarSplitter::new(),
                    0,
                    0xcbf2_9ce4_8422_2325,
                    Vec::new(),
                ));
            }
            BackupEvent::ArchiveData(data) => {
                let (_, splitter, bytes, hash, members) = self.tar.as_mut().expect("in archive");
                *bytes += data.len() as u64;
                fnv(hash, &data);
                splitter.handle_data(data).expect("tar parses");
                while let Some(ev) = splitter.poll_event() {
                    if let TarEvent::Member(m) = ev {
                        members.push(String::from_utf8_lossy(&m.name).into_owned());
                    }
                }
            }
            BackupEvent::ArchiveEnd => {
                let (name, mut splitter, bytes, hash, members) =
                    self.tar.take().expect("in archive");
                splitter.finish().expect("tar complete");
                for must in ["backup_label", "global/pg_control", "PG_VERSION"] {
                    assert!(members.iter().any(|m| m == must), "{name} lacks {must}");
                }
                self.summary.push(format!(
                    "end {name}: {bytes} bytes, hash {hash:x}, {} members",
                    members.len()
                ));
            }
            BackupEvent::ManifestStart => self.manifest = Some(Vec::new()),
            BackupEvent::ManifestData(d) => self
                .manifest
                .as_mut()
                .expect("manifest")
                .extend_from_slice(&d),
            BackupEvent::ManifestEnd => {
                let m = self.manifest.take().expect("manifest");
                let text = String::from_utf8(m).expect("manifest is UTF-8");
                assert!(
                    text.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\""),
                    "{}",
                    &text[..60]
                );
                assert!(text.contains("\"Manifest-Checksum\""));
                self.summary.push(format!("manifest {} bytes", text.len()));
            }
            BackupEvent::Progress(_) => {}
            other => self.summary.push(format!("{other:?}")),
        }
    }
}

/// Feeds the stream in the given chunks; returns the summary.
fn replay(major: u32, chunks: &[&[u8]]) -> Result<Vec<String>, ProtocolError> {
    let queries = client_queries(&fixture(major, "client"));
    let mut r = Replay::new(queries);
    let mut buf = BytesMut::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(msg) = backend::decode(&mut buf, DEFAULT_MAX_MESSAGE_LEN)? {
            r.handle(msg)?;
        }
    }
    if !buf.is_empty() {
        return Err(ProtocolError::Truncated("stream"));
    }
    assert!(matches!(r.phase, Phase::Idle), "the session did not finish");
    Ok(r.summary)
}

/// Byte offsets of message boundaries in a whole stream.
fn boundaries(stream: &[u8]) -> Vec<usize> {
    let mut offsets = vec![0];
    let mut buf = BytesMut::from(stream);
    while backend::decode(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .expect("decodes")
        .is_some()
    {
        offsets.push(stream.len() - buf.len());
    }
    offsets
}

fn framing(chunks: &[&[u8]]) -> Vec<BackendMessage> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        while let Some(m) = backend::decode(&mut buf, DEFAULT_MAX_MESSAGE_LEN).expect("decodes") {
            out.push(m);
        }
    }
    assert!(buf.is_empty());
    out
}

fn check_fixture(major: u32, legacy: bool) {
    let stream = fixture(major, "server");
    let whole = replay(major, &[&stream]).expect("whole stream decodes");
    let text = whole.join("\n");
    assert!(text.contains("Started"), "{text}");
    assert!(
        text.contains(&format!("archive base.tar (terminated: {})", !legacy)),
        "{text}"
    );
    assert!(text.contains("Ended"), "{text}");
    assert!(text.ends_with("Complete"), "{text}");
    assert_eq!(text.contains("manifest "), major >= 13, "{text}");

    // Byte by byte.
    let singles: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(replay(major, &singles).expect("byte by byte"), whole);

    // Seeded random chunk sizes, from 1 byte to 100 kB.
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ u64::from(major);
    for _ in 0..3 {
        let mut chunks = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (1 + (seed % 100_000) as usize).min(rest.len());
            let (a, b) = rest.split_at(n);
            chunks.push(a);
            rest = b;
        }
        assert_eq!(replay(major, &chunks).expect("random chunks"), whole);
    }

    // Framing at every two-part split of the dense head and tail of the stream.
    let offsets = boundaries(&stream);
    let head_end = offsets
        .windows(2)
        .find(|w| w[1] - w[0] > 2048)
        .map(|w| w[0])
        .expect("a large message");
    let tail_start = offsets
        .windows(2)
        .rev()
        .find(|w| w[1] - w[0] > 2048)
        .map(|w| w[1])
        .expect("a large message");
    for (lo, hi) in [(0, head_end), (tail_start, stream.len())] {
        let window = &stream[lo..hi];
        let reference = framing(&[window]);
        assert!(reference.len() >= 3, "window {lo}..{hi}");
        for cut in 0..=window.len() {
            let (a, b) = window.split_at(cut);
            assert_eq!(framing(&[a, b]), reference, "cut at {}", lo + cut);
        }
    }
}

#[test]
fn pg10_legacy_stream_replays_identically_however_split() {
    check_fixture(10, true);
}

#[test]
fn pg14_legacy_stream_with_manifest_replays_identically_however_split() {
    check_fixture(14, true);
}

#[test]
fn pg17_stream_replays_identically_however_split() {
    check_fixture(17, false);
}

#[test]
fn truncated_and_corrupted_streams_give_typed_errors() {
    let stream = fixture(17, "server");
    let offsets = boundaries(&stream);
    // Truncated in the middle of a message: leftover bytes, reported as truncation.
    for &cut in &[
        offsets[3] + 2,
        offsets[offsets.len() / 2] + 7,
        stream.len() - 1,
    ] {
        assert_eq!(
            replay(17, &[&stream[..cut]]),
            Err(ProtocolError::Truncated("stream")),
            "cut at {cut}"
        );
    }
    // An absurd length in the middle of the stream.
    let mut absurd = stream.clone();
    let at = offsets[offsets.len() / 2];
    absurd[at + 1..at + 5].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    assert!(matches!(
        replay(17, &[&absurd]),
        Err(ProtocolError::TooLarge { .. })
    ));
    // A length below the minimum.
    let mut tiny = stream.clone();
    tiny[at + 1..at + 5].copy_from_slice(&2u32.to_be_bytes());
    assert!(matches!(
        replay(17, &[&tiny]),
        Err(ProtocolError::BadLength { .. })
    ));
    // An unknown message type.
    let mut unknown = stream.clone();
    unknown[at] = b'~';
    assert_eq!(
        replay(17, &[&unknown]),
        Err(ProtocolError::UnknownMessage('~'))
    );
    // A CopyData type byte the 15+ protocol does not have.
    let copy_at = offsets
        .windows(2)
        .find(|w| stream[w[0]] == b'd' && w[1] - w[0] > 2048)
        .map(|w| w[0])
        .expect("a CopyData");
    let mut bad_type = stream.clone();
    bad_type[copy_at + 5] = b'z';
    assert!(matches!(
        replay(17, &[&bad_type]),
        Err(ProtocolError::BadValue { .. })
    ));
    // CopyData outside COPY: drop the CopyOutResponse.
    let copy_out = offsets
        .windows(2)
        .find(|w| stream[w[0]] == b'H')
        .expect("CopyOutResponse");
    let mut no_copy_out = stream[..copy_out[0]].to_vec();
    no_copy_out.extend_from_slice(&stream[copy_out[1]..]);
    assert!(matches!(
        replay(17, &[&no_copy_out]),
        Err(ProtocolError::UnexpectedMessage {
            got: "CopyData",
            ..
        })
    ));
}
