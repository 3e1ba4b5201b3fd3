//! `pgclone verify`: checks a plain-format backup directory against its `backup_manifest`,
//! in the spirit of pg_verifybackup.
//!
//! 1. The manifest parses and its own checksum (`Manifest-Checksum`) is right (fatal if not).
//! 2. Every file on disk (following symbolic links, so tablespaces through `pg_tblspc/<oid>`)
//!    is listed with its size, every listed file exists; pg_verifybackup's exclusions apply
//!    (`backup_manifest`, `pg_wal`, `postgresql.auto.conf`, `recovery.signal`,
//!    `standby.signal`, plus `-i`). With a version 2 manifest, `global/pg_control` must carry
//!    the manifest's system identifier.
//! 3. Each file's checksum, read in 128 kB chunks (unless `-s`).
//! 4. Unless `-n`: for each WAL range, every segment from the start to the end LSN on its
//!    timeline is in `pg_wal` (or `-w DIR`) with the segment size (taken from the first
//!    segment's file size: a power of two from 1 MB to 1 GB) and a sane long page header
//!    (`XLP_LONG_HEADER`, page address = segment start, timeline, segment size, system
//!    identifier, the same magic in every segment). Nothing deeper than that is parsed.
//!
//! Each problem is one `pgclone: error:` line on stderr; `-e` stops at the first. Without
//! problems it prints `backup successfully verified` (unless `-q`) and exits 0, else 1.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pgclone_proto::{Lsn, SegNo, TimelineId, WalSegSize};

use crate::error::chain;
use crate::manifest::{
    compare_checksum, is_ignored_by, Checksum, Manifest, Problem, VERIFY_IGNORED,
};
use crate::output;

const READ_CHUNK: usize = 128 * 1024;
/// `XLP_LONG_HEADER` in `xlp_info`.
const XLP_LONG_HEADER: u16 = 0x0002;
/// `sizeof(XLogLongPageHeaderData)` on 64-bit platforms.
const LONG_HEADER_LEN: usize = 40;

/// What one `pgclone verify` run checks (its flags, see [`crate::options::verify`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-q`: no success message.
    pub quiet: bool,
    /// `-n`: skip the WAL checks.
    pub no_parse_wal: bool,
    /// `-e`: stop at the first problem.
    pub exit_on_error: bool,
    /// `-s`: skip checksums.
    pub skip_checksums: bool,
    /// `-i`: more paths to ignore (relative, without trailing `/`).
    pub ignore: Vec<Vec<u8>>,
    /// `-m`: the manifest, if not `BACKUPDIR/backup_manifest`.
    pub manifest_path: Option<PathBuf>,
    /// `-w`: the WAL directory, if not `BACKUPDIR/pg_wal`.
    pub wal_path: Option<PathBuf>,
    /// The backup directory.
    pub dir: PathBuf,
}

/// Runs `pgclone verify`: exit status 0 when the backup verifies, 1 on any problem.
pub fn run(opts: &Options) -> ExitCode {
    let mut check = BackupCheck::new(opts);
    let _ = check.run();
    if check.errors > 0 {
        return ExitCode::from(1);
    }
    if !opts.quiet {
        println!("backup successfully verified");
    }
    ExitCode::SUCCESS
}

/// Verification stopped early (a fatal problem, or `-e`).
struct Stop;

/// One verification run; problems are printed as they are found.
struct BackupCheck<'a> {
    opts: &'a Options,
    ignore: Vec<Vec<u8>>,
    errors: usize,
    /// Collects messages instead of printing them (unit tests).
    collected: Option<Vec<String>>,
}

impl<'a> BackupCheck<'a> {
    fn new(opts: &'a Options) -> Self {
        let mut ignore: Vec<Vec<u8>> = VERIFY_IGNORED
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        ignore.extend(opts.ignore.iter().cloned());
        Self {
            opts,
            ignore,
            errors: 0,
            collected: None,
        }
    }

    fn print(&mut self, message: &dyn Display) {
        self.errors += 1;
        match &mut self.collected {
            Some(list) => list.push(message.to_string()),
            None => output::error(&message.to_string(), false),
        }
    }

    /// Reports a problem; stops when `-e` was given.
    fn report(&mut self, message: impl Display) -> Result<(), Stop> {
        self.print(&message);
        if self.opts.exit_on_error {
            Err(Stop)
        } else {
            Ok(())
        }
    }

    /// Reports a problem after which nothing more can be checked.
    fn fatal(&mut self, message: impl Display) -> Stop {
        self.print(&message);
        Stop
    }

