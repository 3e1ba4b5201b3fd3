//! What the check learns from the server, and the findings about the server itself.
//!
//! First a replication connection, opened exactly as the clone opens its own (hosts, TLS,
//! `.pgpass`, the prompt, `--wait`): whether it opens is the `connection` finding, and over it
//! `SHOW` (10+) gives the settings and `READ_REPLICATION_SLOT` (15+) the `-S` slot. A physical
//! replication connection runs no SQL, so what only SQL tells (walsenders and slots in use, the
//! database size, the tablespaces) comes over an ordinary SQL connection as the same role to the
//! `-d` dbname or `postgres`, the way `--refresh` reads its WAL summaries
//! ([`crate::refresh::limits`]). Either may fail; the findings then say what could not be
//! learned and why.

use pgclone_proto::query::ResultSet;
use pgclone_proto::startup::AuthMethod;
use pgclone_proto::{ProtocolError, ServerVersion};

use crate::check::Finding;
use crate::conn::server::MIN_MAJOR;
use crate::conn::{self, ConnParams, Connection, Host};
use crate::error::{self, Error};
use crate::options::Config;

/// Names the SQL queries in errors.
const WHAT: &str = "check";

/// The settings a clone depends on, as the server shows them (`None`: not learned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `max_wal_senders`.
    pub max_wal_senders: Option<String>,
    /// `max_replication_slots`.
    pub max_replication_slots: Option<String>,
    /// `wal_level`.
    pub wal_level: Option<String>,
    /// `data_checksums`.
    pub data_checksums: Option<String>,
    /// `summarize_wal` (17+).
    pub summarize_wal: Option<String>,
    /// `wal_segment_size` (`16MB`).
    pub wal_segment_size: Option<String>,
}

/// What the server says of the `-S` slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// No slot of that name.
    Missing,
    /// A physical slot; whether a walsender holds it (when known).
    Physical {
        /// Whether it is in use (`None` over replication: `READ_REPLICATION_SLOT` does not say).
        active: Option<bool>,
    },
    /// A logical slot: not usable for a clone.
    Logical,
}

/// What the replication connection learned.
#[derive(Debug, Clone)]
pub struct Repl {
    /// The server's version.
    pub version: ServerVersion,
    /// Its `server_version` text.
    pub version_text: String,
    /// Where it answered (`127.0.0.1:5432`, or the socket directory and port).
    pub target: String,
    /// Whether over a Unix socket.
    pub unix: bool,
    /// Whether over TCP to a loopback address (by name `localhost` or an address).
    pub loopback: bool,
    /// The role.
    pub user: String,
    /// How it authenticated.
    pub auth: String,
    /// TLS protocol and cipher suite, `None` in plaintext.
    pub tls: Option<(String, String)>,
    /// Whether TLS is in use (also when its details are unknown).
    pub encrypted: bool,
    /// The walsender's process id (left out of the walsenders counted in use).
    pub backend_pid: Option<i32>,
    /// The settings, by `SHOW`.
    pub settings: Settings,
    /// The `-S` slot by `READ_REPLICATION_SLOT` (15+ only).
    pub slot: Option<SlotState>,
    /// Whether the clone's own look at the server ([`crate::conn::server::inspect`]: version,
    /// `integer_datetimes`, IDENTIFY_SYSTEM) passes, or its error.
    pub inspect: Result<(), String>,
}

/// A database's size, summed over the databases the role may measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseSize {
    /// Bytes, over every database measured.
    pub bytes: u64,
    /// Databases whose size the role may not read (no CONNECT, not `pg_read_all_stats`).
    pub unmeasured: u64,
}

/// A user tablespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// Its name.
    pub name: String,
    /// `pg_tablespace_location` (relative for an in-place tablespace).
    pub location: String,
    /// `pg_tablespace_size`, when the role may read it.
    pub bytes: Option<u64>,
}

/// What the SQL connection learned.
#[derive(Debug, Clone)]
pub struct Sql {
    /// The database connected to.
    pub database: String,
    /// `server_version_num`.
    pub version: ServerVersion,
    /// The settings, by `current_setting`.
    pub settings: Settings,
    /// Walsenders running, the check's own replication connection left out.
    pub walsenders_in_use: u64,
    /// Replication slots existing (temporary ones included).
    pub slots_in_use: u64,
    /// The `-S` slot.
    pub slot: Option<SlotState>,
    /// The sum of the databases' sizes, or why it is unknown.
    pub size: Result<DatabaseSize, String>,
    /// The user tablespaces, or why they are unknown.
    pub tablespaces: Result<Vec<Tablespace>, String>,
}

