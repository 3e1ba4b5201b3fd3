//! Command-line flags, spelled as pg_basebackup spells them, and nothing else: no validation
//! beyond what clap does, no system calls. [`crate::options::config`] turns them into a checked
//! config. Subcommands: `pgclone verify` (its flags in [`crate::options::verify`]),
//! `pgclone check` (the clone's own flag groups, [`CheckArgs`]) and the hidden
//! `pgclone generate` ([`crate::options::generate`]).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::manifest::verify::Options;
use crate::options::generate::{self, GenerateArgs};
use crate::options::verify::{self, VerifyArgs};
use crate::program::{self, Program};

/// pgclone: clone a running PostgreSQL server (10 and newer) into a data directory, or (`verify`)
/// check a clone against its manifest.
#[derive(Debug, Parser)]
#[command(
    name = "pgclone",
    version,
    disable_help_flag = true,
    disable_version_flag = true,
    disable_help_subcommand = true,
    args_conflicts_with_subcommands = true,
    args_override_self = true,
    about = "pgclone takes a base backup of a running PostgreSQL server (10 or newer), like pg_basebackup.",
    after_help = "Environment: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGAPPNAME, PGSERVICE.\n\
                  Report bugs at the project's issue tracker."
)]
pub struct Args {
    /// `pgclone verify` or `pgclone check`; without a subcommand, the flags below take a backup.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where the backup goes and how.
    #[command(flatten, next_help_heading = "Options controlling the output")]
    pub output: OutputArgs,
    /// How the backup runs.
    #[command(flatten, next_help_heading = "General options")]
    pub general: GeneralArgs,
    /// How to reach the server.
    #[command(flatten, next_help_heading = "Connection options")]
    pub connection: ConnectionArgs,
    /// output version information, then exit
    #[arg(help_heading = "Other options", short = 'V', long, action = ArgAction::Version)]
    pub version: Option<bool>,
    /// show this help, then exit
    #[arg(help_heading = "Other options", short = '?', long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// The subcommands; without one, pgclone takes a backup.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// check a plain-format backup against its backup manifest
    Verify(VerifyArgs),
    /// check whether a clone with these flags would start, creating nothing
    Check(Box<CheckArgs>),
    /// write the manual pages or print shell completions
    #[command(hide = true)] // for installers: options/generate.rs
    Generate(GenerateArgs),
}

