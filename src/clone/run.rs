//! One clone from start to finish: check the destination, connect (both connections), inspect
//! the server, create the directories, run the backup and the WAL task side by side, write the
//! recovery configuration, make it durable; on failure, undo what was created.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use pgclone_proto::basebackup::{
    BaseBackupOptions, Checkpoint, ManifestOption, ServerCompression, MIN_MAJOR_INCREMENTAL,
};
use pgclone_proto::command::Command;
use pgclone_proto::sqlstate;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::clone::backup::{self, Job, Outcome, Sink, WalLink};
use crate::clone::guard;
use crate::clone::progress::{Phase, Reporter};
use crate::clone::upload::ReferenceManifest;
use crate::conn::server::{self, ServerFacts};
use crate::conn::{self, ConnParams, Connection, Host, Prompt, ServerInfo};
use crate::error::Error;
use crate::manifest::ChecksumAlgorithm;
use crate::options::config::{Config, Format, Output, WalMethod};
use crate::recovery::{self, PrimaryConnInfo};
use crate::sink::codec::{ClientSpec, Compression, Method};
use crate::sink::dest::{self, Cleanup};
use crate::sink::durable;
use crate::sink::fs as sinkfs;
use crate::sink::journal;
use crate::sink::plain::Layout;
use crate::sink::tar::{self, RecoveryFiles};
use crate::sink::MANIFEST_TMP;
use crate::wal::{self, Slot, WalConfig, WalOutput};

/// Runs the clone described by `cfg`. Cancelling `interrupt` (a signal) stops every task and
/// undoes what was created; the result is then `Err(Cancelled)`.
pub async fn run(cfg: Config, interrupt: CancellationToken) -> Result<(), Error> {
    let progress = Reporter::start(&cfg)?;
    let result = if cfg.refresh {
        crate::clone::refresh::run(cfg, interrupt, &progress).await
    } else {
        fresh_clone(cfg, interrupt, &progress).await
    };
    progress.end(&result);
    result
}

/// [`run`] for a new clone.
async fn fresh_clone(
    cfg: Config,
    interrupt: CancellationToken,
    progress: &Reporter,
) -> Result<(), Error> {
    // Refuse a non-empty destination before anything else, and connect before creating
    // anything, so that these failures leave nothing behind.
    if cfg.output == Output::Dir {
        dest::check_usable(&cfg.dest)?;
    }
    if let Some(waldir) = &cfg.waldir {
        dest::check_usable(waldir)?;
    }
    let mut params = cfg.conn.clone();
    let (mut conn, facts) = tokio::select! {
        r = connect_and_inspect(&mut params) => r?,
        () = interrupt.cancelled() => return Err(Error::Cancelled),
    };
    let reference = match &cfg.incremental {
        Some(path) => Some(reference_manifest(path, &facts)?),
        None => None,
    };

    let created_slot = create_slot_if_asked(&cfg, &mut conn).await?;

    let mut cleanup = Cleanup::new();
    let abort = interrupt.child_token();
    let result = clone_into(
        &cfg,
        &mut conn,
        &params,
        &facts,
        reference,
        &mut cleanup,
        &abort,
        progress,
    )
    .await;
    match &result {
        Ok(outcome) => {
            cleanup.disarm();
            guard::warn_standby_start(&mut conn, &cfg, &facts, outcome.end).await;
            tracing::info!(
                "base backup completed: {} files, {:.1} MB",
                outcome.stats.files,
                outcome.bytes as f64 / 1e6
            );
        }
        Err(e) => {
            if e.keeps_data() && !cfg.no_clean {
                tracing::info!(
                    "data directory \"{}\" kept for examination",
                    cfg.dest.display()
                );
            }
            // Before the journal exists (the first archive) nothing is worth keeping.
            let partial = cfg.keep_partial
                && !e.keeps_data()
                && cfg.dest.join(journal::JOURNAL_FILE).exists();
            cleanup.run(cfg.no_clean || partial || e.keeps_data());
            if partial {
                keep_partial(&cfg);
            }
            drop_created_slot(&cfg, &params, created_slot.as_deref()).await;
        }
    }
    conn.close().await;
    result.map(|_| ())
}

