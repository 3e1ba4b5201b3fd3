//! Unit tests of `pgclone verify` on small backups built here.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use super::wal::XLP_LONG_HEADER;
use super::*;
use crate::manifest::hex;
use crate::manifest::Checksum;
use sha2::Digest;

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_713_394_991_026_530_012;

/// A 1 MB WAL segment whose first page has a long header.
fn segment(magic: u16, tli: u32, segno: u64) -> Vec<u8> {
    let mut s = vec![0u8; SEG as usize];
    s[0..2].copy_from_slice(&magic.to_ne_bytes());
    s[2..4].copy_from_slice(&XLP_LONG_HEADER.to_ne_bytes());
    s[4..8].copy_from_slice(&tli.to_ne_bytes());
    s[8..16].copy_from_slice(&(segno * u64::from(SEG)).to_ne_bytes());
    s[24..32].copy_from_slice(&SYSID.to_ne_bytes());
    s[32..36].copy_from_slice(&SEG.to_ne_bytes());
    s[36..40].copy_from_slice(&8192u32.to_ne_bytes());
    s
}

/// A tiny plain backup: files, a version 2 manifest over them, WAL for 0/1000028 to
/// 0/2000100 on timeline 1 with 1 MB segments (segments 1 and 2).
fn backup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files: [(&str, &[u8]); 4] = [
        ("PG_VERSION", b"17\n"),
        ("base/1/1259", &[7u8; 8192]),
        ("global/pg_control", &SYSID.to_ne_bytes()),
        ("postgresql.auto.conf", b"# original\n"),
    ];
    let mut lines = Vec::new();
    for (path, data) in files {
        let p = d.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        let mut c = Checksum::new("CRC32C").unwrap();
        c.update(data);
        lines.push(format!(
            "{{ \"Path\": \"{path}\", \"Size\": {}, \"Last-Modified\": \"2026-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
            data.len(),
            c.finish().unwrap()
        ));
    }
    // -R changed postgresql.auto.conf and added standby.signal: ignored.
    fs::write(d.join("postgresql.auto.conf"), "primary_conninfo = 'x'\n").unwrap();
    fs::write(d.join("standby.signal"), "").unwrap();
    let body = format!(
        "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {SYSID},\n\"Files\": [\n{}\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 1, \"Start-LSN\": \"0/100028\", \"End-LSN\": \"0/200100\" }}\n],\n",
        lines.join(",\n")
    );
    let digest = hex(&sha2::Sha256::digest(body.as_bytes()));
    fs::write(
        d.join("backup_manifest"),
        format!("{body}\"Manifest-Checksum\": \"{digest}\"}}\n"),
    )
    .unwrap();
    fs::create_dir_all(d.join("pg_wal/archive_status")).unwrap();
    for segno in [1, 2] {
        fs::write(
            d.join(format!("pg_wal/0000000100000000000000{segno:02X}")),
            segment(0xD116, 1, segno),
        )
        .unwrap();
    }
    dir
}

/// Runs a check of `dir` with the options `set` chooses; the problems found.
fn verify(dir: &Path, set: impl FnOnce(&mut Options)) -> Vec<String> {
    let mut opts = Options {
        dir: dir.to_owned(),
        ..Options::default()
    };
    set(&mut opts);
    let mut check = BackupCheck::new(&opts);
    check.collected = Some(Vec::new());
    let _ = check.run();
    let out = check.collected.take().unwrap();
    assert_eq!(out.len(), check.errors);
    out
}

#[test]
fn a_good_backup_verifies() {
    let b = backup();
    assert_eq!(verify(b.path(), |_| {}), Vec::<String>::new());
}

