//! Command-line flags, spelled as pg_basebackup spells them, and nothing else: no validation
//! beyond what clap does, no system calls. [`crate::options::config`] turns them into a checked config.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Parser};

/// pgclone: clone a running PostgreSQL server (10 and newer) into a data directory.
#[derive(Debug, Parser)]
#[command(
    name = "pgclone",
    version,
    disable_help_flag = true,
    disable_version_flag = true,
    about = "pgclone takes a base backup of a running PostgreSQL server (10 or newer), like pg_basebackup.",
    after_help = "Environment: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGAPPNAME.\n\
                  Report bugs at the project's issue tracker."
)]
pub struct Args {
    /// receive base backup into directory
    #[arg(
        short = 'D',
        long = "pgdata",
        visible_alias = "dest",
        value_name = "DIRECTORY",
        help_heading = "Options controlling the output"
    )]
    pub pgdata: Option<PathBuf>,

    /// output format (plain (default), tar)
    #[arg(
        short = 'F',
        long = "format",
        value_name = "p|t",
        help_heading = "Options controlling the output"
    )]
    pub format: Option<String>,

    /// maximum transfer rate to transfer data directory (in kB/s, or use suffix "k" or "M")
    #[arg(
        short = 'r',
        long = "max-rate",
        value_name = "RATE",
        help_heading = "Options controlling the output"
    )]
    pub max_rate: Option<String>,

    /// write configuration for replication
    #[arg(
        short = 'R',
        long = "write-recovery-conf",
        help_heading = "Options controlling the output"
    )]
    pub write_recovery_conf: bool,

    /// compress tar output with gzip
    #[arg(
        short = 'z',
        long = "gzip",
        help_heading = "Options controlling the output"
    )]
    pub gzip: bool,

    /// compress on client or server as specified ([client-|server-]METHOD[:DETAIL], or a level)
    #[arg(
        short = 'Z',
        long = "compress",
        value_name = "[{client|server}-]METHOD[:DETAIL]",
        allow_hyphen_values = true,
        help_heading = "Options controlling the output"
    )]
    pub compress: Option<String>,

    /// backup target (if other than client): blackhole, server:DIRECTORY
    #[arg(
        short = 't',
        long = "target",
        value_name = "TARGET[:DETAIL]",
        help_heading = "Options controlling the output"
    )]
    pub target: Option<String>,

    /// replication slot to use
    #[arg(
        short = 'S',
        long = "slot",
        value_name = "SLOTNAME",
        help_heading = "Options controlling the output"
    )]
    pub slot: Option<String>,

    /// create replication slot
    #[arg(
        short = 'C',
        long = "create-slot",
        help_heading = "Options controlling the output"
    )]
    pub create_slot: bool,

    /// prevent creation of temporary replication slot
    #[arg(long = "no-slot", help_heading = "Options controlling the output")]
    pub no_slot: bool,

    /// relocate tablespace in OLDDIR to NEWDIR
    #[arg(
        short = 'T',
        long = "tablespace-mapping",
        value_name = "OLDDIR=NEWDIR",
        help_heading = "Options controlling the output"
    )]
    pub tablespace_mapping: Vec<String>,

    /// location for the write-ahead log directory
    #[arg(
        long = "waldir",
        value_name = "WALDIR",
        help_heading = "Options controlling the output"
    )]
    pub waldir: Option<PathBuf>,

    /// include required WAL files with specified method (fetch, stream, none)
    #[arg(
        short = 'X',
        long = "wal-method",
        value_name = "none|fetch|stream",
        help_heading = "Options controlling the output"
    )]
    pub wal_method: Option<String>,

    /// set fast or spread checkpointing
    #[arg(
        short = 'c',
        long = "checkpoint",
        value_name = "fast|spread",
        help_heading = "General options"
    )]
    pub checkpoint: Option<String>,

    /// set backup label
    #[arg(
        short = 'l',
        long = "label",
        value_name = "LABEL",
        help_heading = "General options"
    )]
    pub label: Option<String>,

    /// do not clean up after errors
    #[arg(short = 'n', long = "no-clean", help_heading = "General options")]
    pub no_clean: bool,

    /// do not wait for changes to be written safely to disk
    #[arg(short = 'N', long = "no-sync", help_heading = "General options")]
    pub no_sync: bool,

    /// show progress information
    #[arg(short = 'P', long = "progress", help_heading = "General options")]
    pub progress: bool,

    /// output verbose messages (repeat for more)
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, help_heading = "General options")]
    pub verbose: u8,

    /// give up when the server sends nothing for SECS seconds (0 = never; default 300)
    #[arg(
        long = "timeout",
        value_name = "SECS",
        help_heading = "General options"
    )]
    pub timeout: Option<String>,

    /// do not verify checksums
    #[arg(long = "no-verify-checksums", help_heading = "General options")]
    pub no_verify_checksums: bool,

    /// do not estimate backup size in server side
    #[arg(long = "no-estimate-size", help_heading = "General options")]
    pub no_estimate_size: bool,

    /// suppress generation of backup manifest
    #[arg(long = "no-manifest", help_heading = "General options")]
    pub no_manifest: bool,

    /// use algorithm for manifest checksums
    #[arg(
        long = "manifest-checksums",
        value_name = "SHA{224,256,384,512}|CRC32C|NONE",
        help_heading = "General options"
    )]
    pub manifest_checksums: Option<String>,

    /// hex encode all file names in manifest
    #[arg(long = "manifest-force-encode", help_heading = "General options")]
    pub manifest_force_encode: bool,

    /// time between status packets sent to server (in seconds)
    #[arg(
        short = 's',
        long = "status-interval",
        value_name = "INTERVAL",
        help_heading = "Connection options"
    )]
    pub status_interval: Option<String>,

    /// keep retrying for up to SECONDS (default 60) while the server is not reachable yet
    #[arg(long = "wait", value_name = "SECONDS", num_args = 0..=1, default_missing_value = "60",
          require_equals = true, help_heading = "Connection options")]
    pub wait: Option<String>,

    /// connection string
    #[arg(
        short = 'd',
        long = "dbname",
        value_name = "CONNSTR",
        help_heading = "Connection options"
    )]
    pub dbname: Option<String>,

    /// database server host or socket directory
    #[arg(
        short = 'h',
        long = "host",
        value_name = "HOSTNAME",
        help_heading = "Connection options"
    )]
    pub host: Option<String>,

    /// database server port number
    #[arg(
        short = 'p',
        long = "port",
        value_name = "PORT",
        help_heading = "Connection options"
    )]
    pub port: Option<String>,

    /// connect as specified database user
    #[arg(
        short = 'U',
        long = "username",
        value_name = "NAME",
        help_heading = "Connection options"
    )]
    pub username: Option<String>,

    /// never prompt for password
    #[arg(short = 'w', long = "no-password", help_heading = "Connection options")]
    pub no_password: bool,

    /// force password prompt (should happen automatically)
    #[arg(short = 'W', long = "password", help_heading = "Connection options")]
    pub password: bool,

    /// output version information, then exit
    #[arg(short = 'V', long = "version", action = ArgAction::Version, help_heading = "Other options")]
    pub version: Option<bool>,

    /// show this help, then exit
    #[arg(short = '?', long = "help", action = ArgAction::Help, help_heading = "Other options")]
    pub help: Option<bool>,
}

