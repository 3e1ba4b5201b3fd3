//! A compromised server (the scripted fake in `support::fake`) must not make pgclone write
//! outside its destination, even as root: hostile archive members, absurd lengths and
//! truncated streams each end in exit 1, one clear error line, and nothing left behind.

mod support;

use std::fs;

use pgclone_proto::tar::MemberKind;
use pgclone_proto::testutil::{self, TarMember};
use support::{fake, pgclone_cmd, TestDir};

/// Tar bytes for `(name, kind, contents, link target)` members, padded, unterminated.
fn tar(members: &[TarMember<'_>]) -> Vec<u8> {
    testutil::tar(members, 0o600)
}

/// A BASE_BACKUP reply holding one base archive with these bytes, sent in 1000-byte chunks.
fn reply_with_archive(archive: &[u8]) -> Vec<u8> {
    let mut out = fake::backup_prologue();
    for chunk in archive.chunks(1000) {
        let mut payload = vec![b'd'];
        payload.extend_from_slice(chunk);
        out.extend(fake::copy_data(&payload));
    }
    out.extend(fake::copy_data(b"d"));
    out.extend(fake::backup_epilogue());
    out
}

/// Runs against the reply twice: with `--compress=none` (archives written by the reading task)
/// and with the default `auto`, which asks the fake 15 server for lz4 over TCP (archives go
/// through the decompressing thread, whatever their name says).
fn run_against(reply: Vec<u8>, needle: &str) {
    run_against_with(reply.clone(), &["--compress=none"], needle);
    run_against_with(reply, &[], needle);
}

fn run_against_with(reply: Vec<u8>, extra: &[&str], needle: &str) {
    let port = fake::start(reply);
    let work = TestDir::new("hostile");
    let outside = work.mkdir("outside");
    let out = work.mkdir("out");
    let dest = out.join("copy");
    let run = pgclone_cmd()
        .server(port, "x")
        .dest(&dest)
        .args(["-X", "fetch", "--timeout", "5"])
        .args(extra)
        .direct()
        .run();
    eprintln!("{}", run.stderr.trim_end());
    run.assert_error(needle);
    assert_eq!(
        fs::read_dir(&out).expect("out").count(),
        0,
        "left behind:\n{}",
        run.stderr
    );
    assert_eq!(
        fs::read_dir(&outside).expect("outside").count(),
        0,
        "wrote outside:\n{}",
        run.stderr
    );
}

#[test]
fn symlink_then_file_through_it_is_refused() {
    // The attack that makes pg_basebackup write /etc/x as root: `evil -> /etc`, then `evil/x`.
    let work = TestDir::new("target");
    let target = work.mkdir("etc");
    let archive = tar(&[
        (
            "evil/",
            MemberKind::Symlink,
            b"",
            Some(target.to_str().expect("utf8")),
        ),
        ("evil/x", MemberKind::File, b"pwned", None),
    ]);
    run_against(
        reply_with_archive(&archive),
        "tar member \"evil/\" in base.tar is unsafe",
    );
    assert_eq!(fs::read_dir(&target).expect("target").count(), 0);
    assert!(!work.join("evil").exists());
}

#[test]
fn escaping_and_special_members_are_refused() {
    for (members, needle) in [
        (
            vec![("../escape", MemberKind::File, &b"x"[..], None)],
            "path contains \"..\"",
        ),
        (
            vec![("/tmp/abs", MemberKind::File, &b"x"[..], None)],
            "absolute path",
        ),
        (
            vec![
                ("global/", MemberKind::Directory, &b""[..], None),
                ("global/../../x", MemberKind::File, &b"x"[..], None),
            ],
            "path contains \"..\"",
        ),
        (
            vec![(
                "hard",
                MemberKind::Other(b'1'),
                &b""[..],
                Some("/etc/passwd"),
            )],
            "unsupported member type '1'",
        ),
        (
            vec![("fifo", MemberKind::Other(b'6'), &b""[..], None)],
            "unsupported member type '6'",
        ),
        (
            vec![("dev", MemberKind::Other(b'3'), &b""[..], None)],
            "unsupported member type '3'",
        ),
    ] {
        run_against(reply_with_archive(&tar(&members)), needle);
    }
}

#[test]
fn file_beneath_a_tablespace_link_is_refused() {
    let work = TestDir::new("ts");
    let location = work.join("ts");
    let loc = location.to_str().expect("utf8");
    let mut reply =
        fake::backup_header(&[[Some("16400"), Some(loc), Some("1")], fake::MAIN_TABLESPACE]);
    reply.extend(fake::copy_out());
    reply.extend(fake::copy_data(format!("n16400.tar\0{loc}\0").as_bytes()));
    reply.extend(fake::copy_data(&[&b"d"[..], &[0u8; 1024][..]].concat()));
    reply.extend(fake::copy_data(b"nbase.tar\0\0"));
    let archive = tar(&[
        ("pg_tblspc/", MemberKind::Directory, b"", None),
        ("pg_tblspc/16400/", MemberKind::Symlink, b"", Some("/etc")),
        ("pg_tblspc/16400/x", MemberKind::File, b"pwned", None),
    ]);
    reply.extend(fake::copy_data(&[&b"d"[..], &archive[..]].concat()));
    reply.extend(fake::backup_epilogue());
    run_against(reply, "lies beneath the symbolic link");
    assert!(
        !location.exists(),
        "the tablespace directory pgclone created is removed"
    );
}

#[test]
fn relative_tablespace_location_is_refused() {
    let reply = fake::backup_header(&[
        [Some("16400"), Some("../../outside"), Some("1")],
        fake::MAIN_TABLESPACE,
    ]);
    run_against(
        reply,
        "tablespace location \"../../outside\" from the server is unsafe",
    );
}

#[test]
fn absurd_length_and_truncated_streams_fail_cleanly() {
    let mut absurd = fake::backup_prologue();
    absurd.extend_from_slice(&[b'd', 0x7f, 0xff, 0xff, 0xff]);
    absurd.extend_from_slice(&[0u8; 4096]);
    run_against(absurd, "more than the 4194304 bytes accepted");

    let archive = tar(&[
        ("global/", MemberKind::Directory, b"", None),
        ("global/pg_control", MemberKind::File, &[7u8; 8192], None),
    ]);
    let mut truncated = fake::backup_prologue();
    truncated.extend(fake::copy_data(&[&b"d"[..], &archive[..3000]].concat()));
    run_against(truncated, "server closed the connection");

    // A whole reply whose archive stops in the middle of a member.
    run_against(
        reply_with_archive(&archive[..3000]),
        "invalid archive base.tar",
    );
}

#[test]
fn compressed_archive_nobody_asked_for_is_refused() {
    let mut reply = fake::backup_prologue();
    let plain = b"nbase.tar\0\0";
    let tail = reply.split_off(reply.len() - fake::copy_data(plain).len());
    assert_eq!(
        tail,
        fake::copy_data(plain),
        "prologue ends with the archive name"
    );
    reply.extend(fake::copy_data(b"nbase.tar.gz\0\0"));
    reply.extend(fake::copy_data(b"d\x1f\x8b\x08\0\0\0\0\0\0\x03"));
    reply.extend(fake::backup_epilogue());
    run_against_with(
        reply,
        &["--compress=none"],
        "the server sent the compressed archive base.tar.gz without being asked to compress",
    );
}