#[test]
fn file_problems_are_reported_like_pg_verifybackup() {
    let b = backup();
    let d = b.path();
    fs::write(d.join("PG_VERSION"), b"18\n").unwrap();
    fs::write(d.join("base/1/1259"), [7u8; 4096]).unwrap();
    fs::write(d.join("base/1/99999"), b"").unwrap();
    fs::create_dir(d.join("pg_tblspc")).unwrap();
    std::os::unix::fs::symlink(d.join("base"), d.join("pg_tblspc/16384")).unwrap();
    assert_eq!(
        verify(d, |_| {}),
        vec![
            "\"base/1/1259\" has size 4096 on disk but size 8192 in the manifest",
            "\"base/1/99999\" is present on disk but not in the manifest",
            "\"pg_tblspc/16384/1/1259\" is present on disk but not in the manifest",
            "\"pg_tblspc/16384/1/99999\" is present on disk but not in the manifest",
            "checksum mismatch for file \"PG_VERSION\"",
        ]
    );
    assert_eq!(verify(d, |o| o.exit_on_error = true).len(), 1);
    assert_eq!(
        verify(d, |o| {
            o.skip_checksums = true;
            o.ignore = vec![b"base/1".to_vec(), b"pg_tblspc".to_vec()];
        }),
        Vec::<String>::new()
    );
    fs::remove_file(d.join("global/pg_control")).unwrap();
    assert_eq!(
        verify(d, |o| {
            o.skip_checksums = true;
            o.ignore = vec![b"base/1".to_vec(), b"pg_tblspc".to_vec()];
        }),
        vec!["\"global/pg_control\" is present in the manifest but not on disk"]
    );
}

#[test]
fn symlink_loops_are_reported_not_followed() {
    let b = backup();
    std::os::unix::fs::symlink(b.path().join("base"), b.path().join("base/1/loop")).unwrap();
    assert_eq!(
        verify(b.path(), |_| {}),
        vec!["\"base/1/loop\" is a symbolic link loop back to one of its parent directories"]
    );
}

#[test]
fn manifest_problems_are_fatal() {
    let b = backup();
    let path = b.path().join("backup_manifest");
    let good = fs::read(&path).unwrap();
    let mut bad = good.clone();
    let at = bad.windows(4).position(|w| w == b"2026").unwrap();
    bad[at + 3] = b'7';
    fs::write(&path, &bad).unwrap();
    fs::write(b.path().join("extra"), b"").unwrap();
    assert_eq!(verify(b.path(), |_| {}), vec!["manifest checksum mismatch"]);
    fs::write(&path, &good[..good.len() / 2]).unwrap();
    let out = verify(b.path(), |_| {});
    assert!(
        out[0].starts_with("could not parse backup manifest: "),
        "{out:?}"
    );
    fs::remove_file(&path).unwrap();
    let out = verify(b.path(), |_| {});
    assert!(
        out[0].contains("backup_manifest\": No such file or directory"),
        "{out:?}"
    );
    // A bad system identifier in pg_control.
    fs::write(&path, &good).unwrap();
    fs::remove_file(b.path().join("extra")).unwrap();
    fs::write(b.path().join("global/pg_control"), 5u64.to_ne_bytes()).unwrap();
    let out = verify(b.path(), |o| o.skip_checksums = true);
    assert!(
        out[0].ends_with(&format!(
            "manifest system identifier is {SYSID}, but control file has 5"
        )),
        "{out:?}"
    );
}

