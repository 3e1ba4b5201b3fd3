use pgclone_proto::relfile::Limits;
use std::fs;
use std::path::Path;

use bytes::Bytes;
use pgclone_proto::incremental::{IncrementalError, BLCKSZ};
use pgclone_proto::tar::MemberKind;
use pgclone_proto::testutil::{self, incremental_member, TarMember};
use pgclone_proto::Oid;

use super::*;

fn block(fill: u8) -> Vec<u8> {
    vec![fill; BLCKSZ]
}

/// `n` blocks, block `i` filled with `first + i`.
fn blocks(n: usize, first: u8) -> Vec<u8> {
    (0..n)
        .flat_map(|i| block(first.wrapping_add(i as u8)))
        .collect()
}

/// `pg_combinebackup`'s rule, written out naively: the file a member rebuilds from `prior`.
fn reconstruct(prior: Option<&[u8]>, tbl: u32, sent: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let last = sent.last().map_or(0, |(b, _)| b + 1);
    let len = tbl.max(last) as usize;
    let prior_blocks = prior.map_or(0, |p| p.len() / BLCKSZ);
    let mut out = Vec::new();
    for b in 0..len {
        if let Some((_, data)) = sent.iter().find(|(n, _)| *n as usize == b) {
            out.extend_from_slice(data);
        } else if b < tbl as usize && b < prior_blocks {
            out.extend_from_slice(&prior.expect("prior")[b * BLCKSZ..(b + 1) * BLCKSZ]);
        } else {
            out.extend_from_slice(&block(0));
        }
    }
    out
}

fn layout(dest: &Path, ts: &[(u32, &Path)]) -> Layout {
    Layout {
        dest: dest.to_path_buf(),
        tablespace_links: ts.iter().map(|(o, p)| (Oid(*o), p.to_path_buf())).collect(),
        dir_mode: 0o700,
        limits: Limits::new(),
    }
}

/// Feeds `archive` as the base archive in 1000-byte pieces.
fn feed(a: &mut Applier, name: &str, root: ArchiveRoot, archive: &[u8]) -> Result<(), Error> {
    a.handle(Chunk::ArchiveStart {
        name: name.into(),
        root,
        server_terminated: true,
    })?;
    for piece in archive.chunks(1000) {
        a.handle(Chunk::Data(Bytes::copy_from_slice(piece)))?;
    }
    a.handle(Chunk::ArchiveEnd)
}

