//! Builds the seed corpus `fuzz/corpus/<target>/` from the recorded server streams in
//! `fixtures/` (or into the directory given as the one argument).
//!
//! Run by `scripts/fuzz --seeds`; the output is deterministic, so the committed seeds can be
//! rebuilt and compared. Messages are framed with `pgclone_proto::testutil`, the builders the
//! tests use. Seeds are small (the whole corpus stays well under 2 MB):
//!
//! - backend_decode: each stream's first 64 KiB and its protocol-dense parts (startup and the
//!   queries before BASE_BACKUP, the end of the BASE_BACKUP response), cut at message boundaries;
//! - basebackup_legacy (10, 14) / basebackup_options (17): the BASE_BACKUP response's first
//!   64 KiB, the whole response with each archive cut to its first members (at a member
//!   boundary, re-chunked into CopyData, terminated again for 15+) and the manifest cut short,
//!   and a response that fails with an ErrorResponse;
//! - replication_message: hand-built CopyBoth payloads and START_REPLICATION streams (no WAL
//!   stream is recorded), for the receiver the target builds (start 0/100000, 1 MiB segments,
//!   stop point 0/100100);
//! - tar_path_policy: member names, and the first members of the 10 and 17 base archives;
//! - incremental_member: hand-built members (none, one and three blocks, a cut one), each
//!   behind the two control bytes (chunk size, member size told).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use pgclone_fuzz::WAL_START;
use pgclone_proto::testutil::{
    command_complete, copy_both, copy_data, copy_done, data_row, error_fields, incremental_member,
    keepalive, ready_for_query, row_description, xlog_data,
};

const HEAD: usize = 64 * 1024;
const ARCHIVE_BUDGET: usize = 24 * 1024;
const MANIFEST_BUDGET: usize = 1024;
const CHUNK: usize = 8192;
const BLOCK: usize = 512;

/// One message of a recorded stream: its tag, its body and all its bytes.
#[derive(Clone, Copy)]
struct Msg<'a> {
    tag: u8,
    body: &'a [u8],
    raw: &'a [u8],
}

fn be_u32(bytes: &[u8]) -> usize {
    u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize
}

/// The stream cut into messages; a trailing partial message is dropped.
fn messages(stream: &[u8]) -> Vec<Msg<'_>> {
    let (mut out, mut i) = (Vec::new(), 0);
    while i + 5 <= stream.len() {
        let end = i + 1 + be_u32(&stream[i + 1..]);
        if end > stream.len() {
            break;
        }
        out.push(Msg {
            tag: stream[i],
            body: &stream[i + 5..end],
            raw: &stream[i..end],
        });
        i = end;
    }
    out
}