#[test]
fn wal_problems() {
    let wal = |b: &tempfile::TempDir, segno: u64| {
        b.path()
            .join(format!("pg_wal/0000000100000000000000{segno:02X}"))
    };
    // Missing second segment.
    let b = backup();
    fs::remove_file(wal(&b, 2)).unwrap();
    assert_eq!(
        verify(b.path(), |_| {}),
        vec!["WAL segment \"pg_wal/000000010000000000000002\" is missing (needed for timeline 1 from 0/100028 to 0/200100)"]
    );
    assert_eq!(
        verify(b.path(), |o| o.no_parse_wal = true),
        Vec::<String>::new()
    );
    // Missing first segment: no segment size either.
    let b = backup();
    fs::remove_file(wal(&b, 1)).unwrap();
    assert_eq!(
        verify(b.path(), |_| {}),
        vec!["WAL segment holding 0/100028 on timeline 1 is missing from \"pg_wal\""]
    );
    // Truncated first segment.
    let b = backup();
    fs::write(wal(&b, 1), vec![0u8; 4096]).unwrap();
    assert_eq!(
        verify(b.path(), |_| {}),
        vec!["WAL file \"pg_wal/000000010000000000000001\" has size 4096, which is not the size of a WAL segment with that name (a power of two from 1 MB to 1 GB)"]
    );
    // Truncated second one.
    let b = backup();
    fs::write(wal(&b, 2), vec![0u8; 4096]).unwrap();
    assert_eq!(
        verify(b.path(), |_| {}),
        vec!["WAL segment \"pg_wal/000000010000000000000002\" has size 4096 but the WAL segment size is 1048576"]
    );
    // Header problems.
    let cases: [(Vec<u8>, &str); 5] = [
        (
            vec![0u8; SEG as usize],
            "xlp_info 0x0000 lacks XLP_LONG_HEADER",
        ),
        (
            segment(0xD116, 1, 3),
            "page address 0/300000 instead of 0/200000",
        ),
        (segment(0xD116, 2, 2), "timeline 2 instead of 1"),
        (
            {
                let mut s = segment(0xD116, 1, 2);
                s[24] ^= 1;
                s
            },
            "system identifier",
        ),
        (
            {
                let mut s = segment(0xD116, 1, 2);
                s[32..36].copy_from_slice(&(SEG * 2).to_ne_bytes());
                s
            },
            "segment size 2097152 instead of 1048576",
        ),
    ];
    for (data, want) in cases {
        let b = backup();
        fs::write(wal(&b, 2), data).unwrap();
        let out = verify(b.path(), |_| {});
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with(
                "WAL segment \"pg_wal/000000010000000000000002\" has an invalid page header: "
            ) && out[0].contains(want),
            "{out:?} lacks {want}"
        );
    }
    let b = backup();
    fs::write(wal(&b, 2), segment(0xD118, 1, 2)).unwrap();
    assert_eq!(
        verify(b.path(), |_| {}),
        vec!["WAL segment \"pg_wal/000000010000000000000002\" has page magic 0xD118, but \"pg_wal/000000010000000000000001\" has 0xD116"]
    );
}

#[test]
fn wal_across_a_timeline_switch_and_in_another_directory() {
    let b = backup();
    let d = b.path();
    // Timeline 2 starts in segment 2, whose first page still belongs to timeline 1.
    let manifest = fs::read_to_string(d.join("backup_manifest")).unwrap();
    let body = &manifest[..manifest.rfind("\"Manifest-Checksum\"").unwrap()];
    let body = body.replace(
        "{ \"Timeline\": 1, \"Start-LSN\": \"0/100028\", \"End-LSN\": \"0/200100\" }",
        "{ \"Timeline\": 2, \"Start-LSN\": \"0/200080\", \"End-LSN\": \"0/400000\" },\n{ \"Timeline\": 1, \"Start-LSN\": \"0/100028\", \"End-LSN\": \"0/200080\" }",
    );
    let digest = hex(&sha2::Sha256::digest(body.as_bytes()));
    fs::write(
        d.join("backup_manifest"),
        format!("{body}\"Manifest-Checksum\": \"{digest}\"}}\n"),
    )
    .unwrap();
    fs::write(
        d.join("pg_wal/000000020000000000000002"),
        segment(0xD116, 1, 2),
    )
    .unwrap();
    fs::write(
        d.join("pg_wal/000000020000000000000003"),
        segment(0xD116, 2, 3),
    )
    .unwrap();
    assert_eq!(verify(d, |_| {}), Vec::<String>::new());
    // Segment 4 is not needed: the range ends at its first byte.
    fs::write(
        d.join("pg_wal/000000020000000000000003"),
        segment(0xD116, 1, 3),
    )
    .unwrap();
    assert_eq!(verify(d, |_| {}).len(), 1);
    fs::write(
        d.join("pg_wal/000000020000000000000003"),
        segment(0xD116, 2, 3),
    )
    .unwrap();
    // -w: WAL elsewhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().join("wal");
    fs::rename(d.join("pg_wal"), &other).unwrap();
    let out = verify(d, |_| {});
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        verify(d, |o| o.wal_path = Some(other.clone())),
        Vec::<String>::new()
    );
}
