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
//! The truncation-point safeguard (docs/incremental-notes.md §9.1): once the server has sent
//! the backup's start, the WAL summaries' limit blocks over the range from the reference to that
//! start are read over an ordinary SQL connection ([`limits::fetch`]) and given to the in-place
//! writer, so a prior block the primary truncated away is never kept. Without that connection
//! the refresh is refused before the directory is touched.

pub mod finish;
pub mod marker;
pub mod preflight;

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use pgclone_proto::sqlstate;
use tokio_util::sync::CancellationToken;

use crate::clone::backup::{Job, OnStarted, Sink};
use crate::clone::progress::{Phase, Reporter};
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
use crate::refresh::limits::{fetch, required_ranges};
use crate::refresh::{HistoryEntry, Limits};
use crate::sink::dest::Cleanup;
use crate::sink::fs::{self as sinkfs, Modes};
use crate::sink::inplace::{self, clear_wal};

use finish::Ending;
use marker::{Marker, MARKER};
use preflight::Checked;

/// Runs the refresh described by `cfg` (`cfg.refresh`). Cancelling `interrupt` stops it; the
/// directory is then left as step 2 of the module doc says. `progress` hears of its phases.
pub async fn run(
    cfg: Config,
    interrupt: CancellationToken,
    progress: &Reporter,
) -> Result<(), Error> {
    let local = tokio::task::block_in_place(|| preflight::check_directory(&cfg.dest))?;
    preflight::check_resume_tablespaces(&local, &cfg.tablespace_mapping)?;
    let mut params = cfg.conn.clone();
    let (mut conn, facts) = tokio::select! {
        r = connect_and_inspect(&mut params) => r?,
        () = interrupt.cancelled() => return Err(Error::Cancelled),
    };
    let checked = preflight::check_server(&mut conn, &facts, &cfg.dest, &local).await?;
    let created_slot = create_slot_if_asked(&cfg, &mut conn).await?;
    let abort = interrupt.child_token();
    let result = refresh_into(&cfg, &mut conn, &params, &facts, checked, &abort, progress).await;
    if let Err(e) = &result {
        if cfg.dest.join(MARKER).exists() {
            tracing::info!(
                "data directory \"{}\" is left unfinished (it will not start): run {} \
                 --refresh again to complete it ({e})",
                cfg.dest.display(),
                crate::program::name()
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
    checked: Checked,
    abort: &CancellationToken,
    progress: &Reporter,
) -> Result<(), Error> {
    let prepared = prepare_wal(cfg, params, facts, &cfg.dest.join("pg_wal"), abort).await?;
    let primary = recovery::primary_conninfo(conn.info(), params);
    let job = Job {
        options: backup_options(cfg),
        sink: Sink::InPlace(inplace::Layout {
            dest: cfg.dest.clone(),
            tablespace_links: HashMap::new(),
            dir_mode: facts.modes.dir,
            limits: Limits::default(),
        }),
        wal: None,
        on_started: Some(on_started(
            cfg.dest.clone(),
            checked.marker,
            checked.history,
            params.clone(),
            !cfg.no_sync,
            facts.modes,
        )),
        progress: progress.clone(),
    };
    wait_for_first_data(cfg, conn).await?;
    let name = Path::new("reference manifest");
    tracing::info!("uploading the reference manifest synthesized from the data directory");
    let mut source = Cursor::new(checked.reference);
    tokio::select! {
        r = upload::upload(conn, &mut source, name) => r?,
        () = abort.cancelled() => return Err(Error::Cancelled),
    };
    // Nothing is recorded for undoing: the directory existed and is never removed.
    let mut cleanup = Cleanup::new();
    let outcome = backup_and_stream(conn, cfg, facts, job, prepared, &mut cleanup, abort)
        .await
        .map_err(unfit_reference)?;
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
        modes: facts.modes,
    };
    progress.phase(Phase::Sync);
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

/// The server cannot take an incremental backup from this directory's reference point (WAL
/// summaries missing for the range, most often: the summaries before it were removed after
/// `wal_summary_keep_time`, or summarizing began after it): a refusal saying what to do. The
/// directory is untouched: the server refuses before sending the backup's start.
fn unfit_reference(e: Error) -> Error {
    match e {
        Error::Server { source, .. }
            if source.code == sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE =>
        {
            Error::Refused(format!(
                "the primary cannot take an incremental backup from this directory's reference \
                 point: {}; take a full clone",
                source.message
            ))
        }
        other => other,
    }
}

/// What happens once the server accepted the backup, in this order: the limit blocks of the
/// range from the reference to the backup's start read (refusing leaves the directory as it
/// was) and given to the in-place writer; the marker written and synced (always: `pg_control`
/// goes next); `pg_wal` emptied for the WAL task (its directories kept or made).
fn on_started(
    dest: PathBuf,
    marker: Marker,
    history: Vec<HistoryEntry>,
    params: ConnParams,
    sync: bool,
    modes: Modes,
) -> OnStarted {
    Box::new(move |start, timeline, sink| {
        tokio::task::block_in_place(|| {
            let point = &marker.point;
            let ranges = required_ranges(&history, timeline, start, (point.timeline, point.start))
                .ok_or_else(|| {
                    Error::Refused(format!(
                        "the backup starts at {start} on timeline {timeline}, whose history \
                         does not hold the reference's timeline {}; run --refresh again",
                        point.timeline
                    ))
                })?;
            let limits = tokio::runtime::Handle::current().block_on(fetch(&params, &ranges))?;
            tracing::info!("{} truncated relation forks in the range", limits.len());
            for (fork, limit) in limits.iter() {
                tracing::debug!("limit block {limit} for {fork:?}");
            }
            if let Sink::InPlace(layout) = sink {
                layout.limits = limits;
            }
            marker.write(&dest, true, modes.file)?;
            let status = dest.join("pg_wal").join("archive_status");
            sinkfs::make_dir_all(&status, modes.dir)?;
            let removed = clear_wal(&dest, sync)?;
            tracing::debug!("removed {} old WAL files", removed.files);
            Ok(())
        })
    })
}