/// `--keep-partial` after a failure: what a resume needs stays (the data and tablespace
/// directories, the journal); the WAL received and the unfinished manifest go.
fn keep_partial(cfg: &Config) {
    let wal_dir = cfg
        .waldir
        .clone()
        .unwrap_or_else(|| cfg.dest.join("pg_wal"));
    dest::trim_partial(&cfg.dest, &wal_dir);
    tracing::info!(
        "data directory \"{}\" kept with its journal: run {} --refresh on it to resume",
        cfg.dest.display(),
        crate::program::name()
    );
}

pub(crate) async fn connect_and_inspect(
    params: &mut ConnParams,
) -> Result<(Connection, ServerFacts), Error> {
    let mut conn = conn::connect(params).await?;
    tracing::debug!(
        "connected to PostgreSQL {} as {} ({:?} authentication)",
        conn.info().version_text,
        params.user,
        conn.info().auth
    );
    let facts = server::inspect(&mut conn).await?;
    Ok((conn, facts))
}

/// `-i`: refuses a server without incremental backups (pg_basebackup's message), then opens
/// the manifest, before anything is created.
fn reference_manifest(path: &Path, facts: &ServerFacts) -> Result<ReferenceManifest, Error> {
    if !facts.version.is_at_least(MIN_MAJOR_INCREMENTAL) {
        return Err(Error::IncompatibleServer(
            "server does not support incremental backup".into(),
        ));
    }
    ReferenceManifest::open(path)
}

/// Everything after the first connection: on error, the caller undoes what `cleanup` records.
/// `abort` is cancelled by a signal, or by whichever task fails first. `reference` (`-i`) is
/// uploaded just before BASE_BACKUP.
#[allow(clippy::too_many_arguments)]
async fn clone_into(
    cfg: &Config,
    conn: &mut Connection,
    params: &ConnParams,
    facts: &ServerFacts,
    reference: Option<ReferenceManifest>,
    cleanup: &mut Cleanup,
    abort: &CancellationToken,
    progress: &Reporter,
) -> Result<Outcome, Error> {
    let wal_dir = cfg
        .waldir
        .clone()
        .unwrap_or_else(|| cfg.dest.join("pg_wal"));
    let prepared = prepare_wal(cfg, params, facts, &wal_dir, abort).await?;

    let primary = recovery::primary_conninfo(conn.info(), params);
    let sink = choose_sink(cfg, facts, cleanup, &primary, prepared.is_some(), &wal_dir)?;
    let (guard, on_started) = guard::start(cfg, params, facts, abort);
    let job = Job {
        options: BaseBackupOptions {
            compression: chosen_compression(cfg, conn.info(), facts),
            ..backup_options(cfg)
        },
        sink,
        wal: None,
        on_started,
        progress: progress.clone(),
    };
    wait_for_first_data(cfg, conn).await?;
    if let Some(reference) = reference {
        tokio::select! {
            r = reference.upload(conn) => r?,
            () = abort.cancelled() => return Err(Error::Cancelled),
        };
    }
    let outcome = backup_and_stream(conn, cfg, facts, job, prepared, cleanup, abort).await;
    let outcome = guard.finish(outcome).await?;

    if cfg.write_recovery_conf && cfg.format == Format::Plain {
        progress.phase(Phase::Standby);
        tracing::info!("writing the standby configuration");
        let mode = facts.modes.file;
        recovery::write(
            &cfg.dest,
            &primary,
            cfg.slot.as_deref(),
            facts.version,
            mode,
        )?;
    }
    if cfg.output != Output::Dir {
        return Ok(outcome);
    }
    progress.phase(Phase::Sync);
    finish(cfg, &outcome).await?;
    Ok(outcome)
}

/// `-X stream`: the WAL connection opened (and its temporary slot made) before the backup
/// starts; `None` for the other methods.
pub(crate) async fn prepare_wal(
    cfg: &Config,
    params: &ConnParams,
    facts: &ServerFacts,
    wal_dir: &Path,
    abort: &CancellationToken,
) -> Result<Option<wal::Prepared>, Error> {
    if cfg.wal_method != WalMethod::Stream {
        return Ok(None);
    }
    let wal_cfg = wal_config(cfg, params, facts, wal_dir);
    tokio::select! {
        r = wal::prepare(wal_cfg) => Ok(Some(r?)),
        () = abort.cancelled() => Err(Error::Cancelled),
    }
}

