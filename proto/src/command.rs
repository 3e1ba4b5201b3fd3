//! The replication commands pgclone sends besides BASE_BACKUP (which has its own options and
//! lives in [`crate::basebackup`]): their text for each server version, and their names.
//!
//! Version rules (see `protocol.md`):
//! - CREATE_REPLICATION_SLOT takes its options in parentheses on 15+
//!   (`PHYSICAL (RESERVE_WAL)`) and as bare keywords on 10–14 (`PHYSICAL RESERVE_WAL`).
//! - IDENTIFY_SYSTEM, START_REPLICATION ... PHYSICAL, TIMELINE_HISTORY and
//!   DROP_REPLICATION_SLOT (without WAIT) read the same on every supported server (10+).
//! - UPLOAD_MANIFEST exists on 17+ only; its text has no options. The caller checks the
//!   version first (older servers answer with a syntax error); the COPY exchange that follows
//!   it is [`crate::copy_in::CopyIn`].
//!
//! Slot names are sent as quoted identifiers ([`quote_ident`]). Only physical replication is
//! built: no logical slots, no output plugins, no `SNAPSHOT` options.

use crate::frontend::quote_ident;
use crate::lsn::{Lsn, TimelineId};
use crate::startup::ServerVersion;

/// One replication command, independent of the server version it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `IDENTIFY_SYSTEM`: system identifier, timeline and flush position.
    IdentifySystem,
    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [RESERVE_WAL]`.
    CreatePhysicalSlot {
        /// The slot's name.
        name: &'a str,
        /// Whether the slot goes away with the connection.
        temporary: bool,
        /// Whether the slot reserves WAL from the moment it is created.
        reserve_wal: bool,
    },
    /// `DROP_REPLICATION_SLOT name` (fails at once if the slot is in use).
    DropSlot {
        /// The slot's name.
        name: &'a str,
    },
    /// `START_REPLICATION [SLOT name] PHYSICAL start TIMELINE timeline`.
    StartPhysical {
        /// The slot to stream from, if any.
        slot: Option<&'a str>,
        /// Where streaming starts (a segment boundary, as pgclone sends it).
        start: Lsn,
        /// The timeline to stream.
        timeline: TimelineId,
    },
    /// `TIMELINE_HISTORY timeline`: the history file of a timeline (2 and up).
    TimelineHistory(TimelineId),
    /// `UPLOAD_MANIFEST` (17+): the server then takes an earlier backup's manifest as COPY
    /// data, the reference of the next `BASE_BACKUP (INCREMENTAL)`.
    UploadManifest,
}

impl Command<'_> {
    /// The command's keyword, used to name it in errors (`CREATE_REPLICATION_SLOT`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::IdentifySystem => "IDENTIFY_SYSTEM",
            Self::CreatePhysicalSlot { .. } => "CREATE_REPLICATION_SLOT",
            Self::DropSlot { .. } => "DROP_REPLICATION_SLOT",
            Self::StartPhysical { .. } => "START_REPLICATION",
            Self::TimelineHistory(_) => "TIMELINE_HISTORY",
            Self::UploadManifest => "UPLOAD_MANIFEST",
        }
    }

    /// The command text for a server of `version`.
    pub fn text(&self, version: ServerVersion) -> String {
        match *self {
            Self::IdentifySystem | Self::UploadManifest => self.name().to_owned(),
            Self::CreatePhysicalSlot {
                name,
                temporary,
                reserve_wal,
            } => create_physical_slot(name, temporary, reserve_wal, version),
            Self::DropSlot { name } => format!("DROP_REPLICATION_SLOT {}", quote_ident(name)),
            Self::StartPhysical {
                slot,
                start,
                timeline,
            } => {
                let slot = slot
                    .map(|s| format!("SLOT {} ", quote_ident(s)))
                    .unwrap_or_default();
                format!("START_REPLICATION {slot}PHYSICAL {start} TIMELINE {timeline}")
            }
            Self::TimelineHistory(timeline) => format!("TIMELINE_HISTORY {timeline}"),
        }
    }
}

fn create_physical_slot(
    name: &str,
    temporary: bool,
    reserve_wal: bool,
    version: ServerVersion,
) -> String {
    let mut cmd = format!("CREATE_REPLICATION_SLOT {}", quote_ident(name));
    if temporary {
        cmd.push_str(" TEMPORARY");
    }
    cmd.push_str(" PHYSICAL");
    match (reserve_wal, version.is_at_least(15)) {
        (false, _) => {}
        (true, true) => cmd.push_str(" (RESERVE_WAL)"),
        (true, false) => cmd.push_str(" RESERVE_WAL"),
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every major pgclone supports.
    const MAJORS: [u32; 9] = [10, 11, 12, 13, 14, 15, 16, 17, 18];

    fn v(major: u32) -> ServerVersion {
        ServerVersion(major * 10000 + 3)
    }

    fn create(name: &str, temporary: bool, reserve_wal: bool) -> Command<'_> {
        Command::CreatePhysicalSlot {
            name,
            temporary,
            reserve_wal,
        }
    }

    #[test]
    fn create_slot_keywords_before_15_parentheses_after() {
        for major in MAJORS {
            let temporary = create("pgclone_4242", true, true);
            let permanent = create("standby_1", false, true);
            let (tmp, perm) = if major >= 15 {
                (
                    r#"CREATE_REPLICATION_SLOT "pgclone_4242" TEMPORARY PHYSICAL (RESERVE_WAL)"#,
                    r#"CREATE_REPLICATION_SLOT "standby_1" PHYSICAL (RESERVE_WAL)"#,
                )
            } else {
                (
                    r#"CREATE_REPLICATION_SLOT "pgclone_4242" TEMPORARY PHYSICAL RESERVE_WAL"#,
                    r#"CREATE_REPLICATION_SLOT "standby_1" PHYSICAL RESERVE_WAL"#,
                )
            };
            assert_eq!(temporary.text(v(major)), tmp, "{major}");
            assert_eq!(permanent.text(v(major)), perm, "{major}");
            assert_eq!(temporary.name(), "CREATE_REPLICATION_SLOT");
        }
    }

    #[test]
    fn create_slot_boundary_is_the_first_15_release() {
        let cmd = create("s", false, true);
        assert_eq!(
            cmd.text(ServerVersion(149_999)),
            r#"CREATE_REPLICATION_SLOT "s" PHYSICAL RESERVE_WAL"#
        );
        assert_eq!(
            cmd.text(ServerVersion(150_000)),
            r#"CREATE_REPLICATION_SLOT "s" PHYSICAL (RESERVE_WAL)"#
        );
    }

    #[test]
    fn create_slot_without_reserving_wal_has_no_options() {
        for major in MAJORS {
            let cmd = create("s", true, false);
            assert_eq!(
                cmd.text(v(major)),
                r#"CREATE_REPLICATION_SLOT "s" TEMPORARY PHYSICAL"#
            );
        }
    }

    #[test]
    fn slot_names_are_quoted_identifiers() {
        let cmd = Command::DropSlot { name: "we\"ird" };
        assert_eq!(cmd.text(v(16)), r#"DROP_REPLICATION_SLOT "we""ird""#);
        let cmd = Command::StartPhysical {
            slot: Some("a\"b"),
            start: Lsn(0),
            timeline: TimelineId(1),
        };
        assert_eq!(
            cmd.text(v(10)),
            r#"START_REPLICATION SLOT "a""b" PHYSICAL 0/0 TIMELINE 1"#
        );
    }

    #[test]
    fn version_independent_commands() {
        for major in MAJORS {
            let version = v(major);
            assert_eq!(Command::IdentifySystem.text(version), "IDENTIFY_SYSTEM");
            assert_eq!(
                Command::DropSlot { name: "standby_1" }.text(version),
                r#"DROP_REPLICATION_SLOT "standby_1""#
            );
            assert_eq!(
                Command::TimelineHistory(TimelineId(12)).text(version),
                "TIMELINE_HISTORY 12"
            );
            assert_eq!(Command::UploadManifest.text(version), "UPLOAD_MANIFEST");
            let with_slot = Command::StartPhysical {
                slot: Some("standby_1"),
                start: Lsn(0x1_2300_0000),
                timeline: TimelineId(2),
            };
            assert_eq!(
                with_slot.text(version),
                r#"START_REPLICATION SLOT "standby_1" PHYSICAL 1/23000000 TIMELINE 2"#
            );
            let without = Command::StartPhysical {
                slot: None,
                start: Lsn(0x200_0000),
                timeline: TimelineId(1),
            };
            assert_eq!(
                without.text(version),
                "START_REPLICATION PHYSICAL 0/2000000 TIMELINE 1"
            );
        }
    }

    #[test]
    fn names_are_the_leading_keyword() {
        let commands = [
            Command::IdentifySystem,
            create("s", false, true),
            Command::DropSlot { name: "s" },
            Command::StartPhysical {
                slot: None,
                start: Lsn(0),
                timeline: TimelineId(1),
            },
            Command::TimelineHistory(TimelineId(2)),
            Command::UploadManifest,
        ];
        for cmd in commands {
            let text = cmd.text(v(17));
            assert!(text.starts_with(cmd.name()), "{text}");
        }
    }
}
