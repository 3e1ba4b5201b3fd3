//! The SQLSTATE codes pgclone looks at, by name (PostgreSQL's `errcodes.txt` spelling). A
//! [`crate::ServerError`]'s `code` is compared against these, never against a literal.

/// `28000` invalid_authorization_specification: no `pg_hba.conf` entry, and the like.
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// `28P01` invalid_password.
pub const INVALID_PASSWORD: &str = "28P01";
/// `42704` undefined_object.
pub const UNDEFINED_OBJECT: &str = "42704";
/// `53300` too_many_connections: `max_connections` or `max_wal_senders` reached.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `55000` object_not_in_prerequisite_state: among others, an incremental BASE_BACKUP (17+)
/// whose range the WAL summaries do not cover, or with `summarize_wal` off.
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// `55006` object_in_use: among others, "replication slot ... is active for PID ..." from
/// DROP_REPLICATION_SLOT while a walsender still holds the slot (10 and up).
pub const OBJECT_IN_USE: &str = "55006";
/// `57P03` cannot_connect_now: the server is starting up, shutting down or in recovery.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `XX001` data_corrupted: what the server reports after page checksum failures in a backup.
pub const DATA_CORRUPTED: &str = "XX001";
