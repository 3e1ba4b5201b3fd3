//! The files of a `pgclone verify` run: the directory walk (following links, refusing loops),
//! sizes, the system identifier in `global/pg_control`, and each file's checksum.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::os_text;
use crate::manifest::verify::{BackupCheck, Stop};
use crate::manifest::{
    compare_checksum, Checksum, ChecksumAlgorithm, Manifest, ManifestFile, Problem,
};

/// Files are read in chunks of this size for their checksums.
const READ_CHUNK: usize = 128 * 1024;

/// What a walk of the backup directory has seen so far.
struct Walk<'m> {
    manifest: &'m Manifest,
    /// Per manifest file: found on disk.
    matched: Vec<bool>,
    /// Per manifest file: found with the wrong size (its checksum is not computed).
    bad: Vec<bool>,
    /// Device and inode of the directories above the one being walked.
    ancestors: Vec<(u64, u64)>,
}

impl BackupCheck<'_> {
    /// Every file on disk against the manifest and back, then (unless `-s`) the checksums of
    /// the files found with the right size.
    pub(super) fn check_files(&mut self, manifest: &Manifest) -> Result<(), Stop> {
        let dir = self.opts.dir.clone();
        let top = fs::read_dir(&dir).map_err(|e| {
            self.fatal(format!(
                "could not open directory \"{}\": {}",
                dir.display(),
                os_text(&e)
            ))
        })?;
        let mut walk = Walk {
            manifest,
            matched: vec![false; manifest.files.len()],
            bad: vec![false; manifest.files.len()],
            ancestors: Vec::new(),
        };
        if let Ok(meta) = fs::metadata(&dir) {
            walk.ancestors.push((meta.dev(), meta.ino()));
        }
        self.walk(&mut walk, &[], &dir, Some(top))?;
        for (i, entry) in manifest.files.iter().enumerate() {
            if !walk.matched[i] && !self.ignored(&entry.path) {
                self.report(Problem::Missing {
                    path: entry.path.clone(),
                })?;
            }
        }
        if self.opts.skip_checksums {
            return Ok(());
        }
        let mut buf = vec![0u8; READ_CHUNK];
        for (i, entry) in manifest.files.iter().enumerate() {
            if walk.matched[i]
                && !walk.bad[i]
                && entry.algorithm != ChecksumAlgorithm::None
                && !self.ignored(&entry.path)
            {
                self.check_file_checksum(&dir, entry, &mut buf)?;
            }
        }
        Ok(())
    }

    /// Walks one directory (`rel` relative to the backup, `full` on disk), following links.
    fn walk(
        &mut self,
        walk: &mut Walk<'_>,
        rel: &[u8],
        full: &Path,
        opened: Option<fs::ReadDir>,
    ) -> Result<(), Stop> {
        let Some(names) = self.list_dir(rel, full, opened)? else {
            return Ok(());
        };
        for name in names {
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            if !self.ignored(&child_rel) {
                self.visit(walk, child_rel, &full.join(&name))?;
            }
        }
        Ok(())
    }

    /// The names in a directory, sorted; `None` when it cannot be opened (reported, and
    /// ignored from then on).
    fn list_dir(
        &mut self,
        rel: &[u8],
        full: &Path,
        opened: Option<fs::ReadDir>,
    ) -> Result<Option<Vec<OsString>>, Stop> {
        let entries = match opened.map_or_else(|| fs::read_dir(full), Ok) {
            Ok(entries) => entries,
            Err(e) => {
                self.report(format!(
                    "could not open directory \"{}\": {}",
                    full.display(),
                    os_text(&e)
                ))?;
                self.ignore.push(rel.to_vec());
                return Ok(None);
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
                        os_text(&e)
                    ))?;
                    break;
                }
            }
        }
        names.sort();
        Ok(Some(names))
    }

    /// One directory entry: a directory is walked (unless it loops back), a regular file is
    /// compared with the manifest, anything else is reported.
    fn visit(&mut self, walk: &mut Walk<'_>, rel: Vec<u8>, full: &Path) -> Result<(), Stop> {
        let shown = String::from_utf8_lossy(&rel).into_owned();
        let meta = match fs::metadata(full) {
            Ok(m) => m,
            Err(e) => {
                self.report(format!(
                    "could not stat file or directory \"{shown}\": {}",
                    os_text(&e)
                ))?;
                self.ignore.push(rel);
                return Ok(());
            }
        };
        if meta.is_dir() {
            let id = (meta.dev(), meta.ino());
            if walk.ancestors.contains(&id) {
                return self.report(format!(
                    "\"{shown}\" is a symbolic link loop back to one of its parent directories"
                ));
            }
            walk.ancestors.push(id);
            self.walk(walk, &rel, full, None)?;
            walk.ancestors.pop();
            return Ok(());
        }
        if !meta.is_file() {
            return self.report(format!("\"{shown}\" is not a regular file or directory"));
        }
        self.check_listed(walk, rel, full, meta.len())
    }

    /// A regular file: listed, with the manifest's size, and (`global/pg_control` in a
    /// version 2 manifest) the manifest's system identifier.
    fn check_listed(
        &mut self,
        walk: &mut Walk<'_>,
        rel: Vec<u8>,
        full: &Path,
        size: u64,
    ) -> Result<(), Stop> {
        let manifest = walk.manifest;
        let Some(i) = manifest.position(&rel) else {
            return self.report(Problem::Extra { path: rel });
        };
        walk.matched[i] = true;
        let entry = &manifest.files[i];
        if entry.size != size {
            walk.bad[i] = true;
            self.report(Problem::Size {
                path: rel.clone(),
                actual: size,
                expected: entry.size,
            })?;
        }
        if manifest.version >= 2 && rel == b"global/pg_control" {
            self.check_system_identifier(manifest, full)?;
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
                os_text(&e)
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
        entry: &ManifestFile,
        buf: &mut [u8],
    ) -> Result<(), Stop> {
        let shown = entry.display_path();
        let path = dir.join(OsStr::from_bytes(&entry.path));
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                return self.report(format!("could not open file \"{shown}\": {}", os_text(&e)))
            }
        };
        let mut sum = Checksum::with_algorithm(entry.algorithm);
        loop {
            match file.read(buf) {
                Ok(0) => break,
                Ok(n) => sum.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return self.report(format!("could not read file \"{shown}\": {}", os_text(&e)))
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
}
