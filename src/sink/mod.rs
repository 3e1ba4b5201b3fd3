//! Where the archive bytes land: the plain-format writer (`plain`), the tar-format writer
//! (`tar`) and the in-place writer that applies an incremental backup onto an existing
//! directory (`inplace`), all fed the same [`Chunk`]s; an archive's member splitter for the
//! plain and in-place writers (`split`); the manifest file they share (`manifest_out`); the
//! file steps every writer uses (`fs`: the modes of what pgclone creates, no-follow creation,
//! preallocation, tar members);
//! the resume journal (`journal`); compression codecs (`codec`), writeback and fsync (`writeback`, `durable`), and the
//! destination checks and cleanup (`dest`). Nothing here knows about connections, options or the
//! clone run.

pub mod codec;
pub mod dest;
pub mod durable;
pub mod fs;
pub mod inplace;
pub mod journal;
pub mod manifest_out;
pub mod plain;
pub mod split;
pub mod tar;
pub mod writeback;

use std::path::PathBuf;

use bytes::Bytes;
use pgclone_proto::Oid;

use crate::error::Error;
use manifest_out::ManifestPart;

/// Name of the manifest while it is being written; renamed once the backup is synced.
pub const MANIFEST_TMP: &str = "backup_manifest.tmp";

/// A piece of the backup for a writer (plain or tar), in stream order.
#[derive(Debug)]
pub enum Chunk {
    /// An archive starts.
    ArchiveStart {
        /// Archive name (`base.tar`, `16384.tar.gz`...).
        name: String,
        /// What it holds (and, for plain format, where its members go).
        root: ArchiveRoot,
        /// Whether the server ends it with the two zero blocks (15+).
        server_terminated: bool,
    },
    /// Archive bytes.
    Data(Bytes),
    /// Several consecutive pieces of archive bytes (fewer hand-offs between threads).
    Batch(Vec<Bytes>),
    /// The archive is complete.
    ArchiveEnd,
    /// The manifest starts.
    ManifestStart,
    /// Manifest bytes.
    ManifestData(Bytes),
    /// The manifest is complete.
    ManifestEnd,
}

/// A writer that takes the archives member by member (the plain and the in-place one): its
/// step for each kind of [`Chunk`]; [`ArchiveSteps::route`] sends a chunk to its step.
pub(crate) trait ArchiveSteps {
    /// An archive starts.
    fn start_archive(&mut self, name: String, root: ArchiveRoot) -> Result<(), Error>;
    /// Bytes of the current archive.
    fn archive_data(&mut self, pieces: impl IntoIterator<Item = Bytes>) -> Result<(), Error>;
    /// The current archive is complete.
    fn end_archive(&mut self) -> Result<(), Error>;
    /// A part of the manifest.
    fn manifest(&mut self, part: ManifestPart) -> Result<(), Error>;

    /// Sends `chunk` to its step.
    fn route(&mut self, chunk: Chunk) -> Result<(), Error> {
        match chunk {
            Chunk::ArchiveStart { name, root, .. } => self.start_archive(name, root),
            Chunk::Data(data) => self.archive_data(std::iter::once(data)),
            Chunk::Batch(pieces) => self.archive_data(pieces),
            Chunk::ArchiveEnd => self.end_archive(),
            Chunk::ManifestStart => self.manifest(ManifestPart::Start),
            Chunk::ManifestData(data) => self.manifest(ManifestPart::Data(data)),
            Chunk::ManifestEnd => self.manifest(ManifestPart::End),
        }
    }
}

/// Which archive this is: the base one or a tablespace's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveRoot {
    /// The main data directory.
    Base,
    /// A tablespace, unpacked into `dir` in plain format.
    Tablespace {
        /// Its oid.
        oid: Oid,
        /// Where its contents go.
        dir: PathBuf,
    },
}

/// What a writer wrote: in plain format, regular files and the bytes of their contents; in tar
/// format, archives and their bytes as received.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Regular files (plain) or archives (tar) written.
    pub files: u64,
    /// Bytes written: file contents (plain) or archive bytes (tar).
    pub bytes: u64,
    /// Files found to match the manifest by the check while writing; `None` when no check ran.
    pub checked: Option<u64>,
}
