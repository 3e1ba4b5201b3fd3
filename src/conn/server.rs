//! What pgclone checks and reads on the main connection before the backup: the server
//! version, `integer_datetimes`, `data_directory_mode`, `wal_segment_size`, IDENTIFY_SYSTEM;
//! TIMELINE_HISTORY (either connection).

use std::time::Duration;

use pgclone_proto::command::Command;
use pgclone_proto::{Lsn, ProtocolError, ServerVersion, TimelineId, WalSegSize};

use crate::conn::Connection;
use crate::error::Error;
use crate::sink::fs::Modes;

/// The oldest major pgclone supports.
pub const MIN_MAJOR: u32 = 10;

/// Facts about the server that shape the clone.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    /// Version.
    pub version: ServerVersion,
    /// Modes of what pgclone creates: 0700/0600, or 0750/0640 when the server's data
    /// directory allows group access (`data_directory_mode`, 11+).
    pub modes: Modes,
    /// WAL segment size.
    pub wal_seg_size: WalSegSize,
    /// `systemid` of IDENTIFY_SYSTEM.
    pub system_id: String,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The server's current flush position.
    pub xlogpos: Lsn,
}

/// Reads the facts, refusing servers older than 10.
pub async fn inspect(conn: &mut Connection) -> Result<ServerFacts, Error> {
    let info = conn.info();
    let version = info.version;
    if !version.is_at_least(MIN_MAJOR) {
        return Err(Error::IncompatibleServer(format!(
            "incompatible server version {}: {} supports PostgreSQL {MIN_MAJOR} and newer",
            info.version_text,
            crate::program::name()
        )));
    }
    if info.params.get("integer_datetimes").map(String::as_str) != Some("on") {
        return Err(Error::IncompatibleServer(
            "\"integer_datetimes\" compile flag does not match server".into(),
        ));
    }
    let modes = if version.is_at_least(11) {
        let text = conn.show("data_directory_mode").await?;
        let mode = u32::from_str_radix(text.trim(), 8).map_err(|_| Error::Protocol {
            phase: "SHOW data_directory_mode",
            source: ProtocolError::BadValue {
                what: "data_directory_mode",
                value: text.chars().take(32).collect(),
            },
        })?;
        Modes::for_data_directory(mode)
    } else {
        Modes::PRIVATE
    };
    let seg = conn.show("wal_segment_size").await?;
    let wal_seg_size =
        WalSegSize::parse_show(&seg).map_err(Error::protocol("SHOW wal_segment_size"))?;

    let System {
        system_id,
        timeline,
        xlogpos,
    } = identify_system(conn).await?;
    Ok(ServerFacts {
        version,
        modes,
        wal_seg_size,
        system_id,
        timeline,
        xlogpos,
    })
}

/// What IDENTIFY_SYSTEM says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    /// `systemid`.
    pub system_id: String,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The server's current flush position.
    pub xlogpos: Lsn,
}

/// Runs IDENTIFY_SYSTEM (on either connection).
pub async fn identify_system(conn: &mut Connection) -> Result<System, Error> {
    let cmd = Command::IdentifySystem;
    let what = cmd.name();
    let sets = conn
        .simple_query(what, &cmd.text(conn.info().version))
        .await?;
    let parse = || -> Result<System, ProtocolError> {
        let set = sets.first().ok_or(ProtocolError::BadResult {
            command: what,
            problem: "no result".into(),
        })?;
        if set.columns.len() < 3 || set.rows.len() != 1 {
            return Err(ProtocolError::BadResult {
                command: what,
                problem: format!("{} rows of {} columns", set.rows.len(), set.columns.len()),
            });
        }
        Ok(System {
            system_id: set.required_text(what, 0, 0)?.to_owned(),
            timeline: set.required_text(what, 0, 1)?.parse()?,
            xlogpos: set.required_text(what, 0, 2)?.parse()?,
        })
    };
    parse().map_err(Error::protocol(what))
}

/// Runs TIMELINE_HISTORY for `timeline`: the history file's name and content, the name
/// checked against the one the timeline has.
pub async fn timeline_history(
    conn: &mut Connection,
    timeline: TimelineId,
) -> Result<(String, bytes::Bytes), Error> {
    let cmd = Command::TimelineHistory(timeline);
    let what = cmd.name();
    let sets = conn
        .simple_query(what, &cmd.text(conn.info().version))
        .await?;
    let parse = || -> Result<(String, bytes::Bytes), ProtocolError> {
        let set = sets
            .first()
            .ok_or(ProtocolError::Truncated("TIMELINE_HISTORY result"))?;
        set.expect_shape(what, Some(1), 2)?;
        let got = set.required_text(what, 0, 0)?.to_owned();
        let content = set
            .bytes(what, 0, 1)?
            .cloned()
            .ok_or(ProtocolError::Truncated("history file content"))?;
        if got != timeline.history_file_name() {
            return Err(ProtocolError::BadValue {
                what: "history file name",
                value: got.chars().take(64).collect(),
            });
        }
        Ok((got, content))
    };
    parse().map_err(Error::protocol(what))
}

/// `SHOW checkpoint_timeout`, as a duration.
pub async fn checkpoint_timeout(conn: &mut Connection) -> Result<Duration, Error> {
    let text = conn.show("checkpoint_timeout").await?;
    pgclone_proto::guc::duration(&text).ok_or_else(|| Error::Protocol {
        phase: "SHOW checkpoint_timeout",
        source: ProtocolError::BadValue {
            what: "checkpoint_timeout",
            value: text.chars().take(32).collect(),
        },
    })
}
