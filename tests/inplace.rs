//! The in-place writer (`sink::inplace`) against PostgreSQL's own reconstruction, on real 17
//! and 18 servers with `summarize_wal = on` and data checksums.
//!
//! A full backup and an incremental one are taken with the real `pg_basebackup` after updates,
//! an extension, a new table, a dropped table, a TRUNCATE and a VACUUM that shrinks a table; the
//! real `pg_combinebackup` merges them into `combined`. A copy of the full backup (`applied`)
//! then gets the incremental backup's files pushed through the in-place writer as the base
//! archive, the way the backup task feeds it. Every file of `combined` must be in `applied`
//! with the same bytes, and `applied` must hold nothing else, except:
//! - `backup_label`: `pg_combinebackup` writes it without the `INCREMENTAL FROM LSN:` and
//!   `INCREMENTAL FROM TLI:` lines; the in-place writer leaves that to its caller, so the two
//!   must be equal once those lines are dropped;
//! - `backup_manifest`: `pg_combinebackup` writes a new one; the in-place writer keeps the old
//!   one (its caller writes the directory's manifest);
//! - `pg_wal/`: not part of the archive (the WAL stage's): `combined` holds the incremental
//!   backup's WAL, `applied` keeps the full backup's.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pgclone::sink::inplace::{Applier, KeepList, Layout};
use pgclone::sink::{ArchiveRoot, Chunk};
use pgclone_proto::incremental::{
    relation_file_name, IncrementalDecoder, IncrementalEvent, BLCKSZ,
};
use pgclone_proto::tar::MemberKind;
use pgclone_proto::testutil;
use support::{as_pg_user, checked_output, tools_bin, Cluster, ClusterOptions, TestDir};

fn primary(major: u32) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    opts.checksums = true;
    opts.conf = vec!["summarize_wal = on".into()];
    Cluster::start(&opts)
}

/// The real pg_basebackup of `major` into `dest`, with `extra` arguments.
fn pg_basebackup(p: &Cluster, dest: &Path, extra: &[&str]) {
    let mut cmd = as_pg_user(tools_bin(p.major).join("pg_basebackup"));
    cmd.arg("-h")
        .arg(&p.socket_dir)
        .args([
            "-p",
            &p.port.to_string(),
            "-U",
            "postgres",
            "-c",
            "fast",
            "-D",
        ])
        .arg(dest)
        .args(extra);
    checked_output(&mut cmd, "pg_basebackup");
}

/// Every entry under `root` (relative path → contents; `None` for directories).
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel)).expect("read_dir") {
            let entry = entry.expect("entry");
            let child = rel.join(entry.file_name());
            let kind = entry.file_type().expect("type");
            if kind.is_dir() {
                stack.push(child.clone());
                out.insert(child, None);
            } else {
                out.insert(child, Some(fs::read(entry.path()).expect("read")));
            }
        }
    }
    out
}

/// The incremental backup's directory as the server's base archive: every directory and file
/// except `backup_manifest` (sent apart) and `pg_wal`'s files (streamed apart), with
/// `global/pg_control` last.
fn base_archive(inc: &Path) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut incremental = 0;
    let mut control = None;
    for (rel, contents) in tree(inc) {
        let name = rel.to_str().expect("utf8").to_owned();
        let mode = fs::metadata(inc.join(&rel))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        let member = match &contents {
            None => (format!("{name}/"), MemberKind::Directory),
            Some(_) if name == "backup_manifest" => continue,
            Some(_) if name.starts_with("pg_wal/") => continue,
            Some(_) => (name.clone(), MemberKind::File),
        };
        incremental += usize::from(name.contains("/INCREMENTAL."));
        let bytes = contents.as_deref().unwrap_or_default();
        if name == "global/pg_control" {
            control = Some((bytes.to_vec(), mode));
            continue;
        }
        testutil::append_member(&mut out, &(&member.0, member.1, bytes, None), mode, 0);
    }
    let (bytes, mode) = control.expect("pg_control");
    testutil::append_member(
        &mut out,
        &("global/pg_control", MemberKind::File, &bytes, None),
        mode,
        0,
    );
    testutil::terminate(&mut out);
    (out, incremental)
}

/// Applies `archive` onto `dest` as the backup task would: base archive in 64 kB pieces, then
/// stale files removed, synced, `pg_control` written last.
fn apply(dest: &Path, archive: &[u8]) -> pgclone::sink::inplace::ApplyStats {
    let mut a = Applier::open(Layout {
        dest: dest.to_path_buf(),
        tablespace_links: Default::default(),
    })
    .expect("open");
    a.handle(Chunk::ArchiveStart {
        name: "base.tar".into(),
        root: ArchiveRoot::Base,
        server_terminated: true,
    })
    .expect("start");
    for piece in archive.chunks(64 * 1024) {
        a.handle(Chunk::Data(Bytes::copy_from_slice(piece)))
            .expect("data");
    }
    a.handle(Chunk::ArchiveEnd).expect("end");
    let mut applied = a.finish().expect("finish");
    assert!(
        !dest.join("global/pg_control").exists(),
        "pg_control held back"
    );
    applied
        .remove_stale(&KeepList::default())
        .expect("remove stale");
    applied.sync().expect("sync");
    let stats = applied.stats();
    applied.write_control(true).expect("pg_control");
    stats
}

