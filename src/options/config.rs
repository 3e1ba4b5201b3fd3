//! The validated configuration of one run, derived from the flags and the environment, with
//! pg_basebackup's messages for bad values and bad combinations.

use std::path::PathBuf;
use std::time::Duration;

use pgclone_proto::basebackup::{Checkpoint, ManifestOption, Target, MAX_RATE_RANGE};

use crate::options::cli::Args;
use crate::sink::codec::{self, Compression, Method};
use crate::conn::{ConnFlags, ConnParams};
use crate::error::Error;
use crate::options::tablespace::TablespaceMapping;

/// How WAL gets into the clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalMethod {
    /// Not at all (`-X none`).
    None,
    /// Inside the base archive, at the end (`-X fetch`).
    Fetch,
    /// Over a second connection during the backup (`-X stream`).
    Stream,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Unpacked into a data directory (`-F p`, the default).
    Plain,
    /// Tar files (`-F t`).
    Tar,
}

/// Where the backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The `-D` directory.
    Dir,
    /// Standard output (`-D -`, tar format, base archive only).
    Stdout,
    /// A server-side target (`-t`, 15+); nothing is written locally.
    Target(Target),
}

/// A validated run configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to connect.
    pub conn: ConnParams,
    /// The data directory to create (unused for standard output and targets).
    pub dest: PathBuf,
    /// Where the backup goes.
    pub output: Output,
    /// `-F`.
    pub format: Format,
    /// `-z`, `-Z`.
    pub compression: Compression,
    /// WAL method.
    pub wal_method: WalMethod,
    /// `--waldir`.
    pub waldir: Option<PathBuf>,
    /// `-T` mappings.
    pub tablespace_mapping: TablespaceMapping,
    /// `-c`.
    pub checkpoint: Checkpoint,
    /// `-l`.
    pub label: String,
    /// `-r`, in kB/s.
    pub max_rate: Option<u32>,
    /// Not `--no-verify-checksums`.
    pub verify_checksums: bool,
    /// Not `--no-estimate-size`.
    pub estimate_size: bool,
    /// Manifest request (for 13+ servers).
    pub manifest: ManifestOption,
    /// `--manifest-checksums`.
    pub manifest_checksums: Option<String>,
    /// `-n`.
    pub no_clean: bool,
    /// `-N`.
    pub no_sync: bool,
    /// `-P`.
    pub progress: bool,
    /// `-R`.
    pub write_recovery_conf: bool,
    /// `-S`.
    pub slot: Option<String>,
    /// `-C`.
    pub create_slot: bool,
    /// `--no-slot`.
    pub no_slot: bool,
    /// `-s` (`None` for 0: never).
    pub status_interval: Option<Duration>,
    /// `--timeout`: longest silence accepted from the server (`None` for 0: never).
    pub timeout: Option<Duration>,
}

/// Default `--timeout`: five minutes of silence.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

const MANIFEST_ALGORITHMS: &[&str] = &["NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512"];

