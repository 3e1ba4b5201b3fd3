//! The manifest as both writers receive it (`ManifestStart`, `ManifestData`, `ManifestEnd`):
//! written to [`MANIFEST_TMP`] in the destination directory (the caller renames it once the
//! backup is synced), or kept in memory when there is no directory (the tar writer on standard
//! output adds it to the base archive at the end); and handed to the check, if any.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;

use crate::error::Error;
use crate::manifest::check::WriteCheck;
use crate::sink::{fs, MANIFEST_TMP};

/// A part of the manifest as the backup task hands it over.
#[derive(Debug)]
pub enum ManifestPart {
    /// The manifest starts.
    Start,
    /// Manifest bytes.
    Data(Bytes),
    /// The manifest is complete.
    End,
}

/// Where the manifest goes, and the part of it received so far.
pub struct ManifestOut {
    /// The directory of [`MANIFEST_TMP`]; `None` keeps the manifest in memory.
    dir: Option<PathBuf>,
    /// The file's mode (the clone's file mode).
    mode: u32,
    current: Option<Target>,
}

enum Target {
    File { file: File, path: PathBuf },
    Memory(Vec<u8>),
}

impl ManifestOut {
    /// The manifest goes to `dir/`[`MANIFEST_TMP`] (a file of `mode`), or into memory when
    /// `dir` is `None`.
    pub fn new(dir: Option<PathBuf>, mode: u32) -> Self {
        Self {
            dir,
            mode,
            current: None,
        }
    }

    /// The manifest starts: creates its file (which must not exist) or its buffer.
    pub fn start(&mut self) -> Result<(), Error> {
        self.current = Some(match &self.dir {
            Some(dir) => {
                let path = dir.join(MANIFEST_TMP);
                Target::File {
                    file: fs::create_new(&path, self.mode)?,
                    path,
                }
            }
            None => Target::Memory(Vec::new()),
        });
        Ok(())
    }

    /// One part of the manifest: [`Self::start`], [`Self::data`] or [`Self::end`].
    pub fn handle(
        &mut self,
        part: ManifestPart,
        check: Option<&mut WriteCheck>,
    ) -> Result<(), Error> {
        match part {
            ManifestPart::Start => self.start(),
            ManifestPart::Data(data) => self.data(&data, check),
            ManifestPart::End => self.end(check),
        }
    }

    /// Manifest bytes: to the check, then to the file or buffer.
    pub fn data(&mut self, data: &[u8], check: Option<&mut WriteCheck>) -> Result<(), Error> {
        if let Some(v) = check {
            v.manifest_data(data);
        }
        match &mut self.current {
            Some(Target::File { file, path }) => file
                .write_all(data)
                .map_err(Error::fs("write to file", path.as_path())),
            Some(Target::Memory(bytes)) => {
                bytes.extend_from_slice(data);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The manifest is complete: closes its file (a buffer is kept for [`Self::take_memory`])
    /// and has the check check what was written against it.
    pub fn end(&mut self, check: Option<&mut WriteCheck>) -> Result<(), Error> {
        if let Some(Target::File { .. }) = self.current {
            self.current = None;
        }
        match check {
            Some(v) => v.finish_manifest(),
            None => Ok(()),
        }
    }

    /// The manifest kept in memory, if there is one.
    pub fn take_memory(&mut self) -> Option<Vec<u8>> {
        match self.current.take() {
            Some(Target::Memory(bytes)) => Some(bytes),
            other => {
                self.current = other;
                None
            }
        }
    }
}
