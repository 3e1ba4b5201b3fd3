//! The `pgclone verify` command line, spelled as pg_verifybackup spells it, turned into
//! [`manifest::verify::Options`](crate::manifest::verify::Options). Usage errors keep
//! pg_verifybackup's (getopt's) wording rather than clap's.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::ArgAction;

use crate::manifest::verify::Options;

/// `pgclone verify [OPTION]... BACKUPDIR`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, args_override_self = true)]
pub struct VerifyArgs {
    /// exit immediately on error
    #[arg(short, long)]
    pub exit_on_error: bool,
    /// ignore indicated path
    #[arg(short, long, value_name = "RELATIVE_PATH", allow_hyphen_values = true)]
    pub ignore: Vec<OsString>,
    /// use specified path for manifest
    #[arg(short, long, value_name = "PATH", allow_hyphen_values = true)]
    pub manifest_path: Option<PathBuf>,
    /// do not check the WAL files
    #[arg(short, long)]
    pub no_parse_wal: bool,
    /// do not print any output, except for errors
    #[arg(short, long)]
    pub quiet: bool,
    /// skip checksum verification
    #[arg(short, long)]
    pub skip_checksums: bool,
    /// use specified path for WAL files
    #[arg(
        short,
        long,
        alias = "wal-directory",
        value_name = "PATH",
        allow_hyphen_values = true
    )]
    pub wal_path: Option<PathBuf>,
    /// show this help, then exit
    #[arg(short = '?', long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// the backup directory
    #[arg(value_name = "BACKUPDIR")]
    pub dir: PathBuf,
}

impl VerifyArgs {
    /// The options of one verification; `-i` paths lose their trailing `/`.
    pub fn into_options(self) -> Options {
        let ignore = self
            .ignore
            .iter()
            .map(|path| {
                let mut path = path.as_bytes().to_vec();
                while path.len() > 1 && path.ends_with(b"/") {
                    path.pop();
                }
                path
            })
            .collect();
        Options {
            quiet: self.quiet,
            no_parse_wal: self.no_parse_wal,
            exit_on_error: self.exit_on_error,
            skip_checksums: self.skip_checksums,
            ignore,
            manifest_path: self.manifest_path,
            wal_path: self.wal_path,
            dir: self.dir,
        }
    }
}

/// A clap error about `pgclone verify`'s arguments in pg_verifybackup's words; `argv` is the
/// command line (to tell `-i` from `--ignore` when its value is missing).
pub fn usage_message(e: &clap::Error, argv: &[OsString]) -> String {
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.as_str(),
        _ => "",
    };
    match e.kind() {
        ErrorKind::MissingRequiredArgument => "no backup directory specified".into(),
        ErrorKind::UnknownArgument if arg.starts_with("--") => {
            format!("unrecognized option \"{arg}\"")
        }
        ErrorKind::UnknownArgument if arg.starts_with('-') => {
            format!("invalid option -- '{}'", arg.trim_start_matches('-'))
        }
        ErrorKind::UnknownArgument => {
            format!("too many command-line arguments (first is \"{arg}\")")
        }
        ErrorKind::InvalidValue | ErrorKind::NoEquals => {
            format!("option {} requires an argument", spelled(argv))
        }
        ErrorKind::TooManyValues => {
            let name = arg.split_whitespace().next().unwrap_or(arg);
            format!("option {name} does not take an argument")
        }
        _ => first_line(e),
    }
}

/// How the last argument named its option: `--ignore` as such, `-qi` as `-i`.
fn spelled(argv: &[OsString]) -> String {
    let last = argv.last().map(|a| a.to_string_lossy()).unwrap_or_default();
    match (last.starts_with("--"), last.chars().last()) {
        (true, _) => last.into_owned(),
        (false, Some(c)) => format!("-{c}"),
        (false, None) => String::new(),
    }
}

/// Clap's message without its `error: ` prefix and its usage lines.
pub fn first_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    first.trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::cli::{parse, Parsed};

    /// What `pgclone verify ARGS` parses to: the options, or the usage message.
    fn verify(args: &[&str]) -> Result<Options, String> {
        match parse(["pgclone", "verify"].iter().chain(args)) {
            Parsed::Verify(o) => Ok(o),
            Parsed::Usage { message, command } => {
                assert_eq!(command, "pgclone verify");
                Err(message)
            }
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn parses_flags_like_pg_verifybackup() {
        let o = verify(&["-qne", "dir"]).expect("valid");
        assert!(o.quiet && o.no_parse_wal && o.exit_on_error && !o.skip_checksums);
        assert_eq!(o.dir, PathBuf::from("dir"));
        let o = verify(&[
            "--quiet",
            "--skip-checksums",
            "-i",
            "base/1/",
            "--ignore=x",
            "-iy",
            "--wal-path",
            "/w",
            "-m/m",
            "--",
            "-dir",
        ])
        .expect("valid");
        assert!(o.quiet && o.skip_checksums && !o.no_parse_wal);
        assert_eq!(
            o.ignore,
            vec![b"base/1".to_vec(), b"x".to_vec(), b"y".to_vec()]
        );
        assert_eq!(o.wal_path, Some(PathBuf::from("/w")));
        assert_eq!(o.manifest_path, Some(PathBuf::from("/m")));
        assert_eq!(o.dir, PathBuf::from("-dir"));
        let o = verify(&["-q", "-q", "--wal-directory", "/a", "-w", "/b", "d"]).expect("valid");
        assert_eq!(o.wal_path, Some(PathBuf::from("/b")));
        for (args, want) in [
            (&[][..], "no backup directory specified"),
            (
                &["a", "b"][..],
                "too many command-line arguments (first is \"b\")",
            ),
            (&["-x", "a"][..], "invalid option -- 'x'"),
            (&["--bogus", "a"][..], "unrecognized option \"--bogus\""),
            (&["a", "-i"][..], "option -i requires an argument"),
            (&["a", "-qm"][..], "option -m requires an argument"),
            (
                &["a", "--ignore"][..],
                "option --ignore requires an argument",
            ),
            (
                &["--quiet=1", "a"][..],
                "option --quiet does not take an argument",
            ),
        ] {
            assert_eq!(verify(args).err().as_deref(), Some(want), "{args:?}");
        }
    }

    #[test]
    fn flags_of_the_backup_are_not_flags_of_verify() {
        assert_eq!(
            verify(&["-D", "x", "d"]).err().as_deref(),
            Some("invalid option -- 'D'")
        );
        let Parsed::Usage { message, command } = parse(["pgclone", "-D", "x", "verify"]) else {
            panic!("a subcommand after flags is a stray argument")
        };
        assert_eq!(command, "pgclone");
        assert_eq!(
            message,
            "too many command-line arguments (first is \"verify\")"
        );
        let Parsed::Usage { message, .. } = parse(["pgclone", "foo"]) else {
            panic!("should fail")
        };
        assert_eq!(
            message,
            "too many command-line arguments (first is \"foo\")"
        );
    }
}
