//! `pgclone verify` against the real `pg_verifybackup`: plain clones of real servers (13 with
//! `-X fetch`, 17 streamed, 16 with a tablespace relocated by `-T`, 18 with SHA256 manifest
//! checksums, 15 with none and `--manifest-force-encode`) must be accepted by both, and every
//! deliberately damaged copy (a flipped byte in a relation file, a truncated file, an extra
//! file, a deleted file, a manifest whose own checksum fails, a missing WAL segment, a zeroed
//! WAL page header) rejected by both (without checksums a flipped byte goes unnoticed by both).
//!
//! pg_verifybackup parses WAL only for its own major, so on 13 (checked with the 18 toolset
//! and `-n`) only pgclone can notice the missing WAL segment.

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgclone::manifest::Manifest;
use pgclone_proto::WalSegSize;
use support::{create_table_t, pgclone_cmd, verify_backup, Cluster, ClusterOptions, TestDir};

struct Case {
    major: u32,
    wal_method: &'static str,
    tablespace: bool,
    checksums: Option<&'static str>,
    force_encode: bool,
}

/// A clone of a small database, and where its table's first relation file is.
struct Prepared {
    _primary: Cluster,
    work: TestDir,
    dest: PathBuf,
    /// `pg_relation_filepath('t')`, relative to the backup directory.
    relfile: String,
}

fn prepare(case: &Case) -> Prepared {
    let primary = Cluster::start(&ClusterOptions::new(case.major));
    let work = TestDir::new("verify");
    let table = create_table_t(&primary, &work, case.tablespace, "; CHECKPOINT");
    let relfile = primary.psql("SELECT pg_relation_filepath('t')");
    let dest = work.join("copy");
    let mut cmd = pgclone_cmd();
    cmd.server(primary.port, "postgres")
        .dest(&dest)
        .args(["-X", case.wal_method, "-c", "fast"]);
    if let Some(mapping) = &table.mapping {
        cmd.args(["-T", mapping]);
    }
    if let Some(alg) = case.checksums {
        cmd.args(["--manifest-checksums", alg]);
    }
    if case.force_encode {
        cmd.arg("--manifest-force-encode");
    }
    cmd.run().assert_ok();
    let manifest = fs::read_to_string(dest.join("backup_manifest")).expect("manifest");
    assert_eq!(
        manifest.contains("\"Encoded-Path\""),
        case.force_encode,
        "{manifest}"
    );
    if case.tablespace {
        assert!(relfile.starts_with("pg_tblspc/"), "{relfile}");
    }
    Prepared {
        _primary: primary,
        work,
        dest,
        relfile,
    }
}

/// `cp -a` of a backup; tablespaces (the targets of `pg_tblspc/<oid>`) are copied too and the
/// links pointed at the copies, so that damaging the copy leaves the original intact.
fn copy_backup(src: &Path, dst: &Path) {
    cp_a(src, dst);
    let Ok(links) = fs::read_dir(dst.join("pg_tblspc")) else {
        return;
    };
    for link in links {
        let link = link.expect("entry").path();
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        let oid = link
            .file_name()
            .expect("oid")
            .to_string_lossy()
            .into_owned();
        let copied = PathBuf::from(format!("{}-ts-{oid}", dst.display()));
        cp_a(&target, &copied);
        fs::remove_file(&link).expect("remove link");
        symlink(&copied, &link).expect("link");
    }
}

fn cp_a(src: &Path, dst: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        src.display(),
        dst.display()
    );
}

fn pgclone_verify(dir: &Path, extra: &[&str]) -> support::Run {
    pgclone_cmd().arg("verify").args(extra).arg(dir).run()
}

/// The name of the first WAL segment the backup needs.
fn first_wal_segment(dir: &Path) -> String {
    let bytes = fs::read(dir.join("backup_manifest")).expect("manifest");
    let manifest = Manifest::parse(&bytes).expect("parse manifest");
    let range = manifest.wal_ranges.last().expect("a WAL range");
    range
        .start
        .segment(WalSegSize::DEFAULT)
        .file_name(range.timeline, WalSegSize::DEFAULT)
}