impl Config {
    /// Validates the flags; `env` reads environment variables.
    pub fn from_args(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let usage = |m: &str| Error::Usage(m.to_owned());
        let target = match args.target.as_deref() {
            None | Some("client") => None,
            Some(t) => {
                let (name, detail) = match t.split_once(':') {
                    Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                    None => (t.to_owned(), None),
                };
                Some(Target { name, detail })
            }
        };
        if target.is_some() {
            if args.pgdata.is_some() {
                return Err(usage(
                    "cannot specify both output directory and backup target",
                ));
            }
            if args.format.is_some() {
                return Err(usage("cannot specify both format and backup target"));
            }
        }
        let dest = match (&args.pgdata, &target) {
            (Some(d), _) if !d.as_os_str().is_empty() => d.clone(),
            (None, Some(_)) => PathBuf::new(),
            _ => return Err(usage("must specify output directory or backup target")),
        };
        let format = match args.format.as_deref() {
            None | Some("p" | "plain") => Format::Plain,
            Some("t" | "tar") => Format::Tar,
            Some(other) => {
                return Err(Error::Usage(format!(
                    "invalid output format \"{other}\", must be \"plain\" or \"tar\""
                )))
            }
        };
        let output = match (&target, dest.as_os_str() == "-") {
            (Some(t), _) => Output::Target(t.clone()),
            (None, true) => Output::Stdout,
            (None, false) => Output::Dir,
        };
        let compression = match (&args.compress, args.gzip) {
            (Some(spec), _) => codec::spec::parse(spec, target.is_some())?,
            (None, true) => codec::spec::parse("gzip", target.is_some())?,
            (None, false) => Compression::NONE,
        };
        let client_compressed = compression.client().method != Method::None;
        if target.is_some() && client_compressed {
            return Err(usage(
                "client-side compression is not possible when a backup target is specified",
            ));
        }
        if format == Format::Plain && client_compressed {
            return Err(usage("only tar mode backups can be compressed"));
        }
        if output == Output::Stdout && format != Format::Tar {
            return Err(usage(
                "standard output (-D -) can only be used with tar format (-F t)",
            ));
        }
        let wal_method = match args.wal_method.as_deref() {
            None => WalMethod::Stream,
            Some("n" | "none") => WalMethod::None,
            Some("f" | "fetch") => WalMethod::Fetch,
            Some("s" | "stream") => WalMethod::Stream,
            Some(other) => {
                return Err(Error::Usage(format!(
                "invalid wal-method option \"{other}\", must be \"fetch\", \"stream\", or \"none\""
            )))
            }
        };
        if target.is_some() && wal_method == WalMethod::Stream {
            return Err(usage(
                "WAL cannot be streamed when a backup target is specified",
            ));
        }
        if output == Output::Stdout && wal_method == WalMethod::Stream {
            return Err(usage(
                "cannot stream write-ahead logs in tar mode to stdout",
            ));
        }
        if target.is_some() && args.write_recovery_conf {
            return Err(usage(
                "--write-recovery-conf cannot be used with a backup target",
            ));
        }
        if args.write_recovery_conf
            && format == Format::Tar
            && matches!(compression, Compression::Server { .. })
        {
            return Err(usage(
                "the recovery configuration cannot be injected into server-compressed archives; use client-side compression or plain format",
            ));
        }
        if let Some(slot) = &args.slot {
            check_slot_name(slot)?;
            if wal_method != WalMethod::Stream {
                return Err(usage(
                    "replication slots can only be used with WAL streaming",
                ));
            }
            if args.no_slot {
                return Err(usage("--no-slot cannot be used with slot name"));
            }
        }
        if args.no_slot && wal_method != WalMethod::Stream {
            return Err(usage("--no-slot can only be used with WAL streaming"));
        }
        if args.create_slot {
            if args.slot.is_none() {
                return Err(usage(
                    "--create-slot needs a slot to be specified using --slot",
                ));
            }
            if args.no_slot {
                return Err(usage(
                    "--create-slot and --no-slot are incompatible options",
                ));
            }
        }
        let status_interval = match args.status_interval.as_deref() {
            None => Some(Duration::from_secs(10)),
            Some(s) => match s.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(n) if n <= 2_147_483 => Some(Duration::from_secs(n)),
                _ => {
                    return Err(Error::Usage(format!(
                        "invalid status interval \"{s}\": must be an integer between 0 and 2147483"
                    )))
                }
            },
        };
        let checkpoint = match args
            .checkpoint
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("spread") => Checkpoint::Spread,
            Some("fast") => Checkpoint::Fast,
            Some(_) => {
                return Err(Error::Usage(format!(
                    "invalid checkpoint argument \"{}\", must be \"fast\" or \"spread\"",
                    args.checkpoint.as_deref().unwrap_or_default()
                )))
            }
        };
        let max_rate = args.max_rate.as_deref().map(parse_max_rate).transpose()?;
        if let Some(waldir) = &args.waldir {
            if target.is_some() {
                return Err(usage(
                    "WAL directory location cannot be specified along with a backup target",
                ));
            }
            if format != Format::Plain {
                return Err(usage(
                    "WAL directory location can only be specified in plain mode",
                ));
            }
            if !waldir.is_absolute() {
                return Err(usage("WAL directory location must be an absolute path"));
            }
        }
        if args.progress && args.no_estimate_size {
            return Err(usage(
                "--progress and --no-estimate-size are incompatible options",
            ));
        }
        if args.no_manifest && args.manifest_checksums.is_some() {
            return Err(usage(
                "--no-manifest and --manifest-checksums are incompatible options",
            ));
        }
        if args.no_manifest && args.manifest_force_encode {
            return Err(usage(
                "--no-manifest and --manifest-force-encode are incompatible options",
            ));
        }
        let manifest_checksums = match &args.manifest_checksums {
            None => None,
            Some(a) => {
                let upper = a.to_ascii_uppercase();
                if !MANIFEST_ALGORITHMS.contains(&upper.as_str()) {
                    return Err(Error::Usage(format!(
                        "invalid manifest checksum algorithm \"{a}\", must be one of {}",
                        MANIFEST_ALGORITHMS.join(", ")
                    )));
                }
                Some(upper)
            }
        };
        let manifest = if args.no_manifest {
            ManifestOption::No
        } else if args.manifest_force_encode {
            ManifestOption::ForceEncode
        } else {
            ManifestOption::Yes
        };
        if args.password && args.no_password {
            return Err(usage(
                "-W/--password and -w/--no-password cannot be used together",
            ));
        }
        let timeout = match args.timeout.as_deref() {
            None => Some(DEFAULT_TIMEOUT),
            Some(s) => match s.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(n) if n <= 86_400 * 365 => Some(Duration::from_secs(n)),
                _ => {
                    return Err(Error::Usage(format!(
                        "invalid timeout \"{s}\": must be a number of seconds (0 for none)"
                    )))
                }
            },
        };
        let mut conn = ConnParams::resolve(
            &ConnFlags {
                host: args.host.as_deref(),
                port: args.port.as_deref(),
                user: args.username.as_deref(),
                connstr: args.dbname.as_deref(),
                no_password: args.no_password,
                password: args.password,
            },
            env,
        )?;
        conn.timeout = timeout;
        conn.wait = match args.wait.as_deref() {
            None => None,
            Some(s) => match s.trim().parse::<u64>() {
                Ok(n) if n <= 86_400 * 7 => Some(Duration::from_secs(n)),
                _ => {
                    return Err(Error::Usage(format!(
                        "invalid --wait value \"{s}\": must be a number of seconds"
                    )))
                }
            },
        };
        Ok(Self {
            conn,
            dest,
            output,
            format,
            compression,
            wal_method,
            waldir: args.waldir.clone(),
            tablespace_mapping: TablespaceMapping::parse(&args.tablespace_mapping)?,
            checkpoint,
            label: args
                .label
                .clone()
                .unwrap_or_else(|| "pgclone base backup".into()),
            max_rate,
            verify_checksums: !args.no_verify_checksums,
            estimate_size: !args.no_estimate_size,
            manifest,
            manifest_checksums,
            no_clean: args.no_clean,
            no_sync: args.no_sync,
            progress: args.progress,
            write_recovery_conf: args.write_recovery_conf,
            slot: args.slot.clone(),
            create_slot: args.create_slot,
            no_slot: args.no_slot,
            status_interval,
            timeout,
        })
    }
}

