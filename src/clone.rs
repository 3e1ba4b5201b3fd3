//! One clone from start to finish: check the destination, connect, inspect the server, create
//! the directories, run the backup, make it durable; on failure, undo what was created.

use std::collections::{HashMap, HashSet};

use pgclone_proto::basebackup::BaseBackupOptions;

use crate::backup::{self, Outcome};
use crate::config::{Config, WalMethod};
use crate::conn;
use crate::dest::{self, Cleanup};
use crate::error::Error;
use crate::server::{self, ServerFacts};
use crate::sync;
use crate::unpack::{Layout, MANIFEST_TMP};

/// Runs the clone described by `cfg`.
pub async fn run(cfg: Config) -> Result<(), Error> {
    // Refuse a non-empty destination before anything else, and connect before creating
    // anything, so that these failures leave nothing behind.
    dest::check_usable(&cfg.dest)?;
    if let Some(waldir) = &cfg.waldir {
        dest::check_usable(waldir)?;
    }
    let mut params = cfg.conn.clone();
    let mut conn = conn::connect(&mut params).await?;
    tracing::debug!(
        "connected to PostgreSQL {} as {} ({:?} authentication)",
        conn.info().version_text,
        params.user,
        conn.info().auth
    );
    let facts = server::inspect(&mut conn).await?;

    let mut cleanup = Cleanup::new();
    let result = clone_into(&cfg, &mut conn, &facts, &mut cleanup).await;
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
        }
    }
    conn.close().await;
    result.map(|_| ())
}

async fn clone_into(
    cfg: &Config,
    conn: &mut conn::Connection,
    facts: &ServerFacts,
    cleanup: &mut Cleanup,
) -> Result<Outcome, Error> {
    cleanup.prepare_dir(&cfg.dest, facts.dir_mode, "data directory")?;
    let mut precreated = HashSet::new();
    if let Some(waldir) = &cfg.waldir {
        cleanup.prepare_dir(waldir, facts.dir_mode, "WAL directory")?;
        let link = cfg.dest.join("pg_wal");
        std::os::unix::fs::symlink(waldir, &link)
            .map_err(Error::fs("create symbolic link", &link))?;
        precreated.insert(waldir.clone());
    }
    let layout = Layout {
        dest: cfg.dest.clone(),
        waldir: cfg.waldir.clone(),
        dir_mode: facts.dir_mode,
        tablespace_links: HashMap::new(),
        precreated,
    };
    let options = BaseBackupOptions {
        label: cfg.label.clone(),
        progress: cfg.estimate_size,
        checkpoint: cfg.checkpoint,
        wal: cfg.wal_method == WalMethod::Fetch,
        wait_for_archive: cfg.wal_method == WalMethod::None,
        max_rate: cfg.max_rate,
        tablespace_map: false,
        verify_checksums: cfg.verify_checksums,
        manifest: cfg.manifest,
        manifest_checksums: cfg.manifest_checksums.clone(),
        target: None,
        compression: None,
    };
    let outcome = backup::run(conn, cfg, facts, &options, layout, cleanup).await?;
    finish(cfg, &outcome).await?;
    Ok(outcome)
}

/// Makes the clone durable and puts the manifest in place.
async fn finish(cfg: &Config, outcome: &Outcome) -> Result<(), Error> {
    let cfg = cfg.clone();
    let outcome = outcome.clone();
    tokio::task::spawn_blocking(move || {
        let sync = !cfg.no_sync;
        if sync {
            tracing::info!("syncing data to disk ...");
            sync::sync_tree(&cfg.dest)?;
            for dir in outcome.tablespace_dirs.iter().chain(&cfg.waldir) {
                sync::sync_tree(dir)?;
            }
            if let Some(parent) = cfg.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync::sync_path(parent)?;
            }
        }
        if outcome.manifest {
            tracing::info!("renaming {MANIFEST_TMP} to backup_manifest");
            sync::durable_rename(
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
