//! Relation segment files as a base backup names them (`base/<db>/<relfilenode>[_fork][.<segno>]`
//! and its `global/` and `pg_tblspc/` spellings), and [`Limits`]: the WAL summaries' limit block
//! of each relation fork (PostgreSQL 17+), mapped onto those files.
//!
//! A limit block is what the WAL summarizer records when a fork was created or dropped (0) or
//! truncated (the smallest length it was cut to) within the summarized range. Blocks of a fork
//! at or beyond its limit that no WAL record of the range touched afterwards hold nothing the
//! primary still has: an in-place refresh must not take them from the prior copy (see
//! [`crate::incremental::Header::plan_limited`]).
//!
//! Nothing here reads files or talks to a server.

use std::collections::BTreeMap;

use crate::incremental::RELSEG_SIZE;

/// `pg_global`'s oid: relations shared by all databases, in `global/`.
pub const GLOBAL_TABLESPACE: u32 = 1664;

/// `pg_default`'s oid: relations in `base/<db>/`.
pub const DEFAULT_TABLESPACE: u32 = 1663;

/// A relation fork (`ForkNumber`), numbered as the server numbers it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Fork {
    /// 0: the relation's data, no file name suffix.
    Main,
    /// 1: the free space map, `_fsm`.
    Fsm,
    /// 2: the visibility map, `_vm`.
    Vm,
    /// 3: an unlogged relation's init fork, `_init`.
    Init,
}

impl Fork {
    /// The fork with the server's number `n`.
    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            0 => Some(Self::Main),
            1 => Some(Self::Fsm),
            2 => Some(Self::Vm),
            3 => Some(Self::Init),
            _ => None,
        }
    }

    /// The file name suffix (`""` for the main fork).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Main => "",
            Self::Fsm => "_fsm",
            Self::Vm => "_vm",
            Self::Init => "_init",
        }
    }
}

/// One fork of one relation: `(reltablespace, reldatabase, relfilenode, forknum)`, as
/// `pg_wal_summary_contents()` reports it (database 0 for `global`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RelFork {
    /// The tablespace's oid ([`DEFAULT_TABLESPACE`], [`GLOBAL_TABLESPACE`] or another).
    pub tablespace: u32,
    /// The database's oid, 0 for shared relations.
    pub database: u32,
    /// The file number.
    pub relfilenode: u32,
    /// The fork.
    pub fork: Fork,
}

/// One segment file of a fork: segment `segno` holds blocks `segno * RELSEG_SIZE` onwards.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegmentFile {
    /// The fork.
    pub fork: RelFork,
    /// The segment number (0: no `.<segno>` suffix).
    pub segno: u32,
}

impl SegmentFile {
    /// The fork's block number of the segment's first block.
    pub fn first_block(&self) -> u64 {
        u64::from(self.segno) * u64::from(RELSEG_SIZE)
    }

    /// The path relative to the data directory, as the manifest and the base archive name it.
    /// `version_dir` is the tablespace's `PG_<major>_<catversion>` directory; it is used only
    /// for tablespaces other than `pg_default` and `pg_global`.
    pub fn path(&self, version_dir: &str) -> String {
        let f = &self.fork;
        let mut name = format!("{}{}", f.relfilenode, f.fork.suffix());
        if self.segno > 0 {
            name.push_str(&format!(".{}", self.segno));
        }
        match f.tablespace {
            GLOBAL_TABLESPACE => format!("global/{name}"),
            DEFAULT_TABLESPACE => format!("base/{}/{name}", f.database),
            spc => format!("pg_tblspc/{spc}/{version_dir}/{}/{name}", f.database),
        }
    }