/// How many `INCREMENTAL.` files of `inc` shrink, and how many grow, their file in `full`:
/// the test must cover both.
fn shrink_and_grow(full: &Path, inc: &Path) -> (usize, usize) {
    let (mut shrink, mut grow) = (0, 0);
    for (rel, contents) in tree(inc) {
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let (Some(bare), Some(bytes)) = (relation_file_name(name), contents) else {
            continue;
        };
        let mut d = IncrementalDecoder::new();
        d.handle_data(Bytes::from(bytes)).expect("decodes");
        d.finish().expect("complete");
        let Some(IncrementalEvent::Header(h)) = d.poll_event() else {
            panic!("no header in {rel:?}")
        };
        let prior = fs::metadata(full.join(rel.with_file_name(bare)))
            .expect("prior")
            .len();
        let after = u64::from(h.reconstructed_blocks()) * BLCKSZ as u64;
        shrink += usize::from(after < prior);
        grow += usize::from(after > prior);
    }
    (shrink, grow)
}

fn without_incremental_lines(label: &[u8]) -> String {
    String::from_utf8_lossy(label)
        .lines()
        .filter(|l| !l.starts_with("INCREMENTAL FROM "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Compares `applied` with `combined` as the module docs say.
fn compare(applied: &Path, combined: &Path) {
    let skip = |rel: &Path| rel.starts_with("pg_wal") || rel == Path::new("backup_manifest");
    let mut a = tree(applied);
    a.retain(|rel, _| !skip(rel));
    let mut c = tree(combined);
    c.retain(|rel, _| !skip(rel));
    let label = PathBuf::from("backup_label");
    let (la, lc) = (a.remove(&label), c.remove(&label));
    let (la, lc) = (la.flatten().expect("label"), lc.flatten().expect("label"));
    assert!(String::from_utf8_lossy(&la).contains("INCREMENTAL FROM LSN:"));
    assert_eq!(without_incremental_lines(&la), String::from_utf8_lossy(&lc));
    let only_a: Vec<_> = a.keys().filter(|k| !c.contains_key(*k)).collect();
    let only_c: Vec<_> = c.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_a.is_empty() && only_c.is_empty(),
        "only in applied: {only_a:?}\nonly in combined: {only_c:?}"
    );
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| c.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert!(differ.is_empty(), "contents differ: {differ:?}");
}

fn matches_pg_combinebackup(major: u32) {
    let p = primary(major);
    p.psql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g;
         CREATE TABLE shrinking AS SELECT g AS id, repeat('x', 200) AS v FROM generate_series(1, 50000) g;
         CREATE TABLE doomed AS SELECT g FROM generate_series(1, 10000) g;
         CREATE TABLE emptied AS SELECT g FROM generate_series(1, 10000) g;
         CREATE INDEX big_id ON big (id);",
    );
    // All-visible before the full backup, so that the later VACUUM changes few blocks.
    p.psql("VACUUM");
    p.psql("CHECKPOINT");
    let work = TestDir::new(&format!("inplace{major}"));
    let (full, inc, combined) = (work.join("full"), work.join("inc"), work.join("combined"));
    pg_basebackup(&p, &full, &[]);
    for sql in [
        "UPDATE big SET v = 'changed' WHERE id % 5000 = 0",
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(200001, 230000) g",
        "DELETE FROM shrinking WHERE id > 20000",
        "VACUUM shrinking",
        "CREATE TABLE fresh AS SELECT g FROM generate_series(1, 5000) g",
        "DROP TABLE doomed",
        "TRUNCATE emptied",
        "CHECKPOINT",
    ] {
        p.psql(sql);
    }
    let manifest = full.join("backup_manifest");
    pg_basebackup(&p, &inc, &["-i", manifest.to_str().expect("utf8")]);
    let mut cmd = as_pg_user(tools_bin(major).join("pg_combinebackup"));
    cmd.arg(&full).arg(&inc).arg("-o").arg(&combined);
    checked_output(&mut cmd, "pg_combinebackup");

    let applied = work.join("applied");
    let mut cp = std::process::Command::new("cp");
    cp.arg("-a").arg(&full).arg(&applied);
    checked_output(&mut cp, "cp");
    let (archive, incremental) = base_archive(&inc);
    assert!(incremental > 0, "the backup holds INCREMENTAL members");
    let (shrink, grow) = shrink_and_grow(&full, &inc);
    assert!(shrink > 0 && grow > 0, "shrinking {shrink}, growing {grow}");
    let stats = apply(&applied, &archive);
    println!("{major}: {incremental} INCREMENTAL members, {shrink} shrink, {grow} grow, {stats:?}");
    assert_eq!(stats.incremental_files as usize, incremental);
    assert!(stats.blocks > 0, "{stats:?}");
    compare(&applied, &combined);
}

#[test]
fn in_place_apply_equals_pg_combinebackup_17() {
    matches_pg_combinebackup(17);
}

#[test]
fn in_place_apply_equals_pg_combinebackup_18() {
    matches_pg_combinebackup(18);
}
