//! BASE_BACKUP: the command text for each server version, and a decoder for its response.
//!
//! Two dialects exist (see `protocol.md` §4):
//! - [`Dialect::Legacy`] (servers 10–14): keyword options; one CopyOutResponse per tablespace
//!   holding raw tar bytes without the closing zero blocks; on 13–14 a last CopyOutResponse
//!   holding the manifest.
//! - [`Dialect::Options`] (servers 15+): parenthesized options; a single CopyOutResponse whose
//!   CopyData payloads start with a type byte: `n` (new archive), `d` (data), `p` (progress),
//!   `m` (manifest follows); each archive ends with its two zero blocks.
//!
//! Both dialects start with two result sets (start position; tablespaces) and end with one (end
//! position), CommandComplete and ReadyForQuery. [`BaseBackupDecoder`] turns either into the same
//! sequence of [`BackupEvent`]s, so nothing downstream knows which dialect the server spoke.
//!
//! The decoder does not parse the tar data, does not touch the file system, and does not handle
//! NoticeResponse (the caller prints notices as they arrive).

use std::collections::VecDeque;
use std::fmt::Write as _;

use bytes::Bytes;

use crate::backend::BackendMessage;
use crate::error::{ProtocolError, ServerError};
use crate::frontend::quote_literal;
use crate::lsn::{Lsn, Oid, TimelineId};
use crate::query::{ResultSet, ResultSetBuilder};
use crate::reader::Reader;
use crate::startup::ServerVersion;

/// Most tablespaces accepted in one backup.
pub const MAX_TABLESPACES: usize = 4096;

/// The first major with incremental backups (`UPLOAD_MANIFEST`, `BASE_BACKUP (INCREMENTAL)`).
pub const MIN_MAJOR_INCREMENTAL: u32 = 17;

/// Bounds of MAX_RATE in kB/s, as the server enforces them.
pub const MAX_RATE_RANGE: std::ops::RangeInclusive<u32> = 32..=1_048_576;

/// Which BASE_BACKUP protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Servers 10–14.
    Legacy,
    /// Servers 15 and newer.
    Options,
}

impl Dialect {
    /// The dialect of a server version.
    pub fn for_version(version: ServerVersion) -> Self {
        if version.is_at_least(15) {
            Self::Options
        } else {
            Self::Legacy
        }
    }
}

/// Whether and how to ask for a backup manifest (13+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestOption {
    /// No manifest.
    No,
    /// A manifest with paths as UTF-8 where possible.
    Yes,
    /// A manifest with every path hex-encoded.
    ForceEncode,
}

/// Checkpoint mode at backup start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// Spread the checkpoint over `checkpoint_completion_target` (the default).
    Spread,
    /// Checkpoint as fast as possible.
    Fast,
}

/// Where the server sends the backup (15+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `client`, `server`, `blackhole` or an extension's target.
    pub name: String,
    /// For `server`: the directory.
    pub detail: Option<String>,
}

/// Server-side compression (15+): method and detail passed through for the server to validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCompression {
    /// `gzip`, `lz4`, `zstd` or `none`.
    pub method: String,
    /// Level and options, such as `5` or `level=3,workers=4`.
    pub detail: Option<String>,
}

/// The options of one BASE_BACKUP command, independent of the server version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// Backup label (written into backup_label).
    pub label: String,
    /// Ask the server to estimate sizes (fills the tablespace `size` column).
    pub progress: bool,
    /// Checkpoint mode.
    pub checkpoint: Checkpoint,
    /// Include the needed WAL in the base archive (`-X fetch`).
    pub wal: bool,
    /// Wait for WAL archiving at the end (pg_basebackup turns it off unless `-X none`).
    pub wait_for_archive: bool,
    /// Server-side rate limit in kB/s.
    pub max_rate: Option<u32>,
    /// Send `tablespace_map` instead of `pg_tblspc` symlinks (tar format).
    pub tablespace_map: bool,
    /// Verify page checksums while sending (11+; 10 never verifies).
    pub verify_checksums: bool,
    /// Manifest (13+; dropped for older servers).
    pub manifest: ManifestOption,
    /// Manifest checksum algorithm name, such as `CRC32C` or `SHA256`.
    pub manifest_checksums: Option<String>,
    /// Backup target (15+).
    pub target: Option<Target>,
    /// Server-side compression (15+).
    pub compression: Option<ServerCompression>,
    /// `INCREMENTAL` (17+): relation files come as `INCREMENTAL.<name>` members holding the
    /// blocks changed since the manifest uploaded just before (`UPLOAD_MANIFEST`).
    pub incremental: bool,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        Self {
            label: "pgclone base backup".into(),
            progress: true,
            checkpoint: Checkpoint::Spread,
            wal: false,
            wait_for_archive: true,
            max_rate: None,
            tablespace_map: false,
            verify_checksums: true,
            manifest: ManifestOption::Yes,
            manifest_checksums: None,
            target: None,
            compression: None,
            incremental: false,
        }
    }
}

