//! One clone from start to finish: check the destination, connect (both connections), inspect
//! the server, create the directories, run the backup and the WAL task side by side, write the
//! recovery configuration, make it durable; on failure, undo what was created.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

use pgclone_proto::basebackup::{BaseBackupOptions, Checkpoint, ManifestOption, ServerCompression};
use pgclone_proto::frontend::quote_ident;
use pgclone_proto::startup::AuthMethod;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::clone::backup::{self, Job, Outcome, Sink, WalLink};
use crate::sink::codec::{ClientSpec, Compression, Method};
use crate::options::config::{Config, Format, Output, WalMethod};
use crate::conn::{self, ChannelBinding, ConnParams, Connection, Prompt, RootCert, SslMode};
use crate::sink::dest::{self, Cleanup};
use crate::error::Error;
use crate::manifest::ChecksumAlgorithm;
use crate::recovery::{self, PrimaryConnInfo};
use crate::conn::server::{self, ServerFacts};
use crate::sink::durable;
use crate::sink::tar::{RecoveryFiles, TarLayout};
use crate::sink::plain::{Layout, MANIFEST_TMP};
use crate::wal::{self, Slot, WalConfig, WalOutput};

/// Runs the clone described by `cfg`. Cancelling `interrupt` (a signal) stops every task and
/// undoes what was created; the result is then `Err(Cancelled)`.
pub async fn run(cfg: Config, interrupt: CancellationToken) -> Result<(), Error> {
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

    // A slot made with -C exists before the backup starts, so its restart_lsn protects the
    // WAL from before the checkpoint; it is dropped again if the clone fails.
    let created_slot = match (&cfg.slot, cfg.create_slot) {
        (Some(name), true) => {
            create_permanent_slot(&mut conn, name).await?;
            Some(name.clone())
        }
        _ => None,
    };

    let mut cleanup = Cleanup::new();
    let abort = interrupt.child_token();
    let result = clone_into(&cfg, &mut conn, &params, &facts, &mut cleanup, &abort).await;
    match &result {
        Ok(outcome) => {
            cleanup.disarm();
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
            cleanup.run(cfg.no_clean || e.keeps_data());
            if let (Some(name), false) = (&created_slot, cfg.no_clean) {
                if let Err(e) = drop_slot(&params, name).await {
                    tracing::warn!(
                        "could not drop replication slot \"{name}\": {}",
                        crate::error::chain(&e)
                    );
                }
            }
        }
    }
    conn.close().await;
    result.map(|_| ())
}