fn apply(dest: &Path, members: &[TarMember<'_>]) -> Result<Applied, Error> {
    let mut a = Applier::open(layout(dest, &[]))?;
    feed(
        &mut a,
        "base.tar",
        ArchiveRoot::Base,
        &testutil::tar(members, 0o600),
    )?;
    a.finish()
}

/// The decoding or planning error inside an [`Error::Incremental`].
fn incremental_error(err: &Error) -> Option<&IncrementalError> {
    match err {
        Error::Incremental { source, .. } => Some(source),
        _ => None,
    }
}

const CONTROL: TarMember<'static> = ("global/pg_control", MemberKind::File, b"control", None);

/// File name, prior contents, truncation block length, sent blocks.
type Case = (&'static str, Option<Vec<u8>>, u32, Vec<(u32, Vec<u8>)>);

#[test]
fn rebuilds_files_as_pg_combinebackup_does() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dest = tmp.path();
    fs::create_dir(dest.join("global")).expect("mkdir");
    fs::create_dir_all(dest.join("base/1")).expect("mkdir");
    let partial = {
        let mut p = blocks(3, 30);
        p.truncate(2 * BLCKSZ + 100);
        p
    };
    let cases: Vec<Case> = vec![
        // Shorter than before, with a sent block past the truncation length.
        (
            "16384",
            Some(blocks(10, 1)),
            6,
            vec![(1, block(0xa1)), (7, block(0xa7))],
        ),
        // Longer than before: the partial last block does not count.
        ("16385_fsm", Some(partial), 5, vec![(4, block(0xb4))]),
        // Nothing sent, cut to the truncation length.
        ("16386.1", Some(blocks(4, 50)), 2, vec![]),
        // Missing, but every block below the truncation length sent.
        (
            "16387_vm",
            None,
            2,
            vec![(0, block(0xd0)), (1, block(0xd1)), (3, block(0xd3))],
        ),
        // Emptied.
        ("16388", Some(blocks(2, 70)), 0, vec![]),
    ];
    let mut members = Vec::new();
    for (name, prior, tbl, sent) in &cases {
        if let Some(p) = prior {
            fs::write(dest.join("base/1").join(name), p).expect("prior");
        }
        members.push((
            format!("base/1/INCREMENTAL.{name}"),
            incremental_member(*tbl, sent),
        ));
    }
    let mut tar: Vec<TarMember<'_>> = members
        .iter()
        .map(|(n, m)| (n.as_str(), MemberKind::File, m.as_slice(), None))
        .collect();
    tar.push(CONTROL);
    // Twice: applying a member again gives the same file.
    for round in 0..2 {
        let applied = apply(dest, &tar).expect("applies");
        assert_eq!(applied.stats().incremental_files, 5);
        for (name, prior, tbl, sent) in &cases {
            let want = reconstruct(prior.as_deref(), *tbl, sent);
            let got = fs::read(dest.join("base/1").join(name)).expect("read");
            assert!(
                got == want,
                "{name} (round {round}): {} vs {} bytes",
                got.len(),
                want.len()
            );
        }
        applied.write_control(false).expect("control");
    }
}

/// `n` blocks, block `i` being `prior`'s block `i` if `i < keep`, `sent`'s if sent, else zeros.
fn expected_blocks(prior: &[u8], keep: usize, n: usize, sent: &[(u32, Vec<u8>)]) -> Vec<u8> {
    (0..n)
        .flat_map(|b| match sent.iter().find(|(s, _)| *s as usize == b) {
            Some((_, data)) => data.clone(),
            None if b < keep => prior[b * BLCKSZ..(b + 1) * BLCKSZ].to_vec(),
            None => block(0),
        })
        .collect()
}

#[test]
fn limit_blocks_void_the_prior_blocks_at_and_beyond_them() {
    use pgclone_proto::relfile::{Fork, RelFork};
    let tmp = tempfile::tempdir().expect("tmp");
    let dest = tmp.path().join("d");
    let ts = tmp.path().join("ts");
    fs::create_dir_all(dest.join("base/5")).expect("mkdir");
    fs::create_dir(dest.join("global")).expect("mkdir");
    fs::create_dir_all(ts.join("PG_18_202506291/5")).expect("mkdir");
    // The prior copy: 12 blocks before the primary truncated the table to 3 (VACUUM) and
    // re-extended it to 10 without WAL; only block 8 was written (logged) since.
    let prior = blocks(12, 1);
    let sent = vec![(8u32, block(0xe8))];
    let member = incremental_member(10, &sent);
    for path in [
        dest.join("base/5/16400"),
        dest.join("base/5/16401"),
        ts.join("PG_18_202506291/5/16400"),
    ] {
        fs::write(path, &prior).expect("prior");
    }
    let rel = |tablespace, relfilenode| RelFork {
        tablespace,
        database: 5,
        relfilenode,
        fork: Fork::Main,
    };
    let mut limits = Limits::new();
    limits.record(rel(1663, 16400), 3);
    limits.record(rel(16390, 16400), 0);
    let mut a = Applier::open(Layout {
        limits,
        ..layout(&dest, &[])
    })
    .expect("open");
    let ts_members: &[TarMember<'_>] = &[(
        "PG_18_202506291/5/INCREMENTAL.16400",
        MemberKind::File,
        &member,
        None,
    )];
    let root = ArchiveRoot::Tablespace {
        oid: Oid(16390),
        dir: ts.clone(),
    };
    feed(&mut a, "16390.tar", root, &testutil::tar(ts_members, 0o600)).expect("tablespace");
    let base: &[TarMember<'_>] = &[
        ("base/5/INCREMENTAL.16400", MemberKind::File, &member, None),
        ("base/5/INCREMENTAL.16401", MemberKind::File, &member, None),
        CONTROL,
    ];
    let archive = testutil::tar(base, 0o600);
    feed(&mut a, "base.tar", ArchiveRoot::Base, &archive).expect("base");
    a.finish().expect("finish");
    let read = |p: &Path| fs::read(p).expect("read");
    // Limited to 3: blocks 3..10 unsent are zeros, not the prior copy's stale ones.
    assert!(read(&dest.join("base/5/16400")) == expected_blocks(&prior, 3, 10, &sent));
    // Limit 0 in the tablespace: nothing of the prior file stands.
    assert!(read(&ts.join("PG_18_202506291/5/16400")) == expected_blocks(&prior, 0, 10, &sent));
    // No limit: pg_combinebackup's rule, the prior blocks below 10 stand.
    assert!(read(&dest.join("base/5/16401")) == reconstruct(Some(&prior), 10, &sent));
    assert!(reconstruct(Some(&prior), 10, &sent) == expected_blocks(&prior, 10, 10, &sent));
}