/// Why the SQL connection gave nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlUnavailable {
    /// The error, as pgclone prints errors.
    pub reason: String,
    /// The database it tried.
    pub database: String,
}

impl SqlUnavailable {
    /// What to do so that the check learns it.
    pub fn hint(&self) -> String {
        format!(
            "the check reads this over an ordinary SQL connection to database \"{}\" as the same \
             role: allow that in pg_hba.conf, or name another database with -d \"dbname=...\"",
            self.database
        )
    }
}

/// Everything learned from the server.
#[derive(Debug)]
pub struct Facts {
    /// The replication connection's facts, or why it could not be opened.
    pub repl: Result<Repl, Error>,
    /// The SQL connection's facts, or why it could not be opened.
    pub sql: Result<Sql, SqlUnavailable>,
}

impl Facts {
    /// A setting, from `SHOW` over replication, else from SQL.
    pub fn setting(&self, pick: fn(&Settings) -> &Option<String>) -> Option<&str> {
        let repl = self
            .repl
            .as_ref()
            .ok()
            .and_then(|r| pick(&r.settings).as_deref());
        let sql = self
            .sql
            .as_ref()
            .ok()
            .and_then(|s| pick(&s.settings).as_deref());
        repl.or(sql)
    }

    /// The server's version, from either connection.
    pub fn version(&self) -> Option<ServerVersion> {
        match (&self.repl, &self.sql) {
            (Ok(r), _) => Some(r.version),
            (_, Ok(s)) => Some(s.version),
            _ => None,
        }
    }

    /// The `-S` slot: SQL says whether it is active, so it comes first.
    pub fn slot(&self) -> Option<SlotState> {
        let sql = self.sql.as_ref().ok().and_then(|s| s.slot);
        sql.or_else(|| self.repl.as_ref().ok().and_then(|r| r.slot))
    }
}

/// Opens the replication connection, then the SQL one, and reads what the findings need.
pub async fn learn(cfg: &Config) -> Facts {
    let mut params = cfg.conn.clone();
    let repl = learn_replication(&mut params, cfg).await;
    let own_pid = repl.as_ref().ok().and_then(|r| r.backend_pid);
    let sql = learn_sql(&params, cfg, own_pid).await;
    Facts { repl, sql }
}

/// The replication connection: what startup tells, then `SHOW` and `READ_REPLICATION_SLOT`.
async fn learn_replication(params: &mut ConnParams, cfg: &Config) -> Result<Repl, Error> {
    let mut conn = conn::connect(params).await?;
    let repl = read_replication(&mut conn, params, cfg).await;
    conn.close().await;
    repl
}

async fn read_replication(
    conn: &mut Connection,
    params: &ConnParams,
    cfg: &Config,
) -> Result<Repl, Error> {
    let info = conn.info().clone();
    let (target, unix, loopback) = match &info.host {
        Host::Unix(dir) => (format!("{}:{}", dir.display(), info.port), true, false),
        Host::Tcp(name) => {
            let loopback = name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            (format!("{name}:{}", info.port), false, loopback)
        }
    };
    let inspect = crate::conn::server::inspect(conn)
        .await
        .map(drop)
        .map_err(|e| error::chain(&e));
    let mut settings = Settings::default();
    let mut slot = None;
    // SHOW over replication came with 10; older servers are refused anyway.
    if info.version.is_at_least(MIN_MAJOR) {
        settings.max_wal_senders = conn.show("max_wal_senders").await.ok();
        settings.max_replication_slots = conn.show("max_replication_slots").await.ok();
        settings.wal_level = conn.show("wal_level").await.ok();
        settings.data_checksums = conn.show("data_checksums").await.ok();
        settings.wal_segment_size = conn.show("wal_segment_size").await.ok();
        if info.version.is_at_least(17) {
            settings.summarize_wal = conn.show("summarize_wal").await.ok();
        }
        if let (Some(name), true) = (&cfg.slot, info.version.is_at_least(15)) {
            // Not fatal: SQL may still say (and the connection itself worked).
            slot = read_replication_slot(conn, name).await.ok().flatten();
        }
    }
    Ok(Repl {
        version: info.version,
        version_text: info.version_text.clone(),
        target,
        unix,
        loopback,
        user: params.user.clone(),
        auth: auth_name(info.auth).into(),
        tls: conn.tls_session(),
        encrypted: info.tls,
        backend_pid: info.backend_pid,
        settings,
        slot,
        inspect,
    })
}