/// An option the server cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionError {
    /// MAX_RATE outside what the server accepts.
    #[error("transfer rate {0} kB/s is out of range (must be between 32 kB/s and 1 GB/s)")]
    MaxRate(u32),
    /// A 15+ feature asked of an older server.
    #[error("{feature} not supported by this server version ({version})")]
    Unsupported {
        /// What was asked for.
        feature: &'static str,
        /// The server's version.
        version: String,
    },
}

impl BaseBackupOptions {
    /// The manifest option that will actually be sent to a server of `version`.
    pub fn effective_manifest(&self, version: ServerVersion) -> ManifestOption {
        if version.is_at_least(13) {
            self.manifest
        } else {
            ManifestOption::No
        }
    }

    /// The command text for a server of `version`, sending only what that server accepts.
    pub fn command(&self, version: ServerVersion) -> Result<String, OptionError> {
        if let Some(rate) = self.max_rate {
            if !MAX_RATE_RANGE.contains(&rate) {
                return Err(OptionError::MaxRate(rate));
            }
        }
        if self.incremental && !version.is_at_least(MIN_MAJOR_INCREMENTAL) {
            return Err(OptionError::Unsupported {
                feature: "incremental backups are",
                version: version.to_string(),
            });
        }
        match Dialect::for_version(version) {
            Dialect::Legacy => self.legacy_command(version),
            Dialect::Options => Ok(self.options_command(version)),
        }
    }

    fn legacy_command(&self, version: ServerVersion) -> Result<String, OptionError> {
        let unsupported = |feature| OptionError::Unsupported {
            feature,
            version: version.to_string(),
        };
        if self.target.is_some() {
            return Err(unsupported("backup targets are"));
        }
        if self.compression.is_some() {
            return Err(unsupported("server-side compression is"));
        }
        let mut cmd = format!("BASE_BACKUP LABEL {}", quote_literal(&self.label));
        let mut add = |s: &str| {
            cmd.push(' ');
            cmd.push_str(s);
        };
        if self.progress {
            add("PROGRESS");
        }
        if self.checkpoint == Checkpoint::Fast {
            add("FAST");
        }
        if self.wal {
            add("WAL");
        }
        if !self.wait_for_archive {
            add("NOWAIT");
        }
        if let Some(rate) = self.max_rate {
            add(&format!("MAX_RATE {rate}"));
        }
        if self.tablespace_map {
            add("TABLESPACE_MAP");
        }
        if !self.verify_checksums && version.is_at_least(11) {
            add("NOVERIFY_CHECKSUMS");
        }
        if let Some(value) = manifest_value(self.effective_manifest(version)) {
            add(&format!("MANIFEST {}", quote_literal(value)));
            if let Some(algorithm) = &self.manifest_checksums {
                add(&format!("MANIFEST_CHECKSUMS {}", quote_literal(algorithm)));
            }
        }
        Ok(cmd)
    }

    fn options_command(&self, version: ServerVersion) -> String {
        // INCREMENTAL first, where pg_basebackup puts it.
        let mut opts: Vec<String> = self
            .incremental
            .then(|| "INCREMENTAL".into())
            .into_iter()
            .collect();
        opts.push(format!("LABEL {}", quote_literal(&self.label)));
        if self.progress {
            opts.push("PROGRESS".into());
        }
        if self.checkpoint == Checkpoint::Fast {
            opts.push("CHECKPOINT 'fast'".into());
        }
        if self.wal {
            opts.push("WAL".into());
        }
        if !self.wait_for_archive {
            opts.push("WAIT 0".into());
        }
        if let Some(rate) = self.max_rate {
            opts.push(format!("MAX_RATE {rate}"));
        }
        if self.tablespace_map {
            opts.push("TABLESPACE_MAP".into());
        }
        if !self.verify_checksums {
            opts.push("VERIFY_CHECKSUMS 0".into());
        }
        if let Some(value) = manifest_value(self.effective_manifest(version)) {
            opts.push(format!("MANIFEST {}", quote_literal(value)));
            if let Some(algorithm) = &self.manifest_checksums {
                opts.push(format!("MANIFEST_CHECKSUMS {}", quote_literal(algorithm)));
            }
        }
        match &self.target {
            Some(target) => {
                opts.push(format!("TARGET {}", quote_literal(&target.name)));
                if let Some(detail) = &target.detail {
                    opts.push(format!("TARGET_DETAIL {}", quote_literal(detail)));
                }
            }
            None => opts.push("TARGET 'client'".into()),
        }
        if let Some(c) = &self.compression {
            opts.push(format!("COMPRESSION {}", quote_literal(&c.method)));
            if let Some(detail) = &c.detail {
                opts.push(format!("COMPRESSION_DETAIL {}", quote_literal(detail)));
            }
        }
        let mut cmd = String::from("BASE_BACKUP (");
        for (i, opt) in opts.iter().enumerate() {
            if i > 0 {
                cmd.push_str(", ");
            }
            let _ = write!(cmd, "{opt}");
        }
        cmd.push(')');
        cmd
    }
}

