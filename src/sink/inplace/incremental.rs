//! One `INCREMENTAL.<relfile>` member applied to `<relfile>` in place, following the
//! [`Plan`] its header gives (narrowed by the segment's limit block from the WAL summaries,
//! when there is one): cut the prior file to the blocks that stay, write each sent block at its
//! offset, set the reconstructed length. Applying the same member again gives the same
//! file, so an interrupted apply can be repeated.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;

use bytes::Bytes;
use pgclone_proto::incremental::{
    Header, IncrementalDecoder, IncrementalError, IncrementalEvent, Plan, BLCKSZ,
};

use crate::error::Error;
use crate::sink::fs::{open, Existing};

/// The file being rebuilt, once the header has arrived.
struct Open {
    file: File,
    plan: Plan,
}

/// An incremental member being applied.
pub(super) struct IncrementalFile {
    /// The member's own path (`.../INCREMENTAL.<relfile>`), for messages.
    member: PathBuf,
    /// The file it rebuilds.
    target: PathBuf,
    mode: u32,
    /// The segment's limit block from the WAL summaries, relative to the segment.
    limit: Option<u32>,
    decoder: IncrementalDecoder,
    open: Option<Open>,
}

impl IncrementalFile {
    /// A member of `size` bytes at `member` that rebuilds `target`, keeping no prior block at
    /// or beyond `limit` (nothing is opened until its header has arrived).
    pub(super) fn new(
        member: PathBuf,
        target: PathBuf,
        mode: u32,
        size: u64,
        limit: Option<u32>,
    ) -> Self {
        Self {
            member,
            target,
            mode,
            limit,
            decoder: IncrementalDecoder::with_member_size(size),
            open: None,
        }
    }

    fn refuse(&self) -> impl FnOnce(IncrementalError) -> Error {
        let path = self.member.clone();
        move |source| Error::Incremental { path, source }
    }

    /// Member bytes: decoded, the header carried out, blocks written. Returns the blocks and
    /// bytes written.
    pub(super) fn data(&mut self, data: Bytes) -> Result<(u64, u64), Error> {
        self.decoder.handle_data(data).map_err(self.refuse())?;
        let (mut blocks, mut bytes) = (0, 0);
        while let Some(event) = self.decoder.poll_event() {
            match event {
                IncrementalEvent::Header(h) => self.start(&h)?,
                IncrementalEvent::Block { number, data } => {
                    self.write_block(number, &data)?;
                    blocks += 1;
                    bytes += data.len() as u64;
                }
            }
        }
        Ok((blocks, bytes))
    }

    /// The header arrived: the prior file (if any) is opened and cut to the blocks that stay.
    /// A missing prior file is created only if nothing of the result comes from it.
    fn start(&mut self, h: &Header) -> Result<(), Error> {
        let prior_len = match fs::symlink_metadata(&self.target) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::fs("stat", &self.target)(e)),
        };
        let plan = h
            .plan_limited(prior_len, self.limit)
            .map_err(self.refuse())?;
        let file = open(&self.target, Existing::Keep, self.mode)
            .map_err(Error::fs("open", &self.target))?;
        file.set_permissions(fs::Permissions::from_mode(self.mode))
            .map_err(Error::fs("set permissions of file", &self.target))?;
        if prior_len != Some(plan.keep_len()) {
            file.set_len(plan.keep_len())
                .map_err(Error::fs("truncate", &self.target))?;
        }
        self.open = Some(Open { file, plan });
        Ok(())
    }

    fn write_block(&self, number: u32, data: &[u8]) -> Result<(), Error> {
        let Some(o) = &self.open else {
            return Err(Error::Internal(
                "an incremental block before its header".into(),
            ));
        };
        o.file
            .write_all_at(data, u64::from(number) * BLCKSZ as u64)
            .map_err(Error::fs("write to file", &self.target))
    }

    /// The member ended: it must be complete; the file gets its reconstructed length. Returns
    /// the rebuilt file's path.
    pub(super) fn finish(mut self) -> Result<PathBuf, Error> {
        self.decoder.finish().map_err(self.refuse())?;
        let Some(o) = &self.open else {
            return Err(Error::Internal(
                "an incremental member without a header".into(),
            ));
        };
        let len = o
            .file
            .metadata()
            .map_err(Error::fs("stat", &self.target))?
            .len();
        if len != o.plan.final_len {
            o.file
                .set_len(o.plan.final_len)
                .map_err(Error::fs("extend", &self.target))?;
        }
        Ok(self.target)
    }
}