    fn ignored(&self, rel: &[u8]) -> bool {
        is_ignored_by(&self.ignore, rel)
    }

    fn run(&mut self) -> Result<(), Stop> {
        let dir = self.opts.dir.clone();
        let manifest_path = self
            .opts
            .manifest_path
            .clone()
            .unwrap_or_else(|| dir.join("backup_manifest"));
        let bytes = fs::read(&manifest_path).map_err(|e| {
            self.fatal(format!(
                "could not open file \"{}\": {}",
                manifest_path.display(),
                io_text(&e)
            ))
        })?;
        let manifest = Manifest::parse(&bytes).map_err(|e| self.fatal(chain(&e)))?;
        Manifest::check_own_checksum(&bytes).map_err(|e| self.fatal(chain(&e)))?;
        drop(bytes);

        let top = fs::read_dir(&dir).map_err(|e| {
            self.fatal(format!(
                "could not open directory \"{}\": {}",
                dir.display(),
                io_text(&e)
            ))
        })?;
        let mut state = FileState {
            matched: vec![false; manifest.files.len()],
            bad: vec![false; manifest.files.len()],
        };
        let mut ancestors = Vec::new();
        if let Ok(meta) = fs::metadata(&dir) {
            ancestors.push((meta.dev(), meta.ino()));
        }
        self.walk(&manifest, &mut state, &[], &dir, Some(top), &mut ancestors)?;

        for (i, entry) in manifest.files.iter().enumerate() {
            if !state.matched[i] && !self.ignored(&entry.path) {
                self.report(Problem::Missing {
                    path: entry.path.clone(),
                })?;
            }
        }

        if !self.opts.skip_checksums {
            let mut buf = vec![0u8; READ_CHUNK];
            for (i, entry) in manifest.files.iter().enumerate() {
                if state.matched[i]
                    && !state.bad[i]
                    && entry.algorithm != crate::manifest::ChecksumAlgorithm::None
                    && !self.ignored(&entry.path)
                {
                    self.check_file_checksum(&dir, entry, &mut buf)?;
                }
            }
        }

        if !self.opts.no_parse_wal {
            let wal_dir = self
                .opts
                .wal_path
                .clone()
                .unwrap_or_else(|| dir.join("pg_wal"));
            let shown = match &self.opts.wal_path {
                Some(p) => p.display().to_string(),
                None => "pg_wal".to_owned(),
            };
            self.check_wal(&manifest, &wal_dir, &shown)?;
        }
        Ok(())
    }

    /// Walks one directory (`rel` relative to the backup, `full` on disk), following links.
    fn walk(
        &mut self,
        manifest: &Manifest,
        state: &mut FileState,
        rel: &[u8],
        full: &Path,
        opened: Option<fs::ReadDir>,
        ancestors: &mut Vec<(u64, u64)>,
    ) -> Result<(), Stop> {
        let entries = match opened.map_or_else(|| fs::read_dir(full), Ok) {
            Ok(entries) => entries,
            Err(e) => {
                self.report(format!(
                    "could not open directory \"{}\": {}",
                    full.display(),
                    io_text(&e)
                ))?;
                self.ignore.push(rel.to_vec());
                return Ok(());
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => names.push(entry.file_name()),
                Err(e) => {
                    self.report(format!(
                        "could not read directory \"{}\": {}",
                        full.display(),
                        io_text(&e)
                    ))?;
                    break;
                }
            }
        }
        names.sort();
        for name in names {
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            if self.ignored(&child_rel) {
                continue;
            }
            let shown = String::from_utf8_lossy(&child_rel).into_owned();
            let child_full = full.join(&name);
            let meta = match fs::metadata(&child_full) {
                Ok(m) => m,
                Err(e) => {
                    self.report(format!(
                        "could not stat file or directory \"{shown}\": {}",
                        io_text(&e)
                    ))?;
                    self.ignore.push(child_rel);
                    continue;
                }
            };
            if meta.is_dir() {
                let id = (meta.dev(), meta.ino());
                if ancestors.contains(&id) {
                    self.report(format!(
                        "\"{shown}\" is a symbolic link loop back to one of its parent directories"
                    ))?;
                    continue;
                }
                ancestors.push(id);
                self.walk(manifest, state, &child_rel, &child_full, None, ancestors)?;
                ancestors.pop();
                continue;
            }
            if !meta.is_file() {
                self.report(format!("\"{shown}\" is not a regular file or directory"))?;
                continue;
            }
            let Some(i) = manifest.position(&child_rel) else {
                self.report(Problem::Extra { path: child_rel })?;
                continue;
            };
            state.matched[i] = true;
            let entry = &manifest.files[i];
            if entry.size != meta.len() {
                state.bad[i] = true;
                self.report(Problem::Size {
                    path: child_rel.clone(),
                    actual: meta.len(),
                    expected: entry.size,
                })?;
            }
            if manifest.version >= 2 && child_rel == b"global/pg_control" {
                self.check_system_identifier(manifest, &child_full)?;
            }
        }
        Ok(())
    }