#[test]
fn refuses_a_missing_file_it_would_need_blocks_from() {
    let tmp = tempfile::tempdir().expect("tmp");
    let member = incremental_member(3, &[(1, block(1))]);
    let err = apply(
        tmp.path(),
        &[("global/INCREMENTAL.16384", MemberKind::File, &member, None)],
    )
    .expect_err("refused");
    assert!(
        matches!(
            incremental_error(&err),
            Some(IncrementalError::NoPriorFile { .. })
        ),
        "{err:?}"
    );
    assert!(!tmp.path().join("global/16384").exists(), "nothing created");
}

#[test]
fn refuses_malformed_members_and_non_relation_names() {
    let tmp = tempfile::tempdir().expect("tmp");
    fs::create_dir(tmp.path().join("global")).expect("mkdir");
    fs::write(tmp.path().join("global/1"), block(1)).expect("prior");
    let mut bad = incremental_member(1, &[(0, block(2))]);
    bad.truncate(bad.len() - 1);
    let err = apply(
        tmp.path(),
        &[("global/INCREMENTAL.1", MemberKind::File, &bad, None)],
    )
    .expect_err("refused");
    assert!(
        matches!(
            incremental_error(&err),
            Some(IncrementalError::LengthMismatch { .. })
        ),
        "{err:?}"
    );
    let member = incremental_member(0, &[]);
    for name in ["global/INCREMENTAL.pg_control", "base/1/INCREMENTAL.x"] {
        let err =
            apply(tmp.path(), &[(name, MemberKind::File, &member, None)]).expect_err("refused");
        assert!(matches!(err, Error::UnsafeMember { .. }), "{name}: {err:?}");
    }
}

#[test]
fn incremental_names_outside_relation_directories_are_ordinary_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    fs::create_dir_all(tmp.path().join("global")).expect("mkdir");
    apply(
        tmp.path(),
        &[
            ("INCREMENTAL.1", MemberKind::File, b"top", None),
            ("log/", MemberKind::Directory, b"", None),
            ("log/INCREMENTAL.2", MemberKind::File, b"log", None),
            ("base/", MemberKind::Directory, b"", None),
            ("base/INCREMENTAL.3", MemberKind::File, b"base", None),
            CONTROL,
        ],
    )
    .expect("applies");
    assert_eq!(
        fs::read(tmp.path().join("INCREMENTAL.1")).expect("read"),
        b"top"
    );
    assert_eq!(
        fs::read(tmp.path().join("log/INCREMENTAL.2")).expect("read"),
        b"log"
    );
    assert_eq!(
        fs::read(tmp.path().join("base/INCREMENTAL.3")).expect("read"),
        b"base"
    );
}

#[test]
fn replaces_whole_files_without_writing_through_links() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dest = tmp.path().join("d");
    fs::create_dir_all(dest.join("global")).expect("mkdir");
    fs::write(dest.join("PG_VERSION"), b"16\n").expect("old");
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"keep").expect("victim");
    std::os::unix::fs::symlink(&victim, dest.join("f")).expect("link");
    fs::write(dest.join(format!("g{TEMP_SUFFIX}")), b"left over").expect("temp");
    let applied = apply(
        &dest,
        &[
            ("PG_VERSION", MemberKind::File, b"17\n", None),
            ("f", MemberKind::File, b"new", None),
            ("g", MemberKind::File, b"gg", None),
            CONTROL,
        ],
    )
    .expect("applies");
    assert_eq!(fs::read(dest.join("PG_VERSION")).expect("read"), b"17\n");
    assert_eq!(fs::read(dest.join("f")).expect("read"), b"new");
    assert_eq!(fs::read(dest.join("g")).expect("read"), b"gg");
    assert_eq!(fs::read(&victim).expect("read"), b"keep");
    assert!(!dest.join(format!("g{TEMP_SUFFIX}")).exists());
    assert_eq!(applied.stats().whole_files, 4);
    applied.sync().expect("sync");
}

