//! `UPLOAD_MANIFEST` (17+): sends the reference of an incremental backup (`-i OLDMANIFEST`) on
//! the main connection, just before `BASE_BACKUP (INCREMENTAL)`.
//!
//! The manifest is streamed in CopyData chunks of at most 64 kB, read from its source as they
//! go, so memory stays bounded whatever its size; sources over [`MAX_MANIFEST_BYTES`] are
//! refused. What the manifest says is the server's to check (its own checksum, the system
//! identifier, the WAL ranges and summaries): its errors come back as
//! `could not upload manifest: ERROR: ...`, pg_basebackup's wording.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use pgclone_proto::command::Command;
use pgclone_proto::copy_in::{self, CopyIn, CopyInStep, MAX_CHUNK};
use pgclone_proto::frontend;

use crate::conn::Connection;
use crate::error::Error;

/// Largest manifest pgclone uploads: 1 GiB, the manifest of some five million files.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// The phase named in connection and protocol errors.
const PHASE: &str = "UPLOAD_MANIFEST";

/// An earlier backup's `backup_manifest`, open and within the size limit.
#[derive(Debug)]
pub struct ReferenceManifest {
    file: File,
    path: PathBuf,
}

impl ReferenceManifest {
    /// Opens `path` and checks its size (before anything is created, so a refusal leaves
    /// nothing behind).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(Error::fs("open file", path))?;
        let len = file.metadata().map_err(Error::fs("read file", path))?.len();
        if len > MAX_MANIFEST_BYTES {
            return Err(too_large(path));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Uploads the manifest on `conn`; returns the number of bytes sent.
    pub async fn upload(mut self, conn: &mut Connection) -> Result<u64, Error> {
        tracing::info!("uploading backup manifest \"{}\"", self.path.display());
        let sent = upload(conn, &mut self.file, &self.path).await?;
        tracing::debug!("uploaded {sent} bytes of backup manifest");
        Ok(sent)
    }
}

/// Runs `UPLOAD_MANIFEST` on `conn` with the bytes of `source` (named `name` in errors).
/// Reading `source` blocks; it is a local file or memory.
pub async fn upload(
    conn: &mut Connection,
    source: &mut (dyn Read + Send),
    name: &Path,
) -> Result<u64, Error> {
    let cmd = Command::UploadManifest;
    conn.send_query(&cmd.text(conn.info().version), PHASE)
        .await?;
    let mut exchange = CopyIn::new(PHASE);
    let mut sent = 0;
    if next_step(conn, &mut exchange).await? == CopyInStep::SendData {
        sent = send_data(conn, source, name).await?;
        exchange.data_sent();
        next_step(conn, &mut exchange).await?;
    }
    exchange.finish().map_err(|source| Error::Server {
        context: "could not upload manifest".into(),
        source: Box::new(source),
    })?;
    Ok(sent)
}

/// Reads server messages until the exchange asks for the data or ends.
async fn next_step(conn: &mut Connection, exchange: &mut CopyIn) -> Result<CopyInStep, Error> {
    loop {
        let msg = conn.read_message(PHASE).await?;
        match exchange
            .handle_message(msg)
            .map_err(Error::protocol(PHASE))?
        {
            CopyInStep::Read => {}
            step => return Ok(step),
        }
    }
}

/// Sends `source` as CopyData chunks, then CopyDone; returns the number of bytes sent.
async fn send_data(
    conn: &mut Connection,
    source: &mut (dyn Read + Send),
    name: &Path,
) -> Result<u64, Error> {
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut out = BytesMut::with_capacity(MAX_CHUNK + 5);
    let mut sent: u64 = 0;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::fs("read file", name)(e)),
        };
        sent += n as u64;
        if sent > MAX_MANIFEST_BYTES {
            return Err(too_large(name));
        }
        out.clear();
        copy_in::encode_chunk(buf.get(..n).unwrap_or_default(), &mut out)?;
        conn.send_raw(&out, PHASE).await?;
    }
    out.clear();
    frontend::copy_done(&mut out);
    conn.send_raw(&out, PHASE).await?;
    Ok(sent)
}

fn too_large(path: &Path) -> Error {
    Error::Fs {
        op: "upload file",
        path: path.to_path_buf(),
        source: io::Error::other(format!(
            "larger than {} MB, the most {} uploads as a backup manifest",
            MAX_MANIFEST_BYTES >> 20,
            crate::program::name()
        )),
    }
}