/// `pgclone check`: the clone's flags (one definition of each), plus `--json`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, args_override_self = true)]
pub struct CheckArgs {
    /// Where the backup would go and how.
    #[command(flatten, next_help_heading = "Options controlling the output")]
    pub output: OutputArgs,
    /// How the backup would run.
    #[command(flatten, next_help_heading = "General options")]
    pub general: GeneralArgs,
    /// How to reach the server.
    #[command(flatten, next_help_heading = "Connection options")]
    pub connection: ConnectionArgs,
    /// print the findings as one JSON document on stdout
    #[arg(help_heading = "Other options", long)]
    pub json: bool,
    /// show this help, then exit
    #[arg(help_heading = "Other options", short = '?', long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

impl CheckArgs {
    /// The flags as a clone takes them (so that `Config::from_args` checks both alike), and
    /// `--json`.
    pub fn into_args(self) -> (Args, bool) {
        let args = Args {
            command: None,
            output: self.output,
            general: self.general,
            connection: self.connection,
            version: None,
            help: None,
        };
        (args, self.json)
    }
}

/// Options controlling the output.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// receive base backup into directory
    #[arg(short = 'D', long, visible_alias = "dest", value_name = "DIRECTORY")]
    pub pgdata: Option<PathBuf>,
    /// output format (plain (default), tar)
    #[arg(short = 'F', long, value_name = "p|t")]
    pub format: Option<String>,
    /// take incremental backup relative to OLDMANIFEST, an earlier backup's backup_manifest (17+ servers)
    #[arg(short = 'i', long, value_name = "OLDMANIFEST")]
    pub incremental: Option<PathBuf>,
    /// bring the existing stopped standby in DIRECTORY up to date in place (17+ primary with summarize_wal = on)
    #[arg(long)]
    pub refresh: bool,
    /// maximum transfer rate to transfer data directory (in kB/s, or use suffix "k" or "M")
    #[arg(short = 'r', long, value_name = "RATE")]
    pub max_rate: Option<String>,
    /// write configuration for replication
    #[arg(short = 'R', long)]
    pub write_recovery_conf: bool,
    /// compress tar output with gzip
    #[arg(short = 'z', long)]
    pub gzip: bool,
    /// compress on client or server as specified ([client-|server-]METHOD[:DETAIL], or a level); default auto: lz4 on the server for plain format over TCP to 15+, none otherwise
    #[arg(
        short = 'Z',
        long,
        value_name = "[{client|server}-]METHOD[:DETAIL]",
        allow_hyphen_values = true
    )]
    pub compress: Option<String>,
    /// backup target (if other than client): blackhole, server:DIRECTORY
    #[arg(short = 't', long, value_name = "TARGET[:DETAIL]")]
    pub target: Option<String>,
    /// replication slot to use
    #[arg(short = 'S', long, value_name = "SLOTNAME")]
    pub slot: Option<String>,
    /// create replication slot
    #[arg(short = 'C', long)]
    pub create_slot: bool,
    /// prevent creation of temporary replication slot
    #[arg(long)]
    pub no_slot: bool,
    /// relocate tablespace in OLDDIR to NEWDIR
    #[arg(short = 'T', long, value_name = "OLDDIR=NEWDIR")]
    pub tablespace_mapping: Vec<String>,
    /// location for the write-ahead log directory
    #[arg(long, value_name = "WALDIR")]
    pub waldir: Option<PathBuf>,
    /// include required WAL files with specified method (fetch, stream, none)
    #[arg(short = 'X', long, value_name = "none|fetch|stream")]
    pub wal_method: Option<String>,
}

/// General options.
#[derive(Debug, clap::Args)]
pub struct GeneralArgs {
    /// set fast or spread checkpointing
    #[arg(short = 'c', long, value_name = "fast|spread")]
    pub checkpoint: Option<String>,
    /// set backup label
    #[arg(short = 'l', long, value_name = "LABEL")]
    pub label: Option<String>,
    /// do not clean up after errors
    #[arg(short = 'n', long)]
    pub no_clean: bool,
    /// on failure, keep the files received whole and a journal of them, for a resume with --refresh (plain format)
    #[arg(long)]
    pub keep_partial: bool,
    /// do not wait for changes to be written safely to disk
    #[arg(short = 'N', long)]
    pub no_sync: bool,
    /// show progress information by phase (text; json: JSON lines, one event per phase change and per second)
    #[arg(short = 'P', long, value_name = "text|json", num_args = 0..=1, default_missing_value = "text", require_equals = true)]
    pub progress: Option<String>,
    /// write the --progress=json events to FILE (appended) instead of stderr
    #[arg(long, value_name = "FILE")]
    pub progress_file: Option<PathBuf>,
    /// write the --progress=json events to the open file descriptor FD instead of stderr
    #[arg(long, value_name = "FD", conflicts_with = "progress_file")]
    pub progress_fd: Option<u32>,
    /// output verbose messages (repeat for more)
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,
    /// give up when the server sends nothing for SECS seconds (0 = never; default 300)
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<String>,
    /// do not verify checksums
    #[arg(long)]
    pub no_verify_checksums: bool,
    /// do not estimate backup size in server side
    #[arg(long)]
    pub no_estimate_size: bool,
    /// suppress generation of backup manifest
    #[arg(long)]
    pub no_manifest: bool,
    /// use algorithm for manifest checksums
    #[arg(long, value_name = "SHA{224,256,384,512}|CRC32C|NONE")]
    pub manifest_checksums: Option<String>,
    /// hex encode all file names in manifest
    #[arg(long)]
    pub manifest_force_encode: bool,
}