/// The authentication method as pg_hba.conf names it.
fn auth_name(auth: AuthMethod) -> &'static str {
    match auth {
        AuthMethod::Trust => "trust",
        AuthMethod::Cleartext => "password",
        AuthMethod::Md5 => "md5",
        AuthMethod::ScramSha256 => "scram-sha-256",
        AuthMethod::ScramSha256Plus => "scram-sha-256 with channel binding",
    }
}

/// `READ_REPLICATION_SLOT name` (15+): a row of NULLs when the slot does not exist, an error
/// for a logical one. `name` passed the slot-name check of the flags (letters, digits, `_`).
async fn read_replication_slot(
    conn: &mut Connection,
    name: &str,
) -> Result<Option<SlotState>, Error> {
    const CMD: &str = "READ_REPLICATION_SLOT";
    let sets = match conn.simple_query(CMD, &format!("{CMD} {name}")).await {
        Ok(sets) => sets,
        Err(Error::Server { source, .. }) if source.message.contains("logical") => {
            return Ok(Some(SlotState::Logical))
        }
        Err(e) => return Err(e),
    };
    let set = sets.first().ok_or_else(|| bad(CMD, "no result"))?;
    set.expect_shape(CMD, Some(1), 3)
        .map_err(Error::protocol(CMD))?;
    let kind = set.text(CMD, 0, 0).map_err(Error::protocol(CMD))?;
    Ok(Some(match kind {
        None => SlotState::Missing,
        Some(_) => SlotState::Physical { active: None },
    }))
}

fn bad(command: &'static str, problem: &str) -> Error {
    Error::protocol(command)(ProtocolError::BadResult {
        command,
        problem: problem.into(),
    })
}

/// The SQL connection: settings, walsenders and slots in use, the `-S` slot, sizes,
/// tablespaces.
async fn learn_sql(
    params: &ConnParams,
    cfg: &Config,
    own_pid: Option<i32>,
) -> Result<Sql, SqlUnavailable> {
    let (mut params, database) = params.for_sql();
    let unavailable = |e: &Error| SqlUnavailable {
        reason: error::chain(e),
        database: database.clone(),
    };
    let mut conn = conn::connect(&mut params)
        .await
        .map_err(|e| unavailable(&e))?;
    conn.set_label("check");
    let result = read_sql(&mut conn, cfg, own_pid, &database).await;
    conn.close().await;
    result.map_err(|e| unavailable(&e))
}

async fn read_sql(
    conn: &mut Connection,
    cfg: &Config,
    own_pid: Option<i32>,
    database: &str,
) -> Result<Sql, Error> {
    let own = own_pid.map_or_else(|| "NULL".to_owned(), |p| p.to_string());
    let row = query_row(
        conn,
        &format!(
            "SELECT current_setting('server_version_num'), current_setting('max_wal_senders'), \
             current_setting('max_replication_slots'), current_setting('wal_level'), \
             current_setting('data_checksums'), current_setting('summarize_wal', true), \
             current_setting('wal_segment_size'), \
             (SELECT count(*) FROM pg_catalog.pg_stat_replication \
              WHERE pid IS DISTINCT FROM {own}), \
             (SELECT count(*) FROM pg_catalog.pg_replication_slots)"
        ),
        9,
    )
    .await?;
    let number = |i: usize, what: &'static str| -> Result<u64, Error> {
        let text = row.get(i).cloned().flatten().unwrap_or_default();
        text.parse().map_err(|_| {
            Error::protocol(WHAT)(ProtocolError::BadValue {
                what,
                value: text.chars().take(32).collect(),
            })
        })
    };
    let version_num = number(0, "server_version_num")?;
    let settings = Settings {
        max_wal_senders: row[1].clone(),
        max_replication_slots: row[2].clone(),
        wal_level: row[3].clone(),
        data_checksums: row[4].clone(),
        summarize_wal: row[5].clone(),
        wal_segment_size: row[6].clone(),
    };
    let walsenders_in_use = number(7, "walsenders")?;
    let slots_in_use = number(8, "slots")?;
    let slot = match &cfg.slot {
        Some(name) => Some(read_slot(conn, name).await?),
        None => None,
    };
    let size = database_size(conn).await.map_err(|e| error::chain(&e));
    let tablespaces = tablespaces(conn).await.map_err(|e| error::chain(&e));
    Ok(Sql {
        database: database.to_owned(),
        version: ServerVersion(u32::try_from(version_num).unwrap_or(u32::MAX)),
        settings,
        walsenders_in_use,
        slots_in_use,
        slot,
        size,
        tablespaces,
    })
}

