//! `pgclone generate` (hidden): the manual pages and shell completion scripts, rendered from
//! the clap definitions of [`crate::options::cli`] by `clap_mangen` and `clap_complete`, so
//! they come from an installed binary and never drift from the flags it accepts:
//!
//! ```text
//! pgclone generate man /usr/local/share/man/man1
//! pgclone generate completions bash > /etc/bash_completion.d/pgclone
//! ```
//!
//! The pages and scripts name the program as it runs (`pgclone`, or `pg_basebackup` as a
//! drop-in). The flags keep their values as plain text for the parser (pg_basebackup's own
//! messages for bad values); only here are the closed sets of values listed
//! ([`VALUE_SETS`]), so man shows them and the shells complete them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, ValueHint};
use clap_complete::Shell;

use crate::output;
use crate::program::Program;

/// `pgclone generate man DIR` | `pgclone generate completions SHELL`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// What to generate.
    #[command(subcommand)]
    pub what: What,
    /// show this help, then exit
    #[arg(short = '?', long, action = clap::ArgAction::Help, global = true)]
    pub help: Option<bool>,
}

/// What `pgclone generate` writes.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum What {
    /// write the manual pages (the program's and one per subcommand) into DIRECTORY
    Man {
        /// where the pages go (created if missing), e.g. /usr/local/share/man/man1
        #[arg(value_name = "DIRECTORY", value_hint = ValueHint::DirPath)]
        dir: PathBuf,
    },
    /// print the completion script for SHELL on standard output
    Completions {
        /// the shell
        #[arg(value_enum, value_name = "SHELL")]
        shell: Shell,
    },
}

/// The backup flags whose values are one of a closed set, with the set's spellings (the
/// parser also takes pg_basebackup's one-letter abbreviations).
pub const VALUE_SETS: &[(&str, &[&str])] = &[
    ("wal_method", &["stream", "fetch", "none"]),
    ("format", &["plain", "tar"]),
    ("checkpoint", &["fast", "spread"]),
    (
        "manifest_checksums",
        &["CRC32C", "SHA224", "SHA256", "SHA384", "SHA512", "NONE"],
    ),
];

/// The backup flags that name a directory or a file (for shells that complete paths by kind).
const PATHS: &[(&str, ValueHint)] = &[
    ("pgdata", ValueHint::DirPath),
    ("waldir", ValueHint::DirPath),
    ("incremental", ValueHint::FilePath),
];

/// The command definition `cli` parses with, annotated with [`VALUE_SETS`] and the path kinds.
pub fn annotated(command: Command) -> Command {
    let command = VALUE_SETS.iter().fold(command, |command, (id, values)| {
        command.mut_arg(*id, |arg| arg.value_parser(values.to_vec()))
    });
    PATHS.iter().fold(command, |command, (id, hint)| {
        command.mut_arg(*id, |arg| arg.value_hint(*hint))
    })
}

/// Runs `pgclone generate` for `command` (the program's definition, as named); prints what it
/// wrote (the pages) or the script, and returns the exit code.
pub fn run(what: &What, command: Command) -> ExitCode {
    let mut command = annotated(command);
    let result = match what {
        What::Man { dir } => man_pages(command, dir).map(|written| {
            for path in written {
                println!("{}", path.display());
            }
        }),
        What::Completions { shell } => {
            let name = command.get_name().to_owned();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, name, &mut script);
            std::io::stdout()
                .write_all(&script)
                .map_err(|e| format!("could not write the completion script: {e}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            output::error(&message, false);
            ExitCode::from(1)
        }
    }
}

/// Writes `NAME.1` for `command` and `NAME-SUB.1` for each subcommand it shows (recursively)
/// into `dir`, creating it; returns the paths written.
pub fn man_pages(command: Command, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("could not create directory \"{}\": {e}", dir.display()))?;
    let mut command = command;
    command.build();
    let mut written = Vec::new();
    write_pages(command, dir, &mut written)?;
    Ok(written)
}

/// One page for `command`, then its visible subcommands' (clap_mangen names each
/// `PROGRAM-SUB` once the command is built).
fn write_pages(command: Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<(), String> {
    let subcommands: Vec<Command> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let man = clap_mangen::Man::new(command);
    let path = dir.join(man.get_filename());
    man.generate_to(dir)
        .map_err(|e| format!("could not write file \"{}\": {e}", path.display()))?;
    written.push(path);
    for sub in subcommands {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// clap's message for a refused `pgclone generate ...`, on one line (without clap's usage
/// and hint lines).
pub fn usage_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let words: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    words.join(" ").trim_start_matches("error: ").to_owned()
}

/// The command a usage error's `--help` hint names.
pub fn command_name(program: Program) -> &'static str {
    match program {
        Program::Pgclone => "pgclone generate",
        Program::PgBasebackup => "pg_basebackup generate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::cli::{parse, Parsed};

    #[test]
    fn parses_man_and_completions() {
        match parse(["pgclone", "generate", "man", "/tmp/m"]) {
            Parsed::Generate(What::Man { dir }) => assert_eq!(dir, Path::new("/tmp/m")),
            other => panic!("{other:?}"),
        }
        match parse(["pgclone", "generate", "completions", "zsh"]) {
            Parsed::Generate(What::Completions { shell }) => assert_eq!(shell, Shell::Zsh),
            other => panic!("{other:?}"),
        }
        match parse(["pgclone", "generate", "completions", "tcsh"]) {
            Parsed::Usage { message, command } => {
                assert!(message.contains("tcsh"), "{message}");
                assert_eq!(command, "pgclone generate");
            }
            other => panic!("{other:?}"),
        }
        match parse(["pgclone", "generate", "man"]) {
            Parsed::Usage { message, .. } => assert_eq!(
                message,
                "the following required arguments were not provided: <DIRECTORY>"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// Every flag named in the annotations exists (clap would panic otherwise), and the
    /// value sets reach the definition; parsing still takes any text (and abbreviations).
    #[test]
    fn annotations_name_real_flags() {
        let command = annotated(crate::options::cli::definition());
        let wal = command
            .get_arguments()
            .find(|a| a.get_id() == "wal_method")
            .expect("wal_method");
        let values: Vec<String> = wal
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(values, ["stream", "fetch", "none"]);
        assert!(matches!(
            parse(["pgclone", "-D", "x", "-X", "s"]),
            Parsed::Run(_)
        ));
    }

    /// The pages are the program's and each visible subcommand's, never `generate`'s.
    #[test]
    fn one_page_per_visible_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = man_pages(
            annotated(crate::options::cli::definition()),
            &dir.path().join("man1"),
        )
        .expect("pages");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.first().map(String::as_str), Some("pgclone.1"));
        assert!(names.iter().any(|n| n == "pgclone-verify.1"), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
    }
}
