//! One archive's tar stream split into members, with the archive's name on every error: how
//! the plain and in-place writers read an archive.

use bytes::Bytes;
use pgclone_proto::tar::{TarEvent, TarSplitter};

use crate::error::Error;

/// A named archive's splitter.
#[derive(Debug)]
pub struct ArchiveSplitter {
    /// The archive's name (`base.tar`, `16384.tar`), for messages.
    pub name: String,
    splitter: TarSplitter,
}

impl ArchiveSplitter {
    /// At the start of archive `name`.
    pub fn new(name: String) -> Self {
        Self {
            name,
            splitter: TarSplitter::new(),
        }
    }

    fn error(&self) -> impl FnOnce(pgclone_proto::tar::TarError) -> Error {
        let archive = self.name.clone();
        move |source| Error::Tar { archive, source }
    }

    /// Feeds archive bytes; events wait in [`Self::poll_event`].
    pub fn feed(&mut self, pieces: impl IntoIterator<Item = Bytes>) -> Result<(), Error> {
        for data in pieces {
            self.splitter.handle_data(data).map_err(self.error())?;
        }
        Ok(())
    }

    /// The next member event.
    pub fn poll_event(&mut self) -> Option<TarEvent> {
        self.splitter.poll_event()
    }

    /// The archive ended: its tar stream must be complete.
    pub fn finish(mut self) -> Result<(), Error> {
        let error = self.error();
        self.splitter.finish().map_err(error)
    }
}

/// Feeds `pieces` to the current archive's splitter; data outside an archive is an internal
/// error.
pub fn feed(
    current: Option<&mut ArchiveSplitter>,
    pieces: impl IntoIterator<Item = Bytes>,
) -> Result<(), Error> {
    match current {
        Some(split) => split.feed(pieces),
        None => Err(Error::Internal("archive data outside an archive".into())),
    }
}

/// Ends the current archive, if there is one: its tar stream must be complete.
pub fn end(current: Option<ArchiveSplitter>) -> Result<(), Error> {
    current.map_or(Ok(()), ArchiveSplitter::finish)
}
