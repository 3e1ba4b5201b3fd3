//! `pgclone`: the I/O shell around `pgclone-proto`. It parses the command line, opens the
//! replication connection, runs BASE_BACKUP, unpacks the archives and makes the result durable.
//!
//! # Layout
//! One folder per stage of a clone, in the order a clone meets them. An arrow only ever points
//! down this list (a sink never imports the clone run; `pgclone-proto` never imports this crate).
//! - `options/`: the command line as pg_basebackup spells it (`cli`), validated into a `Config`
//!   (`config`), `-T` mappings (`tablespace`), the flags `--refresh` refuses (`refresh`), the
//!   `pgclone verify` subcommand's flags (`verify`), the hidden `pgclone generate` of man pages
//!   and completions (`generate`)
//! - `check/`: `pgclone check`, the preflight that creates nothing: what the server says over
//!   replication and SQL (`server`), free walsenders, slots and disk space (`capacity`), the
//!   destination, `--waldir` and tablespace paths (`dest`), text or JSON output (`report`)
//! - `clone/`: one clone from start to finish (`run`), the BASE_BACKUP task (`backup`), `-P`
//!   (`progress`), the WAL-retention guard of `-X fetch`/`none` (`guard`), SIGINT/SIGTERM/SIGHUP (`signals`), `-i`'s UPLOAD_MANIFEST (`upload`), the
//!   `--refresh` run applied in place (`refresh`: preflight, marker, last steps)
//! - `refresh/`: `--refresh`'s reference side: a stopped standby's `pg_control` (`control`),
//!   `backup_label` (`label`), its files as a base backup lists them (`walk`), the synthesized
//!   reference manifest (`reference`), the check against the primary's timeline history
//!   (`history`), the WAL summaries' limit blocks over an SQL connection (`limits`)
//! - `wal/`: the WAL task of `-X stream`, segment files (`segment`), `pg_wal.tar` (`tarwal`)
//! - `recovery.rs`: everything `-R` writes
//! - `sink/`: where archive bytes land: the plain writer (`plain`, with its path policy), the tar
//!   writer (`tar`), the in-place writer of an incremental backup (`inplace`), the archive
//!   splitter both plain writers share (`split`), compression (`codec`), the one fs helper
//!   (`fs`), writeback and fsync (`writeback`, `durable`), the destination's checks and cleanup
//!   (`dest`), the resume journal (`journal`)
//! - `manifest/`: the `backup_manifest` model, its parsing (`parse`), per-file checksums
//!   (`checksum`), differences from it (`compare`), the check while writing (`check`), writing
//!   one (`write`), `pgclone verify` (`verify`: the run, `files`, `wal`)
//! - `conn/`: connection strings (`conninfo`), service files (`service`), `.pgpass` (`pgpass`),
//!   TLS (`tls`), connecting and messaging, the server's facts (`server`)
//! - `error.rs`: the error type and exit codes; `output.rs`: stderr; `program.rs`: the name run
//!   under (`pgclone`, or `pg_basebackup` as a drop-in)

pub mod check;
pub mod clone;
pub mod conn;
pub mod error;
pub mod manifest;
pub mod options;
pub mod output;
pub mod program;
pub mod recovery;
pub mod refresh;
pub mod sink;
pub mod wal;

use std::process::ExitCode;

use options::cli::{self, Parsed};
use options::Config;

/// Runs pgclone with these arguments (including the program name) and returns its exit code.
pub fn main_with_args(argv: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let argv: Vec<std::ffi::OsString> = argv.into_iter().collect();
    program::init(argv.first().map(|a| a.as_os_str()));
    match cli::parse(argv) {
        Parsed::Exit => ExitCode::SUCCESS,
        Parsed::Usage { message, command } => {
            output::usage_error(&message, command);
            ExitCode::from(1)
        }
        Parsed::Verify(options) => manifest::verify::run(&options),
        Parsed::Check(check_args) => {
            let (args, json) = check_args.into_args();
            output::init(args.general.verbose);
            match Config::from_args(&args, &|k| std::env::var(k).ok()) {
                Ok(cfg) => check::run(&cfg, json),
                Err(error::Error::Usage(message)) => {
                    output::usage_error(&message, cli::check_command(program::current()));
                    ExitCode::from(1)
                }
                Err(e) => {
                    output::error(&error::chain(&e), e.wants_help_hint());
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Parsed::Generate(what) => options::generate::run(&what, cli::definition()),
        Parsed::Run(args) => {
            output::init(args.general.verbose);
            match Config::from_args(&args, &|k| std::env::var(k).ok()).and_then(run_clone) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    output::error(&error::chain(&e), e.wants_help_hint());
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

/// Runs one clone on a fresh runtime, with the signal handlers installed.
fn run_clone(cfg: Config) -> Result<(), error::Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| error::Error::Internal(format!("could not start the runtime: {e}")))?;
    runtime.block_on(async {
        let interrupt = clone::signals::Interrupt::install().map_err(|e| {
            error::Error::Internal(format!("could not install signal handlers: {e}"))
        })?;
        // On a worker thread, the task is woken by the I/O driver it runs beside; under
        // block_on every wake-up of the socket would also wake this thread.
        let result = tokio::spawn(clone::run(cfg, interrupt.token()))
            .await
            .map_err(|e| error::Error::Internal(format!("the clone task failed: {e}")))
            .and_then(|r| r);
        match (result, interrupt.received()) {
            (Err(_), Some(signo)) => Err(error::Error::Interrupted(signo)),
            (result, _) => result,
        }
    })
}
