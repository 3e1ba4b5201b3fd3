//! The modes of everything a clone writes, against real servers, compared with what the real
//! pg_basebackup 18 writes for the same server and with the expected modes: with a primary
//! initialised with `initdb -g` (`data_directory_mode` 0750), every directory 0750 and every
//! file 0640 (plain with `-X stream -R`, with and without `--waldir`, and tar with
//! `-X stream -R`, the archives' members included), whatever the umask; with a default
//! primary, and with a 10 server (which has no group access), 0700 and 0600 even with umask
//! 000. The group-readable clone starts as a standby that keeps group access and replays what
//! the primary writes after the clone.
//!
//! Two known differences are allowed: pg_basebackup 18 gives the members of `pg_wal.tar` 0600
//! even with group access, where pgclone gives them the clone's file mode like everything else;
//! and the file holding `-R`'s settings (here with the password) is 0600 with pgclone, where
//! pg_basebackup 18 writes it 0640 with group access.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use pgclone_proto::tar::{MemberKind, TarEvent, TarSplitter};
use support::{as_pg_user, checked_output, dropin, tools_bin, Cluster, ClusterOptions, TestDir};

const PASSWORD: &str = "modes-pw";

/// The modes a clone's directories and files must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    dir: u32,
    file: u32,
}

const GROUP: Want = Want {
    dir: 0o750,
    file: 0o640,
};
const PRIVATE: Want = Want {
    dir: 0o700,
    file: 0o600,
};

/// What is written: path (relative to the run's root, or `<archive>:<member>`) to kind
/// (`'d'` or `'f'`) and mode. Symbolic links have no mode of their own and are left out.
type Tree = BTreeMap<String, (char, u32)>;

/// The output layouts compared.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `-F p -X stream -R`.
    Plain,
    /// `-F p -X stream -R --waldir`.
    PlainWaldir,
    /// `-F t -X stream -R`.
    Tar,
}

impl Shape {
    /// The arguments for a run whose output lands under `root` (which does not exist: the tool
    /// creates it, as a missing parent of the data directory).
    fn args(self, root: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-X".into(), "stream".into(), "-R".into()];
        args.push("-D".into());
        args.push(self.dest(root).into());
        match self {
            Self::Plain => {}
            Self::PlainWaldir => {
                args.push("--waldir".into());
                args.push(root.join("wal").into());
            }
            Self::Tar => args.extend(["-F".into(), "t".into()]),
        }
        args
    }

    /// The data directory (or the tar files' directory) under `root`.
    fn dest(self, root: &Path) -> PathBuf {
        root.join("new").join("data")
    }
}

/// Runs `cmd` with `umask` set in the child.
fn with_umask(mut cmd: Command, umask: u32) -> Command {
    // SAFETY: umask is async-signal-safe and touches nothing but the child's own mask.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    cmd
}

/// `program` (pgclone, or pg_basebackup 18: the same arguments) clones `primary` as `shape`
/// says under `root`, with `umask`.
fn clone_with(program: &Path, primary: &Cluster, shape: Shape, root: &Path, umask: u32) {
    let mut cmd = as_pg_user(program);
    cmd.args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
        .args(["-U", "replication", "-c", "fast"])
        .args(shape.args(root))
        .env("PGPASSWORD", PASSWORD);
    let what = format!("{} {shape:?}", program.display());
    checked_output(&mut with_umask(cmd, umask), &what);
}

/// Every directory and file under `root` (itself included, as `.`), links not followed.
fn walk(root: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let rel = path.strip_prefix(root).expect("under root");
        let rel = if rel.as_os_str().is_empty() {
            ".".to_owned()
        } else {
            rel.display().to_string()
        };
        let mode = meta.mode() & 0o7777;
        if meta.is_dir() {
            tree.insert(rel, ('d', mode));
            for entry in fs::read_dir(&path).expect("read_dir") {
                stack.push(entry.expect("entry").path());
            }
        } else if meta.is_file() {
            tree.insert(rel, ('f', mode));
        }
    }
    tree
}