async fn connect_and_inspect(params: &mut ConnParams) -> Result<(Connection, ServerFacts), Error> {
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

/// Everything after the first connection: on error, the caller undoes what `cleanup` records.
/// `abort` is cancelled by a signal, or by whichever task fails first.
async fn clone_into(
    cfg: &Config,
    conn: &mut Connection,
    params: &ConnParams,
    facts: &ServerFacts,
    cleanup: &mut Cleanup,
    abort: &CancellationToken,
) -> Result<Outcome, Error> {
    let wal_dir = cfg
        .waldir
        .clone()
        .unwrap_or_else(|| cfg.dest.join("pg_wal"));
    let prepared = if cfg.wal_method == WalMethod::Stream {
        let slot = match (&cfg.slot, cfg.no_slot) {
            (Some(name), _) => Slot::Named(name.clone()),
            (None, true) => Slot::None,
            (None, false) => Slot::Temporary,
        };
        let output = match cfg.format {
            Format::Plain => WalOutput::Dir(wal_dir.clone()),
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
        let wal_cfg = WalConfig {
            params: params.clone(),
            output,
            seg_size: facts.wal_seg_size,
            system_id: facts.system_id.clone(),
            slot,
            status_interval: cfg.status_interval,
            sync: !cfg.no_sync,
        };
        tokio::select! {
            r = wal::prepare(wal_cfg) => Some(r?),
            () = abort.cancelled() => return Err(Error::Cancelled),
        }
    } else {
        None
    };

    let primary = primary_conninfo(conn, params);
    let sink = match (&cfg.output, cfg.format) {
        (Output::Target(_), _) => Sink::Discard,
        (Output::Stdout, _) => Sink::Tar(TarLayout {
            verify: verify_algorithm(cfg, facts),
            dir: None,
            compression: cfg.compression.client(),
            recovery: None,
            sync: !cfg.no_sync,
        }),
        (Output::Dir, Format::Tar) => {
            cleanup.prepare_dir(&cfg.dest, facts.dir_mode, "data directory")?;
            Sink::Tar(TarLayout {
                verify: verify_algorithm(cfg, facts),
                dir: Some(cfg.dest.clone()),
                compression: cfg.compression.client(),
                recovery: cfg.write_recovery_conf.then(|| RecoveryFiles {
                    settings: recovery::settings(&primary, cfg.slot.as_deref(), facts.version),
                    signal_file: facts.version.is_at_least(12),
                }),
                sync: !cfg.no_sync,
            })
        }
        (Output::Dir, Format::Plain) => {
            cleanup.prepare_dir(&cfg.dest, facts.dir_mode, "data directory")?;
            Sink::Plain(plain_layout(
                cfg,
                facts,
                cleanup,
                prepared.is_some(),
                &wal_dir,
            )?)
        }
    };
    let options = BaseBackupOptions {
        label: cfg.label.clone(),
        progress: cfg.estimate_size,
        checkpoint: cfg.checkpoint,
        wal: cfg.wal_method == WalMethod::Fetch,
        wait_for_archive: cfg.wal_method == WalMethod::None,
        max_rate: cfg.max_rate,
        tablespace_map: cfg.format == Format::Tar || matches!(cfg.output, Output::Target(_)),
        verify_checksums: cfg.verify_checksums,
        manifest: cfg.manifest,
        manifest_checksums: cfg.manifest_checksums.clone(),
        target: match &cfg.output {
            Output::Target(t) => Some(t.clone()),
            _ => None,
        },
        compression: match &cfg.compression {
            Compression::Server { method, detail } => Some(ServerCompression {
                method: method.clone(),
                detail: detail.clone(),
            }),
            Compression::Client(_) => None,
        },
    };

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
    let (link, wal_task) = match prepared {
        Some(prepared) => {
            let (start_tx, start_rx) = oneshot::channel();
            let (end_tx, end_rx) = watch::channel(None);
            let task = tokio::spawn(wal::run(prepared, start_rx, end_rx, abort.clone()));
            let link = WalLink {
                start: Some(start_tx),
                end: end_tx,
            };
            (Some(link), Some(task))
        }
        None => (None, None),
    };
    let job = Job {
        options,
        sink,
        wal: link,
    };
    let backed = backup::run(conn, cfg, facts, job, cleanup, abort).await;
    if backed.is_err() {
        abort.cancel();
    }
    let streamed = match wal_task {
        Some(task) => {
            if backed.is_ok() {
                tracing::info!("waiting for background process to finish streaming ...");
            }
            Some(
                task.await
                    .map_err(|e| Error::Internal(format!("WAL task failed: {e}")))?,
            )
        }
        None => None,
    };
    let outcome = match (backed, streamed) {
        (Ok(outcome), None | Some(Ok(_))) => outcome,
        (Ok(_), Some(Err(e))) => return Err(Error::WalReceiver(Box::new(e))),
        (Err(Error::Cancelled), Some(Err(e))) if !matches!(e, Error::Cancelled) => {
            return Err(Error::WalReceiver(Box::new(e)))
        }
        (Err(e), _) => return Err(e),
    };

    if cfg.write_recovery_conf && cfg.format == Format::Plain {
        tracing::info!("writing the standby configuration");
        recovery::write(&cfg.dest, &primary, cfg.slot.as_deref(), facts.version)?;
    }
    if cfg.output != Output::Dir {
        return Ok(outcome);
    }
    finish(cfg, &outcome).await?;
    Ok(outcome)
}

/// The checksum to compute while writing, when a manifest will come to check against.
fn verify_algorithm(cfg: &Config, facts: &ServerFacts) -> Option<ChecksumAlgorithm> {
    if cfg.manifest == ManifestOption::No || !facts.version.is_at_least(13) {
        return None;
    }
    let name = cfg.manifest_checksums.as_deref().unwrap_or("CRC32C");
    name.parse().ok()
}

/// What `-R` writes into `primary_conninfo`: only what this connection used.
fn primary_conninfo(conn: &Connection, params: &ConnParams) -> PrimaryConnInfo {
    let info = conn.info();
    // A password from a passfile is referred to by the file, not copied (as libpq -R does).
    let (password, passfile) = match (&info.password, info.auth != AuthMethod::Trust) {
        (Some((_, Some(file))), true) => (None, Some(file.display().to_string())),
        (Some((secret, None)), true) => (Some(secret.expose().to_owned()), None),
        _ => (None, None),
    };
    PrimaryConnInfo {
        host: info.host.as_conninfo_value(),
        port: info.port,
        user: params.user.clone(),
        password,
        passfile,
        application_name: params
            .application_name_explicit
            .then(|| params.application_name.clone()),
        dbname: params.dbname.clone(),
        tls: tls_used(conn, params),
    }
}

/// The TLS settings the connection used, for `primary_conninfo`.
fn tls_used(conn: &Connection, params: &ConnParams) -> recovery::TlsUsed {
    let t = &params.tls;
    let encrypted = conn.info().tls;
    let mode_set = t.mode != SslMode::Prefer;
    recovery::TlsUsed {
        sslmode: (encrypted || mode_set).then(|| t.mode.name().to_owned()),
        sslrootcert: match (&t.root_cert, encrypted) {
            (Some(RootCert::System), true) => Some("system".into()),
            (Some(RootCert::File(p)), true) if t.mode.requires_tls() || t.root_cert_explicit => {
                Some(p.display().to_string())
            }
            _ => None,
        },
        client_cert: match (&t.client_cert, encrypted) {
            (Some((c, k)), true) => Some((c.display().to_string(), k.display().to_string())),
            _ => None,
        },
        channel_binding: (t.channel_binding != ChannelBinding::Prefer)
            .then(|| t.channel_binding.name().to_owned()),
        direct: t.direct && encrypted,
    }
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
        cleanup.prepare_dir(waldir, facts.dir_mode, "WAL directory")?;
        let link = cfg.dest.join("pg_wal");
        std::os::unix::fs::symlink(waldir, &link)
            .map_err(Error::fs("create symbolic link", &link))?;
        precreated.insert(waldir.clone());
    }
    if streaming {
        for dir in [wal_dir.to_path_buf(), wal_dir.join("archive_status")] {
            match fs::DirBuilder::new().mode(facts.dir_mode).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::fs("create directory", &dir)(e)),
            }
            precreated.insert(dir);
        }
    }
    Ok(Layout {
        dest: cfg.dest.clone(),
        waldir: cfg.waldir.clone(),
        dir_mode: facts.dir_mode,
        tablespace_links: HashMap::new(),
        precreated,
        verify: verify_algorithm(cfg, facts),
        start_writeback: !cfg.no_sync,
    })
}