/// Slot names are what the server accepts: lower-case letters, digits and `_`, at most 63 bytes.
fn check_slot_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 63 {
        return Err(Error::Usage(format!(
            "replication slot name \"{name}\" is too short or too long (1 to 63 characters)"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::Usage(format!(
            "replication slot name \"{name}\" contains invalid character (only lower case letters, numbers, and the underscore character are allowed)"
        )));
    }
    Ok(())
}

/// `-r`: kB/s with an optional `k` or `M` suffix, 32 kB/s to 1 GB/s (pg_basebackup's
/// `parse_max_rate`).
pub fn parse_max_rate(src: &str) -> Result<u32, Error> {
    let s = src.trim();
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_end);
    let value: f64 = num
        .parse()
        .map_err(|_| Error::Usage(format!("transfer rate \"{src}\" is not a valid value")))?;
    if value <= 0.0 {
        return Err(Error::Usage(
            "transfer rate must be greater than zero".into(),
        ));
    }
    let factor = match unit.trim() {
        "" | "k" => 1.0,
        "M" => 1024.0,
        other => {
            return Err(Error::Usage(format!(
                "invalid --max-rate unit: \"{other}\""
            )))
        }
    };
    let kb = value * factor;
    if kb > f64::from(u32::MAX) {
        return Err(Error::Usage(format!(
            "transfer rate \"{src}\" exceeds integer range"
        )));
    }
    let kb = kb as u32;
    if !MAX_RATE_RANGE.contains(&kb) {
        return Err(Error::Usage(format!(
            "transfer rate \"{src}\" is out of range"
        )));
    }
    Ok(kb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::cli::{parse, Parsed};

    fn config(argv: &[&str]) -> Result<Config, Error> {
        let Parsed::Run(args) = parse(std::iter::once("pgclone").chain(argv.iter().copied()))
        else {
            panic!("parse failed for {argv:?}")
        };
        Config::from_args(&args, &|_| None)
    }

    fn usage_message(argv: &[&str]) -> String {
        match config(argv) {
            Err(Error::Usage(m)) => m,
            other => panic!("{argv:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn max_rate_like_pg_basebackup() {
        assert_eq!(parse_max_rate("1024").ok(), Some(1024));
        assert_eq!(parse_max_rate("32k").ok(), Some(32));
        assert_eq!(parse_max_rate("2M").ok(), Some(2048));
        assert_eq!(parse_max_rate("1024M").ok(), Some(1_048_576));
        for bad in ["0", "31", "1025M", "x", "10G", "-5"] {
            assert!(parse_max_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_combinations_have_pg_basebackup_messages() {
        assert_eq!(
            usage_message(&["-U", "u"]),
            "must specify output directory or backup target"
        );
        assert_eq!(
            usage_message(&["-D", "/x", "-U", "u", "-F", "z"]),
            "invalid output format \"z\", must be \"plain\" or \"tar\""
        );
        assert_eq!(
            usage_message(&["-D", "/x", "-U", "u", "-X", "bogus"]),
            "invalid wal-method option \"bogus\", must be \"fetch\", \"stream\", or \"none\""
        );
        assert_eq!(
            usage_message(&["-D", "/x", "-U", "u", "-c", "slow"]),
            "invalid checkpoint argument \"slow\", must be \"fast\" or \"spread\""
        );
        assert_eq!(
            usage_message(&["-D", "/x", "-U", "u", "-P", "--no-estimate-size"]),
            "--progress and --no-estimate-size are incompatible options"
        );
        assert_eq!(
            usage_message(&[
                "-D",
                "/x",
                "-U",
                "u",
                "--no-manifest",
                "--manifest-checksums",
                "sha256"
            ]),
            "--no-manifest and --manifest-checksums are incompatible options"
        );
        assert_eq!(
            usage_message(&["-D", "/x", "-U", "u", "--waldir", "rel"]),
            "WAL directory location must be an absolute path"
        );
    }

    #[test]
    fn slot_options_like_pg_basebackup() {
        for (argv, msg) in [
            (
                &["-S", "s", "-X", "fetch"][..],
                "replication slots can only be used with WAL streaming",
            ),
            (
                &["-C"][..],
                "--create-slot needs a slot to be specified using --slot",
            ),
            (
                &["-S", "s", "--no-slot"][..],
                "--no-slot cannot be used with slot name",
            ),
            (
                &["--no-slot", "-X", "none"][..],
                "--no-slot can only be used with WAL streaming",
            ),
        ] {
            let mut full = vec!["-D", "/x", "-U", "u"];
            full.extend_from_slice(argv);
            assert_eq!(usage_message(&full), msg);
        }
        assert!(
            usage_message(&["-D", "/x", "-U", "u", "-S", "Bad-Name"]).contains("invalid character")
        );
        assert!(
            usage_message(&["-D", "/x", "-U", "u", "-s", "x"]).contains("invalid status interval")
        );
        let c =
            config(&["-D", "/x", "-U", "u", "-S", "slot_1", "-C", "-R", "-s", "0"]).expect("valid");
        assert_eq!(
            (c.slot.as_deref(), c.create_slot, c.status_interval),
            (Some("slot_1"), true, None)
        );
    }

    #[test]
    fn defaults() {
        let c = config(&[
            "-D",
            "/x",
            "-U",
            "u",
            "-c",
            "FAST",
            "--manifest-checksums",
            "sha256",
        ])
        .expect("valid");
        assert_eq!(c.wal_method, WalMethod::Stream);
        assert_eq!(c.status_interval, Some(Duration::from_secs(10)));
        assert_eq!(c.checkpoint, Checkpoint::Fast);
        assert_eq!(c.manifest_checksums.as_deref(), Some("SHA256"));
    }
}