/// Connection options.
#[derive(Debug, clap::Args)]
pub struct ConnectionArgs {
    /// time between status packets sent to server (in seconds)
    #[arg(short = 's', long, value_name = "INTERVAL")]
    pub status_interval: Option<String>,
    /// keep retrying for up to SECONDS (default 60) while the server is not reachable yet
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "60", require_equals = true)]
    pub wait: Option<String>,
    /// connection string
    #[arg(short = 'd', long, value_name = "CONNSTR")]
    pub dbname: Option<String>,
    /// database server host or socket directory
    #[arg(short = 'h', long, value_name = "HOSTNAME")]
    pub host: Option<String>,
    /// database server port number
    #[arg(short = 'p', long, value_name = "PORT")]
    pub port: Option<String>,
    /// connect as specified database user
    #[arg(short = 'U', long, value_name = "NAME")]
    pub username: Option<String>,
    /// never prompt for password
    #[arg(short = 'w', long)]
    pub no_password: bool,
    /// force password prompt (should happen automatically)
    #[arg(short = 'W', long)]
    pub password: bool,
}

/// What parsing the command line gave.
#[derive(Debug)]
pub enum Parsed {
    /// Take a backup with these flags.
    Run(Box<Args>),
    /// `pgclone verify` with these options.
    Verify(Options),
    /// `pgclone check` with these flags.
    Check(Box<CheckArgs>),
    /// `pgclone generate`: what to generate.
    Generate(generate::What),
    /// Help or version was printed; exit 0.
    Exit,
    /// A usage error, already formatted without the `error:` prefix, and the command whose
    /// `--help` the hint names (`pgclone` or `pgclone verify`).
    Usage {
        /// What is wrong.
        message: String,
        /// The command the hint points to.
        command: &'static str,
    },
}

/// Parses `argv` (including the program name), naming itself as [`program::current`].
pub fn parse<I, T>(argv: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_as(program::current(), argv)
}

/// The command-line parser, naming itself as `program` in its usage lines and `--help`
/// (rather than as `argv[0]`'s file name, whatever it is).
fn command(program: Program) -> clap::Command {
    let name = program.name();
    let command = Args::command().name(name).bin_name(name);
    match program {
        Program::Pgclone => command,
        Program::PgBasebackup => command.about(
            "pg_basebackup takes a base backup of a running PostgreSQL server (10 or newer); \
             this pg_basebackup is pgclone.",
        ),
    }
}

/// The command-line definition as the program runs (for `pgclone generate`).
pub fn definition() -> clap::Command {
    command(program::current())
}

/// [`parse`] as `program`.
fn parse_as<I, T>(program: Program, argv: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let parsed = command(program)
        .try_get_matches_from(&argv)
        .and_then(|matches| Args::from_arg_matches(&matches))
        .map_err(|e| e.format(&mut command(program)));
    match parsed {
        Ok(Args {
            command: Some(Command::Verify(verify)),
            ..
        }) => Parsed::Verify(verify.into_options()),
        Ok(Args {
            command: Some(Command::Check(check)),
            ..
        }) => Parsed::Check(check),
        Ok(Args {
            command: Some(Command::Generate(g)),
            ..
        }) => Parsed::Generate(g.what),
        Ok(args) => Parsed::Run(Box::new(args)),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp => {
                let _ = e.print();
                Parsed::Exit
            }
            ErrorKind::DisplayVersion => {
                println!("{}", program.version_line());
                Parsed::Exit
            }
            // A subcommand must come first: any flag before it conflicts.
            _ if argv.get(1).is_some_and(|a| a == "verify") => Parsed::Usage {
                message: verify::usage_message(&e, &argv),
                command: program.verify_command(),
            },
            _ if argv.get(1).is_some_and(|a| a == "check") => Parsed::Usage {
                message: verify::first_line(&e),
                command: check_command(program),
            },
            _ if argv.get(1).is_some_and(|a| a == "generate") => Parsed::Usage {
                message: generate::usage_message(&e),
                command: generate::command_name(program),
            },
            _ => Parsed::Usage {
                message: top_level_message(&e),
                command: program.name(),
            },
        },
    }
}

