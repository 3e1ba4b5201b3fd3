//! The validated configuration of one run, derived from the flags and the environment, with
//! pg_basebackup's messages for bad values and bad combinations.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgclone_proto::basebackup::{Checkpoint, ManifestOption, Target, MAX_RATE_RANGE};

use crate::conn::{ConnFlags, ConnParams};
use crate::error::{os_text, Error};
use crate::manifest::ChecksumAlgorithm;
use crate::options::cli::Args;
use crate::options::refresh;
use crate::options::tablespace::TablespaceMapping;
use crate::program;
use crate::sink::codec::spec::AutoFacts;
use crate::sink::codec::{self, Compression, Method};

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

/// `-P`, `--progress[=text|json]` with `--progress-file`/`--progress-fd`: what
/// [`crate::clone::progress`] reports and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressOutput {
    /// Text on stderr: a bar redrawn in place on a terminal, one line at a time elsewhere.
    Text,
    /// JSON lines, one event a line.
    Json(JsonTarget),
}

/// Where `--progress=json` writes its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonTarget {
    /// Standard error (the default).
    Stderr,
    /// `--progress-file`: appended to this file (created if missing).
    File(PathBuf),
    /// `--progress-fd`: this open file descriptor.
    Fd(u32),
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
    pub manifest_checksums: Option<ChecksumAlgorithm>,
    /// `-n`.
    pub no_clean: bool,
    /// `--keep-partial`: on failure keep the data and tablespace directories and the journal,
    /// drop a `-C` slot and the WAL received.
    pub keep_partial: bool,
    /// `-N`.
    pub no_sync: bool,
    /// `-P`, `--progress`: `None` without.
    pub progress: Option<ProgressOutput>,
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
    /// `-i`: the earlier backup's manifest to upload for an incremental backup (17+). It
    /// existed and was a file when the flags were checked.
    pub incremental: Option<PathBuf>,
    /// `--refresh`: bring the existing data directory `dest` up to date in place (17+). The
    /// flags it cannot go with were refused and `dest` was an existing directory when the
    /// flags were checked.
    pub refresh: bool,
}

/// Default `--timeout`: five minutes of silence.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Default `-s`: a status packet every ten seconds.
const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Largest `-s`: what fits pg_basebackup's interval in milliseconds as a 32-bit integer.
const MAX_STATUS_INTERVAL_SECS: u64 = 2_147_483;

/// Largest `--timeout`: a year.
const MAX_TIMEOUT_SECS: u64 = 86_400 * 365;

/// Largest `--wait`: a week.
const MAX_WAIT_SECS: u64 = 86_400 * 7;

/// Where the backup goes and in which form: `-D`, `-F`, `-t`.
struct Destination {
    dest: PathBuf,
    output: Output,
    format: Format,
}

impl Destination {
    fn has_target(&self) -> bool {
        matches!(self.output, Output::Target(_))
    }
}

impl Config {
    /// Validates the flags; `env` reads environment variables. The checks run in
    /// pg_basebackup's order, so a command line with several mistakes reports the same one.
    pub fn from_args(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        if args.output.refresh {
            refresh::check(args)?;
        }
        let to = destination(args)?;
        let compression = compression(args, &to)?;
        let wal_method = wal_method(args, &to)?;
        check_recovery_conf(args, &to, &compression)?;
        check_slot_options(args, wal_method)?;
        let status_interval = STATUS_INTERVAL.parse(args.connection.status_interval.as_deref())?;
        let checkpoint = checkpoint(args.general.checkpoint.as_deref())?;
        let max_rate = args
            .output
            .max_rate
            .as_deref()
            .map(parse_max_rate)
            .transpose()?;
        check_waldir(args, &to)?;
        let progress = progress(args)?;
        check_keep_partial(args, &to)?;
        let (manifest, manifest_checksums) = manifest_options(args)?;
        if let Some(path) = &args.output.incremental {
            check_reference_manifest(path)?;
        }
        if args.connection.password && args.connection.no_password {
            return Err(usage(
                "-W/--password and -w/--no-password cannot be used together",
            ));
        }
        let timeout = TIMEOUT.parse(args.general.timeout.as_deref())?;
        let conn = connection(args, env, timeout)?;
        Ok(Self {
            conn,
            dest: to.dest,
            output: to.output,
            format: to.format,
            compression,
            wal_method,
            waldir: args.output.waldir.clone(),
            tablespace_mapping: TablespaceMapping::parse(&args.output.tablespace_mapping)?,
            checkpoint,
            label: args
                .general
                .label
                .clone()
                .unwrap_or_else(|| program::current().default_label().into()),
            max_rate,
            verify_checksums: !args.general.no_verify_checksums,
            estimate_size: !args.general.no_estimate_size,
            manifest,
            manifest_checksums,
            no_clean: args.general.no_clean,
            keep_partial: args.general.keep_partial,
            no_sync: args.general.no_sync,
            progress,
            write_recovery_conf: args.output.write_recovery_conf,
            slot: args.output.slot.clone(),
            create_slot: args.output.create_slot,
            no_slot: args.output.no_slot,
            status_interval,
            timeout,
            incremental: args.output.incremental.clone(),
            refresh: args.output.refresh,
        })
    }

