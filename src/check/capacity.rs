//! Whether there is room for the clone: free walsenders for the connections `-X` opens, a free
//! replication slot for the one the clone creates (temporary with `-X stream`, or `-C`'s), the
//! `-S` slot existing or not as `-C` wants, and free disk space for the database's size on each
//! filesystem the clone writes to.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pgclone_proto::WalSegSize;

use crate::check::dest::{Place, Places, TablespaceTarget};
use crate::check::server::{Facts, SlotState, SqlUnavailable};
use crate::check::Finding;
use crate::error::Error;
use crate::options::config::{Format, WalMethod};
use crate::options::Config;

/// Below this margin over the estimate, enough space is only a warning: the estimate is the
/// size of the databases now, and they grow while the copy runs.
const SPACE_MARGIN_PERCENT: u64 = 10;

/// The walsenders a clone uses at once: the main connection, and the WAL one of `-X stream`.
pub fn walsenders_needed(cfg: &Config) -> u64 {
    if cfg.wal_method == WalMethod::Stream {
        2
    } else {
        1
    }
}

/// The slot a clone creates, and why: `None` when it creates none.
pub fn slot_needed(cfg: &Config) -> Option<String> {
    match (&cfg.slot, cfg.create_slot) {
        (Some(name), true) => Some(format!("-C creates slot \"{name}\"")),
        (Some(_), false) => None,
        (None, _) if cfg.wal_method == WalMethod::Stream && !cfg.no_slot => {
            Some("-X stream creates a temporary slot".into())
        }
        (None, _) => None,
    }
}

/// The findings about the server's room: walsenders, slots, the `-S` slot.
pub fn server_findings(cfg: &Config, facts: &Facts) -> Vec<Finding> {
    let max_senders = facts.setting(|s| &s.max_wal_senders).and_then(number);
    let max_slots = facts.setting(|s| &s.max_replication_slots).and_then(number);
    let sql = facts.sql.as_ref();
    let refused = matches!(
        &facts.repl,
        Err(Error::Connect { reason, .. }) if reason.contains("max_wal_senders")
    );
    let mut out = vec![walsenders(
        walsenders_needed(cfg),
        max_senders,
        sql.map(|s| s.walsenders_in_use),
        refused,
    )];
    out.push(slots(
        slot_needed(cfg),
        max_slots,
        sql.map(|s| s.slots_in_use),
    ));
    if let Some(name) = &cfg.slot {
        let state = facts.slot().ok_or_else(|| match sql {
            Err(e) => e.clone(),
            Ok(_) => SqlUnavailable {
                reason: "the server did not say".into(),
                database: String::new(),
            },
        });
        out.push(named_slot(name, cfg.create_slot, state.as_ref()));
    }
    out
}