fn manifest_value(m: ManifestOption) -> Option<&'static str> {
    match m {
        ManifestOption::No => None,
        ManifestOption::Yes => Some("yes"),
        ManifestOption::ForceEncode => Some("force-encode"),
    }
}

/// One row of the tablespace result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceInfo {
    /// The tablespace oid; `None` for the main data directory.
    pub oid: Option<Oid>,
    /// Its location on the server: an absolute path, or on 16+ for an in-place tablespace a
    /// path relative to the data directory (`pg_tblspc/<oid>`); `None` for the main directory.
    pub location: Option<String>,
    /// Estimated size in kB (only with PROGRESS).
    pub size_kb: Option<u64>,
}

impl TablespaceInfo {
    /// Whether this row is the main data directory.
    pub fn is_base(&self) -> bool {
        self.oid.is_none()
    }
}

/// An archive the server starts sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// `base.tar` or `<oid>.tar` (plus `.gz`, `.lz4`, `.zst` with server compression).
    pub name: String,
    /// The tablespace it holds (index into [`BackupEvent::Tablespaces`]'s list).
    pub tablespace: usize,
    /// Whether the server ends the tar with its two zero blocks (15+) or not (10–14).
    pub server_terminated: bool,
}

/// What the decoder reports, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupEvent {
    /// The backup started at `start` on `timeline` (the checkpoint is done).
    Started {
        /// Start position.
        start: Lsn,
        /// Timeline.
        timeline: TimelineId,
    },
    /// The tablespaces, main data directory last.
    Tablespaces(Vec<TablespaceInfo>),
    /// An archive begins.
    ArchiveStart(ArchiveInfo),
    /// Bytes of the current archive.
    ArchiveData(Bytes),
    /// The current archive is complete.
    ArchiveEnd,
    /// The manifest begins.
    ManifestStart,
    /// Bytes of the manifest.
    ManifestData(Bytes),
    /// The manifest is complete.
    ManifestEnd,
    /// The server's count of bytes sent so far, over the whole backup (15+).
    Progress(u64),
    /// The backup ended at `end` on `timeline`; all data has been received.
    Ended {
        /// End position.
        end: Lsn,
        /// Timeline.
        timeline: TimelineId,
    },
    /// The server reported an error; the backup failed. ReadyForQuery follows.
    ServerError(ServerError),
    /// ReadyForQuery: the connection is idle again.
    Complete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Tablespaces,
    /// Between COPYs (legacy) or before the single COPY (15+).
    ExpectCopy,
    /// Inside a legacy COPY of one archive.
    LegacyArchive,
    /// Inside the legacy manifest COPY.
    LegacyManifest,
    /// Inside the single 15+ COPY, before the first `n`.
    CopyBeforeArchive,
    /// Inside the single 15+ COPY, in an archive.
    CopyArchive,
    /// Inside the single 15+ COPY, after `m`.
    CopyManifest,
    /// The end-position result set.
    End,
    /// CommandComplete(s) then ReadyForQuery.
    ExpectReady,
    /// After an ErrorResponse, until ReadyForQuery.
    Failed,
    Done,
}

/// Payload types inside the 15+ COPY stream.
const NEW_ARCHIVE: u8 = b'n';
const ARCHIVE_DATA: u8 = b'd';
const PROGRESS: u8 = b'p';
const MANIFEST: u8 = b'm';

/// Turns the server's response to BASE_BACKUP into [`BackupEvent`]s, sans-IO.
///
/// Feed every message after sending the command (except NoticeResponse, which the caller
/// handles) to [`Self::handle_message`], then drain [`Self::poll_event`] until it returns `None`.
#[derive(Debug)]
pub struct BaseBackupDecoder {
    dialect: Dialect,
    stage: Stage,
    builder: ResultSetBuilder,
    tablespaces: Vec<TablespaceInfo>,
    /// Which tablespaces' archives have started (15+ names them; each must come once).
    received: Vec<bool>,
    next_archive: usize,
    events: VecDeque<BackupEvent>,
}

impl BaseBackupDecoder {
    /// A decoder for a server speaking `dialect`.
    pub fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            stage: Stage::Start,
            builder: ResultSetBuilder::default(),
            tablespaces: Vec::new(),
            received: Vec::new(),
            next_archive: 0,
            events: VecDeque::new(),
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<BackupEvent> {
        self.events.pop_front()
    }