/// What the WAL task needs for `-X stream`.
fn wal_config(cfg: &Config, params: &ConnParams, facts: &ServerFacts, wal_dir: &Path) -> WalConfig {
    let slot = match (&cfg.slot, cfg.no_slot) {
        (Some(name), _) => Slot::Named(name.clone()),
        (None, true) => Slot::None,
        (None, false) => Slot::Temporary,
    };
    let output = match cfg.format {
        Format::Plain => WalOutput::Dir(wal_dir.to_path_buf()),
        Format::Tar => {
            // As pg_basebackup: only gzip applies to pg_wal.tar.
            let spec = cfg.compression.client();
            let spec = if spec.method == Method::Gzip {
                spec
            } else {
                ClientSpec::NONE
            };
            WalOutput::Tar(
                cfg.dest.join(format!("pg_wal.tar{}", spec.method.suffix())),
                spec,
            )
        }
    };
    WalConfig {
        params: params.clone(),
        output,
        seg_size: facts.wal_seg_size,
        system_id: facts.system_id.clone(),
        slot,
        status_interval: cfg.status_interval,
        sync: !cfg.no_sync,
        file_mode: facts.modes.file,
        flushed: Default::default(),
    }
}

/// Where the archives go; creates the data directory (and, for plain format, the WAL
/// directories) when the clone lands in one.
fn choose_sink(
    cfg: &Config,
    facts: &ServerFacts,
    cleanup: &mut Cleanup,
    primary: &PrimaryConnInfo,
    streaming: bool,
    wal_dir: &Path,
) -> Result<Sink, Error> {
    Ok(match (&cfg.output, cfg.format) {
        (Output::Target(_), _) => Sink::Discard,
        (Output::Stdout, _) => Sink::Tar(tar::Layout {
            verify: verify_algorithm(cfg, facts),
            dir: None,
            compression: cfg.compression.client(),
            recovery: None,
            sync: !cfg.no_sync,
            modes: facts.modes,
        }),
        (Output::Dir, Format::Tar) => {
            cleanup.prepare_dir(&cfg.dest, facts.modes.dir, "data directory")?;
            Sink::Tar(tar::Layout {
                verify: verify_algorithm(cfg, facts),
                dir: Some(cfg.dest.clone()),
                compression: cfg.compression.client(),
                recovery: cfg.write_recovery_conf.then(|| RecoveryFiles {
                    settings: recovery::settings(primary, cfg.slot.as_deref(), facts.version),
                    signal_file: facts.version.is_at_least(12),
                    settings_mode: recovery::settings_mode(primary, facts.modes.file),
                }),
                sync: !cfg.no_sync,
                modes: facts.modes,
            })
        }
        (Output::Dir, Format::Plain) => {
            cleanup.prepare_dir(&cfg.dest, facts.modes.dir, "data directory")?;
            Sink::Plain(plain_layout(cfg, facts, cleanup, streaming, wal_dir)?)
        }
    })
}

/// The BASE_BACKUP options the flags ask for.
pub(crate) fn backup_options(cfg: &Config) -> BaseBackupOptions {
    BaseBackupOptions {
        label: cfg.label.clone(),
        progress: cfg.estimate_size,
        checkpoint: cfg.checkpoint,
        wal: cfg.wal_method == WalMethod::Fetch,
        wait_for_archive: cfg.wal_method == WalMethod::None,
        max_rate: cfg.max_rate,
        tablespace_map: cfg.format == Format::Tar || matches!(cfg.output, Output::Target(_)),
        verify_checksums: cfg.verify_checksums,
        manifest: cfg.manifest,
        manifest_checksums: cfg.manifest_checksums.map(|a| a.name().to_owned()),
        target: match &cfg.output {
            Output::Target(t) => Some(t.clone()),
            _ => None,
        },
        compression: server_compression(&cfg.compression),
        incremental: cfg.incremental.is_some() || cfg.refresh,
    }
}

/// The compression asked of the server: `-Z server-...` as given, or what `auto` (the
/// default) chooses for this server and connection.
fn chosen_compression(
    cfg: &Config,
    info: &ServerInfo,
    facts: &ServerFacts,
) -> Option<ServerCompression> {
    let chosen = cfg.compression_for(facts.version.major(), matches!(info.host, Host::Tcp(_)));
    if let (Compression::Auto, Compression::Server { method, .. }) = (&cfg.compression, &chosen) {
        tracing::info!("asking the server to compress with {method} (--compress=auto)");
    }
    server_compression(&chosen)
}