/// A count as the server shows it.
fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Free walsenders against `need`: `max_wal_senders`, those in use (the check's own left out),
/// and whether the check's own connection was refused for want of one.
pub fn walsenders(
    need: u64,
    max: Option<u64>,
    in_use: Result<u64, &SqlUnavailable>,
    refused: bool,
) -> Finding {
    let why = if need == 2 {
        "the backup and -X stream's WAL connection"
    } else {
        "the backup connection"
    };
    let finding = match (max, in_use) {
        (Some(0), _) => Finding::problem("walsenders", "max_wal_senders = 0: replication is off")
            .hint(format!(
                "set max_wal_senders to at least {need} on the server (needs a restart)"
            )),
        (Some(max), Ok(used)) if max.saturating_sub(used) < need => Finding::problem(
            "walsenders",
            format!(
                "max_wal_senders = {max} and {used} are in use; the clone needs {need} ({why})"
            ),
        )
        .hint(if need == 2 {
            "raise it (needs a restart), stop a standby, or use -X fetch (one connection)"
        } else {
            "raise it (needs a restart) or stop a standby"
        }),
        (Some(max), Ok(used)) => Finding::ok(
            "walsenders",
            format!(
                "{} of max_wal_senders = {max} free; the clone needs {need} ({why})",
                max - used
            ),
        ),
        (max, _) if refused => Finding::problem(
            "walsenders",
            match max {
                Some(max) => format!("all {max} walsenders (max_wal_senders) are in use"),
                None => "all walsenders (max_wal_senders) are in use".into(),
            },
        )
        .hint("raise max_wal_senders (needs a restart) or stop a standby"),
        (Some(max), Err(e)) => Finding::warning(
            "walsenders",
            format!(
                "max_wal_senders = {max}, but how many are in use could not be learned: {}",
                e.reason
            ),
        )
        .hint(e.hint()),
        (None, Err(e)) => Finding::warning(
            "walsenders",
            format!("the walsenders could not be counted: {}", e.reason),
        )
        .hint(e.hint()),
        (None, Ok(_)) => Finding::warning("walsenders", "max_wal_senders could not be learned"),
    };
    finding
        .value("needed", need)
        .value("max_wal_senders", max)
        .value("in_use", in_use.ok())
}

/// A free replication slot for the one the clone creates (`need`: why, `None` for none).
pub fn slots(
    need: Option<String>,
    max: Option<u64>,
    in_use: Result<u64, &SqlUnavailable>,
) -> Finding {
    let Some(why) = need else {
        return Finding::ok(
            "replication_slots",
            "the clone creates no replication slot (--no-slot, -S without -C, or no -X stream)",
        )
        .value("needed", 0)
        .value("max_replication_slots", max)
        .value("in_use", in_use.ok());
    };
    let finding = match (max, in_use) {
        (Some(max), Ok(used)) if used >= max => Finding::problem(
            "replication_slots",
            format!("max_replication_slots = {max} and {used} are in use; {why}"),
        )
        .hint("raise it (needs a restart), drop an unused slot, or use --no-slot"),
        (Some(max), Ok(used)) => Finding::ok(
            "replication_slots",
            format!(
                "{} of max_replication_slots = {max} free; {why}",
                max - used
            ),
        ),
        (Some(0), Err(_)) => Finding::problem(
            "replication_slots",
            format!("max_replication_slots = 0; {why}"),
        )
        .hint("raise it (needs a restart) or use --no-slot"),
        (Some(max), Err(e)) => Finding::warning(
            "replication_slots",
            format!(
                "max_replication_slots = {max}, but how many are in use could not be learned: {}",
                e.reason
            ),
        )
        .hint(e.hint()),
        (None, Err(e)) => Finding::warning(
            "replication_slots",
            format!("the replication slots could not be counted: {}", e.reason),
        )
        .hint(e.hint()),
        (None, Ok(_)) => Finding::warning(
            "replication_slots",
            "max_replication_slots could not be learned",
        ),
    };
    finding
        .value("needed", 1)
        .value("max_replication_slots", max)
        .value("in_use", in_use.ok())
}

/// The `-S` slot: with `-C` it must not exist yet, without `-C` it must exist, be physical and
/// be free.
pub fn named_slot(name: &str, create: bool, state: Result<&SlotState, &SqlUnavailable>) -> Finding {
    let finding = match (state, create) {
        (Ok(SlotState::Missing), true) => Finding::ok(
            "slot",
            format!("replication slot \"{name}\" does not exist yet: -C creates it"),
        ),
        (Ok(SlotState::Missing), false) => Finding::problem(
            "slot",
            format!("replication slot \"{name}\" does not exist"),
        )
        .hint("create it, or add -C to have the clone create it"),
        (Ok(_), true) => Finding::problem(
            "slot",
            format!("replication slot \"{name}\" already exists, and -C would create it"),
        )
        .hint("leave out -C to use it, or drop it first"),
        (Ok(SlotState::Logical), false) => Finding::problem(
            "slot",
            format!("replication slot \"{name}\" is a logical slot"),
        )
        .hint("name a physical slot"),
        (Ok(SlotState::Physical { active: Some(true) }), false) => Finding::problem(
            "slot",
            format!("replication slot \"{name}\" is in use by another walsender"),
        )
        .hint("stop what streams from it, or name another slot"),
        (Ok(SlotState::Physical { .. }), false) => Finding::ok(
            "slot",
            format!("replication slot \"{name}\" exists and is physical"),
        ),
        (Err(e), _) => Finding::warning(
            "slot",
            format!(
                "whether replication slot \"{name}\" exists could not be learned: {}",
                e.reason
            ),
        )
        .hint(e.hint()),
    };
    let (exists, kind) = match state {
        Ok(SlotState::Missing) => (Some(false), None),
        Ok(SlotState::Physical { .. }) => (Some(true), Some("physical")),
        Ok(SlotState::Logical) => (Some(true), Some("logical")),
        Err(_) => (None, None),
    };
    finding
        .value("slot", name)
        .value("create", create)
        .value("exists", exists)
        .value("slot_type", kind)
}

/// One filesystem the clone writes to: the places on it, and what they need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// The places on it (paths as the user gave them).
    pub paths: Vec<PathBuf>,
    /// Its mount point.
    pub mount: PathBuf,
    /// Bytes free.
    pub free: u64,
    /// Bytes the clone would write there (an estimate).
    pub need: u64,
}