    /// The segment file a path relative to the data directory names (the inverse of
    /// [`Self::path`], for any `PG_...` version directory); `None` for anything else, including
    /// `INCREMENTAL.` names and temporary relations.
    pub fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.split('/').collect();
        let (tablespace, database, file) = match parts.as_slice() {
            ["global", file] => (GLOBAL_TABLESPACE, 0, *file),
            ["base", db, file] => (DEFAULT_TABLESPACE, number(db)?, *file),
            ["pg_tblspc", spc, version, db, file] if version.starts_with("PG_") => {
                let spc = number(spc)?;
                if spc == GLOBAL_TABLESPACE || spc == DEFAULT_TABLESPACE {
                    return None;
                }
                (spc, number(db)?, *file)
            }
            _ => return None,
        };
        let (stem, segno) = match file.split_once('.') {
            Some((stem, seg)) => (stem, number(seg).filter(|&s| s > 0)?),
            None => (file, 0),
        };
        let (relfilenode, fork) = [Fork::Fsm, Fork::Vm, Fork::Init]
            .into_iter()
            .find_map(|fork| stem.strip_suffix(fork.suffix()).map(|rel| (rel, fork)))
            .unwrap_or((stem, Fork::Main));
        Some(Self {
            fork: RelFork {
                tablespace,
                database,
                relfilenode: number(relfilenode).filter(|&r| r > 0)?,
                fork,
            },
            segno,
        })
    }
}

/// A decimal number as the server prints one: digits, no sign, no leading zero.
fn number(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// The smallest limit block of each relation fork over a set of WAL summaries (what
/// `pg_wal_summary_contents()` reports `WHERE is_limit_block`). A fork not listed was neither
/// created, dropped nor truncated in the summarized range.
///
/// An entry for relfilenode 0 (main fork) is the summarizer's mark for a database created,
/// dropped or moved in the range: it voids every file of that database in that tablespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    forks: BTreeMap<RelFork, u32>,
}

impl Limits {
    /// No limits: every file is rebuilt by `pg_combinebackup`'s rule alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a limit block for `fork`, keeping the smaller one when it already has one.
    pub fn record(&mut self, fork: RelFork, limit_block: u32) {
        self.forks
            .entry(fork)
            .and_modify(|l| *l = (*l).min(limit_block))
            .or_insert(limit_block);
    }

    /// Forks with a limit.
    pub fn len(&self) -> usize {
        self.forks.len()
    }

    /// Whether no fork has a limit.
    pub fn is_empty(&self) -> bool {
        self.forks.is_empty()
    }

    /// The fork's limit block (relative to the fork), if it has one.
    pub fn fork_limit(&self, fork: &RelFork) -> Option<u32> {
        let database = RelFork {
            relfilenode: 0,
            fork: Fork::Main,
            ..*fork
        };
        let own = self.forks.get(fork).copied();
        let whole_database = self.forks.get(&database).map(|_| 0);
        own.into_iter().chain(whole_database).min()
    }

    /// The limit within one segment file, relative to the segment: `Some(0)` when the fork's
    /// limit lies at or before the segment's first block (none of its prior blocks stand),
    /// `None` when the fork has no limit or the limit lies at or beyond the segment's end.
    pub fn segment_limit(&self, segment: &SegmentFile) -> Option<u32> {
        let limit = u64::from(self.fork_limit(&segment.fork)?);
        let relative = limit.saturating_sub(segment.first_block());
        u32::try_from(relative).ok().filter(|&r| r < RELSEG_SIZE)
    }

    /// [`Self::segment_limit`] of the file at `path` (relative to the data directory); `None`
    /// for a path that is not a relation segment file.
    pub fn path_limit(&self, path: &str) -> Option<u32> {
        self.segment_limit(&SegmentFile::parse(path)?)
    }