    /// Whether ReadyForQuery has been seen.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Feeds one server message.
    pub fn handle_message(&mut self, msg: BackendMessage) -> Result<(), ProtocolError> {
        match msg {
            BackendMessage::NoticeResponse(_) | BackendMessage::ParameterStatus { .. } => {
                return Ok(())
            }
            BackendMessage::ErrorResponse(e) if self.stage != Stage::Done => {
                self.stage = Stage::Failed;
                self.events.push_back(BackupEvent::ServerError(e));
                return Ok(());
            }
            _ => {}
        }
        match (self.stage, msg) {
            (Stage::CopyArchive, BackendMessage::CopyData(data))
            | (Stage::CopyManifest, BackendMessage::CopyData(data))
            | (Stage::CopyBeforeArchive, BackendMessage::CopyData(data)) => self.on_copy_data(data),
            (Stage::LegacyArchive, BackendMessage::CopyData(data)) => {
                self.events.push_back(BackupEvent::ArchiveData(data));
                Ok(())
            }
            (Stage::LegacyManifest, BackendMessage::CopyData(data)) => {
                self.events.push_back(BackupEvent::ManifestData(data));
                Ok(())
            }
            (Stage::Start | Stage::Tablespaces | Stage::End, msg) => self.on_result_message(msg),
            (Stage::ExpectCopy, BackendMessage::CopyOutResponse(_)) => {
                self.on_copy_out();
                Ok(())
            }
            (Stage::ExpectCopy, msg @ BackendMessage::RowDescription(_))
                if self.next_archive == self.tablespaces.len() =>
            {
                self.stage = Stage::End;
                self.on_result_message(msg)
            }
            (
                Stage::LegacyArchive
                | Stage::LegacyManifest
                | Stage::CopyBeforeArchive
                | Stage::CopyArchive
                | Stage::CopyManifest,
                BackendMessage::CopyDone,
            ) => self.on_copy_done(),
            (Stage::ExpectReady, BackendMessage::CommandComplete(_)) => Ok(()),
            (Stage::ExpectReady | Stage::Failed, BackendMessage::ReadyForQuery(_)) => {
                self.stage = Stage::Done;
                self.events.push_back(BackupEvent::Complete);
                Ok(())
            }
            (Stage::Failed, _) => Ok(()),
            (stage, msg) => Err(ProtocolError::UnexpectedMessage {
                expected: stage.expects(),
                got: msg.name(),
            }),
        }
    }

    /// A message of one of the three result sets (start position, tablespaces, end position);
    /// once the set is complete, reports it and moves to the next stage.
    fn on_result_message(&mut self, msg: BackendMessage) -> Result<(), ProtocolError> {
        let Some(set) = self.builder.handle_message(msg, self.stage.expects())? else {
            return Ok(());
        };
        match self.stage {
            Stage::Start => {
                let (start, timeline) = position(&set, "BASE_BACKUP start position")?;
                self.events
                    .push_back(BackupEvent::Started { start, timeline });
                self.stage = Stage::Tablespaces;
            }
            Stage::Tablespaces => {
                self.tablespaces = tablespaces(&set)?;
                self.received = vec![false; self.tablespaces.len()];
                self.events
                    .push_back(BackupEvent::Tablespaces(self.tablespaces.clone()));
                self.stage = Stage::ExpectCopy;
            }
            _ => {
                let (end, timeline) = position(&set, "BASE_BACKUP end position")?;
                self.events.push_back(BackupEvent::Ended { end, timeline });
                self.stage = Stage::ExpectReady;
            }
        }
        Ok(())
    }

    fn on_copy_out(&mut self) {
        match self.dialect {
            Dialect::Options => self.stage = Stage::CopyBeforeArchive,
            Dialect::Legacy => {
                if let Some(ts) = self.tablespaces.get(self.next_archive) {
                    let name = archive_name(ts);
                    self.events
                        .push_back(BackupEvent::ArchiveStart(ArchiveInfo {
                            name,
                            tablespace: self.next_archive,
                            server_terminated: false,
                        }));
                    self.next_archive += 1;
                    self.stage = Stage::LegacyArchive;
                } else {
                    self.events.push_back(BackupEvent::ManifestStart);
                    self.stage = Stage::LegacyManifest;
                }
            }
        }
    }

    /// CopyDone: a legacy COPY ends one archive or the manifest; the single 15+ COPY ends the
    /// data, which must then have held one archive per tablespace.
    fn on_copy_done(&mut self) -> Result<(), ProtocolError> {
        match self.stage {
            Stage::LegacyArchive => {
                self.events.push_back(BackupEvent::ArchiveEnd);
                self.stage = Stage::ExpectCopy;
                return Ok(());
            }
            Stage::LegacyManifest => {
                self.events.push_back(BackupEvent::ManifestEnd);
                self.stage = Stage::End;
                return Ok(());
            }
            Stage::CopyArchive => self.events.push_back(BackupEvent::ArchiveEnd),
            Stage::CopyManifest => self.events.push_back(BackupEvent::ManifestEnd),
            _ => {}
        }
        if self.next_archive != self.tablespaces.len() {
            return Err(ProtocolError::BadResult {
                command: "BASE_BACKUP",
                problem: format!(
                    "{} archives received for {} tablespaces",
                    self.next_archive,
                    self.tablespaces.len()
                ),
            });
        }
        self.stage = Stage::End;
        Ok(())
    }