    /// Whether the clone keeps a resume journal: a plain, non-incremental clone into a
    /// directory with `--keep-partial` or `--no-clean`.
    pub fn journal(&self) -> bool {
        (self.keep_partial || self.no_clean)
            && self.format == Format::Plain
            && self.output == Output::Dir
            && self.incremental.is_none()
    }
}

/// `--keep-partial`: only for a full plain-format clone into a directory, and not with `-n`
/// (which keeps everything).
fn check_keep_partial(args: &Args, to: &Destination) -> Result<(), Error> {
    if !args.general.keep_partial {
        return Ok(());
    }
    if args.general.no_clean {
        return Err(usage(
            "--keep-partial and --no-clean are incompatible options",
        ));
    }
    if to.format != Format::Plain || to.output != Output::Dir {
        return Err(usage(
            "--keep-partial can only be used with plain format (-F p) into a directory",
        ));
    }
    if args.output.incremental.is_some() {
        return Err(usage(
            "--keep-partial and --incremental are incompatible options",
        ));
    }
    Ok(())
}

/// `-P`/`--progress[=text|json]` and where JSON goes. Text needs the server's size estimate
/// (pg_basebackup's rule); JSON reports an unknown total as null.
fn progress(args: &Args) -> Result<Option<ProgressOutput>, Error> {
    let g = &args.general;
    let json_target = match (&g.progress_file, g.progress_fd) {
        (Some(path), _) => Some(JsonTarget::File(path.clone())),
        (None, Some(fd)) => Some(JsonTarget::Fd(fd)),
        (None, None) => None,
    };
    match (g.progress.as_deref(), json_target) {
        (None, None) => Ok(None),
        (Some("text"), None) if g.no_estimate_size => Err(usage(
            "--progress and --no-estimate-size are incompatible options",
        )),
        (Some("text"), None) => Ok(Some(ProgressOutput::Text)),
        (Some("json"), target) => Ok(Some(ProgressOutput::Json(
            target.unwrap_or(JsonTarget::Stderr),
        ))),
        (None | Some("text"), Some(_)) => Err(usage(
            "--progress-file and --progress-fd require --progress=json",
        )),
        (Some(other), _) => Err(Error::Usage(format!(
            "invalid progress format \"{other}\", must be \"text\" or \"json\""
        ))),
    }
}

fn usage(message: &str) -> Error {
    Error::Usage(message.to_owned())
}

/// `-t`, `-D` and `-F`: a server-side target excludes a directory and a format.
fn destination(args: &Args) -> Result<Destination, Error> {
    let target = match args.output.target.as_deref() {
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
        if args.output.pgdata.is_some() {
            return Err(usage(
                "cannot specify both output directory and backup target",
            ));
        }
        if args.output.format.is_some() {
            return Err(usage("cannot specify both format and backup target"));
        }
    }
    let dest = match (&args.output.pgdata, &target) {
        (Some(d), _) if !d.as_os_str().is_empty() => d.clone(),
        (None, Some(_)) => PathBuf::new(),
        _ => return Err(usage("must specify output directory or backup target")),
    };
    let format = match args.output.format.as_deref() {
        None | Some("p" | "plain") => Format::Plain,
        Some("t" | "tar") => Format::Tar,
        Some(other) => {
            return Err(Error::Usage(format!(
                "invalid output format \"{other}\", must be \"plain\" or \"tar\""
            )))
        }
    };
    let output = match (target, dest.as_os_str() == "-") {
        (Some(t), _) => Output::Target(t),
        (None, true) => Output::Stdout,
        (None, false) => Output::Dir,
    };
    Ok(Destination {
        dest,
        output,
        format,
    })
}