#[test]
fn pg_control_comes_last_and_only_on_request() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dest = tmp.path();
    fs::create_dir(dest.join("global")).expect("mkdir");
    fs::write(dest.join(CONTROL_FILE), b"old control").expect("old");
    let mut a = Applier::open(layout(dest, &[])).expect("open");
    assert!(!dest.join(CONTROL_FILE).exists(), "removed at open");
    let archive = testutil::tar(&[CONTROL, ("x", MemberKind::File, b"x", None)], 0o600);
    feed(&mut a, "base.tar", ArchiveRoot::Base, &archive).expect("feeds");
    let applied = a.finish().expect("finish");
    assert!(!dest.join(CONTROL_FILE).exists(), "held back");
    applied.write_control(true).expect("write");
    assert_eq!(fs::read(dest.join(CONTROL_FILE)).expect("read"), b"control");

    let err = apply(dest, &[("x", MemberKind::File, b"x", None)]).expect_err("no control");
    assert!(matches!(err, Error::IncompatibleServer(_)), "{err:?}");
    let big = vec![0u8; 8193];
    let err =
        apply(dest, &[("global/pg_control", MemberKind::File, &big, None)]).expect_err("too big");
    assert!(matches!(err, Error::UnsafeMember { .. }), "{err:?}");
}

/// A data directory `dest` and tablespace `ts` with stale and kept entries, and a link in
/// `pg_tblspc` to `old_ts`, a tablespace the primary no longer has.
fn stale_fixture(dest: &Path, ts: &Path, old_ts: &Path) {
    for d in [
        "global",
        "base/1",
        "base/5",
        "pg_wal/archive_status",
        "pg_tblspc",
        "pg_replslot/s",
    ] {
        fs::create_dir_all(dest.join(d)).expect("mkdir");
    }
    for f in [
        "base/1/1259",
        "base/1/999",
        "base/5/2",
        "pg_wal/000000010000000000000001",
        "postmaster.pid",
        "standby.signal",
        "pg_replslot/s/state",
    ] {
        fs::write(dest.join(f), b"old").expect("write");
    }
    for d in ["PG_17_1/5", "PG_16_1/5"] {
        fs::create_dir_all(ts.join(d)).expect("mkdir");
    }
    fs::write(ts.join("PG_17_1/5/77"), b"stale").expect("write");
    fs::write(ts.join("PG_16_1/5/77"), b"another cluster's").expect("write");
    std::os::unix::fs::symlink(old_ts, dest.join("pg_tblspc/16999")).expect("link");
}

#[test]
fn removes_what_the_primary_no_longer_has() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dest, ts) = (tmp.path().join("d"), tmp.path().join("ts"));
    stale_fixture(&dest, &ts, &tmp.path().join("old_ts"));
    let mut a = Applier::open(layout(&dest, &[(16388, &ts)])).expect("open");
    let ts_tar = testutil::tar(
        &[
            ("PG_17_1/", MemberKind::Directory, b"", None),
            ("PG_17_1/5/", MemberKind::Directory, b"", None),
            ("PG_17_1/5/78", MemberKind::File, b"new", None),
        ],
        0o700,
    );
    feed(
        &mut a,
        "16388.tar",
        ArchiveRoot::Tablespace {
            oid: Oid(16388),
            dir: ts.clone(),
        },
        &ts_tar,
    )
    .expect("tablespace");
    let inc = incremental_member(0, &[]);
    let base_tar = testutil::tar(
        &[
            ("global/", MemberKind::Directory, b"", None),
            CONTROL,
            ("base/1/INCREMENTAL.1259", MemberKind::File, &inc, None),
            ("pg_wal/", MemberKind::Directory, b"", None),
            ("pg_replslot/", MemberKind::Directory, b"", None),
            ("pg_tblspc/", MemberKind::Directory, b"", None),
            (
                "pg_tblspc/16388",
                MemberKind::Symlink,
                b"",
                Some("/ignored"),
            ),
        ],
        0o700,
    );
    feed(&mut a, "base.tar", ArchiveRoot::Base, &base_tar).expect("base");
    let mut applied = a.finish().expect("finish");
    let removed = applied.remove_stale(&KeepList::default()).expect("stale");
    assert_eq!(
        removed,
        Removed {
            files: 5,
            dirs: 2,
            links: 1
        }
    );
    for gone in [
        "base/1/999",
        "base/5",
        "standby.signal",
        "pg_replslot/s",
        "pg_tblspc/16999",
    ] {
        assert!(
            fs::symlink_metadata(dest.join(gone)).is_err(),
            "{gone} stays"
        );
    }
    for kept in [
        "base/1/1259",
        "pg_wal/000000010000000000000001",
        "pg_wal/archive_status",
        "postmaster.pid",
        "pg_replslot",
    ] {
        assert!(dest.join(kept).exists(), "{kept} removed");
    }
    assert_eq!(
        fs::read_link(dest.join("pg_tblspc/16388")).expect("link"),
        ts
    );
    assert!(!ts.join("PG_17_1/5/77").exists());
    assert!(ts.join("PG_17_1/5/78").exists());
    assert!(
        ts.join("PG_16_1/5/77").exists(),
        "another version's directory is left alone"
    );
    assert!(applied.received_in_base(Path::new("base/1/1259")));
    assert_eq!(clear_wal(&dest, true).expect("clear WAL").files, 1);
    assert!(dest.join("pg_wal/archive_status").is_dir());
    applied.sync().expect("sync");
}