/// The `check` subcommand as a usage hint names it.
pub fn check_command(program: Program) -> &'static str {
    match program {
        Program::Pgclone => "pgclone check",
        Program::PgBasebackup => "pg_basebackup check",
    }
}

/// Clap's message for the backup flags; a stray word (also `verify` after flags) is one
/// command-line argument too many, in pg_basebackup's words.
fn top_level_message(e: &clap::Error) -> String {
    let word = match (e.kind(), e.get(ContextKind::InvalidSubcommand)) {
        (
            ErrorKind::InvalidSubcommand | ErrorKind::ArgumentConflict,
            Some(ContextValue::String(word)),
        ) => word,
        (ErrorKind::UnknownArgument, _) => match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) if !arg.starts_with('-') => arg,
            _ => return verify::first_line(e),
        },
        _ => return verify::first_line(e),
    };
    format!("too many command-line arguments (first is \"{word}\")")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_basebackup_spellings_parse() {
        let Parsed::Run(a) = parse([
            "pgclone",
            "-h",
            "master",
            "-p",
            "5433",
            "-U",
            "replication",
            "-D",
            "/data",
            "-X",
            "fetch",
            "-c",
            "fast",
            "-l",
            "lbl",
            "-P",
            "-v",
            "-v",
            "-n",
            "-N",
            "-T",
            "/a=/b",
            "-T",
            "/c=/d",
            "-r",
            "1M",
            "-w",
            "-i",
            "/full/backup_manifest",
        ]) else {
            panic!("should parse")
        };
        assert_eq!(a.connection.host.as_deref(), Some("master"));
        assert_eq!(a.output.pgdata, Some(PathBuf::from("/data")));
        assert_eq!(a.general.verbose, 2);
        assert_eq!(a.output.tablespace_mapping, ["/a=/b", "/c=/d"]);
        assert_eq!(
            a.output.incremental,
            Some(PathBuf::from("/full/backup_manifest"))
        );
        let Parsed::Run(a) = parse(["pgclone", "--host", "m", "--dest", "/x", "--incremental=/m"])
        else {
            panic!("should parse")
        };
        assert_eq!(a.output.pgdata, Some(PathBuf::from("/x")));
        assert_eq!(a.output.incremental, Some(PathBuf::from("/m")));
    }

    /// As in pg_basebackup's getopt loop (and repmgr relies on it: its own `-l`, `-c` plus the
    /// user's `pg_basebackup_options`), a repeated flag takes the last value; `-T` adds up.
    #[test]
    fn a_repeated_flag_takes_the_last_value() {
        let Parsed::Run(a) = parse([
            "pgclone",
            "-D",
            "/x",
            "-p",
            "2",
            "-p",
            "1",
            "-l",
            "a",
            "--label=b",
            "-c",
            "spread",
            "--checkpoint=fast",
            "-T",
            "/a=/b",
            "-T",
            "/c=/d",
            "-v",
            "-v",
        ]) else {
            panic!("should parse")
        };
        assert_eq!(a.connection.port.as_deref(), Some("1"));
        assert_eq!(a.general.label.as_deref(), Some("b"));
        assert_eq!(a.output.tablespace_mapping, ["/a=/b", "/c=/d"]);
        assert_eq!(a.general.verbose, 2);
        assert_eq!(a.general.checkpoint.as_deref(), Some("fast"));
    }

    /// As pg_basebackup, the usage lines and the hints name pg_basebackup; as pgclone, pgclone
    /// (whatever `argv[0]` says: the name comes from [`Program`]).
    #[test]
    fn help_and_hints_name_the_program() {
        let help = command(Program::PgBasebackup).render_help().to_string();
        assert!(help.contains("Usage: pg_basebackup [OPTIONS]"), "{help}");
        assert!(
            help.starts_with("pg_basebackup takes a base backup"),
            "{help}"
        );
        assert!(!help.contains("Usage: pgclone"), "{help}");
        let help = command(Program::Pgclone).render_help().to_string();
        assert!(help.contains("Usage: pgclone [OPTIONS]"), "{help}");
        assert!(help.starts_with("pgclone takes a base backup"), "{help}");

        let usage = |program, argv: &[&str]| match parse_as(program, argv) {
            Parsed::Usage { command, .. } => command,
            other => panic!("{argv:?}: {other:?}"),
        };
        let pgb = Program::PgBasebackup;
        assert_eq!(
            usage(pgb, &["/usr/bin/pg_basebackup", "--bogus"]),
            "pg_basebackup"
        );
        assert_eq!(
            usage(pgb, &["pg_basebackup", "verify", "--bogus"]),
            "pg_basebackup verify"
        );
        assert_eq!(
            usage(Program::Pgclone, &["pgclone-1", "--bogus"]),
            "pgclone"
        );
        assert_eq!(
            usage(Program::Pgclone, &["x", "verify", "--bogus"]),
            "pgclone verify"
        );
    }

    /// `check` takes the clone's flags (one definition each: `-h` is the host, not help) and
    /// `--json`; its usage errors point to `pgclone check --help`.
    #[test]
    fn check_takes_the_clones_flags() {
        let Parsed::Check(c) = parse([
            "pgclone", "check", "-h", "db", "-p", "5433", "-D", "/d", "-X", "fetch", "-S", "s",
            "-T", "/a=/b", "--json",
        ]) else {
            panic!("should parse")
        };
        let (args, json) = c.into_args();
        assert!(json);
        assert!(args.command.is_none());
        assert_eq!(args.connection.host.as_deref(), Some("db"));
        assert_eq!(args.output.wal_method.as_deref(), Some("fetch"));
        assert_eq!(args.output.tablespace_mapping, ["/a=/b"]);
        let Parsed::Usage { message, command } = parse(["pgclone", "check", "--bogus"]) else {
            panic!("should fail")
        };
        assert!(message.contains("--bogus"), "{message}");
        assert_eq!(command, "pgclone check");
        let Parsed::Usage { command, .. } =
            parse_as(Program::PgBasebackup, ["pg_basebackup", "check", "--bogus"])
        else {
            panic!("should fail")
        };
        assert_eq!(command, "pg_basebackup check");
    }
    /// `-P` and `--progress` alone mean text, also bundled with other short flags (`-vP`,
    /// `-Pv`) and before another flag; `--progress=json` asks for JSON lines.
    #[test]
    fn progress_takes_an_optional_format() {
        let progress = |argv: &[&str]| match parse(argv) {
            Parsed::Run(a) => (a.general.progress.clone(), a.general.verbose),
            other => panic!("{argv:?}: {other:?}"),
        };
        let text = Some("text".to_owned());
        assert_eq!(progress(&["pgclone", "-D", "x", "-P"]), (text.clone(), 0));
        assert_eq!(progress(&["pgclone", "-D", "x", "-vP"]), (text.clone(), 1));
        assert_eq!(progress(&["pgclone", "-D", "x", "-Pv"]), (text.clone(), 1));
        assert_eq!(
            progress(&["pgclone", "--progress", "--checkpoint=fast", "-D", "x"]),
            (text, 0)
        );
        assert_eq!(
            progress(&["pgclone", "-D", "x", "--progress=json"]),
            (Some("json".to_owned()), 0)
        );
        assert_eq!(progress(&["pgclone", "-D", "x"]), (None, 0));
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let Parsed::Usage { message: msg, .. } = parse(["pgclone", "--bogus"]) else {
            panic!("should fail")
        };
        assert!(msg.contains("--bogus"), "{msg}");
        assert!(!msg.starts_with("error:"));
        let Parsed::Usage { message: msg, .. } = parse(["pgclone", "-D", "x", "extra", "more"])
        else {
            panic!("should fail")
        };
        assert_eq!(msg, "too many command-line arguments (first is \"extra\")");
    }
}
