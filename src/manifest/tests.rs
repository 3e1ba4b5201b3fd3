//! Unit tests of the manifest model, parsing, checksums and the written-files check.

#![allow(clippy::unwrap_used)]

use super::checksum::unhex;
use super::*;
use sha2::Digest;

fn sum(alg: &str, data: &[u8]) -> Option<String> {
    let mut c = Checksum::new(alg).unwrap();
    c.update(data);
    c.finish()
}

/// A manifest with its Manifest-Checksum line computed here.
fn with_checksum(body: &str) -> Vec<u8> {
    let digest = hex(&sha2::Sha256::digest(body.as_bytes()));
    format!("{body}\"Manifest-Checksum\": \"{digest}\"}}\n").into_bytes()
}

const V1_BODY: &str = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\
\"Files\": [\n\
{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"8a744722\" },\n\
{ \"Encoded-Path\": \"626173652f312f31ff\", \"Size\": 0, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" },\n\
{ \"Path\": \"pg_tblspc/16384/PG_13_202007201/5/16385\", \"Size\": 5, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\" },\n\
{ \"Path\": \"postgresql.auto.conf\", \"Size\": 88, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"01020304\" }\n\
],\n\
\"WAL-Ranges\": [\n\
{ \"Timeline\": 2, \"Start-LSN\": \"0/5000000\", \"End-LSN\": \"0/5000100\" },\n\
{ \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"0/5000000\" }\n\
],\n";

#[test]
fn crc32c_is_shown_in_memory_order() {
    let mut c = Checksum::new("CRC32C").unwrap();
    c.update(b"1");
    c.update(b"5\n");
    assert_eq!(c.bytes(), 3);
    let shown = c.finish().unwrap();
    assert_eq!(
        u32::from_ne_bytes(unhex(&shown).unwrap().try_into().unwrap()),
        0x2247_748a
    );
    #[cfg(target_endian = "little")]
    assert_eq!(shown, "8a744722");
    assert_eq!(sum("crc32c", b"").as_deref(), Some("00000000"));
}

#[test]
fn sha_family_and_none() {
    assert_eq!(
        sum("SHA256", b"abc").as_deref(),
        Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert_eq!(
        sum("sha224", b"abc").as_deref(),
        Some("23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7")
    );
    assert_eq!(sum("Sha384", b"abc").unwrap().len(), 96);
    assert_eq!(
        sum("SHA512", b"abc").unwrap()[..16].to_owned(),
        "ddaf35a193617aba"
    );
    assert_eq!(sum("none", b"abc"), None);
    assert!(Checksum::new("MD5").is_err());
    // Streaming gives the same digest as one call.
    let mut c = Checksum::new("SHA256").unwrap();
    c.update(b"a");
    c.update(b"");
    c.update(b"bc");
    assert_eq!(c.finish(), sum("SHA256", b"abc"));
}

#[test]
fn parses_version_1_with_encoded_path_and_wal_ranges() {
    let bytes = with_checksum(V1_BODY);
    Manifest::check_own_checksum(&bytes).unwrap();
    let m = Manifest::parse(&bytes).unwrap();
    assert_eq!(m.version, 1);
    assert_eq!(m.system_identifier, None);
    assert_eq!(m.files.len(), 4);
    assert_eq!(m.files[0].path, b"PG_VERSION");
    assert_eq!(m.files[0].size, 3);
    assert_eq!(m.files[0].algorithm, ChecksumAlgorithm::Crc32c);
    assert_eq!(m.files[0].checksum.as_deref(), Some("8a744722"));
    assert_eq!(m.files[1].path, b"base/1/1\xff");
    assert_eq!(m.files[2].algorithm, ChecksumAlgorithm::None);
    assert_eq!(m.files[2].checksum, None);
    assert_eq!(m.position(b"base/1/1\xff"), Some(1));
    assert_eq!(
        m.wal_ranges,
        vec![
            WalRange {
                timeline: TimelineId(2),
                start: Lsn(0x500_0000),
                end: Lsn(0x500_0100)
            },
            WalRange {
                timeline: TimelineId(1),
                start: Lsn(0x400_0028),
                end: Lsn(0x500_0000)
            },
        ]
    );
}

#[test]
fn parses_version_2_with_system_identifier() {
    let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\
\"System-Identifier\": 7713394991026530012,\n\
\"Files\": [\n\
{ \"Path\": \"a \\\"q\\\"\", \"Size\": 1, \"Last-Modified\": \"2026-11-29 01:10:25 GMT\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"CA978112CA1BBDCAFAC231B39A23DC4DA786EFF8147C4E72B9807785AFEE48BB\" }\n\
],\n\
\"WAL-Ranges\": [\n\
{ \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"0/4000100\" }\n\
],\n";
    let bytes = with_checksum(body);
    Manifest::check_own_checksum(&bytes).unwrap();
    let m = Manifest::parse(&bytes).unwrap();
    assert_eq!(m.version, 2);
    assert_eq!(m.system_identifier, Some(7_713_394_991_026_530_012));
    assert_eq!(m.files[0].path, b"a \"q\"");
    // Hex is normalised to lowercase and matches what Checksum prints.
    assert_eq!(m.files[0].checksum, sum("SHA256", b"a"));
    // Version 2 without the system identifier is refused.
    let no_sysid = body.replace("\"System-Identifier\": 7713394991026530012,\n", "");
    assert!(Manifest::parse(&with_checksum(&no_sysid)).is_err());
}

#[test]
fn refuses_bad_manifests() {
    let cases = [
        V1_BODY.replace("Version\": 1", "Version\": 3"),
        V1_BODY.replace("\"Path\": \"PG_VERSION\", ", ""),
        V1_BODY.replace(
            "\"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"8a744722\"",
            "\"Checksum\": \"8a744722\"",
        ),
        V1_BODY.replace("8a744722", "8a74472"),
        V1_BODY.replace("CRC32C\", \"Checksum\": \"8a", "MD5\", \"Checksum\": \"8a"),
        V1_BODY.replace("626173652f312f31ff", "626173652f312f31f"),
        V1_BODY.replace("0/4000028", "0/40000g8"),
        V1_BODY.replace("postgresql.auto.conf", "PG_VERSION"),
        V1_BODY.replace("\"Size\": 3,", "\"Size\": -3,"),
    ];
    for body in cases {
        assert!(
            Manifest::parse(&with_checksum(&body)).is_err(),
            "accepted:\n{body}"
        );
    }
    let e = Manifest::parse(&with_checksum(
        &V1_BODY.replace("postgresql.auto.conf", "PG_VERSION"),
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "duplicate path name in backup manifest: \"PG_VERSION\""
    );
}

#[test]
fn own_checksum_catches_any_changed_byte() {
    let good = with_checksum(V1_BODY);
    Manifest::check_own_checksum(&good).unwrap();
    // A byte changed before the checksum line, JSON still valid.
    let mut bad = good.clone();
    let at = bad.windows(4).position(|w| w == b"2026").unwrap();
    bad[at + 3] = b'7';
    assert!(Manifest::parse(&bad).is_ok());
    assert!(matches!(
        Manifest::check_own_checksum(&bad),
        Err(ManifestError::ChecksumMismatch)
    ));
    // A changed checksum value.
    let text = String::from_utf8(good.clone()).unwrap();
    let digest_at = text.rfind(": \"").unwrap() + 3;
    let mut bad = good.clone();
    bad[digest_at] = if bad[digest_at] == b'0' { b'1' } else { b'0' };
    assert!(matches!(
        Manifest::check_own_checksum(&bad),
        Err(ManifestError::ChecksumMismatch)
    ));
    // Uppercase hex in the checksum line is accepted (PostgreSQL decodes either case).
    let upper = text[..digest_at].to_owned() + &text[digest_at..].to_ascii_uppercase();
    Manifest::check_own_checksum(upper.as_bytes()).unwrap();
    // No final newline, no checksum line, an invalid value.
    assert!(Manifest::check_own_checksum(&good[..good.len() - 1]).is_err());
    assert!(matches!(
        Manifest::check_own_checksum(V1_BODY.as_bytes()),
        Err(ManifestError::NoChecksum)
    ));
    let short = format!("{V1_BODY}\"Manifest-Checksum\": \"abc\"}}\n");
    assert!(matches!(
        Manifest::check_own_checksum(short.as_bytes()),
        Err(ManifestError::InvalidManifestChecksum(_))
    ));
    assert!(Manifest::check_own_checksum(b"").is_err());
}

#[test]
fn ignore_list_matches_whole_components() {
    assert!(is_ignored(b"pg_wal"));
    assert!(is_ignored(b"pg_wal/000000010000000000000001"));
    assert!(is_ignored(b"backup_manifest"));
    assert!(!is_ignored(b"pg_wal2/x"));
    assert!(!is_ignored(b"backup_manifest.tmp"));
    assert!(!is_ignored(b"base/1/postgresql.auto.conf"));
    assert!(is_ignored_by(&["base/1"], b"base/1/2"));
    assert!(!is_ignored_by(&["base/1"], b"base/12"));
}

#[test]
fn written_files_agree_with_the_manifest() {
    let m = Manifest::parse(&with_checksum(V1_BODY)).unwrap();
    let mut w = WrittenFiles::new();
    let mut c = Checksum::new("CRC32C").unwrap();
    c.update(b"15\n");
    w.record_checksum("PG_VERSION", c);
    w.record(b"base/1/1\xff".to_vec(), 0, sum("CRC32C", b""));
    w.record(
        "pg_tblspc/16384/PG_13_202007201/5/16385",
        5,
        sum("CRC32C", b"12345"),
    );
    // Ignored: changed by -R, streamed WAL.
    w.record("postgresql.auto.conf", 120, sum("CRC32C", b"x"));
    w.record("pg_wal/000000010000000000000004", 16 << 20, None);
    w.record("standby.signal", 0, sum("CRC32C", b""));
    assert_eq!(w.check(&m), vec![]);
    assert_eq!(w.len(), 6);
}

#[test]
fn written_files_report_every_kind_of_problem() {
    let m = Manifest::parse(&with_checksum(V1_BODY)).unwrap();
    let mut w = WrittenFiles::new();
    w.record("PG_VERSION", 3, sum("CRC32C", b"16\n"));
    w.record(b"base/1/1\xff".to_vec(), 8192, sum("CRC32C", b""));
    w.record("base/1/99999", 0, sum("CRC32C", b""));
    w.record("base/1/12345", 0, sum("CRC32C", b""));
    let problems = w.check(&m);
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec![
            "checksum mismatch for file \"PG_VERSION\"",
            "\"base/1/1\u{fffd}\" has size 8192 on disk but size 0 in the manifest",
            "\"pg_tblspc/16384/PG_13_202007201/5/16385\" is present in the manifest but not on disk",
            "\"base/1/12345\" is present on disk but not in the manifest",
            "\"base/1/99999\" is present on disk but not in the manifest",
        ]
    );
    assert_eq!(problems[1].path(), b"base/1/1\xff");

    // Another algorithm, or none, than the manifest's.
    let mut w = WrittenFiles::new();
    w.record("PG_VERSION", 3, sum("SHA256", b"15\n"));
    w.record(b"base/1/1\xff".to_vec(), 0, None);
    w.record("pg_tblspc/16384/PG_13_202007201/5/16385", 5, None);
    let problems = w.check(&m);
    assert_eq!(
        problems,
        vec![
            Problem::ChecksumLength {
                path: b"PG_VERSION".to_vec(),
                manifest: 4,
                computed: 32
            },
            Problem::NotChecksummed {
                path: b"base/1/1\xff".to_vec(),
                algorithm: ChecksumAlgorithm::Crc32c
            },
        ]
    );
}