#[test]
fn refuses_members_beneath_tablespace_links_and_foreign_links() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ts = tmp.path().join("ts");
    let cases: [&[TarMember<'_>]; 3] = [
        &[("pg_tblspc/16388/PG_17_1/x", MemberKind::File, b"boom", None)],
        &[("pg_tblspc/999", MemberKind::Symlink, b"", Some("/tmp"))],
        &[("evil", MemberKind::Symlink, b"", Some("/tmp"))],
    ];
    for (i, members) in cases.into_iter().enumerate() {
        let dest = tmp.path().join(format!("d{i}"));
        fs::create_dir_all(dest.join("pg_tblspc")).expect("mkdir");
        let mut a = Applier::open(layout(&dest, &[(16388, &ts)])).expect("open");
        let err = feed(
            &mut a,
            "base.tar",
            ArchiveRoot::Base,
            &testutil::tar(members, 0o600),
        )
        .expect_err("refused");
        assert!(
            matches!(err, Error::UnsafeMember { .. }),
            "case {i}: {err:?}"
        );
    }
}

#[test]
fn keeps_the_owners_links_and_moves_tablespace_links() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dest = tmp.path().join("d");
    let (waldir, ts, old_ts) = (
        tmp.path().join("wal"),
        tmp.path().join("ts"),
        tmp.path().join("old"),
    );
    fs::create_dir_all(waldir.join("archive_status")).expect("mkdir");
    fs::create_dir_all(dest.join("pg_tblspc")).expect("mkdir");
    fs::create_dir(dest.join("global")).expect("mkdir");
    std::os::unix::fs::symlink(&waldir, dest.join("pg_wal")).expect("link");
    std::os::unix::fs::symlink(&old_ts, dest.join("pg_tblspc/16388")).expect("link");
    fs::create_dir(dest.join("pg_tblspc/16389")).expect("in-place tablespace");
    let members: &[TarMember<'_>] = &[
        ("pg_wal/", MemberKind::Directory, b"", None),
        ("pg_wal/archive_status/", MemberKind::Directory, b"", None),
        ("pg_wal/summaries/", MemberKind::Directory, b"", None),
        ("pg_tblspc/", MemberKind::Directory, b"", None),
        (
            "pg_tblspc/16388",
            MemberKind::Symlink,
            b"",
            Some("/ignored"),
        ),
        CONTROL,
    ];
    let mut a = Applier::open(layout(&dest, &[(16388, &ts), (16389, &ts)])).expect("open");
    feed(
        &mut a,
        "base.tar",
        ArchiveRoot::Base,
        &testutil::tar(members, 0o700),
    )
    .expect("feeds");
    a.finish().expect("finish");
    assert!(
        waldir.join("summaries").is_dir(),
        "made through the pg_wal link"
    );
    assert!(fs::symlink_metadata(dest.join("pg_wal"))
        .expect("stat")
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read_link(dest.join("pg_tblspc/16388")).expect("link"),
        ts
    );

    let mut a = Applier::open(layout(&dest, &[(16389, &ts)])).expect("open");
    let link = [("pg_tblspc/16389", MemberKind::Symlink, &b""[..], Some("/x"))];
    let err = feed(
        &mut a,
        "base.tar",
        ArchiveRoot::Base,
        &testutil::tar(&link, 0o700),
    )
    .expect_err("a directory is where the link goes");
    assert!(matches!(err, Error::UnsafeMember { .. }), "{err:?}");
    assert!(dest.join("pg_tblspc/16389").is_dir(), "never removed");
}