/// One way to damage a copy, and what pgclone verify must say about it.
struct Damage {
    name: &'static str,
    apply: Box<dyn Fn(&Path)>,
    /// The one error line must contain this.
    message: String,
    /// Whether pg_verifybackup (as support::verify_backup runs it) can notice.
    pg_notices: bool,
    /// Whether anything can notice (a flipped byte without checksums cannot be noticed).
    detectable: bool,
}

fn damages(case: &Case, p: &Prepared) -> Vec<Damage> {
    let rel = p.relfile.clone();
    let relation_size = fs::metadata(p.dest.join(&rel)).expect("relation").len();
    assert!(relation_size > 8192, "{rel} has {relation_size} bytes");
    let rel_dir = Path::new(&rel)
        .parent()
        .expect("parent")
        .to_string_lossy()
        .into_owned();
    let extra = format!("{rel_dir}/999999");
    let segment = first_wal_segment(&p.dest);
    let with_checksums = case.checksums != Some("NONE");
    vec![
        Damage {
            name: "flipped byte",
            apply: Box::new({
                let rel = rel.clone();
                move |d| {
                    let path = d.join(&rel);
                    let mut data = fs::read(&path).expect("read");
                    data[100] ^= 0x40;
                    fs::write(&path, data).expect("write");
                }
            }),
            message: format!("checksum mismatch for file \"{rel}\""),
            pg_notices: with_checksums,
            detectable: with_checksums,
        },
        Damage {
            name: "truncated file",
            apply: Box::new({
                let rel = rel.clone();
                move |d| {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(d.join(&rel))
                        .expect("open");
                    f.set_len(8192).expect("truncate");
                }
            }),
            message: format!(
                "\"{rel}\" has size 8192 on disk but size {relation_size} in the manifest"
            ),
            pg_notices: true,
            detectable: true,
        },
        Damage {
            name: "extra file",
            apply: Box::new({
                let extra = extra.clone();
                move |d| fs::write(d.join(&extra), b"extra").expect("write")
            }),
            message: format!("\"{extra}\" is present on disk but not in the manifest"),
            pg_notices: true,
            detectable: true,
        },
        Damage {
            name: "deleted file",
            apply: Box::new({
                let rel = rel.clone();
                move |d| fs::remove_file(d.join(&rel)).expect("remove")
            }),
            message: format!("\"{rel}\" is present in the manifest but not on disk"),
            pg_notices: true,
            detectable: true,
        },
        Damage {
            name: "damaged manifest",
            apply: Box::new(|d| {
                let path = d.join("backup_manifest");
                let mut data = fs::read(&path).expect("read");
                let key = b"\"Last-Modified\": \"";
                let at = data
                    .windows(key.len())
                    .position(|w| w == key)
                    .expect("Last-Modified")
                    + key.len()
                    + 3;
                data[at] = if data[at] == b'0' { b'1' } else { b'0' };
                fs::write(&path, data).expect("write");
            }),
            message: "manifest checksum mismatch".into(),
            pg_notices: true,
            detectable: true,
        },
        Damage {
            name: "missing WAL segment",
            apply: Box::new({
                let segment = segment.clone();
                move |d| fs::remove_file(d.join("pg_wal").join(&segment)).expect("remove")
            }),
            message: "missing".into(),
            pg_notices: case.major >= 14,
            detectable: true,
        },
        Damage {
            name: "zeroed WAL page header",
            apply: Box::new({
                let segment = segment.clone();
                move |d| {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(d.join("pg_wal").join(&segment))
                        .expect("open");
                    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 40], 0).expect("write");
                }
            }),
            message: format!(
                "WAL segment \"pg_wal/{segment}\" has an invalid page header: xlp_info 0x0000 lacks XLP_LONG_HEADER"
            ),
            pg_notices: case.major >= 14,
            detectable: true,
        },
    ]
}

