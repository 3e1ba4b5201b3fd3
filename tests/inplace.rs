//! The in-place writer (`sink::inplace`) against PostgreSQL's own reconstruction, on real 17
//! and 18 servers with `summarize_wal = on` and data checksums.
//!
//! A full backup and an incremental one are taken with the real `pg_basebackup` (tablespace
//! relocated with `-T`) after updates, an extension, new tables, dropped tables (in the data
//! directory and in the tablespace), a TRUNCATE and a VACUUM that shrinks a table; the
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
//!   backup's WAL, `applied` keeps the full backup's;
//! - the `pg_tblspc/<oid>` link: each points to its own copy of the tablespace, and those two
//!   copies must be equal the same way (the tablespace's archive is applied before the base
//!   archive, as the server sends them).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pgclone::sink::inplace::{Applier, ApplyStats, KeepList, Layout};
use pgclone::sink::{ArchiveRoot, Chunk};
use pgclone_proto::incremental::{
    relation_file_name, IncrementalDecoder, IncrementalEvent, BLCKSZ,
};
use pgclone_proto::relfile::Limits;
use pgclone_proto::tar::MemberKind;
use pgclone_proto::testutil;
use pgclone_proto::Oid;
use support::{as_pg_user, checked_output, pg_basebackup, tools_bin, Cluster, TestDir};

fn primary(major: u32) -> Cluster {
    let opts = support::summarizing(major, &[]);
    Cluster::start(&opts)
}

/// What a path is.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
}

/// Every entry under `root`, by relative path (links not followed).
fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel)).expect("read_dir") {
            let entry = entry.expect("entry");
            let child = rel.join(entry.file_name());
            let kind = entry.file_type().expect("type");
            let what = if kind.is_dir() {
                stack.push(child.clone());
                Entry::Dir
            } else if kind.is_symlink() {
                Entry::Link(fs::read_link(entry.path()).expect("readlink"))
            } else {
                Entry::File(fs::read(entry.path()).expect("read"))
            };
            out.insert(child, what);
        }
    }
    out
}

/// A directory of the incremental backup as the server's archive of it: every directory, link
/// and file except `backup_manifest` (sent apart) and `pg_wal`'s files (streamed apart), with
/// `global/pg_control` last. Also returns how many `INCREMENTAL.` members it holds.
fn archive(dir: &Path) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut incremental = 0;
    let mut control = None;
    for (rel, entry) in tree(dir) {
        let name = rel.to_str().expect("utf8").to_owned();
        let mode = fs::symlink_metadata(dir.join(&rel))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        let (member, bytes, link) = match &entry {
            Entry::Dir => (format!("{name}/"), &[][..], None),
            Entry::Link(target) => (name.clone(), &[][..], target.to_str()),
            Entry::File(_) if name == "backup_manifest" || name.starts_with("pg_wal/") => continue,
            Entry::File(bytes) => (name.clone(), bytes.as_slice(), None),
        };
        let kind = match entry {
            Entry::Dir => MemberKind::Directory,
            Entry::Link(_) => MemberKind::Symlink,
            Entry::File(_) => MemberKind::File,
        };
        incremental += usize::from(name.contains("INCREMENTAL."));
        if name == "global/pg_control" {
            control = Some((bytes.to_vec(), mode));
            continue;
        }
        testutil::append_member(&mut out, &(&member, kind, bytes, link), mode, 0);
    }
    if let Some((bytes, mode)) = control {
        testutil::append_member(
            &mut out,
            &("global/pg_control", MemberKind::File, &bytes, None),
            mode,
            0,
        );
    }
    testutil::terminate(&mut out);
    (out, incremental)
}