    /// One CopyData of the 15+ stream: a type byte, then its payload.
    fn on_copy_data(&mut self, data: Bytes) -> Result<(), ProtocolError> {
        let Some(&kind) = data.first() else {
            return Err(ProtocolError::Truncated("BASE_BACKUP CopyData"));
        };
        let payload = data.get(1..).unwrap_or_default();
        match (kind, self.stage) {
            (ARCHIVE_DATA, Stage::CopyArchive) => {
                self.events
                    .push_back(BackupEvent::ArchiveData(data.slice(1..)));
            }
            (ARCHIVE_DATA, Stage::CopyManifest) => {
                self.events
                    .push_back(BackupEvent::ManifestData(data.slice(1..)));
            }
            (NEW_ARCHIVE, Stage::CopyBeforeArchive | Stage::CopyArchive) => {
                self.on_new_archive(payload)?;
            }
            (PROGRESS, Stage::CopyBeforeArchive | Stage::CopyArchive | Stage::CopyManifest) => {
                let mut r = Reader::new(payload, "progress message");
                let done = r.u64()?;
                r.finish()?;
                self.events.push_back(BackupEvent::Progress(done));
            }
            (MANIFEST, Stage::CopyBeforeArchive | Stage::CopyArchive) => {
                Reader::new(payload, "manifest message").finish()?;
                self.end_open_archive();
                self.events.push_back(BackupEvent::ManifestStart);
                self.stage = Stage::CopyManifest;
            }
            (kind, _) => return Err(misplaced_payload(kind)),
        }
        Ok(())
    }

    /// An `n` message: the archive it names starts (ending the one open, if any). Each
    /// tablespace's archive may come once.
    fn on_new_archive(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        let mut r = Reader::new(payload, "new archive message");
        let name = r.string()?;
        let location = r.string()?;
        r.finish()?;
        check_archive_name(&name)?;
        self.end_open_archive();
        let tablespace = self.tablespace_for(&location)?;
        match self.received.get_mut(tablespace) {
            Some(seen) if !*seen => *seen = true,
            _ => {
                return Err(ProtocolError::BadValue {
                    what: "archive location (its archive was already sent)",
                    value: location.chars().take(200).collect(),
                })
            }
        }
        self.events
            .push_back(BackupEvent::ArchiveStart(ArchiveInfo {
                name,
                tablespace,
                server_terminated: true,
            }));
        self.next_archive += 1;
        self.stage = Stage::CopyArchive;
        Ok(())
    }

    /// Reports the end of the archive being received, if one is (15+).
    fn end_open_archive(&mut self) {
        if self.stage == Stage::CopyArchive {
            self.events.push_back(BackupEvent::ArchiveEnd);
        }
    }

    /// The tablespace an `n` message's location refers to ("" is the main directory).
    fn tablespace_for(&self, location: &str) -> Result<usize, ProtocolError> {
        let found = self.tablespaces.iter().position(|ts| match &ts.location {
            None => location.is_empty(),
            Some(l) => l == location,
        });
        found.ok_or_else(|| ProtocolError::BadValue {
            what: "archive location (not in the tablespace list)",
            value: location.chars().take(200).collect(),
        })
    }
}

impl Stage {
    fn expects(self) -> &'static str {
        match self {
            Self::Start => "the backup start position",
            Self::Tablespaces => "the tablespace list",
            Self::ExpectCopy => "CopyOutResponse or the backup end position",
            Self::LegacyArchive | Self::LegacyManifest => "CopyData or CopyDone",
            Self::CopyBeforeArchive | Self::CopyArchive | Self::CopyManifest => {
                "CopyData or CopyDone"
            }
            Self::End => "the backup end position",
            Self::ExpectReady => "CommandComplete or ReadyForQuery",
            Self::Failed => "ReadyForQuery",
            Self::Done => "nothing (the backup is over)",
        }
    }
}

/// The error for a 15+ CopyData type byte that is unknown or comes where it may not.
fn misplaced_payload(kind: u8) -> ProtocolError {
    match kind {
        NEW_ARCHIVE => ProtocolError::UnexpectedMessage {
            expected: "manifest data (archives must precede the manifest)",
            got: "new archive",
        },
        ARCHIVE_DATA => ProtocolError::UnexpectedMessage {
            expected: "a new archive before archive data",
            got: "archive data",
        },
        MANIFEST => ProtocolError::UnexpectedMessage {
            expected: "manifest data",
            got: "a second manifest",
        },
        other => ProtocolError::BadValue {
            what: "BASE_BACKUP CopyData type",
            value: char::from(other).escape_default().to_string(),
        },
    }
}

/// Name of an archive in the legacy stream, which names none.
fn archive_name(ts: &TablespaceInfo) -> String {
    match ts.oid {
        Some(oid) => format!("{oid}.tar"),
        None => "base.tar".into(),
    }
}

/// The sanity check pg_basebackup applies to archive names from the server: non-empty, not
/// starting with `.`, without `/` or `\`.
fn check_archive_name(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) || name.len() > 255 {
        return Err(ProtocolError::BadValue {
            what: "archive name",
            value: name.chars().take(200).collect(),
        });
    }
    Ok(())
}