fn check_agreement(case: Case) {
    let p = prepare(&case);

    // The good backup: both accept it.
    if let Err(e) = verify_backup(case.major, &p.dest) {
        panic!("pg_verifybackup rejects the clone of {}: {e}", case.major);
    }
    let run = pgclone_verify(&p.dest, &[]);
    run.assert_ok();
    assert_eq!(run.stdout, "backup successfully verified\n");
    assert_eq!(run.stderr, "");
    let run = pgclone_verify(&p.dest, &["-q"]);
    run.assert_ok();
    assert_eq!(run.stdout, "");

    for (i, damage) in damages(&case, &p).into_iter().enumerate() {
        let copy = p.work.join(&format!("damaged-{i}"));
        copy_backup(&p.dest, &copy);
        (damage.apply)(&copy);
        let ours = pgclone_verify(&copy, &[]);
        let theirs = verify_backup(case.major, &copy);
        if damage.detectable {
            ours.assert_error(&damage.message);
            assert!(
                !ours.stdout.contains("successfully"),
                "{}: {}",
                damage.name,
                ours.stdout
            );
        } else {
            assert!(
                ours.status.success(),
                "{}: pgclone verify: {}",
                damage.name,
                ours.stderr
            );
        }
        match (damage.pg_notices, &theirs) {
            (true, Ok(out)) => panic!(
                "{} {}: pg_verifybackup accepts the damaged copy, pgclone verify says {:?}\n{out}",
                case.major, damage.name, ours.stderr
            ),
            (false, Err(out)) => panic!(
                "{} {}: pg_verifybackup rejects a copy thought undetectable for it:\n{out}",
                case.major, damage.name
            ),
            _ => {}
        }
        fs::remove_dir_all(&copy).expect("remove copy");
    }
    // The original is untouched by all this.
    pgclone_verify(&p.dest, &["-q"]).assert_ok();
}

#[test]
fn pg13_fetch() {
    check_agreement(Case {
        major: 13,
        wal_method: "fetch",
        tablespace: false,
        checksums: None,
        force_encode: false,
    });
}

#[test]
fn pg17_stream() {
    check_agreement(Case {
        major: 17,
        wal_method: "stream",
        tablespace: false,
        checksums: None,
        force_encode: false,
    });
}

#[test]
fn pg16_tablespace_mapped() {
    check_agreement(Case {
        major: 16,
        wal_method: "stream",
        tablespace: true,
        checksums: None,
        force_encode: false,
    });
}

#[test]
fn pg18_sha256_checksums() {
    check_agreement(Case {
        major: 18,
        wal_method: "stream",
        tablespace: false,
        checksums: Some("SHA256"),
        force_encode: false,
    });
}

#[test]
fn pg15_no_checksums_encoded_paths() {
    check_agreement(Case {
        major: 15,
        wal_method: "fetch",
        tablespace: false,
        checksums: Some("NONE"),
        force_encode: true,
    });
}

#[test]
fn usage_errors_and_missing_manifest() {
    let run = pgclone_cmd().arg("verify").run();
    run.assert_error("no backup directory specified");
    assert!(
        run.stderr.contains("pgclone verify --help"),
        "{}",
        run.stderr
    );
    pgclone_cmd()
        .args(["verify", "-x", "dir"])
        .run()
        .assert_error("invalid option -- 'x'");
    let run = pgclone_cmd().args(["verify", "--help"]).run();
    run.assert_ok();
    assert!(run.stdout.contains("--no-parse-wal"), "{}", run.stdout);
    let work = TestDir::new("verify-empty");
    pgclone_verify(work.path(), &[]).assert_error("backup_manifest\": No such file or directory");
    // pg_basebackup flags still reach the clone command.
    let run = pgclone_cmd().arg("--version").run();
    run.assert_ok();
}