impl Config {
    /// The compression to ask of a server of major `server_major` reached over TCP (`tcp`) or
    /// a Unix socket: `auto` decided for this run ([`Compression::resolve`]: only plain format
    /// into `-D`, not `--refresh`), any explicit choice as given.
    pub fn compression_for(&self, server_major: u32, tcp: bool) -> Compression {
        self.compression.resolve(AutoFacts {
            unpacked: self.format == Format::Plain && self.output == Output::Dir && !self.refresh,
            server_major,
            tcp,
        })
    }
}

/// `-z`, `-Z`: client-side compression only for tar files written here. Without either,
/// `auto` (decided once the server is known).
fn compression(args: &Args, to: &Destination) -> Result<Compression, Error> {
    let compression = match (&args.output.compress, args.output.gzip) {
        (Some(spec), _) => codec::spec::parse(spec, to.has_target())?,
        (None, true) => codec::spec::parse("gzip", to.has_target())?,
        (None, false) => Compression::Auto,
    };
    let client_compressed = compression.client().method != Method::None;
    if to.has_target() && client_compressed {
        return Err(usage(
            "client-side compression is not possible when a backup target is specified",
        ));
    }
    if to.format == Format::Plain && client_compressed {
        return Err(usage("only tar mode backups can be compressed"));
    }
    if to.output == Output::Stdout && to.format != Format::Tar {
        return Err(usage(
            "standard output (-D -) can only be used with tar format (-F t)",
        ));
    }
    Ok(compression)
}

