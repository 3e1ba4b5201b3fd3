//! `--refresh`, the reference side: what a stopped standby's own data directory says about
//! itself, turned into the reference manifest that `UPLOAD_MANIFEST` sends before an incremental
//! `BASE_BACKUP` (PostgreSQL 17+).
//!
//! - `control`: `global/pg_control` of 17 and 18 ([`ControlFile`])
//! - `walk`: the files a base backup of the directory would list ([`list_data_files`])
//! - `label`: the `backup_label` of a copy never started ([`BackupLabel`])
//! - `reference`: the reference point (REDO of the last restartpoint, or the label's start, and
//!   the newest WAL any page may reflect) and the synthesized manifest ([`synthesize`]); its
//!   module doc gives the reasoning checked against the server and what is refused
//! - `history`: whether that point lies on the primary's timeline history
//! - `resume`: the reference of an interrupted clone, from its resume journal ([`Resume`]);
//!   a journal wins over everything else in the directory (its module doc says why)
//! - `limits`: the WAL summaries' limit blocks of the range, over an ordinary SQL connection
//!   ([`limits::fetch`]), for the in-place applier's safeguard against stale blocks
//!
//! Only `limits` connects to a server; nothing here changes the directory.

pub mod control;
pub mod history;
pub mod label;
pub mod limits;
pub mod reference;
pub mod resume;
pub mod walk;

pub use control::{ControlError, ControlFile, DbState};
pub use history::{parse_history, HistoryEntry, HistoryError};
pub use label::{BackupLabel, LabelError};
pub use limits::{required_ranges, Limits, TimelineRange};
pub use reference::{manifest_at, synthesize, Reference, ReferenceError, ReferencePoint};
pub use resume::{Resume, ResumeError};
pub use walk::{list_data_files, DataFile, WalkError};