/// The disk-space findings: one per filesystem the clone writes to.
pub fn disk_findings(cfg: &Config, facts: &Facts, places: &Places) -> Vec<Finding> {
    let Some(dest) = &places.dest else {
        return Vec::new();
    };
    let size = match &facts.sql {
        Ok(sql) => sql.size.clone(),
        Err(e) => Err(format!("{} ({})", e.reason, e.hint())),
    };
    let size = match size {
        Ok(size) => size,
        Err(why) => {
            let free = dest.fs.as_ref().ok().map(|fs| fs.free);
            return vec![Finding::warning(
                "disk_space",
                format!("the database size could not be learned: {why}"),
            )
            .hint("compare the free space with the server's data directory yourself")
            .value("free_bytes", free)];
        }
    };
    let seg = facts
        .setting(|s| &s.wal_segment_size)
        .and_then(|t| WalSegSize::parse_show(t).ok())
        .unwrap_or(WalSegSize::DEFAULT);
    let demands = demands(cfg, dest, places, size.bytes, u64::from(seg.bytes()));
    let mut out: Vec<Finding> = demands
        .iter()
        .map(|d| space(d).value("databases_unmeasured", size.unmeasured))
        .collect();
    if size.unmeasured > 0 {
        out.push(
            Finding::warning(
                "disk_space",
                format!(
                    "the size of {} database(s) could not be read by this role: the estimate is low",
                    size.unmeasured
                ),
            )
            .hint("grant the role pg_read_all_stats, or CONNECT on every database"),
        );
    }
    out
}

/// What each filesystem must hold: the tablespaces whose size is known on theirs, the rest of
/// the databases (`total` bytes in all) and a WAL segment (`seg`, with `-X stream` or
/// `fetch`) on the destination's (or `--waldir`'s).
pub fn demands(cfg: &Config, dest: &Place, places: &Places, total: u64, seg: u64) -> Vec<Demand> {
    let mut by_dev: BTreeMap<u64, Demand> = BTreeMap::new();
    let mut add = |place: &Place, bytes: u64| {
        if let Ok(fs) = &place.fs {
            let d = by_dev.entry(fs.dev).or_insert_with(|| Demand {
                mount: fs.mount.clone(),
                free: fs.free,
                ..Demand::default()
            });
            if !d.paths.contains(&place.path) {
                d.paths.push(place.path.clone());
            }
            d.need = d.need.saturating_add(bytes);
        }
    };
    let mut rest = total;
    if cfg.format == Format::Plain {
        for (ts, target) in places.tablespaces.iter().flatten() {
            if let (TablespaceTarget::Dir { place, .. }, Some(bytes)) = (target, ts.bytes) {
                add(place, bytes);
                rest = rest.saturating_sub(bytes);
            }
        }
    }
    add(dest, rest);
    if cfg.wal_method != WalMethod::None {
        add(places.waldir.as_ref().unwrap_or(dest), seg);
    }
    by_dev.into_values().collect()
}