/// The directory and file members of the tar archive `path`, as `<file name>:<member>`.
fn tar_members(path: &Path) -> Tree {
    let archive = path.file_name().expect("name").to_string_lossy();
    let mut splitter = TarSplitter::new();
    splitter
        .handle_data(Bytes::from(fs::read(path).expect("read archive")))
        .expect("parse archive");
    splitter.finish().expect("complete archive");
    let mut tree = Tree::new();
    while let Some(event) = splitter.poll_event() {
        if let TarEvent::Member(m) = event {
            let kind = match m.kind {
                MemberKind::Directory => 'd',
                MemberKind::File => 'f',
                _ => continue,
            };
            let name = String::from_utf8_lossy(&m.name);
            let name = name.trim_end_matches('/');
            tree.insert(format!("{archive}:{name}"), (kind, m.mode & 0o7777));
        }
    }
    tree
}

/// What a run wrote under `root`: the tree, plus the members of the archives it holds.
fn written(shape: Shape, root: &Path) -> Tree {
    let mut tree = walk(root);
    if let Shape::Tar = shape {
        for name in ["base.tar", "pg_wal.tar"] {
            tree.extend(tar_members(&shape.dest(root).join(name)));
        }
    }
    tree
}

/// The entries of `tree` whose mode is not `want`'s.
fn unexpected(who: &str, tree: &Tree, want: Want, major: u32) -> Vec<String> {
    tree.iter()
        .filter_map(|(path, &(kind, mode))| {
            let expected = match kind {
                'd' => want.dir,
                _ if holds_password(path, major) => want.file & 0o600,
                _ => want.file,
            };
            (mode != expected)
                .then(|| format!("{who}: {path} ({kind}) is {mode:o}, expected {expected:o}"))
        })
        .collect()
}

/// The file `-R` writes its settings into, which holds the password the clones connect with
/// (`PGPASSWORD`): owner-only whatever the clone's mode. `postgresql.auto.conf` on 12+,
/// `recovery.conf` before.
fn holds_password(path: &str, major: u32) -> bool {
    let name = path.rsplit(['/', ':']).next().unwrap_or(path);
    name == if major >= 12 {
        "postgresql.auto.conf"
    } else {
        "recovery.conf"
    }
}