fn server_compression(compression: &Compression) -> Option<ServerCompression> {
    match compression {
        Compression::Server { method, detail } => Some(ServerCompression {
            method: method.clone(),
            detail: detail.clone(),
        }),
        Compression::Client(_) | Compression::Auto => None,
    }
}

/// Sets the main connection's read timeout for the wait before the first data.
pub(crate) async fn wait_for_first_data(cfg: &Config, conn: &mut Connection) -> Result<(), Error> {
    // The checkpoint before the first data is legitimately silent: with a spread checkpoint,
    // allow checkpoint_timeout on top of --timeout.
    let first_data = match (cfg.timeout, cfg.checkpoint) {
        (Some(t), Checkpoint::Spread) => Some(t + server::checkpoint_timeout(conn).await?),
        (t, _) => t,
    };
    if let Some(t) = first_data {
        tracing::info!(
            "waiting up to {} s for the checkpoint and the first data",
            t.as_secs()
        );
    }
    conn.set_read_timeout(first_data);
    Ok(())
}

/// Runs the backup task here and, when streaming, the WAL task beside it (linked to `job`);
/// returns the backup's outcome once both are done, or the error that stopped them.
pub(crate) async fn backup_and_stream(
    conn: &mut Connection,
    cfg: &Config,
    facts: &ServerFacts,
    mut job: Job,
    prepared: Option<wal::Prepared>,
    cleanup: &mut Cleanup,
    abort: &CancellationToken,
) -> Result<Outcome, Error> {
    let wal_task = match prepared {
        Some(prepared) => {
            job.progress.watch_wal(prepared.flushed());
            let (start_tx, start_rx) = oneshot::channel();
            let (end_tx, end_rx) = watch::channel(None);
            job.wal = Some(WalLink {
                start: Some(start_tx),
                end: end_tx,
            });
            Some(tokio::spawn(wal::run(
                prepared,
                start_rx,
                end_rx,
                abort.clone(),
            )))
        }
        None => None,
    };
    let progress = job.progress.clone();
    let backed = backup::run(conn, cfg, facts, job, cleanup, abort).await;
    if backed.is_err() {
        abort.cancel();
    }
    let streamed = match wal_task {
        Some(task) => {
            if backed.is_ok() {
                progress.phase(Phase::Wal);
                tracing::info!("waiting for background process to finish streaming ...");
            }
            Some(
                task.await
                    .map_err(|e| Error::Internal(format!("WAL task failed: {e}")))?,
            )
        }
        None => None,
    };
    match (backed, streamed) {
        (Ok(outcome), None | Some(Ok(_))) => Ok(outcome),
        (Ok(_), Some(Err(e))) => Err(Error::WalReceiver(Box::new(e))),
        (Err(Error::Cancelled), Some(Err(e))) if !matches!(e, Error::Cancelled) => {
            Err(Error::WalReceiver(Box::new(e)))
        }
        (Err(e), _) => Err(e),
    }
}

/// The checksum to compute while writing, when a manifest will come to check against.
fn verify_algorithm(cfg: &Config, facts: &ServerFacts) -> Option<ChecksumAlgorithm> {
    if cfg.manifest == ManifestOption::No || !facts.version.is_at_least(13) {
        return None;
    }
    Some(cfg.manifest_checksums.unwrap_or(ChecksumAlgorithm::Crc32c))
}

/// The plain-format layout: `--waldir` and its link, and the WAL directories the WAL task
/// writes into while the base archive is still arriving.
fn plain_layout(
    cfg: &Config,
    facts: &ServerFacts,
    cleanup: &mut Cleanup,
    streaming: bool,
    wal_dir: &Path,
) -> Result<Layout, Error> {
    let mut precreated = HashSet::new();
    if let Some(waldir) = &cfg.waldir {
        cleanup.prepare_dir(waldir, facts.modes.dir, "WAL directory")?;
        let link = cfg.dest.join("pg_wal");
        std::os::unix::fs::symlink(waldir, &link)
            .map_err(Error::fs("create symbolic link", &link))?;
        precreated.insert(waldir.clone());
    }
    if streaming {
        for dir in [wal_dir.to_path_buf(), wal_dir.join("archive_status")] {
            sinkfs::make_dir(&dir, facts.modes.dir, true)?;
            precreated.insert(dir);
        }
    }
    Ok(Layout {
        dest: cfg.dest.clone(),
        waldir: cfg.waldir.clone(),
        modes: facts.modes,
        tablespace_links: HashMap::new(),
        precreated,
        verify: verify_algorithm(cfg, facts),
        start_writeback: !cfg.no_sync,
        // Filled in by the backup task once the start position and tablespaces are known.
        journal: None,
    })
}