fn join(msgs: &[Msg<'_>]) -> Vec<u8> {
    msgs.iter().flat_map(|m| m.raw.iter().copied()).collect()
}

/// Whole messages from the front, at most `limit` bytes.
fn head(msgs: &[Msg<'_>], limit: usize) -> Vec<u8> {
    let mut size = 0;
    let whole = msgs
        .iter()
        .take_while(|m| {
            size += m.raw.len();
            size <= limit
        })
        .count();
    join(&msgs[..whole])
}

/// How many Query messages the client sent after its startup packet.
fn query_count(client: &[u8]) -> usize {
    let startup = be_u32(client);
    messages(&client[startup..])
        .iter()
        .filter(|m| m.tag == b'Q')
        .count()
}

/// The largest offset <= `budget` where a member header starts (or the archive ends).
fn member_boundary(tar: &[u8], budget: usize) -> usize {
    let (mut best, mut off) = (0, 0);
    while off + BLOCK <= tar.len() && off <= budget {
        let block = &tar[off..off + BLOCK];
        if block.iter().all(|&b| b == 0) {
            break;
        }
        best = off;
        let field = std::str::from_utf8(&block[124..136]).expect("ASCII size field");
        let digits = field.trim_end_matches(['\0', ' ']).trim();
        let size = if digits.is_empty() {
            0
        } else {
            usize::from_str_radix(digits, 8).expect("octal size")
        };
        off += BLOCK + size.next_multiple_of(BLOCK);
    }
    if off <= budget {
        best = off.min(tar.len());
    }
    best
}

/// `data` as CopyData messages of at most [`CHUNK`] bytes, each payload after `prefix`.
fn chunked(data: &[u8], prefix: &[u8]) -> Vec<u8> {
    data.chunks(CHUNK)
        .flat_map(|c| copy_data(&[prefix, c].concat()))
        .collect()
}

/// The payloads of the CopyData messages from `resp[*i]` on whose first byte is in `kinds`
/// (all of them if `kinds` is empty), without that byte unless `kinds` is empty; advances
/// `*i` past them and keeps the bytes of those whose first byte is `keep` (any if 0).
fn collect_copy(resp: &[Msg<'_>], i: &mut usize, kinds: &[u8], keep: u8) -> Vec<u8> {
    let mut data = Vec::new();
    while let Some(m) = resp.get(*i).filter(|m| m.tag == b'd') {
        if kinds.is_empty() {
            data.extend_from_slice(m.body);
        } else {
            match m.body.first() {
                Some(k) if kinds.contains(k) => {
                    if keep == 0 || *k == keep {
                        data.extend_from_slice(&m.body[1..]);
                    }
                }
                _ => break,
            }
        }
        *i += 1;
    }
    data
}

/// The 10-14 response with the (single) archive cut at a member boundary, the manifest cut.
fn compact_legacy(resp: &[Msg<'_>]) -> Vec<u8> {
    let (mut out, mut i, mut copies) = (Vec::new(), 0, 0);
    while i < resp.len() {
        out.extend_from_slice(resp[i].raw);
        i += 1;
        if resp[i - 1].tag != b'H' {
            continue;
        }
        let data = collect_copy(resp, &mut i, &[], 0);
        // The first copy is the base archive (the fixtures have no tablespaces).
        let cut = if copies == 0 {
            member_boundary(&data, ARCHIVE_BUDGET)
        } else {
            MANIFEST_BUDGET.min(data.len())
        };
        out.extend(chunked(&data[..cut], b""));
        copies += 1;
    }
    out
}

/// The 15+ response: the archive cut at a member boundary and terminated, the manifest cut.
fn compact_options(resp: &[Msg<'_>]) -> Vec<u8> {
    let (mut out, mut i) = (Vec::new(), 0);
    while i < resp.len() {
        let m = resp[i];
        i += 1;
        out.extend_from_slice(m.raw);
        match (m.tag, m.body.first()) {
            (b'd', Some(b'n')) => {
                let data = collect_copy(resp, &mut i, b"dp", b'd');
                let mut cut = data[..member_boundary(&data, ARCHIVE_BUDGET)].to_vec();
                cut.resize(cut.len() + 2 * BLOCK, 0);
                out.extend(chunked(&cut, b"d"));
            }
            (b'd', Some(b'm')) => {
                let data = collect_copy(resp, &mut i, b"d", b'd');
                out.extend(chunked(&data[..MANIFEST_BUDGET.min(data.len())], b"d"));
            }
            _ => {}
        }
    }
    out
}

/// The start position, then an ErrorResponse and ReadyForQuery.
fn failing(resp: &[Msg<'_>]) -> Vec<u8> {
    let first_c = resp
        .iter()
        .position(|m| m.tag == b'C')
        .expect("a CommandComplete");
    let mut out = join(&resp[..=first_c]);
    out.extend(error_fields(
        b'E',
        &[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "58P01"),
            (b'M', "could not open file \"x\""),
        ],
    ));
    out.extend(ready_for_query(b'I'));
    out
}

/// The first members of the base archive, terminated.
fn archive_head(resp: &[Msg<'_>], options: bool, budget: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for m in resp.iter().filter(|m| m.tag == b'd') {
        if !options {
            data.extend_from_slice(m.body);
        } else if m.body.first() == Some(&b'd') {
            data.extend_from_slice(&m.body[1..]);
        } else {
            continue;
        }
        if data.len() > 4 * budget {
            break;
        }
    }
    let mut out = data[..member_boundary(&data, budget)].to_vec();
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

fn replication_seeds() -> BTreeMap<String, Vec<u8>> {
    let wal: Vec<u8> = (0..512).map(|i| (i % 256) as u8).collect();
    let end = [command_complete("START_STREAMING"), ready_for_query(b'I')].concat();
    let xlog = |start: u64, len: usize| copy_data(&xlog_data(start, &wal[..len]));
    let seeds = [
        ("payload-xlogdata", xlog_data(WAL_START, &wal[..64])),
        ("payload-keepalive", keepalive(WAL_START + 64, true)),
        (
            "stream-to-stop-point",
            [
                copy_both(),
                xlog(WAL_START, 200),
                copy_data(&keepalive(WAL_START + 200, true)),
                xlog(WAL_START + 200, 100),
                xlog(WAL_START + 300, 100),
                copy_done(),
                end.clone(),
            ]
            .concat(),
        ),
        (
            "stream-timeline-switch",
            [
                copy_both(),
                xlog(WAL_START, 100),
                copy_done(),
                row_description(&["next_tli", "next_tli_startpos"]),
                data_row(&[Some("2"), Some("0/100050")]),
                command_complete("SELECT"),
                end.clone(),
            ]
            .concat(),
        ),
        (
            "stream-server-error",
            [
                copy_both(),
                xlog(WAL_START, 32),
                error_fields(
                    b'E',
                    &[
                        (b'S', "FATAL"),
                        (b'V', "FATAL"),
                        (b'C', "57P01"),
                        (b'M', "terminating connection"),
                    ],
                ),
                ready_for_query(b'I'),
            ]
            .concat(),
        ),
    ];
    seeds.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let gz = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .expect("gunzip fixture");
    out
}

type Corpus = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

/// The seeds from one recorded major.
fn fixture_seeds(root: &Path, major: u32, seeds: &mut Corpus) {
    let fixture = root.join(format!("fixtures/pg{major}"));
    let server = gunzip(&fixture.join("backup.server.bin.gz"));
    let client = gunzip(&fixture.join("backup.client.bin.gz"));
    let msgs = messages(&server);
    // The BASE_BACKUP response starts after the ReadyForQuery that ends the query before it
    // (the first one ends the startup).
    let ready: Vec<usize> = (0..msgs.len()).filter(|&k| msgs[k].tag == b'Z').collect();
    let resp = &msgs[ready[query_count(&client) - 1] + 1..];
    let options = major >= 15;
    let last_copy = resp.iter().rposition(|m| m.tag == b'd').expect("CopyData");

    let mut add = |target: &'static str, name: &str, data: Vec<u8>| {
        let files = seeds.entry(target).or_default();
        files.insert(format!("pg{major}-{name}"), data);
    };
    add("backend_decode", "head", head(&msgs, HEAD));
    let before = join(&msgs[..msgs.len() - resp.len()]);
    add("backend_decode", "before-base-backup", before);
    add("backend_decode", "response-end", join(&resp[last_copy..]));
    let target = if options {
        "basebackup_options"
    } else {
        "basebackup_legacy"
    };
    add(target, "response-head", head(resp, HEAD));
    let compact = if options {
        compact_options(resp)
    } else {
        compact_legacy(resp)
    };
    add(target, "response-compact", compact);
    add(target, "response-error", failing(resp));
    if major == 10 || major == 17 {
        add(
            "tar_path_policy",
            "archive-head",
            archive_head(resp, options, 8192),
        );
    }
}

/// INCREMENTAL members built like the server's, behind the harness's two control bytes.
fn incremental_seeds() -> BTreeMap<String, Vec<u8>> {
    let block = |fill: u8| vec![fill; 8192];
    let members = [
        ("empty", incremental_member(7, &[])),
        ("one-block", incremental_member(3, &[(1, block(0xaa))])),
        (
            "three-blocks",
            incremental_member(10, &[(0, block(1)), (4, block(2)), (12, block(3))]),
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, member) in members {
        let cut = member[..member.len() / 2].to_vec();
        for (control, suffix) in [([0u8, 1u8], ""), ([200, 0], "-chunked")] {
            out.insert(format!("{name}{suffix}"), [&control[..], &member].concat());
        }
        out.insert(format!("{name}-cut"), [&[63u8, 1][..], &cut].concat());
    }
    out
}

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz.parent().expect("the repository holds fuzz/");
    let corpus = std::env::args_os()
        .nth(1)
        .map_or_else(|| fuzz.join("corpus"), PathBuf::from);
    let mut seeds = Corpus::new();
    for major in [10, 14, 17] {
        fixture_seeds(root, major, &mut seeds);
    }
    seeds.insert("replication_message", replication_seeds());
    seeds.insert("incremental_member", incremental_seeds());
    let names: [&[u8]; 8] = [
        b"backup_label",
        b"./pg_wal/archive_status/",
        b"pg_tblspc/16388/",
        b"base/1/1259",
        b"a//./b",
        b"../etc",
        b"/etc/passwd",
        b"a/..",
    ];
    let policy = seeds.entry("tar_path_policy").or_default();
    for (k, name) in names.iter().enumerate() {
        policy.insert(format!("name-{k}"), name.to_vec());
    }

    let mut total = 0;
    for (target, files) in &seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (name, data) in files {
            std::fs::write(dir.join(name), data).expect("write seed");
        }
        let bytes: usize = files.values().map(Vec::len).sum();
        println!("{target}: {} seeds, {bytes} bytes", files.len());
        total += bytes;
    }
    println!("total {total} bytes in {}", corpus.display());
}
