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
    pub fn from_argv0(argv0: Option<&OsStr>) -> Program {
        match argv0.and_then(|a| Path::new(a).file_name()) {
            Some(name) if name == "pg_basebackup" => Program::PgBasebackup,
            _ => Program::Pgclone,
        }
    }

    /// The name printed before messages and used on the server.
    pub fn name(self) -> &'static str {
        match self {
            Program::Pgclone => "pgclone",
            Program::PgBasebackup => "pg_basebackup",
        }
    }

    /// The `--version` line: `pgclone 0.1.0`, or as `pg_basebackup`
    /// `pg_basebackup (PostgreSQL) 18.0 (pgclone 0.1.0)`.
    pub fn version_line(self) -> String {
        let own = env!("CARGO_PKG_VERSION");
        match self {
            Program::Pgclone => format!("pgclone {own}"),
            Program::PgBasebackup => {
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