/// `-X`: streaming needs a place for the WAL next to the backup.
fn wal_method(args: &Args, to: &Destination) -> Result<WalMethod, Error> {
    let wal_method = match args.output.wal_method.as_deref() {
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
    if to.has_target() && wal_method == WalMethod::Stream {
        return Err(usage(
            "WAL cannot be streamed when a backup target is specified",
        ));
    }
    if to.output == Output::Stdout && wal_method == WalMethod::Stream {
        return Err(usage(
            "cannot stream write-ahead logs in tar mode to stdout",
        ));
    }
    Ok(wal_method)
}

/// `-R`: written here, so not with a target, and not into archives compressed by the server.
fn check_recovery_conf(
    args: &Args,
    to: &Destination,
    compression: &Compression,
) -> Result<(), Error> {
    if to.has_target() && args.output.write_recovery_conf {
        return Err(usage(
            "recovery configuration cannot be written when a backup target is used",
        ));
    }
    if args.output.write_recovery_conf
        && to.format == Format::Tar
        && matches!(compression, Compression::Server { .. })
    {
        return Err(usage(
            "the recovery configuration cannot be injected into server-compressed archives; use client-side compression or plain format",
        ));
    }
    Ok(())
}

/// `-S`, `-C`, `--no-slot`: slots only with streaming, and not both a name and none.
fn check_slot_options(args: &Args, wal_method: WalMethod) -> Result<(), Error> {
    if let Some(slot) = &args.output.slot {
        check_slot_name(slot)?;
        if wal_method != WalMethod::Stream {
            return Err(usage(
                "replication slots can only be used with WAL streaming",
            ));
        }
        if args.output.no_slot {
            return Err(usage("--no-slot cannot be used with slot name"));
        }
    }
    if args.output.create_slot {
        if args.output.slot.is_none() {
            return Err(usage(
                "--create-slot needs a slot to be specified using --slot",
            ));
        }
        if args.output.no_slot {
            return Err(usage(
                "--create-slot and --no-slot are incompatible options",
            ));
        }
    }
    Ok(())
}

/// `-c`, case-insensitive.
fn checkpoint(arg: Option<&str>) -> Result<Checkpoint, Error> {
    match arg.map(str::to_ascii_lowercase).as_deref() {
        None | Some("spread") => Ok(Checkpoint::Spread),
        Some("fast") => Ok(Checkpoint::Fast),
        Some(_) => Err(Error::Usage(format!(
            "invalid checkpoint argument \"{}\", must be \"fast\" or \"spread\"",
            arg.unwrap_or_default()
        ))),
    }
}

/// `--waldir`: an absolute path, for a plain backup written here.
fn check_waldir(args: &Args, to: &Destination) -> Result<(), Error> {
    let Some(waldir) = &args.output.waldir else {
        return Ok(());
    };
    if to.has_target() {
        return Err(usage(
            "WAL directory location cannot be specified along with a backup target",
        ));
    }
    if to.format != Format::Plain {
        return Err(usage(
            "WAL directory location can only be specified in plain mode",
        ));
    }
    if !waldir.is_absolute() {
        return Err(usage("WAL directory location must be an absolute path"));
    }
    Ok(())
}

/// `--no-manifest`, `--manifest-force-encode`, `--manifest-checksums` (case-insensitive).
fn manifest_options(args: &Args) -> Result<(ManifestOption, Option<ChecksumAlgorithm>), Error> {
    if args.general.no_manifest && args.general.manifest_checksums.is_some() {
        return Err(usage(
            "--no-manifest and --manifest-checksums are incompatible options",
        ));
    }
    if args.general.no_manifest && args.general.manifest_force_encode {
        return Err(usage(
            "--no-manifest and --manifest-force-encode are incompatible options",
        ));
    }
    let checksums = match &args.general.manifest_checksums {
        None => None,
        Some(name) => Some(name.parse::<ChecksumAlgorithm>().map_err(|_| {
            Error::Usage(format!(
                "invalid manifest checksum algorithm \"{name}\", must be one of {}",
                ChecksumAlgorithm::ALL
                    .map(ChecksumAlgorithm::name)
                    .join(", ")
            ))
        })?),
    };
    let manifest = if args.general.no_manifest {
        ManifestOption::No
    } else if args.general.manifest_force_encode {
        ManifestOption::ForceEncode
    } else {
        ManifestOption::Yes
    };
    Ok((manifest, checksums))
}

/// `-i`: the manifest must be a file that can be opened, with the message pg_basebackup gives
/// when it cannot open it (pg_basebackup only finds out after connecting). Its contents are the
/// server's to check.
fn check_reference_manifest(path: &Path) -> Result<(), Error> {
    let refused = |op: &str, e: &std::io::Error| {
        Error::Usage(format!(
            "could not {op} file \"{}\": {}",
            path.display(),
            os_text(e)
        ))
    };
    let file = File::open(path).map_err(|e| refused("open", &e))?;
    let meta = file.metadata().map_err(|e| refused("open", &e))?;
    if meta.is_dir() {
        let e = std::io::Error::from_raw_os_error(libc::EISDIR);
        return Err(refused("read", &e));
    }
    Ok(())
}

/// A flag given in whole seconds: its largest value, its value when absent, whether 0 means
/// never (`None`), and its message for a bad value.
struct SecondsFlag {
    max: u64,
    absent: Option<Duration>,
    zero_is_never: bool,
    invalid: fn(&str) -> String,
}

/// `-s`: 0 sends no status packets.
const STATUS_INTERVAL: SecondsFlag = SecondsFlag {
    max: MAX_STATUS_INTERVAL_SECS,
    absent: Some(DEFAULT_STATUS_INTERVAL),
    zero_is_never: true,
    invalid: |text| {
        format!(
            "invalid status interval \"{text}\": must be an integer between 0 and {MAX_STATUS_INTERVAL_SECS}"
        )
    },
};

/// `--timeout`: 0 waits forever.
const TIMEOUT: SecondsFlag = SecondsFlag {
    max: MAX_TIMEOUT_SECS,
    absent: Some(DEFAULT_TIMEOUT),
    zero_is_never: true,
    invalid: |text| format!("invalid timeout \"{text}\": must be a number of seconds (0 for none)"),
};

/// `--wait`: how long to retry an unreachable server (0 tries once; absent, not at all).
const WAIT: SecondsFlag = SecondsFlag {
    max: MAX_WAIT_SECS,
    absent: None,
    zero_is_never: false,
    invalid: |text| format!("invalid --wait value \"{text}\": must be a number of seconds"),
};

impl SecondsFlag {
    /// The flag's value (`arg` as given, `None` when absent).
    fn parse(&self, arg: Option<&str>) -> Result<Option<Duration>, Error> {
        let Some(text) = arg else {
            return Ok(self.absent);
        };
        let secs =
            parse_seconds(text, self.max).ok_or_else(|| Error::Usage((self.invalid)(text)))?;
        Ok((!(self.zero_is_never && secs.is_zero())).then_some(secs))
    }
}

/// The connection flags, resolved against the environment, with `--timeout` and `--wait`.
fn connection(
    args: &Args,
    env: &dyn Fn(&str) -> Option<String>,
    timeout: Option<Duration>,
) -> Result<ConnParams, Error> {
    let mut conn = ConnParams::resolve(
        &ConnFlags {
            host: args.connection.host.as_deref(),
            port: args.connection.port.as_deref(),
            user: args.connection.username.as_deref(),
            connstr: args.connection.dbname.as_deref(),
            no_password: args.connection.no_password,
            password: args.connection.password,
        },
        env,
    )?;
    conn.timeout = timeout;
    conn.wait = WAIT.parse(args.connection.wait.as_deref())?;
    Ok(conn)
}

/// The one parser of durations on the command line: a whole number of seconds from 0 to
/// `max`, blanks around it allowed. `None` for anything else (the caller names the flag).
pub fn parse_seconds(text: &str, max: u64) -> Option<Duration> {
    match text.trim().parse::<u64>() {
        Ok(secs) if secs <= max => Some(Duration::from_secs(secs)),
        _ => None,
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
pub(crate) mod tests {
    use super::*;
    use crate::options::cli::{parse, Parsed};

    pub(crate) fn config(argv: &[&str]) -> Result<Config, Error> {
        let Parsed::Run(args) = parse(std::iter::once("pgclone").chain(argv.iter().copied()))
        else {
            panic!("parse failed for {argv:?}")
        };
        Config::from_args(&args, &|_| None)
    }

    pub(crate) fn usage_message(argv: &[&str]) -> String {
        match config(argv) {
            Err(Error::Usage(m)) => m,
            other => panic!("{argv:?}: expected a usage error, got {other:?}"),
        }
    }

    /// Without `-l`, the label names the program (`pgclone` here; `pg_basebackup` when run so).
    #[test]
    fn the_default_label_names_the_program() {
        let cfg = config(&["-D", "/x"]).expect("valid");
        assert_eq!(cfg.label, program::current().default_label());
        assert_eq!(cfg.label, "pgclone base backup");
        let cfg = config(&["-D", "/x", "-l", "nightly"]).expect("valid");
        assert_eq!(cfg.label, "nightly");
    }

    /// `auto` (the default, or spelled out) asks for lz4 only for a plain clone into `-D` of a
    /// 15+ server over TCP; tar format, targets, a 14 server, a Unix socket get nothing; an
    /// explicit `-Z`/`-z` is never changed.
    #[test]
    fn auto_compression_by_format_server_and_transport() {
        let lz4 = Compression::Server {
            method: "lz4".into(),
            detail: None,
        };
        for argv in [
            &["-D", "/x"][..],
            &["-D", "/x", "--compress=auto"],
            &["-D", "/x", "-R"],
        ] {
            let cfg = config(argv).expect("valid");
            assert_eq!(cfg.compression, Compression::Auto, "{argv:?}");
            assert_eq!(cfg.compression_for(15, true), lz4, "{argv:?}");
            assert_eq!(cfg.compression_for(18, true), lz4, "{argv:?}");
            assert_eq!(cfg.compression_for(14, true), Compression::NONE, "{argv:?}");
            assert_eq!(
                cfg.compression_for(16, false),
                Compression::NONE,
                "{argv:?}"
            );
        }
        for argv in [
            &["-D", "/x", "-Ft"][..],
            &["-D", "-", "-Ft", "-X", "fetch"],
            &["-t", "blackhole", "-X", "none"],
            &["-D", "/x", "--compress=none"],
            &["-D", "/x", "-Z", "0"],
        ] {
            let cfg = config(argv).expect("valid");
            assert_eq!(cfg.compression_for(16, true), Compression::NONE, "{argv:?}");
        }
        for (argv, method) in [
            (&["-D", "/x", "-Ft", "-z"][..], None),
            (
                &["-D", "/x", "--compress=server-zstd:level=1"],
                Some("zstd"),
            ),
            (&["-D", "/x", "-Ft", "--compress=server-gzip"], Some("gzip")),
        ] {
            let cfg = config(argv).expect("valid");
            let chosen = cfg.compression_for(16, true);
            assert_eq!(chosen, cfg.compression, "{argv:?}");
            match (method, &chosen) {
                (None, Compression::Client(spec)) => assert_eq!(spec.method, Method::Gzip),
                (Some(m), Compression::Server { method, .. }) => assert_eq!(method, m),
                other => panic!("{argv:?}: {other:?}"),
            }
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
    fn seconds_are_whole_numbers_within_the_flags_range() {
        assert_eq!(parse_seconds("0", 5), Some(Duration::ZERO));
        assert_eq!(parse_seconds(" 5 ", 5), Some(Duration::from_secs(5)));
        for bad in ["6", "-1", "1.5", "", "x", "5s", "99999999999999999999"] {
            assert_eq!(parse_seconds(bad, 5), None, "{bad}");
        }
        assert_eq!(STATUS_INTERVAL.parse(Some("0")).ok(), Some(None));
        assert_eq!(
            STATUS_INTERVAL.parse(None).ok(),
            Some(Some(DEFAULT_STATUS_INTERVAL))
        );
        match STATUS_INTERVAL.parse(Some("2147484")) {
            Err(Error::Usage(m)) => assert_eq!(
                m,
                "invalid status interval \"2147484\": must be an integer between 0 and 2147483"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(TIMEOUT.parse(Some("0")).ok(), Some(None));
        assert_eq!(TIMEOUT.parse(None).ok(), Some(Some(DEFAULT_TIMEOUT)));
        assert_eq!(WAIT.parse(Some("0")).ok(), Some(Some(Duration::ZERO)));
        assert_eq!(WAIT.parse(None).ok(), Some(None));
        match WAIT.parse(Some("604801")) {
            Err(Error::Usage(m)) => assert_eq!(
                m,
                "invalid --wait value \"604801\": must be a number of seconds"
            ),
            other => panic!("{other:?}"),
        }
        match TIMEOUT.parse(Some("x")) {
            Err(Error::Usage(m)) => assert_eq!(
                m,
                "invalid timeout \"x\": must be a number of seconds (0 for none)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_combinations_have_pg_basebackup_messages() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["-U", "u"],
                "must specify output directory or backup target",
            ),
            (
                &["-D", "/x", "-U", "u", "-F", "z"],
                "invalid output format \"z\", must be \"plain\" or \"tar\"",
            ),
            (
                &["-D", "/x", "-U", "u", "-X", "bogus"],
                "invalid wal-method option \"bogus\", must be \"fetch\", \"stream\", or \"none\"",
            ),
            (
                &["-D", "/x", "-U", "u", "-c", "slow"],
                "invalid checkpoint argument \"slow\", must be \"fast\" or \"spread\"",
            ),
            (
                &["-D", "/x", "-U", "u", "-P", "--no-estimate-size"],
                "--progress and --no-estimate-size are incompatible options",
            ),
            (
                &["-D", "/x", "-U", "u", "--progress=yaml"],
                "invalid progress format \"yaml\", must be \"text\" or \"json\"",
            ),
            (
                &["-D", "/x", "-U", "u", "-P", "--progress-file", "/p"],
                "--progress-file and --progress-fd require --progress=json",
            ),
            (
                &[
                    "-D",
                    "/x",
                    "-U",
                    "u",
                    "--no-manifest",
                    "--manifest-checksums",
                    "sha256",
                ],
                "--no-manifest and --manifest-checksums are incompatible options",
            ),
            (
                &["-D", "/x", "-U", "u", "--waldir", "rel"],
                "WAL directory location must be an absolute path",
            ),
        ];
        for (args, message) in cases {
            assert_eq!(usage_message(args), *message, "{args:?}");
        }
    }

    /// `-P` is text; JSON goes to stderr, a file or a descriptor, and takes an unknown total.
    #[test]
    fn progress_outputs() {
        let progress = |argv: &[&str]| {
            let mut full = vec!["-D", "/x", "-U", "u"];
            full.extend_from_slice(argv);
            config(&full).expect("valid").progress
        };
        assert_eq!(progress(&[]), None);
        assert_eq!(progress(&["-P"]), Some(ProgressOutput::Text));
        assert_eq!(
            progress(&["--progress=json", "--no-estimate-size"]),
            Some(ProgressOutput::Json(JsonTarget::Stderr))
        );
        assert_eq!(
            progress(&["--progress=json", "--progress-file", "/p"]),
            Some(ProgressOutput::Json(JsonTarget::File("/p".into())))
        );
        assert_eq!(
            progress(&["--progress=json", "--progress-fd", "3"]),
            Some(ProgressOutput::Json(JsonTarget::Fd(3)))
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
        // pg_basebackup only turns the temporary slot off: Barman always passes both.
        for method in ["none", "fetch"] {
            config(&["-D", "/x", "-U", "u", "--no-slot", "-X", method]).expect("valid");
        }
        let c =
            config(&["-D", "/x", "-U", "u", "-S", "slot_1", "-C", "-R", "-s", "0"]).expect("valid");
        assert_eq!(
            (c.slot.as_deref(), c.create_slot, c.status_interval),
            (Some("slot_1"), true, None)
        );
    }

    #[test]
    fn incremental_needs_a_manifest_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("backup_manifest");
        let arg = missing.to_str().expect("utf8");
        assert_eq!(
            usage_message(&["-D", "/x", "-U", "u", "-i", arg]),
            format!("could not open file \"{arg}\": No such file or directory")
        );
        let d = dir.path().to_str().expect("utf8");
        assert_eq!(
            usage_message(&["-D", "/x", "-U", "u", "--incremental", d]),
            format!("could not read file \"{d}\": Is a directory")
        );
        std::fs::write(&missing, b"{}").expect("write");
        let c = config(&["-D", "/x", "-U", "u", "-i", arg]).expect("valid");
        assert_eq!(c.incremental.as_deref(), Some(missing.as_path()));
        assert_eq!(
            config(&["-D", "/x", "-U", "u"]).expect("valid").incremental,
            None
        );
    }

    #[test]
    fn keep_partial_only_for_a_full_plain_clone_into_a_directory() {
        let base = ["-D", "/x", "-U", "u", "--keep-partial"];
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        let c = config(&base).expect("valid");
        assert!(c.keep_partial && c.journal());
        assert!(config(&["-D", "/x", "-U", "u", "-n"])
            .expect("valid")
            .journal());
        assert!(!config(&["-D", "/x", "-U", "u"]).expect("valid").journal());
        assert!(!config(&["-D", "/x", "-U", "u", "-n", "-F", "t"])
            .expect("valid")
            .journal());
        for (extra, message) in [
            (
                &["-n"][..],
                "--keep-partial and --no-clean are incompatible options",
            ),
            (
                &["-F", "t"][..],
                "--keep-partial can only be used with plain format (-F p) into a directory",
            ),
            (
                &["-i", "/nonexistent"][..],
                "--keep-partial and --incremental are incompatible options",
            ),
        ] {
            assert_eq!(usage_message(&with(extra)), message, "{extra:?}");
        }
        assert_eq!(
            usage_message(&[
                "-D",
                "-",
                "-F",
                "t",
                "-X",
                "fetch",
                "-U",
                "u",
                "--keep-partial"
            ]),
            "--keep-partial can only be used with plain format (-F p) into a directory"
        );
        assert_eq!(
            usage_message(&["-t", "blackhole", "-X", "none", "-U", "u", "--keep-partial"]),
            "--keep-partial can only be used with plain format (-F p) into a directory"
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
        assert_eq!(c.manifest_checksums, Some(ChecksumAlgorithm::Sha256));
    }
}