/// The `-S` slot in `pg_replication_slots` (`name` passed the slot-name check).
async fn read_slot(conn: &mut Connection, name: &str) -> Result<SlotState, Error> {
    let sets = query(
        conn,
        &format!(
            "SELECT slot_type, active FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = '{name}'"
        ),
    )
    .await?;
    let set = sets.first().ok_or_else(|| bad(WHAT, "no result"))?;
    if set.rows.is_empty() {
        return Ok(SlotState::Missing);
    }
    let kind = set.text(WHAT, 0, 0).map_err(Error::protocol(WHAT))?;
    let active = set.text(WHAT, 0, 1).map_err(Error::protocol(WHAT))?;
    Ok(match kind {
        Some("physical") => SlotState::Physical {
            active: Some(active == Some("t")),
        },
        _ => SlotState::Logical,
    })
}

/// The sum of `pg_database_size` over the databases the role may measure, and how many it may
/// not.
async fn database_size(conn: &mut Connection) -> Result<DatabaseSize, Error> {
    let row = query_row(
        conn,
        "SELECT coalesce(sum(CASE WHEN m THEN pg_catalog.pg_database_size(oid) END), 0), \
         count(*) FILTER (WHERE NOT m) \
         FROM (SELECT oid, has_database_privilege(oid, 'CONNECT') \
               OR pg_has_role('pg_read_all_stats', 'MEMBER') AS m \
               FROM pg_catalog.pg_database) AS d",
        2,
    )
    .await?;
    let int = |i: usize| {
        row.get(i)
            .cloned()
            .flatten()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| bad(WHAT, "database size is not a number"))
    };
    Ok(DatabaseSize {
        bytes: int(0)?,
        unmeasured: int(1)?,
    })
}

/// The user tablespaces, their locations and (when the role may read it) their sizes.
async fn tablespaces(conn: &mut Connection) -> Result<Vec<Tablespace>, Error> {
    let sets = query(
        conn,
        "SELECT spcname, pg_catalog.pg_tablespace_location(oid), \
         CASE WHEN has_tablespace_privilege(oid, 'CREATE') \
              OR pg_has_role('pg_read_all_stats', 'MEMBER') \
         THEN pg_catalog.pg_tablespace_size(oid) END \
         FROM pg_catalog.pg_tablespace \
         WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY spcname",
    )
    .await?;
    let set = sets.first().ok_or_else(|| bad(WHAT, "no result"))?;
    set.expect_shape(WHAT, None, 3)
        .map_err(Error::protocol(WHAT))?;
    (0..set.rows.len())
        .map(|i| {
            let text = |col| set.text(WHAT, i, col).map_err(Error::protocol(WHAT));
            Ok(Tablespace {
                name: text(0)?.unwrap_or_default().to_owned(),
                location: text(1)?.unwrap_or_default().to_owned(),
                bytes: text(2)?.and_then(|t| t.parse().ok()),
            })
        })
        .collect()
}

/// Runs one query; a server error says it was the check's.
async fn query(conn: &mut Connection, sql: &str) -> Result<Vec<ResultSet>, Error> {
    conn.simple_query(WHAT, sql).await.map_err(|e| match e {
        Error::Server { source, .. } => Error::Server {
            context: "query failed".into(),
            source,
        },
        e => e,
    })
}