    /// The system identifier is the first field of `ControlFileData` (native byte order).
    fn check_system_identifier(&mut self, manifest: &Manifest, path: &Path) -> Result<(), Stop> {
        let Some(want) = manifest.system_identifier else {
            return Ok(());
        };
        let mut head = [0u8; 8];
        if let Err(e) = File::open(path).and_then(|mut f| f.read_exact(&mut head)) {
            return Err(self.fatal(format!(
                "could not read file \"{}\": {}",
                path.display(),
                io_text(&e)
            )));
        }
        let have = u64::from_ne_bytes(head);
        if have != want {
            return Err(self.fatal(format!(
                "{}: manifest system identifier is {want}, but control file has {have}",
                path.display()
            )));
        }
        Ok(())
    }

    fn check_file_checksum(
        &mut self,
        dir: &Path,
        entry: &crate::manifest::ManifestFile,
        buf: &mut [u8],
    ) -> Result<(), Stop> {
        let shown = entry.display_path();
        let path = dir.join(OsStr::from_bytes(&entry.path));
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                return self.report(format!("could not open file \"{shown}\": {}", io_text(&e)))
            }
        };
        let mut sum = Checksum::with_algorithm(entry.algorithm);
        loop {
            match file.read(buf) {
                Ok(0) => break,
                Ok(n) => sum.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return self.report(format!("could not read file \"{shown}\": {}", io_text(&e)))
                }
            }
        }
        if sum.bytes() != entry.size {
            return self.report(format!(
                "file \"{shown}\" should contain {} bytes, but read {}",
                entry.size,
                sum.bytes()
            ));
        }
        match compare_checksum(entry, sum.finish().as_deref()) {
            Some(problem) => self.report(problem),
            None => Ok(()),
        }
    }

    /// Checks that the WAL of every range is present, by segment name, size and first page
    /// header.
    fn check_wal(&mut self, manifest: &Manifest, wal_dir: &Path, shown: &str) -> Result<(), Stop> {
        if manifest.wal_ranges.is_empty() {
            return Ok(());
        }
        let mut seg_size = None;
        let mut odd: Option<(String, u64)> = None;
        for range in &manifest.wal_ranges {
            match derive_segment_size(wal_dir, range.timeline, range.start) {
                Ok(size) => {
                    seg_size = Some(size);
                    break;
                }
                Err(found) => {
                    if odd.is_none() {
                        odd = found;
                    }
                }
            }
        }
        let Some(seg_size) = seg_size else {
            let range = manifest.wal_ranges[0];
            return match odd {
                Some((name, len)) => self.report(format!(
                    "WAL file \"{shown}/{name}\" has size {len}, which is not the size of a WAL segment with that name (a power of two from 1 MB to 1 GB)"
                )),
                None => self.report(format!(
                    "WAL segment holding {} on timeline {} is missing from \"{shown}\"",
                    range.start, range.timeline
                )),
            };
        };
        let mut magic: Option<(u16, String)> = None;
        for range in &manifest.wal_ranges {
            let first = range.start.segment(seg_size);
            let last = if range.end > range.start {
                Lsn(range.end.0 - 1).segment(seg_size)
            } else {
                first
            };
            for segno in first.0..=last.0 {
                let segno = SegNo(segno);
                let name = segno.file_name(range.timeline, seg_size);
                let rel = format!("{shown}/{name}");
                let check = SegmentCheck {
                    path: wal_dir.join(&name),
                    rel: &rel,
                    range,
                    segno,
                    seg_size,
                    first_of_range: segno == first,
                    system_identifier: manifest.system_identifier,
                };
                match check.run() {
                    Ok(m) => match &magic {
                        None => magic = Some((m, rel.clone())),
                        Some((seen, other)) if *seen != m => {
                            let message = format!(
                                "WAL segment \"{rel}\" has page magic 0x{m:04X}, but \"{other}\" has 0x{seen:04X}"
                            );
                            self.report(message)?;
                        }
                        Some(_) => {}
                    },
                    Err(message) => self.report(message)?,
                }
            }
        }
        Ok(())
    }
}