/// Makes the clone durable and puts the manifest in place.
async fn finish(cfg: &Config, outcome: &Outcome) -> Result<(), Error> {
    let cfg = cfg.clone();
    let tablespace_dirs = outcome.tablespace_dirs.clone();
    let manifest = outcome.manifest;
    tokio::task::spawn_blocking(move || {
        let sync = !cfg.no_sync;
        journal::remove(&cfg.dest)?;
        if sync {
            tracing::info!("syncing data to disk ...");
            durable::sync_tree(&cfg.dest)?;
            for dir in tablespace_dirs.iter().chain(&cfg.waldir) {
                durable::sync_tree(dir)?;
            }
            if let Some(parent) = cfg.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                durable::sync_path(parent)?;
            }
        }
        if manifest {
            tracing::info!("renaming {MANIFEST_TMP} to backup_manifest");
            durable::durable_rename(
                &cfg.dest.join(MANIFEST_TMP),
                &cfg.dest.join("backup_manifest"),
                sync,
            )?;
        }
        Ok::<_, Error>(())
    })
    .await
    .map_err(|e| Error::Internal(format!("sync task failed: {e}")))?
}

/// `-C`: creates the slot `-S` names before the backup starts, so that its restart_lsn
/// protects the WAL from before the checkpoint; returns its name (to drop it again if the run
/// fails, [`drop_created_slot`]).
pub(crate) async fn create_slot_if_asked(
    cfg: &Config,
    conn: &mut Connection,
) -> Result<Option<String>, Error> {
    match (&cfg.slot, cfg.create_slot) {
        (Some(name), true) => {
            create_permanent_slot(conn, name).await?;
            Ok(Some(name.clone()))
        }
        _ => Ok(None),
    }
}

/// A failed run drops the slot it created, unless `--no-clean`; a failure to drop is a warning.
pub(crate) async fn drop_created_slot(cfg: &Config, params: &ConnParams, created: Option<&str>) {
    if let (Some(name), false) = (created, cfg.no_clean) {
        if let Err(e) = drop_slot(params, name).await {
            tracing::warn!(
                "could not drop replication slot \"{name}\": {}",
                crate::error::chain(&e)
            );
        }
    }
}

/// Creates the permanent slot `name` (`-C`), reserving WAL from now on.
async fn create_permanent_slot(conn: &mut Connection, name: &str) -> Result<(), Error> {
    let cmd = Command::CreatePhysicalSlot {
        name,
        temporary: false,
        reserve_wal: true,
    };
    let sql = cmd.text(conn.info().version);
    conn.simple_query(cmd.name(), &sql).await?;
    tracing::info!("created replication slot \"{name}\"");
    Ok(())
}

/// Drops a slot pgclone created, on a fresh connection, waiting briefly for the WAL
/// connection's walsender to let go of it (while it holds the slot the server answers
/// SQLSTATE 55006, "replication slot ... is active for PID ...").
async fn drop_slot(params: &ConnParams, name: &str) -> Result<(), Error> {
    tracing::info!("dropping replication slot \"{name}\"");
    let mut params = params.clone();
    params.prompt = Prompt::Never;
    let mut conn = conn::connect(&mut params).await?;
    let cmd = Command::DropSlot { name };
    let sql = cmd.text(conn.info().version);
    let mut last = None;
    for _ in 0..40 {
        match conn.simple_query(cmd.name(), &sql).await {
            Ok(_) => {
                conn.close().await;
                return Ok(());
            }
            Err(Error::Server { source, context }) if source.code == sqlstate::OBJECT_IN_USE => {
                last = Some(Error::Server { source, context });
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(Error::Cancelled))
}
