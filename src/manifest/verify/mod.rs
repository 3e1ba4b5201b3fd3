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

//!
//! Here: the run and how problems are reported; `files` walks the directory and checks the
//! files, `wal` the WAL segments.

mod files;
mod wal;

use std::fmt::Display;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::{chain, os_text};
use crate::manifest::{is_ignored_by, Manifest, VERIFY_IGNORED};
use crate::output;

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
        let manifest = self.read_manifest()?;
        self.check_files(&manifest)?;
        if !self.opts.no_parse_wal {
            let dir = &self.opts.dir;
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

    /// Reads and parses the manifest and checks its own checksum; any failure is fatal.
    fn read_manifest(&mut self) -> Result<Manifest, Stop> {
        let manifest_path = self
            .opts
            .manifest_path
            .clone()
            .unwrap_or_else(|| self.opts.dir.join("backup_manifest"));
        let bytes = fs::read(&manifest_path).map_err(|e| {
            self.fatal(format!(
                "could not open file \"{}\": {}",
                manifest_path.display(),
                os_text(&e)
            ))
        })?;
        let manifest = Manifest::parse(&bytes).map_err(|e| self.fatal(chain(&e)))?;
        Manifest::check_own_checksum(&bytes).map_err(|e| self.fatal(chain(&e)))?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests;