/// Free space on one filesystem against what the clone would write there.
pub fn space(d: &Demand) -> Finding {
    let paths = d
        .paths
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect::<Vec<_>>()
        .join(", ");
    let on = format!("{paths} (filesystem at \"{}\")", d.mount.display());
    let margin = d.need.saturating_add(d.need / 100 * SPACE_MARGIN_PERCENT);
    let finding = if d.free < d.need {
        Finding::problem(
            "disk_space",
            format!(
                "{on} has {} free and the clone needs about {}",
                human(d.free),
                human(d.need)
            ),
        )
        .hint("free some space there, or clone to a larger filesystem")
    } else if d.free < margin {
        Finding::warning(
            "disk_space",
            format!(
                "{on} has {} free and the clone needs about {}: little to spare if the databases grow",
                human(d.free),
                human(d.need)
            ),
        )
        .hint("free some space there")
    } else {
        Finding::ok(
            "disk_space",
            format!(
                "{on} has {} free; the clone needs about {}",
                human(d.free),
                human(d.need)
            ),
        )
    };
    finding
        .value(
            "paths",
            d.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>(),
        )
        .value("mount_point", d.mount.display().to_string())
        .value("free_bytes", d.free)
        .value("needed_bytes", d.need)
}

/// Bytes for people: `512 kB`, `31.4 MB`, `2.1 GB` (powers of 1024, as PostgreSQL prints).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::dest::{DirState, Fs};
    use crate::check::server::Tablespace;
    use crate::check::Severity;
    use crate::options::config::tests::config;

    fn unavailable() -> SqlUnavailable {
        SqlUnavailable {
            reason: "no pg_hba.conf entry".into(),
            database: "postgres".into(),
        }
    }

    /// `-X stream` needs two walsenders, `-X fetch` one: three in all with two taken is a
    /// problem for the first only, and the message says what to do.
    #[test]
    fn walsenders_against_what_x_needs() {
        let stream = config(&["-D", "/x"]).expect("valid");
        let fetch = config(&["-D", "/x", "-X", "fetch"]).expect("valid");
        assert_eq!(walsenders_needed(&stream), 2);
        assert_eq!(walsenders_needed(&fetch), 1);
        let f = walsenders(2, Some(3), Ok(2), false);
        assert_eq!(f.severity, Severity::Problem);
        assert!(
            f.message
                .starts_with("max_wal_senders = 3 and 2 are in use"),
            "{}",
            f.message
        );
        assert!(f
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("stop a standby")));
        assert_eq!(f.values["in_use"], 2);
        assert_eq!(walsenders(1, Some(3), Ok(2), false).severity, Severity::Ok);
        assert_eq!(
            walsenders(1, Some(0), Ok(0), false).severity,
            Severity::Problem
        );
        let e = unavailable();
        let unknown = walsenders(2, Some(10), Err(&e), false);
        assert_eq!(unknown.severity, Severity::Warning);
        assert!(
            unknown.message.contains("no pg_hba.conf entry"),
            "{}",
            unknown.message
        );
        assert!(unknown
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("\"postgres\"")));
        assert_eq!(
            walsenders(2, None, Err(&e), true).severity,
            Severity::Problem
        );
    }

    #[test]
    fn a_slot_is_needed_for_a_temporary_or_a_created_slot() {
        let need = |argv: &[&str]| slot_needed(&config(argv).expect("valid"));
        assert!(need(&["-D", "/x"]).is_some_and(|w| w.contains("temporary")));
        assert_eq!(need(&["-D", "/x", "--no-slot"]), None);
        assert_eq!(need(&["-D", "/x", "-X", "fetch"]), None);
        assert_eq!(need(&["-D", "/x", "-S", "s"]), None);
        assert!(need(&["-D", "/x", "-S", "s", "-C"]).is_some_and(|w| w.contains("\"s\"")));
        let f = slots(
            Some("-X stream creates a temporary slot".into()),
            Some(2),
            Ok(2),
        );
        assert_eq!(f.severity, Severity::Problem);
        assert!(f.hint.as_deref().is_some_and(|h| h.contains("--no-slot")));
        assert_eq!(
            slots(Some("x".into()), Some(2), Ok(1)).severity,
            Severity::Ok
        );
        assert_eq!(slots(None, Some(0), Ok(0)).severity, Severity::Ok);
        let e = unavailable();
        assert_eq!(
            slots(Some("x".into()), Some(0), Err(&e)).severity,
            Severity::Problem
        );
        assert_eq!(
            slots(Some("x".into()), Some(5), Err(&e)).severity,
            Severity::Warning
        );
    }

    #[test]
    fn the_named_slot_must_exist_unless_c_creates_it() {
        let physical = SlotState::Physical {
            active: Some(false),
        };
        let cases = [
            (SlotState::Missing, true, Severity::Ok),
            (SlotState::Missing, false, Severity::Problem),
            (physical, true, Severity::Problem),
            (physical, false, Severity::Ok),
            (SlotState::Physical { active: None }, false, Severity::Ok),
            (
                SlotState::Physical { active: Some(true) },
                false,
                Severity::Problem,
            ),
            (SlotState::Logical, false, Severity::Problem),
        ];
        for (state, create, want) in cases {
            let f = named_slot("s", create, Ok(&state));
            assert_eq!(f.severity, want, "{state:?} {create}: {}", f.message);
        }
        let e = unavailable();
        assert_eq!(named_slot("s", true, Err(&e)).severity, Severity::Warning);
    }

    fn place(path: &str, dev: u64, free: u64) -> Place {
        Place {
            path: PathBuf::from(path),
            state: DirState::Missing,
            anchor: PathBuf::from("/"),
            writable: Ok(()),
            fs: Ok(Fs {
                dev,
                mount: PathBuf::from(format!("/mnt{dev}")),
                fs_type: "tmpfs".into(),
                magic: 0x0102_1994,
                free,
                total: free,
            }),
        }
    }

    /// A tablespace of known size counts on its own filesystem, the rest and a WAL segment on
    /// the destination's; with `-F t` everything lands in the destination.
    #[test]
    fn space_is_demanded_per_filesystem() {
        let dest = place("/d", 1, 100);
        let ts = |bytes| Tablespace {
            name: "t".into(),
            location: "/srv/t".into(),
            bytes,
        };
        let places = Places {
            dest: Some(dest.clone()),
            waldir: None,
            tablespaces: Ok(vec![(
                ts(Some(300)),
                TablespaceTarget::Dir {
                    mapped: true,
                    place: place("/t", 2, 1000),
                },
            )]),
        };
        let plain = config(&["-D", "/d"]).expect("valid");
        let d = demands(&plain, &dest, &places, 1000, 16);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].need, d[0].free), (716, 100));
        assert_eq!(d[1].need, 300);
        assert_eq!(space(&d[0]).severity, Severity::Problem);
        assert_eq!(space(&d[1]).severity, Severity::Ok);
        let tar = config(&["-D", "/d", "-F", "t", "-X", "none"]).expect("valid");
        let d = demands(&tar, &dest, &places, 1000, 16);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].need, 1000);
        let tight = Demand {
            paths: vec![PathBuf::from("/d")],
            mount: PathBuf::from("/"),
            free: 1050,
            need: 1000,
        };
        assert_eq!(space(&tight).severity, Severity::Warning);
        let f = space(&Demand { free: 10, ..tight });
        assert!(
            f.message
                .contains("has 10 bytes free and the clone needs about 1000 bytes"),
            "{}",
            f.message
        );
        assert_eq!(f.values["needed_bytes"], 1000);
    }

    #[test]
    fn sizes_read_like_postgresql() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(4 * 1024 * 1024), "4.0 MB");
        assert_eq!(human(3 * 1024 * 1024 * 1024 / 2), "1.5 GB");
    }
}