/// What parsing the command line gave.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these flags.
    Run(Box<Args>),
    /// Help or version was printed; exit 0.
    Exit,
    /// A usage error, already formatted without the `error:` prefix.
    Usage(String),
}

/// Parses `argv` (including the program name).
pub fn parse<I, T>(argv: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Args::try_parse_from(argv) {
        Ok(args) => Parsed::Run(Box::new(args)),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                let _ = e.print();
                Parsed::Exit
            }
            _ => {
                let rendered = e.render().to_string();
                let first = rendered.lines().next().unwrap_or("invalid arguments");
                Parsed::Usage(first.trim_start_matches("error: ").to_owned())
            }
        },
    }
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
        ]) else {
            panic!("should parse")
        };
        assert_eq!(a.host.as_deref(), Some("master"));
        assert_eq!(a.pgdata, Some(PathBuf::from("/data")));
        assert_eq!(a.verbose, 2);
        assert_eq!(a.tablespace_mapping, ["/a=/b", "/c=/d"]);
        let Parsed::Run(a) = parse(["pgclone", "--host", "m", "--dest", "/x"]) else {
            panic!("should parse")
        };
        assert_eq!(a.pgdata, Some(PathBuf::from("/x")));
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let Parsed::Usage(msg) = parse(["pgclone", "--bogus"]) else {
            panic!("should fail")
        };
        assert!(msg.contains("--bogus"), "{msg}");
        assert!(!msg.starts_with("error:"));
    }
}
