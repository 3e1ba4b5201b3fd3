//! The name pgclone runs under. Installed (linked, copied or `exec -a`-ed) as `pg_basebackup`,
//! it stands in for that program: it names itself `pg_basebackup` in its messages and on the
//! server, and `--version` answers in pg_basebackup's form so that tools parsing it (Barman reads
//! the word after the program name once parenthesised parts are dropped) see the version of
//! pg_basebackup whose flags pgclone takes. Under any other name it is `pgclone`.
//!
//! This module only decides the name; it does not change what a clone does.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::OnceLock;

/// The two names pgclone answers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// Run as `pgclone` (or anything but `pg_basebackup`).
    Pgclone,
    /// Run as `pg_basebackup`: a drop-in for PostgreSQL's program.
    PgBasebackup,
}

/// The pg_basebackup release whose command line pgclone takes (every flag of 18, see
/// README): what `--version` claims when run as `pg_basebackup`.
pub const PG_BASEBACKUP_VERSION: &str = "18.0";

static CURRENT: OnceLock<Program> = OnceLock::new();

impl Program {
    /// The program `argv[0]` names: `pg_basebackup` when its file name is exactly that.
    pub fn from_argv0(argv0: Option<&OsStr>) -> Self {
        match argv0.and_then(|a| Path::new(a).file_name()) {
            Some(name) if name == "pg_basebackup" => Self::PgBasebackup,
            _ => Self::Pgclone,
        }
    }

    /// The name printed before messages and used on the server.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pgclone => "pgclone",
            Self::PgBasebackup => "pg_basebackup",
        }
    }

    /// The default `application_name` on the server (pg_basebackup's `fallback_application_name`
    /// is its program name, which monitoring matches in `pg_stat_replication`).
    pub fn application_name(self) -> &'static str {
        self.name()
    }

    /// The backup label without `-l`: `pgclone base backup` or `pg_basebackup base backup`.
    pub fn default_label(self) -> &'static str {
        match self {
            Self::Pgclone => "pgclone base backup",
            Self::PgBasebackup => "pg_basebackup base backup",
        }
    }

    /// The temporary slot of `-X stream`, named after the WAL connection's walsender
    /// (`backend_pid`): `pgclone_<pid>` or, as pg_basebackup names it, `pg_basebackup_<pid>`.
    pub fn temporary_slot_name(self, backend_pid: i32) -> String {
        format!("{}_{backend_pid}", self.name())
    }

    /// The `verify` subcommand as a usage hint names it: `pgclone verify`.
    pub fn verify_command(self) -> &'static str {
        match self {
            Self::Pgclone => "pgclone verify",
            Self::PgBasebackup => "pg_basebackup verify",
        }
    }

    /// The `--version` line: `pgclone 0.1.0`, or as `pg_basebackup`
    /// `pg_basebackup (PostgreSQL) 18.0 (pgclone 0.1.0)`.
    pub fn version_line(self) -> String {
        let own = env!("CARGO_PKG_VERSION");
        match self {
            Self::Pgclone => format!("pgclone {own}"),
            Self::PgBasebackup => {
                format!("pg_basebackup (PostgreSQL) {PG_BASEBACKUP_VERSION} (pgclone {own})")
            }
        }
    }
}

/// Records the name this process runs under; the first call wins.
pub fn init(argv0: Option<&OsStr>) {
    let _ = CURRENT.set(Program::from_argv0(argv0));
}

/// The name this process runs under (`pgclone` until [`init`] ran).
pub fn current() -> Program {
    CURRENT.get().copied().unwrap_or(Program::Pgclone)
}

/// [`current`]'s name: `pgclone` or `pg_basebackup`.
pub fn name() -> &'static str {
    current().name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_file_name_pg_basebackup_stands_in() {
        let of = |a: &str| Program::from_argv0(Some(OsStr::new(a)));
        assert_eq!(of("pg_basebackup"), Program::PgBasebackup);
        assert_eq!(
            of("/usr/lib/postgresql/17/bin/pg_basebackup"),
            Program::PgBasebackup
        );
        assert_eq!(of("./pg_basebackup"), Program::PgBasebackup);
        assert_eq!(of("pgclone"), Program::Pgclone);
        assert_eq!(of("/usr/local/bin/pg_basebackup.real"), Program::Pgclone);
        assert_eq!(of("pg_basebackup-wrapper"), Program::Pgclone);
        assert_eq!(Program::from_argv0(None), Program::Pgclone);
    }

    /// What pg_basebackup puts on the server under its own name, pgclone puts under the name
    /// it runs as.
    #[test]
    fn names_on_the_server_follow_the_program_name() {
        let pgb = Program::PgBasebackup;
        assert_eq!(pgb.application_name(), "pg_basebackup");
        assert_eq!(pgb.default_label(), "pg_basebackup base backup");
        assert_eq!(pgb.temporary_slot_name(4242), "pg_basebackup_4242");
        assert_eq!(pgb.verify_command(), "pg_basebackup verify");
        let own = Program::Pgclone;
        assert_eq!(own.application_name(), "pgclone");
        assert_eq!(own.default_label(), "pgclone base backup");
        assert_eq!(own.temporary_slot_name(4242), "pgclone_4242");
        assert_eq!(own.verify_command(), "pgclone verify");
    }

    /// Barman drops every parenthesised part, takes the second word and wants `N.N`.
    #[test]
    fn version_line_parses_as_barman_parses_it() {
        let line = Program::PgBasebackup.version_line();
        let mut kept = String::new();
        let mut depth = 0;
        for c in line.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => kept.push(c),
                _ => {}
            }
        }
        let words: Vec<&str> = kept.split_whitespace().collect();
        assert_eq!(words, ["pg_basebackup", PG_BASEBACKUP_VERSION]);
        assert!(line.starts_with("pg_basebackup (PostgreSQL) 18."));
        assert!(line.contains(concat!("pgclone ", env!("CARGO_PKG_VERSION"))));
        assert_eq!(
            Program::Pgclone.version_line(),
            concat!("pgclone ", env!("CARGO_PKG_VERSION"))
        );
    }
}