fn position(set: &ResultSet, command: &'static str) -> Result<(Lsn, TimelineId), ProtocolError> {
    set.expect_shape(command, Some(1), 2)?;
    let lsn = set.required_text(command, 0, 0)?.parse()?;
    let tli = set.required_text(command, 0, 1)?.parse()?;
    Ok((lsn, tli))
}

fn tablespaces(set: &ResultSet) -> Result<Vec<TablespaceInfo>, ProtocolError> {
    const CMD: &str = "BASE_BACKUP tablespace list";
    set.expect_shape(CMD, None, 3)?;
    if set.rows.len() > MAX_TABLESPACES {
        return Err(ProtocolError::TooMany {
            what: "tablespaces",
            max: MAX_TABLESPACES,
        });
    }
    let mut list = Vec::with_capacity(set.rows.len());
    for row in 0..set.rows.len() {
        let oid = set.text(CMD, row, 0)?.map(str::parse).transpose()?;
        let location = set.text(CMD, row, 1)?.map(str::to_owned);
        let size_kb = set
            .text(CMD, row, 2)?
            .map(|s| {
                s.parse::<i64>()
                    .ok()
                    .and_then(|v| u64::try_from(v).ok())
                    .ok_or_else(|| ProtocolError::BadValue {
                        what: "tablespace size",
                        value: s.chars().take(64).collect(),
                    })
            })
            .transpose()?;
        if oid.is_some() != location.is_some() {
            return Err(ProtocolError::BadResult {
                command: CMD,
                problem: format!("row {row} has an oid without a location or the reverse"),
            });
        }
        list.push(TablespaceInfo {
            oid,
            location,
            size_kb,
        });
    }
    let bases = list.iter().filter(|ts| ts.is_base()).count();
    if bases != 1 {
        return Err(ProtocolError::BadResult {
            command: CMD,
            problem: format!("{bases} rows for the main data directory, expected 1"),
        });
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FieldDescription;

    fn v(s: &str) -> ServerVersion {
        ServerVersion::parse(s).expect("version")
    }

    #[test]
    fn legacy_command_sends_only_what_the_version_accepts() {
        let mut o = BaseBackupOptions {
            label: "it's".into(),
            checkpoint: Checkpoint::Fast,
            wal: true,
            wait_for_archive: false,
            max_rate: Some(1024),
            verify_checksums: false,
            manifest_checksums: Some("SHA256".into()),
            ..BaseBackupOptions::default()
        };
        assert_eq!(
            o.command(v("10.23")).ok().as_deref(),
            Some("BASE_BACKUP LABEL 'it''s' PROGRESS FAST WAL NOWAIT MAX_RATE 1024")
        );
        assert_eq!(
            o.command(v("11.22")).ok().as_deref(),
            Some("BASE_BACKUP LABEL 'it''s' PROGRESS FAST WAL NOWAIT MAX_RATE 1024 NOVERIFY_CHECKSUMS")
        );
        assert_eq!(
            o.command(v("13.23")).ok().as_deref(),
            Some("BASE_BACKUP LABEL 'it''s' PROGRESS FAST WAL NOWAIT MAX_RATE 1024 NOVERIFY_CHECKSUMS MANIFEST 'yes' MANIFEST_CHECKSUMS 'SHA256'")
        );
        o.max_rate = Some(0);
        assert_eq!(o.command(v("14.1")), Err(OptionError::MaxRate(0)));
        o.max_rate = None;
        o.target = Some(Target {
            name: "blackhole".into(),
            detail: None,
        });
        assert!(matches!(
            o.command(v("14.1")),
            Err(OptionError::Unsupported { .. })
        ));
    }

    #[test]
    fn options_command_for_15_and_later() {
        let o = BaseBackupOptions {
            checkpoint: Checkpoint::Fast,
            wait_for_archive: false,
            ..BaseBackupOptions::default()
        };
        assert_eq!(
            o.command(v("15.18")).ok().as_deref(),
            Some("BASE_BACKUP (LABEL 'pgclone base backup', PROGRESS, CHECKPOINT 'fast', WAIT 0, MANIFEST 'yes', TARGET 'client')")
        );
        let o = BaseBackupOptions {
            progress: false,
            wal: true,
            tablespace_map: true,
            verify_checksums: false,
            manifest: ManifestOption::No,
            max_rate: Some(32),
            compression: Some(ServerCompression {
                method: "lz4".into(),
                detail: Some("level=3".into()),
            }),
            ..BaseBackupOptions::default()
        };
        assert_eq!(
            o.command(v("18.4")).ok().as_deref(),
            Some("BASE_BACKUP (LABEL 'pgclone base backup', WAL, MAX_RATE 32, TABLESPACE_MAP, VERIFY_CHECKSUMS 0, TARGET 'client', COMPRESSION 'lz4', COMPRESSION_DETAIL 'level=3')")
        );
    }

    #[test]
    fn incremental_is_the_first_option_and_17_plus_only() {
        let o = BaseBackupOptions {
            incremental: true,
            checkpoint: Checkpoint::Fast,
            ..BaseBackupOptions::default()
        };
        for version in ["17.0", "17.7", "18.1"] {
            assert_eq!(
                o.command(v(version)).ok().as_deref(),
                Some("BASE_BACKUP (INCREMENTAL, LABEL 'pgclone base backup', PROGRESS, CHECKPOINT 'fast', MANIFEST 'yes', TARGET 'client')"),
                "{version}"
            );
        }
        for version in ["10.23", "14.1", "15.18", "16.9"] {
            assert_eq!(
                o.command(v(version)),
                Err(OptionError::Unsupported {
                    feature: "incremental backups are",
                    version: v(version).to_string(),
                }),
                "{version}"
            );
        }
        let full = BaseBackupOptions::default();
        assert!(!full
            .command(v("17.2"))
            .expect("valid")
            .contains("INCREMENTAL"));
    }

    fn text_col(name: &str) -> FieldDescription {
        FieldDescription {
            name: name.into(),
            type_oid: 25,
        }
    }

    fn row(values: &[Option<&str>]) -> BackendMessage {
        BackendMessage::DataRow(
            values
                .iter()
                .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                .collect(),
        )
    }

    fn header_messages(tablespaces: &[[Option<&str>; 3]]) -> Vec<BackendMessage> {
        let mut msgs = vec![
            BackendMessage::RowDescription(vec![text_col("recptr"), text_col("tli")]),
            row(&[Some("0/2000028"), Some("1")]),
            BackendMessage::CommandComplete("SELECT".into()),
            BackendMessage::RowDescription(vec![
                text_col("spcoid"),
                text_col("spclocation"),
                text_col("size"),
            ]),
        ];
        msgs.extend(tablespaces.iter().map(|r| row(r)));
        msgs.push(BackendMessage::CommandComplete("SELECT".into()));
        msgs
    }

    fn end_messages() -> Vec<BackendMessage> {
        vec![
            BackendMessage::RowDescription(vec![text_col("recptr"), text_col("tli")]),
            row(&[Some("0/2000100"), Some("1")]),
            BackendMessage::CommandComplete("SELECT".into()),
            BackendMessage::CommandComplete("BASE_BACKUP".into()),
            BackendMessage::ReadyForQuery(b'I'),
        ]
    }

    fn copy_out() -> BackendMessage {
        BackendMessage::CopyOutResponse(crate::backend::CopyResponse {
            format: 0,
            columns: 0,
        })
    }

    fn data(bytes: &[u8]) -> BackendMessage {
        BackendMessage::CopyData(Bytes::copy_from_slice(bytes))
    }

    fn run(dialect: Dialect, msgs: Vec<BackendMessage>) -> Result<Vec<BackupEvent>, ProtocolError> {
        let mut d = BaseBackupDecoder::new(dialect);
        let mut events = Vec::new();
        for m in msgs {
            d.handle_message(m)?;
            while let Some(e) = d.poll_event() {
                events.push(e);
            }
        }
        Ok(events)
    }

    #[test]
    fn legacy_and_new_streams_give_the_same_events() {
        let ts = [
            [Some("16388"), Some("/srv/ts1"), Some("66")],
            [None, None, Some("22939")],
        ];
        let mut legacy = header_messages(&ts);
        legacy.extend([copy_out(), data(b"ts-bytes"), BackendMessage::CopyDone]);
        legacy.extend([
            copy_out(),
            data(b"base-"),
            data(b"bytes"),
            BackendMessage::CopyDone,
        ]);
        legacy.extend([copy_out(), data(b"{manifest}"), BackendMessage::CopyDone]);
        legacy.extend(end_messages());

        let mut new = header_messages(&ts);
        new.extend([
            copy_out(),
            data(b"n16388.tar\0/srv/ts1\0"),
            data(b"dts-bytes"),
            data(&[b'p', 0, 0, 0, 0, 0, 0, 0, 8]),
            data(b"nbase.tar\0\0"),
            data(b"dbase-"),
            data(b"dbytes"),
            data(b"m"),
            data(b"d{manifest}"),
            BackendMessage::CopyDone,
        ]);
        new.extend(end_messages());

        let legacy = run(Dialect::Legacy, legacy).expect("legacy");
        let mut new = run(Dialect::Options, new).expect("new");
        assert!(new.contains(&BackupEvent::Progress(8)));
        new.retain(|e| !matches!(e, BackupEvent::Progress(_)));
        let strip = |events: Vec<BackupEvent>| -> Vec<BackupEvent> {
            events
                .into_iter()
                .map(|e| match e {
                    BackupEvent::ArchiveStart(a) => BackupEvent::ArchiveStart(ArchiveInfo {
                        server_terminated: false,
                        ..a
                    }),
                    e => e,
                })
                .collect()
        };
        assert_eq!(strip(legacy.clone()), strip(new));
        assert_eq!(
            legacy.first(),
            Some(&BackupEvent::Started {
                start: Lsn(0x200_0028),
                timeline: TimelineId(1)
            })
        );
        assert_eq!(legacy.last(), Some(&BackupEvent::Complete));
        assert!(legacy.contains(&BackupEvent::ArchiveStart(ArchiveInfo {
            name: "16388.tar".into(),
            tablespace: 0,
            server_terminated: false
        })));
    }

    #[test]
    fn malformed_streams_are_typed_errors() {
        let ts = [[None, None, None]];
        // CopyData outside COPY.
        let mut msgs = header_messages(&ts);
        msgs.push(data(b"dxx"));
        assert!(matches!(
            run(Dialect::Options, msgs),
            Err(ProtocolError::UnexpectedMessage {
                got: "CopyData",
                ..
            })
        ));
        // Archive data before any archive.
        let mut msgs = header_messages(&ts);
        msgs.extend([copy_out(), data(b"dxx")]);
        assert!(run(Dialect::Options, msgs).is_err());
        // Unknown payload type.
        let mut msgs = header_messages(&ts);
        msgs.extend([copy_out(), data(b"z")]);
        assert!(matches!(
            run(Dialect::Options, msgs),
            Err(ProtocolError::BadValue { .. })
        ));
        // Archive after manifest.
        let mut msgs = header_messages(&ts);
        msgs.extend([
            copy_out(),
            data(b"nbase.tar\0\0"),
            data(b"m"),
            data(b"nbase.tar\0\0"),
        ]);
        assert!(run(Dialect::Options, msgs).is_err());
        // Archive name with a slash.
        let mut msgs = header_messages(&ts);
        msgs.extend([copy_out(), data(b"n../x.tar\0\0")]);
        assert!(run(Dialect::Options, msgs).is_err());
        // Location not in the list.
        let mut msgs = header_messages(&ts);
        msgs.extend([copy_out(), data(b"n1.tar\0/elsewhere\0")]);
        assert!(run(Dialect::Options, msgs).is_err());
        // Empty CopyData.
        let mut msgs = header_messages(&ts);
        msgs.extend([copy_out(), data(b"")]);
        assert_eq!(
            run(Dialect::Options, msgs),
            Err(ProtocolError::Truncated("BASE_BACKUP CopyData"))
        );
        // Truncated progress.
        let mut msgs = header_messages(&ts);
        msgs.extend([copy_out(), data(b"p\0\0")]);
        assert!(run(Dialect::Options, msgs).is_err());
        // The same tablespace's archive twice (and another's never).
        let ts2 = [[Some("5"), Some("/x"), None], [None, None, None]];
        let mut msgs = header_messages(&ts2);
        msgs.extend([
            copy_out(),
            data(b"nbase.tar\0\0"),
            data(b"nbase.tar\0\0"),
            BackendMessage::CopyDone,
        ]);
        assert!(matches!(
            run(Dialect::Options, msgs),
            Err(ProtocolError::BadValue { .. })
        ));
        // Missing archive for a tablespace.
        let ts2 = [[Some("5"), Some("/x"), None], [None, None, None]];
        let mut msgs = header_messages(&ts2);
        msgs.extend([copy_out(), data(b"nbase.tar\0\0"), BackendMessage::CopyDone]);
        assert!(run(Dialect::Options, msgs).is_err());
        // Two base rows.
        let msgs = header_messages(&[[None, None, None], [None, None, None]]);
        assert!(run(Dialect::Legacy, msgs).is_err());
        // Bad LSN.
        let msgs = vec![
            BackendMessage::RowDescription(vec![text_col("recptr"), text_col("tli")]),
            row(&[Some("nonsense"), Some("1")]),
            BackendMessage::CommandComplete("SELECT".into()),
        ];
        assert!(run(Dialect::Legacy, msgs).is_err());
    }

    #[test]
    fn server_error_becomes_an_event() {
        let ts = [[None, None, None]];
        let mut msgs = header_messages(&ts);
        msgs.extend([copy_out(), data(b"x"), BackendMessage::CopyDone]);
        msgs.extend([
            BackendMessage::RowDescription(vec![text_col("recptr"), text_col("tli")]),
            row(&[Some("0/2000100"), Some("1")]),
            BackendMessage::CommandComplete("SELECT".into()),
            BackendMessage::ErrorResponse(ServerError {
                severity: "ERROR".into(),
                code: crate::sqlstate::DATA_CORRUPTED.into(),
                message: "checksum verification failure during base backup".into(),
                ..ServerError::default()
            }),
            BackendMessage::ReadyForQuery(b'I'),
        ]);
        let events = run(Dialect::Legacy, msgs).expect("decodes");
        assert!(matches!(
            events.get(events.len() - 2),
            Some(BackupEvent::ServerError(e)) if e.code == crate::sqlstate::DATA_CORRUPTED
        ));
        assert_eq!(events.last(), Some(&BackupEvent::Complete));
    }
}