/// Applies the tablespace archive (`ts` onto `ts_dest`, the tablespace `oid`) and then the
/// base archive onto `dest`, as the backup task would, in 64 kB pieces; then stale files are
/// removed, everything synced, and `pg_control` written last.
fn apply(dest: &Path, base: &[u8], oid: u32, ts_dest: &Path, ts: &[u8]) -> ApplyStats {
    let mut a = Applier::open(Layout {
        dest: dest.to_path_buf(),
        tablespace_links: [(Oid(oid), ts_dest.to_path_buf())].into(),
        dir_mode: 0o700,
        limits: Limits::new(),
    })
    .expect("open");
    let archives = [
        (
            format!("{oid}.tar"),
            ArchiveRoot::Tablespace {
                oid: Oid(oid),
                dir: ts_dest.to_path_buf(),
            },
            ts,
        ),
        ("base.tar".to_owned(), ArchiveRoot::Base, base),
    ];
    for (name, root, bytes) in archives {
        a.handle(Chunk::ArchiveStart {
            name,
            root,
            server_terminated: true,
        })
        .expect("start");
        for piece in bytes.chunks(64 * 1024) {
            a.handle(Chunk::Data(Bytes::copy_from_slice(piece)))
                .expect("data");
        }
        a.handle(Chunk::ArchiveEnd).expect("end");
    }
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
    for (rel, entry) in tree(inc) {
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let (Some(bare), Entry::File(bytes)) = (relation_file_name(name), entry) else {
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

/// Compares `applied` with `combined` as the module docs say; their tablespace links point to
/// their own copies of the tablespace (`applied_ts`, `combined_ts`), which must be equal.
fn compare(applied: &Path, combined: &Path, (applied_ts, combined_ts): (&Path, &Path)) {
    let skip = |rel: &Path| rel.starts_with("pg_wal") || rel == Path::new("backup_manifest");
    let mut a = tree(applied);
    a.retain(|rel, _| !skip(rel));
    let mut c = tree(combined);
    c.retain(|rel, _| !skip(rel));
    let label = PathBuf::from("backup_label");
    let (Some(Entry::File(la)), Some(Entry::File(lc))) = (a.remove(&label), c.remove(&label))
    else {
        panic!("backup_label missing")
    };
    assert!(String::from_utf8_lossy(&la).contains("INCREMENTAL FROM LSN:"));
    assert_eq!(without_incremental_lines(&la), String::from_utf8_lossy(&lc));
    for (rel, e) in a.iter_mut().chain(c.iter_mut()) {
        if rel.starts_with("pg_tblspc") {
            if let Entry::Link(target) = e {
                let want = [applied_ts, combined_ts].contains(&target.as_path());
                assert!(want, "{rel:?} points to {target:?}");
                *target = PathBuf::new();
            }
        }
    }
    same_trees("data directory", &a, &c);
    same_trees("tablespace", &tree(applied_ts), &tree(combined_ts));
}

fn same_trees(what: &str, a: &BTreeMap<PathBuf, Entry>, c: &BTreeMap<PathBuf, Entry>) {
    let only_a: Vec<_> = a.keys().filter(|k| !c.contains_key(*k)).collect();
    let only_c: Vec<_> = c.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_a.is_empty() && only_c.is_empty(),
        "{what}: only in applied: {only_a:?}\nonly in combined: {only_c:?}"
    );
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| c.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert!(differ.is_empty(), "{what}: contents differ: {differ:?}");
}

fn matches_pg_combinebackup(major: u32) {
    let p = primary(major);
    let work = TestDir::new(&format!("inplace{major}"));
    let ts = work.mkdir("primary_ts");
    p.create_tablespace("ts", &ts);
    let oid: u32 = p
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'")
        .parse()
        .expect("oid");
    p.psql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g;
         CREATE TABLE shrinking AS SELECT g AS id, repeat('x', 200) AS v FROM generate_series(1, 50000) g;
         CREATE TABLE doomed AS SELECT g FROM generate_series(1, 10000) g;
         CREATE TABLE emptied AS SELECT g FROM generate_series(1, 10000) g;
         CREATE TABLE ts_big TABLESPACE ts AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g;
         CREATE TABLE ts_doomed TABLESPACE ts AS SELECT g FROM generate_series(1, 10000) g;
         CREATE INDEX big_id ON big (id);",
    );
    // All-visible before the full backup, so that the later VACUUM changes few blocks.
    p.psql("VACUUM");
    p.psql("CHECKPOINT");
    let dir = |name: &str| work.join(name);
    let map = |to: &str| format!("{}={}", ts.display(), dir(to).display());
    pg_basebackup(&p, &dir("full"), &["-T", &map("full_ts")]);
    for sql in [
        "UPDATE big SET v = 'changed' WHERE id % 5000 = 0",
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(200001, 230000) g",
        "DELETE FROM shrinking WHERE id > 20000",
        "VACUUM shrinking",
        "CREATE TABLE fresh AS SELECT g FROM generate_series(1, 5000) g",
        "DROP TABLE doomed",
        "TRUNCATE emptied",
        "UPDATE ts_big SET v = 'changed' WHERE id % 3000 = 0",
        "DROP TABLE ts_doomed",
        "CREATE TABLE ts_fresh TABLESPACE ts AS SELECT g FROM generate_series(1, 5000) g",
        "CHECKPOINT",
    ] {
        p.psql(sql);
    }
    let manifest = dir("full").join("backup_manifest");
    let manifest = manifest.to_str().expect("utf8");
    pg_basebackup(&p, &dir("inc"), &["-i", manifest, "-T", &map("inc_ts")]);
    let mut cmd = as_pg_user(tools_bin(major).join("pg_combinebackup"));
    cmd.arg(dir("full"))
        .arg(dir("inc"))
        .arg("-o")
        .arg(dir("combined"));
    let relocate = format!(
        "{}={}",
        dir("inc_ts").display(),
        dir("combined_ts").display()
    );
    cmd.args(["-T", &relocate]);
    checked_output(&mut cmd, "pg_combinebackup");

    for (from, to) in [("full", "applied"), ("full_ts", "applied_ts")] {
        let mut cp = std::process::Command::new("cp");
        cp.arg("-a").arg(dir(from)).arg(dir(to));
        checked_output(&mut cp, "cp");
    }
    let (base, base_incremental) = archive(&dir("inc"));
    let (ts_archive, ts_incremental) = archive(&dir("inc_ts"));
    assert!(
        ts_incremental > 0,
        "the tablespace holds INCREMENTAL members"
    );
    let (shrink, grow) = shrink_and_grow(&dir("full"), &dir("inc"));
    assert!(shrink > 0 && grow > 0, "shrinking {shrink}, growing {grow}");
    let stats = apply(&dir("applied"), &base, oid, &dir("applied_ts"), &ts_archive);
    println!("{major}: {base_incremental}+{ts_incremental} INCREMENTAL members, {shrink} shrink, {grow} grow, {stats:?}");
    assert_eq!(
        stats.incremental_files as usize,
        base_incremental + ts_incremental
    );
    assert!(stats.blocks > 0, "{stats:?}");
    compare(
        &dir("applied"),
        &dir("combined"),
        (&dir("applied_ts"), &dir("combined_ts")),
    );
}

#[test]
fn in_place_apply_equals_pg_combinebackup_17() {
    matches_pg_combinebackup(17);
}

#[test]
fn in_place_apply_equals_pg_combinebackup_18() {
    matches_pg_combinebackup(18);
}