/// Runs a query of one row of `columns` columns; its values as text.
async fn query_row(
    conn: &mut Connection,
    sql: &str,
    columns: usize,
) -> Result<Vec<Option<String>>, Error> {
    let sets = query(conn, sql).await?;
    let set = sets.first().ok_or_else(|| bad(WHAT, "no result"))?;
    set.expect_shape(WHAT, Some(1), columns)
        .map_err(Error::protocol(WHAT))?;
    (0..columns)
        .map(|col| {
            set.text(WHAT, 0, col)
                .map(|t| t.map(str::to_owned))
                .map_err(Error::protocol(WHAT))
        })
        .collect()
}

/// The findings about the server: the connection, the version, TLS, `wal_level`, data
/// checksums, `summarize_wal` (17+).
pub fn findings(cfg: &Config, facts: &Facts) -> Vec<Finding> {
    let mut out = vec![connection(&facts.repl)];
    out.extend(version(cfg, facts));
    if let Ok(repl) = &facts.repl {
        out.push(tls(repl));
    }
    out.push(wal_level(facts.setting(|s| &s.wal_level)));
    out.push(data_checksums(facts.setting(|s| &s.data_checksums)));
    if facts.version().is_some_and(|v| v.is_at_least(17)) {
        out.push(summarize_wal(cfg, facts.setting(|s| &s.summarize_wal)));
    }
    out
}

/// Whether the replication connection opened: the clone's own error when not.
pub fn connection(repl: &Result<Repl, Error>) -> Finding {
    match repl {
        Ok(r) => Finding::ok(
            "connection",
            format!(
                "connected over replication to {} as \"{}\" ({} authentication)",
                r.target, r.user, r.auth
            ),
        )
        .value("target", r.target.clone())
        .value("user", r.user.clone())
        .value("auth", r.auth.clone()),
        Err(e) => {
            let hint = match e {
                Error::Connect { reason, .. } if reason.contains("pg_hba.conf") => {
                    "add a \"host replication ROLE ADDRESS METHOD\" line to pg_hba.conf on the \
                     server and reload it"
                }
                Error::Connect { auth: true, .. } => {
                    "check the role and its password (-U, PGPASSWORD, .pgpass, -W)"
                }
                Error::Connect { reason, .. } if reason.contains("max_wal_senders") => {
                    "raise max_wal_senders (needs a restart) or stop a standby"
                }
                Error::Connect {
                    transient: true, ..
                } => "check the host, the port and that the server is up",
                _ => "the clone would fail with this same error: fix what it says",
            };
            Finding::problem("connection", error::chain(e)).hint(hint)
        }
    }
}

/// The server's version: 10 or newer (17+ for `-i` and `--refresh`).
fn version(cfg: &Config, facts: &Facts) -> Option<Finding> {
    let (version, text) = match (&facts.repl, &facts.sql) {
        (Ok(r), _) => (r.version, r.version_text.clone()),
        (_, Ok(s)) => (s.version, s.version.to_string()),
        _ => return None,
    };
    let refused = facts
        .repl
        .as_ref()
        .ok()
        .and_then(|r| r.inspect.clone().err());
    let finding = if let Some(why) = refused {
        Finding::problem("server_version", why).hint(
            "the clone refuses this server the same way: use that version's own pg_basebackup",
        )
    } else if !version.is_at_least(MIN_MAJOR) {
        Finding::problem(
            "server_version",
            format!(
                "PostgreSQL {text} is older than {MIN_MAJOR}, the oldest {} supports",
                crate::program::name()
            ),
        )
        .hint("use that version's own pg_basebackup")
    } else if (cfg.incremental.is_some() || cfg.refresh) && !version.is_at_least(17) {
        Finding::problem(
            "server_version",
            format!("PostgreSQL {text} has no incremental backups (17+)"),
        )
        .hint("take a full clone (leave out -i and --refresh)")
    } else {
        Finding::ok("server_version", format!("PostgreSQL {text}"))
    };
    Some(finding.value("server_version_num", version.0))
}

/// Whether the connection is encrypted.
pub fn tls(repl: &Repl) -> Finding {
    let finding = match (&repl.tls, repl.encrypted) {
        (Some((version, suite)), _) => {
            Finding::ok("tls", format!("TLS in use: {version}, {suite}"))
                .value("version", version.clone())
                .value("cipher", suite.clone())
        }
        (None, true) => Finding::ok("tls", "TLS in use"),
        (None, false) if repl.unix => Finding::ok("tls", "no TLS: a Unix socket, not a network"),
        (None, false) if repl.loopback => Finding::ok("tls", "no TLS: a loopback connection"),
        (None, false) => Finding::warning("tls", "no TLS: the connection is not encrypted")
            .hint("add sslmode=require (or verify-full) to -d if the network is not trusted"),
    };
    finding.value("in_use", repl.encrypted)
}

