//! `--refresh`: an existing stopped standby's data directory brought up to date with a 17+
//! primary, in place. The run reuses the clone's steps (connections, WAL task, BASE_BACKUP
//! task) with the in-place writer ([`crate::sink::inplace`]) as the sink:
//!
//! 1. preflight (`preflight`), touching nothing: a data directory (or an unfinished refresh)
//!    with no postmaster, a 17+ server of the same major and cluster that summarizes WAL, a
//!    reference point on the server's history, and the reference manifest synthesized from the
//!    directory ([`crate::refresh`]);
//! 2. `UPLOAD_MANIFEST` of that reference, then `BASE_BACKUP (INCREMENTAL, MANIFEST)`; once the
//!    server has accepted it (its start position arrived), the marker (`marker`) is written and
//!    synced, `pg_wal` is emptied for the WAL task, and the in-place writer removes
//!    `global/pg_control` and applies the archives;
//! 3. the last steps (`finish`): stale files removed, `backup_label`, a new `backup_manifest`,
//!    `-R`, fsync, `pg_control` last, the marker removed.
//!
//! A failure never deletes the directory (it existed before): from step 2 on it is left
//! without `pg_control`, which PostgreSQL refuses to start, and with the marker, so that
//! `--refresh` again completes it.
//!
//! Not done yet: the truncation-point safeguard (docs/incremental-notes.md §9.1). Helper K's
//! `refresh::limits::fetch(&params, ...) -> Result<Limits, Error>` is to be fetched after the
//! preflight and handed to the in-place writer's layout; see the `TODO(limits)` below.

pub mod finish;
pub mod marker;
pub mod preflight;

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::clone::backup::{Job, OnStarted, Sink};
use crate::clone::run::{
    backup_and_stream, backup_options, connect_and_inspect, create_slot_if_asked,
    drop_created_slot, prepare_wal, wait_for_first_data,
};
use crate::clone::upload;
use crate::conn::server::ServerFacts;
use crate::conn::{ConnParams, Connection};
use crate::error::Error;
use crate::options::config::Config;
use crate::recovery;
use crate::sink::dest::Cleanup;
use crate::sink::inplace::{self, clear_wal};

use finish::Ending;
use marker::{Marker, MARKER};

/// Runs the refresh described by `cfg` (`cfg.refresh`). Cancelling `interrupt` stops it; the
/// directory is then left as step 2 of the module doc says.
pub async fn run(cfg: Config, interrupt: CancellationToken) -> Result<(), Error> {
    let local = tokio::task::block_in_place(|| preflight::check_directory(&cfg.dest))?;
    preflight::check_resume_tablespaces(&local, &cfg.tablespace_mapping)?;
    let mut params = cfg.conn.clone();
    let (mut conn, facts) = tokio::select! {
        r = connect_and_inspect(&mut params) => r?,
        () = interrupt.cancelled() => return Err(Error::Cancelled),
    };
    let (marker, reference) = preflight::check_server(&mut conn, &facts, &cfg.dest, &local).await?;
    // TODO(limits): helper K's `refresh::limits::fetch(&params, ...)` goes here, its `Limits`
    // into the in-place layout built in `refresh_into`.
    let created_slot = create_slot_if_asked(&cfg, &mut conn).await?;
    let abort = interrupt.child_token();
    let result = refresh_into(&cfg, &mut conn, &params, &facts, marker, reference, &abort).await;
    if let Err(e) = &result {
        if cfg.dest.join(MARKER).exists() {
            tracing::info!(
                "data directory \"{}\" is left unfinished (it will not start): run pgclone \
                 --refresh again to complete it ({e})",
                cfg.dest.display()
            );
        }
        drop_created_slot(&cfg, &params, created_slot.as_deref()).await;
    }
    conn.close().await;
    result
}

/// Uploads the reference, runs the incremental backup into the directory beside the WAL task,
/// and completes the directory.
async fn refresh_into(
    cfg: &Config,
    conn: &mut Connection,
    params: &ConnParams,
    facts: &ServerFacts,
    marker: Marker,
    reference: Vec<u8>,
    abort: &CancellationToken,
) -> Result<(), Error> {
    let prepared = prepare_wal(cfg, params, facts, &cfg.dest.join("pg_wal"), abort).await?;
    let primary = recovery::primary_conninfo(conn.info(), params);
    let job = Job {
        options: backup_options(cfg),
        sink: Sink::InPlace(inplace::Layout {
            dest: cfg.dest.clone(),
            tablespace_links: HashMap::new(),
        }),
        wal: None,
        on_started: Some(on_started(cfg.dest.clone(), marker, !cfg.no_sync)),
    };
    wait_for_first_data(cfg, conn).await?;
    let name = Path::new("reference manifest");
    tracing::info!("uploading the reference manifest synthesized from the data directory");
    let mut source = Cursor::new(reference);
    tokio::select! {
        r = upload::upload(conn, &mut source, name) => r?,
        () = abort.cancelled() => return Err(Error::Cancelled),
    };
    // Nothing is recorded for undoing: the directory existed and is never removed.
    let mut cleanup = Cleanup::new();
    let outcome = backup_and_stream(conn, cfg, facts, job, prepared, &mut cleanup, abort).await?;
    let applied = outcome
        .applied
        .ok_or_else(|| Error::Internal("the in-place writer reported nothing".into()))?;
    let stats = applied.stats();
    let ending = Ending {
        dest: cfg.dest.clone(),
        sync: !cfg.no_sync,
        recovery: cfg.write_recovery_conf.then(|| {
            let slot = cfg.slot.clone();
            (primary, slot, facts.version)
        }),
        tablespace_dirs: outcome.tablespace_dirs,
    };
    tokio::task::spawn_blocking(move || finish::complete(*applied, &ending))
        .await
        .map_err(|e| Error::Internal(format!("refresh task failed: {e}")))??;
    tracing::info!(
        "refresh complete: {} bytes received ({} files whole, {} incremental)",
        outcome.bytes,
        stats.whole_files,
        stats.incremental_files
    );
    Ok(())
}

/// What happens once the server accepted the backup: the marker written and synced (always:
/// `pg_control` goes next), `pg_wal` emptied for the WAL task (its directories kept or made).
fn on_started(dest: PathBuf, marker: Marker, sync: bool) -> OnStarted {
    Box::new(move |_, _| {
        tokio::task::block_in_place(|| {
            marker.write(&dest, true)?;
            let status = dest.join("pg_wal").join("archive_status");
            std::fs::create_dir_all(&status).map_err(Error::fs("create directory", &status))?;
            let removed = clear_wal(&dest, sync)?;
            tracing::debug!("removed {} old WAL files", removed.files);
            Ok(())
        })
    })
}