/// `path` with every WAL segment name (24 hex digits) replaced, so that the two tools' files
/// compare although they streamed different segments.
fn class(path: &str) -> String {
    let mut out = String::new();
    let mut hex = String::new();
    for c in path.chars().chain(std::iter::once('/')) {
        if c.is_ascii_digit() || ('A'..='F').contains(&c) {
            hex.push(c);
            continue;
        }
        if hex.len() == 24 {
            out.push_str("<segment>");
        } else {
            out.push_str(&hex);
        }
        hex.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// The entries both tools wrote (by [`class`]) whose modes differ. With group access, the
/// members of `pg_wal.tar` and the settings file are left out (the known differences, see the
/// module documentation).
fn differences(ours: &Tree, theirs: &Tree, want: Want, major: u32) -> Vec<String> {
    let classes = |tree: &Tree| {
        let mut map: BTreeMap<String, BTreeSet<(char, u32)>> = BTreeMap::new();
        for (path, entry) in tree {
            map.entry(class(path)).or_default().insert(*entry);
        }
        map
    };
    let (ours, theirs) = (classes(ours), classes(theirs));
    ours.iter()
        .filter(|(path, _)| {
            !(want == GROUP && (path.starts_with("pg_wal.tar:") || holds_password(path, major)))
        })
        .filter_map(|(path, modes)| {
            let other = theirs.get(path)?;
            (modes != other).then(|| {
                format!(
                    "{path}: pgclone {}, pg_basebackup 18 {}",
                    show(modes),
                    show(other)
                )
            })
        })
        .collect()
}

/// Kinds and modes, in octal.
fn show(modes: &BTreeSet<(char, u32)>) -> String {
    let shown: Vec<String> = modes.iter().map(|(k, m)| format!("{k} {m:o}")).collect();
    shown.join(", ")
}

/// Clones `primary` as `shape` with pgclone and with pg_basebackup 18 (both with `umask`) into
/// fresh roots under `work`; returns the root of pgclone's run and every mismatch: with the
/// expected modes, and between the two tools.
fn compare(
    primary: &Cluster,
    work: &TestDir,
    shape: Shape,
    want: Want,
    umask: u32,
) -> (PathBuf, Vec<String>) {
    let ours = work.join(&format!("{shape:?}-pgclone"));
    let theirs = work.join(&format!("{shape:?}-pg_basebackup"));
    // pgclone (or what stands in for it: `PGCLONE_STAND_IN`).
    clone_with(&dropin::stand_in(), primary, shape, &ours, umask);
    clone_with(
        &tools_bin(18).join("pg_basebackup"),
        primary,
        shape,
        &theirs,
        umask,
    );
    let (ours_tree, theirs_tree) = (written(shape, &ours), written(shape, &theirs));
    assert!(
        ours_tree.len() > 100,
        "{shape:?}: pgclone wrote only {:?}",
        ours_tree
    );
    let mut problems = unexpected(
        &format!("pgclone {shape:?}"),
        &ours_tree,
        want,
        primary.major,
    );
    problems.extend(
        differences(&ours_tree, &theirs_tree, want, primary.major)
            .into_iter()
            .map(|d| format!("{shape:?}: {d}")),
    );
    (ours, problems)
}

/// A primary of `major` (`initdb -g` when `group`) that `replication` reaches with a password
/// over TCP.
fn primary(major: u32, group: bool) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    opts.group_access = group;
    opts.hba = vec!["host replication replication 127.0.0.1/32 scram-sha-256".into()];
    // The clone started streams from its backup's end after the other runs' checkpoints.
    opts.conf = vec![if major >= 13 {
        "wal_keep_size = '512MB'".into()
    } else {
        "wal_keep_segments = 32".into()
    }];
    let primary = Cluster::start(&opts);
    primary.create_replication_role(PASSWORD, "scram-sha-256");
    primary
}

/// Every shape compared on a group-access primary of `major` under umask 077, then the plain
/// clone started: in recovery, still group-readable, replaying what the primary writes.
fn group_access(major: u32) {
    let primary = primary(major, true);
    assert_eq!(primary.psql("SHOW data_directory_mode"), "0750");
    let work = TestDir::new("modes");
    let mut problems = Vec::new();
    let mut plain = None;
    for shape in [Shape::Plain, Shape::PlainWaldir, Shape::Tar] {
        let (root, p) = compare(&primary, &work, shape, GROUP, 0o077);
        problems.extend(p);
        if let Shape::Plain = shape {
            plain = Some(shape.dest(&root));
        }
    }
    assert!(
        problems.is_empty(),
        "modes of a clone of a group-access {major} server:\n{}",
        problems.join("\n")
    );

    let copy = Cluster::start_existing(major, &plain.expect("plain clone"), &[]);
    copy.wait_for("SELECT pg_is_in_recovery()", "t", Duration::from_secs(60));
    assert_eq!(copy.psql("SHOW data_directory_mode"), "0750");
    primary.psql("CREATE TABLE after_clone AS SELECT 42 AS x");
    copy.wait_for_replay(&primary.current_lsn());
    assert_eq!(copy.psql("SELECT x FROM after_clone"), "42");
}

/// Every shape compared on a default primary of `major` under umask 000: owner only.
fn owner_only(major: u32, shapes: &[Shape]) {
    let primary = primary(major, false);
    let work = TestDir::new("modes");
    let mut problems = Vec::new();
    for &shape in shapes {
        problems.extend(compare(&primary, &work, shape, PRIVATE, 0o000).1);
    }
    assert!(
        problems.is_empty(),
        "modes of a clone of a default {major} server:\n{}",
        problems.join("\n")
    );
}

#[test]
fn group_access_11_gives_0750_and_0640_everywhere_as_pg_basebackup() {
    group_access(11);
}

#[test]
fn group_access_18_gives_0750_and_0640_everywhere_as_pg_basebackup() {
    group_access(18);
}

#[test]
fn default_18_gives_0700_and_0600_everywhere_even_with_umask_000() {
    owner_only(18, &[Shape::Plain, Shape::PlainWaldir, Shape::Tar]);
}

#[test]
fn pg10_without_group_access_gives_0700_and_0600() {
    owner_only(10, &[Shape::Plain, Shape::Tar]);
}

#[test]
fn wal_segment_names_are_classed_together() {
    assert_eq!(
        class("new/data/pg_wal/archive_status/000000010000000000000003.done"),
        "new/data/pg_wal/archive_status/<segment>.done"
    );
    assert_eq!(
        class("pg_wal.tar:00000002.history"),
        "pg_wal.tar:00000002.history"
    );
    assert_eq!(
        class("new/data/base/16384/1259"),
        "new/data/base/16384/1259"
    );
}
