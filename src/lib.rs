//! `pgclone`: the I/O shell around `pgclone-proto`. It parses the command line, opens the
//! replication connection, runs BASE_BACKUP, unpacks the archives and makes the result durable.
//!
//! # Layout
//! - `cli.rs`: flags as pg_basebackup spells them; `config.rs`: validated configuration
//! - `conninfo.rs`: `key=value` connection strings; `conn/`: connecting and messaging
//! - `server.rs`: version checks and the server facts the clone needs
//! - `clone.rs`: one clone, start to finish; `backup.rs`: the BASE_BACKUP task
//! - `unpack/`: the plain-format writer and its path policy
//! - `wal/`: the WAL task (`-X stream`) and segment files; `recovery.rs`: `-R`
//! - `dest.rs`: destination checks and cleanup; `sync.rs`: fsync
//! - `tablespace.rs`: `-T` mappings; `progress.rs`: `-P`; `output.rs`: stderr
//! - `signals.rs`: SIGINT/SIGTERM/SIGHUP; `error.rs`: the error type and exit codes

pub mod backup;
pub mod cli;
pub mod clone;
pub mod compress;
pub mod config;
pub mod conn;
pub mod conninfo;
pub mod dest;
pub mod error;
pub mod inflight;
pub mod manifest;
pub mod output;
pub mod pgpass;
pub mod progress;
pub mod recovery;
pub mod server;
pub mod signals;
pub mod sync;
pub mod tablespace;
pub mod tarout;
pub mod unpack;
pub mod verify;
pub mod wal;
pub mod writeback;

use std::process::ExitCode;

use cli::Parsed;
use config::Config;

/// Runs pgclone with these arguments (including the program name) and returns its exit code.
pub fn main_with_args(argv: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let argv: Vec<std::ffi::OsString> = argv.into_iter().collect();
    if argv.get(1).is_some_and(|a| a == "verify") {
        return verify::main(&argv[2..]);
    }
    let args = match cli::parse(argv) {
        Parsed::Exit => return ExitCode::SUCCESS,
        Parsed::Usage(message) => {
            output::error(&message, true);
            return ExitCode::from(1);
        }
        Parsed::Run(args) => args,
    };
    output::init(args.verbose);
    let result = Config::from_args(&args, &|k| std::env::var(k).ok()).and_then(|cfg| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| error::Error::Internal(format!("could not start the runtime: {e}")))?;
        runtime.block_on(async {
            let interrupt = signals::Interrupt::install().map_err(|e| {
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
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::error(&error::chain(&e), e.wants_help_hint());
            ExitCode::from(e.exit_code())
        }
    }
}
