//! pgclone installed as `pg_basebackup` for the orchestrator tests (Patroni, repmgr, Barman):
//! a bin directory of symlinks to a PostgreSQL toolset where `pg_basebackup` is pgclone, and the
//! Python tools from `scripts/testbed venv`.
//!
//! `PGCLONE_STAND_IN=/path/to/binary` replaces pgclone in that directory (e.g. `/bin/false`):
//! the orchestrator tests must then fail, which shows they exercise what stands in.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::{chown_to_pg_user, pgclone_exe, TestDir};

/// What runs as `pg_basebackup`: pgclone, or `PGCLONE_STAND_IN` when set.
pub fn stand_in() -> PathBuf {
    match std::env::var_os("PGCLONE_STAND_IN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => pgclone_exe().to_path_buf(),
    }
}

/// `dir/<name>`: a bin directory holding a symlink to every executable of `sources` (the
/// first source that has a name wins) and `pg_basebackup` linked to [`stand_in`].
pub fn bin_dir(work: &TestDir, name: &str, sources: &[&Path]) -> PathBuf {
    let dir = work.mkdir(name);
    for source in sources {
        for entry in fs::read_dir(source).expect("read bin dir") {
            let entry = entry.expect("bin entry");
            let link = dir.join(entry.file_name());
            if entry.file_name() != "pg_basebackup" && !link.exists() {
                symlink(entry.path(), &link).expect("symlink tool");
            }
        }
    }
    symlink(stand_in(), dir.join("pg_basebackup")).expect("symlink pg_basebackup");
    chown_to_pg_user(&dir);
    dir
}

/// The bin directory of the virtualenv holding `tool` (`patroni`, `barman`), installed by
/// `scripts/testbed venv` on first use. Outside CI (`CI` unset) a tool that cannot be installed
/// skips the test with a loud message (`None`); in CI it fails the test.
pub fn venv(tool: &str) -> Option<PathBuf> {
    let out = std::process::Command::new(super::repo().join("scripts/testbed"))
        .args(["venv", tool])
        .output()
        .expect("run scripts/testbed");
    if out.status.success() {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        return Some(PathBuf::from(dir));
    }
    missing(tool, &String::from_utf8_lossy(&out.stderr))
}

/// A system program the test needs (`etcd`, repmgr's `repmgr`): its path, or a loud skip
/// outside CI (a failure in CI).
pub fn system_tool(path: &str, package: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    if p.exists() {
        return Some(p);
    }
    missing(path, &format!("install Debian's {package}"))
}

fn missing(tool: &str, why: &str) -> Option<PathBuf> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(!ci, "{tool} is not available in CI: {why}");
    eprintln!("\n*** SKIPPED: {tool} is not available here: {why} ***\n");
    None
}