/// `wal_level`: a base backup needs `replica` or `logical`.
pub fn wal_level(level: Option<&str>) -> Finding {
    match level {
        Some(l @ ("replica" | "logical" | "archive" | "hot_standby")) => {
            Finding::ok("wal_level", format!("wal_level = {l}"))
        }
        Some(l) => Finding::problem("wal_level", format!("wal_level = {l}"))
            .hint("set wal_level = replica on the server (needs a restart)"),
        None => Finding::warning("wal_level", "wal_level could not be learned")
            .hint("see the connection findings"),
    }
    .value("wal_level", level.map(str::to_owned))
}

/// Data checksums: on or off (the clone verifies pages only when on).
pub fn data_checksums(value: Option<&str>) -> Finding {
    match value {
        Some("on") => Finding::ok(
            "data_checksums",
            "data checksums are on: pages are verified during the copy",
        ),
        Some(v) => Finding::ok(
            "data_checksums",
            format!("data checksums are {v}: pages cannot be verified during the copy"),
        ),
        None => Finding::warning("data_checksums", "data checksums could not be learned"),
    }
    .value("data_checksums", value.map(str::to_owned))
}

/// `summarize_wal` (17+): what incremental clones (`-i`, `--refresh`) need.
pub fn summarize_wal(cfg: &Config, value: Option<&str>) -> Finding {
    let delta = cfg.incremental.is_some() || cfg.refresh;
    match value {
        Some("on") => Finding::ok(
            "summarize_wal",
            "summarize_wal = on: delta clones (-i, --refresh) are possible",
        ),
        Some(v) if delta => Finding::problem(
            "summarize_wal",
            format!("summarize_wal = {v}, and -i/--refresh need it on"),
        )
        .hint("set summarize_wal = on on the server (a reload), then take a full clone first"),
        Some(v) => Finding::ok(
            "summarize_wal",
            format!("summarize_wal = {v}: delta clones (-i, --refresh) are not possible"),
        )
        .hint("set summarize_wal = on for delta clones"),
        None => Finding::warning("summarize_wal", "summarize_wal could not be learned"),
    }
    .value("summarize_wal", value.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Severity;

    #[test]
    fn the_connection_error_is_the_clones_with_what_to_do() {
        let refused = |reason: &str, auth| -> Result<Repl, Error> {
            Err(Error::Connect {
                target: "connection to server at \"127.0.0.1\", port 5432 failed".into(),
                reason: reason.into(),
                auth,
                transient: false,
            })
        };
        let f = connection(&refused(
            "FATAL:  password authentication failed for user \"r\"",
            true,
        ));
        assert_eq!(f.severity, Severity::Problem);
        assert_eq!(
            f.message,
            "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  password \
             authentication failed for user \"r\""
        );
        assert!(f.hint.as_deref().is_some_and(|h| h.contains("password")));
        let f = connection(&refused(
            "FATAL:  pg_hba.conf rejects replication connection for host \"127.0.0.1\"",
            false,
        ));
        assert!(f.hint.as_deref().is_some_and(|h| h.contains("pg_hba.conf")));
    }

    #[test]
    fn settings_findings() {
        assert_eq!(wal_level(Some("replica")).severity, Severity::Ok);
        assert_eq!(wal_level(Some("logical")).severity, Severity::Ok);
        let f = wal_level(Some("minimal"));
        assert_eq!(f.severity, Severity::Problem);
        assert!(f.hint.as_deref().is_some_and(|h| h.contains("replica")));
        assert_eq!(wal_level(None).severity, Severity::Warning);
        assert_eq!(data_checksums(Some("off")).severity, Severity::Ok);
        assert_eq!(data_checksums(Some("off")).values["data_checksums"], "off");
        let full = crate::options::config::tests::config(&["-D", "/x"]).expect("valid");
        assert_eq!(summarize_wal(&full, Some("off")).severity, Severity::Ok);
        assert_eq!(summarize_wal(&full, Some("on")).severity, Severity::Ok);
    }
}
