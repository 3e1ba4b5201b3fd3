//! `pgclone-proto`: the PostgreSQL streaming-replication protocol as pure functions and state
//! machines, without I/O.
//!
//! Bytes and instants go in; events and bytes come out. Nothing here opens a socket, reads a
//! clock, spawns a task or touches a file: the `pgclone` binary does that. This keeps every
//! protocol rule testable with recorded byte streams, split at any point.
//!
//! What it does:
//! - decode backend messages with a length cap ([`backend`]); encode frontend ones ([`frontend`]);
//! - run startup and authentication: trust, cleartext, MD5, SCRAM-SHA-256 ([`startup`]);
//! - collect simple-query results ([`query`]);
//! - build BASE_BACKUP for servers 10–14 and 15+ and decode either response into one event
//!   stream ([`basebackup`]); build every other replication command pgclone sends, per server
//!   version ([`command`]); follow the COPY-in exchange of UPLOAD_MANIFEST ([`copy_in`]);
//! - name the SQLSTATEs pgclone acts on ([`sqlstate`]);
//! - split the tar archives inside it into members ([`tar`]);
//! - decode the `INCREMENTAL.` members of an incremental backup (17+) and state how they
//!   rebuild a file ([`incremental`]); name relation segment files and map the WAL summaries'
//!   limit blocks onto them ([`relfile`]);
//! - WAL positions, timelines and segment names ([`lsn`]).
//!
//! What it does not do: TLS, connection strings, files, paths, policy about what a member may
//! be. Those belong to the caller.
//!
//! # Layout
//! - `lsn.rs`: `Lsn`, `TimelineId`, `Oid`, `SegNo`, `WalSegSize`
//! - `error.rs`: `ProtocolError`, `ServerError`
//! - `reader.rs`: checked cursor over server bytes
//! - `backend.rs`, `frontend.rs`: the message codec
//! - `startup.rs`: `Startup` state machine, `ServerVersion`
//! - `query.rs`: `SimpleQuery`, `ResultSet`
//! - `basebackup.rs`: `BaseBackupOptions`, `BaseBackupDecoder`, `BackupEvent`
//! - `command.rs`: `Command` (IDENTIFY_SYSTEM, slots, START_REPLICATION, TIMELINE_HISTORY,
//!   UPLOAD_MANIFEST)
//! - `copy_in.rs`: `CopyIn` (the client-to-server COPY after UPLOAD_MANIFEST)
//! - `sqlstate.rs`: SQLSTATE constants
//! - `tar.rs`: `TarSplitter`
//! - `incremental.rs`: `IncrementalDecoder`, `Header`, `Plan` (incremental members, 17+)
//! - `relfile.rs`: `SegmentFile` (relation file paths), `Limits` (WAL summaries' limit blocks)
//! - `replication.rs`: `parse_copy_both`, `WalReceiver` (physical WAL streaming)

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
pub mod basebackup;
pub mod command;
pub mod copy_in;
pub mod error;
pub mod frontend;
pub mod guc;
pub mod incremental;
pub mod lsn;
pub mod query;
mod reader;
pub mod relfile;
pub mod replication;
pub mod sqlstate;
pub mod startup;
pub mod tar;
#[cfg(any(test, feature = "test-util"))]
pub mod testutil;

pub use backend::BackendMessage;
pub use error::{ProtocolError, ServerError};
pub use lsn::{Lsn, Oid, SegNo, TimelineId, WalSegSize};
pub use startup::ServerVersion;