    /// Every fork with its limit block.
    pub fn iter(&self) -> impl Iterator<Item = (&RelFork, &u32)> {
        self.forks.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork(tablespace: u32, database: u32, relfilenode: u32, fork: Fork) -> RelFork {
        RelFork {
            tablespace,
            database,
            relfilenode,
            fork,
        }
    }

    #[test]
    fn paths_round_trip_for_every_fork_segment_and_tablespace() {
        let v = "PG_17_202406281";
        for (f, segno, want) in [
            (fork(1663, 5, 16384, Fork::Main), 0, "base/5/16384"),
            (fork(1663, 5, 16384, Fork::Main), 2, "base/5/16384.2"),
            (fork(1663, 5, 16384, Fork::Fsm), 0, "base/5/16384_fsm"),
            (fork(1663, 5, 16384, Fork::Vm), 1, "base/5/16384_vm.1"),
            (fork(1663, 1, 3455, Fork::Init), 0, "base/1/3455_init"),
            (fork(1664, 0, 1260, Fork::Main), 0, "global/1260"),
            (fork(1664, 0, 1260, Fork::Vm), 0, "global/1260_vm"),
            (
                fork(16390, 16391, 16392, Fork::Main),
                3,
                "pg_tblspc/16390/PG_17_202406281/16391/16392.3",
            ),
            (
                fork(16390, 16391, 16392, Fork::Fsm),
                0,
                "pg_tblspc/16390/PG_17_202406281/16391/16392_fsm",
            ),
        ] {
            let seg = SegmentFile { fork: f, segno };
            assert_eq!(seg.path(v), want);
            assert_eq!(SegmentFile::parse(want), Some(seg), "{want}");
        }
        assert_eq!(
            SegmentFile::parse("pg_tblspc/16390/PG_18_202506291/5/7"),
            Some(SegmentFile {
                fork: fork(16390, 5, 7, Fork::Main),
                segno: 0
            })
        );
    }

    #[test]
    fn other_names_are_not_segment_files() {
        for path in [
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "base/5/INCREMENTAL.16384",
            "base/5/t3_16384",
            "base/5/16384.0",
            "base/5/016384",
            "base/5/16384_xx",
            "base/5/16384.",
            "base/5/0",
            "base/05/16384",
            "base/16384",
            "global/pg_control",
            "global/5/1260",
            "pg_tblspc/16390/5/16392",
            "pg_tblspc/1663/PG_17_1/5/16392",
            "pg_wal/000000010000000000000001",
            "",
        ] {
            assert_eq!(SegmentFile::parse(path), None, "{path}");
        }
    }

    #[test]
    fn the_smallest_limit_wins_and_maps_onto_segments() {
        let rel = fork(1663, 5, 16384, Fork::Main);
        let mut limits = Limits::new();
        limits.record(rel, 300_000);
        limits.record(rel, 140_000);
        limits.record(rel, 200_000);
        assert_eq!(limits.fork_limit(&rel), Some(140_000));
        // 140000 = 131072 + 8928: segment 0 is whole, segment 1 stands below 8928, segment 2
        // and later have nothing that stands.
        assert_eq!(limits.path_limit("base/5/16384"), None);
        assert_eq!(limits.path_limit("base/5/16384.1"), Some(8928));
        assert_eq!(limits.path_limit("base/5/16384.2"), Some(0));
        assert_eq!(limits.path_limit("base/5/16384_vm"), None);
        assert_eq!(limits.path_limit("base/5/16385"), None);
        assert_eq!(limits.path_limit("base/5/PG_VERSION"), None);
        limits.record(fork(1663, 5, 16385, Fork::Vm), 3);
        assert_eq!(limits.path_limit("base/5/16385_vm"), Some(3));
        assert_eq!(limits.path_limit("base/5/16385"), None);
        // A limit exactly at a segment boundary.
        limits.record(fork(1664, 0, 1260, Fork::Main), RELSEG_SIZE);
        assert_eq!(limits.path_limit("global/1260"), None);
        assert_eq!(limits.path_limit("global/1260.1"), Some(0));
        assert_eq!(limits.len(), 3);
    }

    #[test]
    fn a_database_mark_voids_every_file_of_that_database() {
        let mut limits = Limits::new();
        limits.record(fork(16390, 7, 0, Fork::Main), 0);
        assert_eq!(
            limits.path_limit("pg_tblspc/16390/PG_18_1/7/16400"),
            Some(0)
        );
        assert_eq!(
            limits.path_limit("pg_tblspc/16390/PG_18_1/7/16400_vm.3"),
            Some(0)
        );
        assert_eq!(limits.path_limit("pg_tblspc/16390/PG_18_1/8/16400"), None);
        assert_eq!(limits.path_limit("base/7/16400"), None);
    }
}