struct FileState {
    matched: Vec<bool>,
    bad: Vec<bool>,
}

/// The segment size: the size of the file holding `start` on `tli`, among the names that
/// position has for each possible size, that is a power of two from 1 MB to 1 GB and gives
/// that very name. Otherwise `Err` with the first such file that exists, if any.
fn derive_segment_size(
    wal_dir: &Path,
    tli: TimelineId,
    start: Lsn,
) -> Result<WalSegSize, Option<(String, u64)>> {
    let mut seen = HashSet::new();
    let mut first_found = None;
    for shift in 20..=30u32 {
        let Ok(candidate) = WalSegSize::from_bytes(1 << shift) else {
            continue;
        };
        let name = start.segment(candidate).file_name(tli, candidate);
        if !seen.insert(name.clone()) {
            continue;
        }
        let Ok(meta) = fs::metadata(wal_dir.join(&name)) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if let Ok(size) = WalSegSize::from_bytes(meta.len()) {
            if start.segment(size).file_name(tli, size) == name {
                return Ok(size);
            }
        }
        first_found.get_or_insert((name, meta.len()));
    }
    Err(first_found)
}

/// One WAL segment to check.
struct SegmentCheck<'a> {
    path: PathBuf,
    rel: &'a str,
    range: &'a crate::manifest::WalRange,
    segno: SegNo,
    seg_size: WalSegSize,
    first_of_range: bool,
    system_identifier: Option<u64>,
}

impl SegmentCheck<'_> {
    /// Checks presence, size and the long page header; returns `xlp_magic`.
    fn run(&self) -> Result<u16, String> {
        let rel = self.rel;
        let range = self.range;
        let meta = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!(
                    "WAL segment \"{rel}\" is missing (needed for timeline {} from {} to {})",
                    range.timeline, range.start, range.end
                ))
            }
            Err(e) => return Err(format!("could not stat file \"{rel}\": {}", io_text(&e))),
        };
        if !meta.is_file() {
            return Err(format!("WAL segment \"{rel}\" is not a regular file"));
        }
        let want = u64::from(self.seg_size.bytes());
        if meta.len() != want {
            return Err(format!(
                "WAL segment \"{rel}\" has size {} but the WAL segment size is {want}",
                meta.len()
            ));
        }
        let mut header = [0u8; LONG_HEADER_LEN];
        File::open(&self.path)
            .and_then(|mut f| f.read_exact(&mut header))
            .map_err(|e| format!("could not read file \"{rel}\": {}", io_text(&e)))?;
        let bad =
            |what: String| format!("WAL segment \"{rel}\" has an invalid page header: {what}");
        let u16_at = |o: usize| u16::from_ne_bytes([header[o], header[o + 1]]);
        let u32_at =
            |o: usize| u32::from_ne_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[o..o + 8]);
            u64::from_ne_bytes(b)
        };
        let (magic, info, tli, pageaddr) = (u16_at(0), u16_at(2), u32_at(4), u64_at(8));
        let (sysid, seg_size) = (u64_at(24), u32_at(32));
        if info & XLP_LONG_HEADER == 0 {
            return Err(bad(format!("xlp_info 0x{info:04X} lacks XLP_LONG_HEADER")));
        }
        let seg_start = self.segno.start_lsn(self.seg_size);
        if pageaddr != seg_start.0 {
            return Err(bad(format!(
                "page address {} instead of {seg_start}",
                Lsn(pageaddr)
            )));
        }
        // The segment where a timeline starts begins with pages of the previous timeline.
        let tli_ok = if self.first_of_range {
            (1..=range.timeline.0).contains(&tli)
        } else {
            tli == range.timeline.0
        };
        if !tli_ok {
            return Err(bad(format!("timeline {tli} instead of {}", range.timeline)));
        }
        if seg_size != self.seg_size.bytes() {
            return Err(bad(format!(
                "segment size {seg_size} instead of {}",
                self.seg_size.bytes()
            )));
        }
        if let Some(want) = self.system_identifier {
            if sysid != want {
                return Err(bad(format!("system identifier {sysid} instead of {want}")));
            }
        }
        Ok(magic)
    }
}

/// An I/O error the way PostgreSQL's `%m` prints it (without Rust's ` (os error N)`).
fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::manifest::hex;
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
}