/// Makes the clone durable and puts the manifest in place.
async fn finish(cfg: &Config, outcome: &Outcome) -> Result<(), Error> {
    let cfg = cfg.clone();
    let outcome = outcome.clone();
    tokio::task::spawn_blocking(move || {
        let sync = !cfg.no_sync;
        if sync {
            tracing::info!("syncing data to disk ...");
            durable::sync_tree(&cfg.dest)?;
            for dir in outcome.tablespace_dirs.iter().chain(&cfg.waldir) {
                durable::sync_tree(dir)?;
            }
            if let Some(parent) = cfg.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                durable::sync_path(parent)?;
            }
        }
        if outcome.manifest {
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

/// `CREATE_REPLICATION_SLOT name PHYSICAL RESERVE_WAL` (permanent).
async fn create_permanent_slot(conn: &mut Connection, name: &str) -> Result<(), Error> {
    let reserve = if conn.info().version.is_at_least(15) {
        "(RESERVE_WAL)"
    } else {
        "RESERVE_WAL"
    };
    let sql = format!(
        "CREATE_REPLICATION_SLOT {} PHYSICAL {reserve}",
        quote_ident(name)
    );
    conn.simple_query("CREATE_REPLICATION_SLOT", &sql).await?;
    tracing::info!("created replication slot \"{name}\"");
    Ok(())
}

/// Drops a slot pgclone created, on a fresh connection, waiting briefly for the WAL
/// connection's walsender to let go of it.
async fn drop_slot(params: &ConnParams, name: &str) -> Result<(), Error> {
    tracing::info!("dropping replication slot \"{name}\"");
    let mut params = params.clone();
    params.prompt = Prompt::Never;
    let mut conn = conn::connect(&mut params).await?;
    let sql = format!("DROP_REPLICATION_SLOT {}", quote_ident(name));
    let mut last = None;
    for _ in 0..40 {
        match conn.simple_query("DROP_REPLICATION_SLOT", &sql).await {
            Ok(_) => {
                conn.close().await;
                return Ok(());
            }
            Err(Error::Server { source, context }) if source.message.contains("is active") => {
                last = Some(Error::Server { source, context });
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(Error::Cancelled))
}
