//! The checks of `--refresh` before anything in the directory changes, in this order: the
//! directory is a data directory (or an interrupted clone with its journal, which wins over the
//! rest, [`Resume`]; or an unfinished refresh, [`Marker`]); no postmaster runs on
//! it; the server is 17 or later and of the directory's major version; it is the same cluster;
//! the server summarizes WAL; the directory's timeline is on the server's history; and the
//! reference manifest can be built. Each refusal is an [`Error::Refused`] saying why and what
//! to do instead. Nothing here writes.

use std::fs;
use std::io;
use std::path::Path;

use pgclone_proto::basebackup::MIN_MAJOR_INCREMENTAL;
use pgclone_proto::TimelineId;

use crate::clone::refresh::marker::{Marker, MARKER};
use crate::conn::server::{timeline_history, ServerFacts};
use crate::conn::Connection;
use crate::error::Error;
use crate::options::tablespace::TablespaceMapping;
use crate::refresh::{
    manifest_at, parse_history, resume, BackupLabel, ControlError, ControlFile, HistoryEntry,
    ReferencePoint, Resume,
};

/// What the directory says about itself, read before connecting.
#[derive(Debug)]
pub enum Local {
    /// A stopped data directory: its control file and, for a copy never started, its label.
    Control(Box<ControlFile>, Option<BackupLabel>),
    /// A refresh that did not finish.
    Unfinished(Marker),
    /// A clone that did not finish, with its resume journal (or a refresh of it that did not).
    Resume(Box<Resume>),
    /// A control file of a version pgclone does not read (below 17): refused after the
    /// server's version, which is usually the reason to give.
    Unsupported(String),
}

impl Local {
    /// The system identifier the directory belongs to.
    fn system_identifier(&self) -> u64 {
        match self {
            Self::Control(c, _) => c.system_identifier,
            Self::Unfinished(m) => m.point.system_identifier,
            Self::Resume(r) => r.point.system_identifier,
            Self::Unsupported(_) => 0,
        }
    }
}

/// The directory's checks that need no server: a data directory (or an unfinished refresh)
/// on which no postmaster runs.
pub fn check_directory(dir: &Path) -> Result<Local, Error> {
    let local = if let Some(r) = resume::read(dir).map_err(refused)? {
        tracing::info!(
            "\"{}\" holds an interrupted clone (its journal lists {} complete files): resuming it",
            dir.display(),
            r.journal.files.len()
        );
        Local::Resume(Box::new(r))
    } else if let Some(marker) = Marker::read(dir)? {
        tracing::info!(
            "\"{}\" holds an unfinished refresh ({MARKER}): completing it",
            dir.display()
        );
        Local::Unfinished(marker)
    } else {
        match ControlFile::read_data_dir(dir) {
            Ok(c) => {
                let label = BackupLabel::read_data_dir(dir).map_err(refused)?;
                Local::Control(Box::new(c), label)
            }
            Err(ControlError::Missing { .. }) => {
                return Err(Error::Refused(format!(
                    "\"{}\" is not a data directory (no global/pg_control, and no {MARKER} of \
                     an unfinished refresh); take a full clone into an empty directory",
                    dir.display()
                )))
            }
            Err(e @ ControlError::UnsupportedVersion { .. }) => Local::Unsupported(e.to_string()),
            Err(e) => return Err(refused(e)),
        }
    };
    check_no_postmaster(dir)?;
    Ok(local)
}

fn refused(e: impl std::fmt::Display) -> Error {
    Error::Refused(format!("{e}; take a full clone instead"))
}

/// Refuses a directory whose `postmaster.pid` names a live process.
fn check_no_postmaster(dir: &Path) -> Result<(), Error> {
    let path = dir.join("postmaster.pid");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::fs("read file", &path)(e)),
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    if alive {
        return Err(Error::Refused(format!(
            "a server is running on \"{}\" (postmaster.pid names process {pid}); stop it first",
            dir.display()
        )));
    }
    Ok(())
}

/// What the server checks established: the marker to write, the reference manifest to upload,
/// and the history of the server's timeline (empty on timeline 1).
#[derive(Debug)]
pub struct Checked {
    /// The marker the refresh writes before it changes anything.
    pub marker: Marker,
    /// The reference manifest's bytes.
    pub reference: Vec<u8>,
    /// The server timeline's history entries.
    pub history: Vec<HistoryEntry>,
}

/// A resumed clone's tablespaces must go where the clone put them (`-T` as then).
pub fn check_resume_tablespaces(local: &Local, mapping: &TablespaceMapping) -> Result<(), Error> {
    match local {
        Local::Resume(r) => r.check_tablespaces(|l| mapping.map(l)).map_err(refused),
        _ => Ok(()),
    }
}

/// The server-side checks, in order; returns the marker a refresh from here writes (the
/// reference point) and the reference manifest.
pub async fn check_server(
    conn: &mut Connection,
    facts: &ServerFacts,
    dir: &Path,
    local: &Local,
) -> Result<Checked, Error> {
    if !facts.version.is_at_least(MIN_MAJOR_INCREMENTAL) {
        return Err(Error::Refused(
            "--refresh needs a primary of PostgreSQL 17 or later; take a full clone instead".into(),
        ));
    }
    if let Local::Unsupported(why) = local {
        return Err(refused(why));
    }
    check_major(dir, local, facts.version.major())?;
    let ours = local.system_identifier();
    if facts.system_id != ours.to_string() {
        return Err(Error::Refused(format!(
            "\"{}\" is a copy of another cluster (system identifier {ours}, the server's is {}); \
             take a full clone",
            dir.display(),
            facts.system_id
        )));
    }
    check_summaries(conn).await?;
    let (point, block_size) = match local {
        Local::Control(c, label) => (
            ReferencePoint::new(c, label.as_ref()).map_err(refused)?,
            c.block_size,
        ),
        Local::Unfinished(m) => (m.point, m.block_size),
        Local::Resume(r) => (r.point, server_block_size(conn).await?),
        Local::Unsupported(why) => return Err(refused(why)),
    };
    let history = check_timeline(conn, facts.timeline, &point).await?;
    let (manifest, files) = tokio::task::block_in_place(|| match local {
        Local::Resume(r) => r.manifest(dir).map_err(refused),
        _ => manifest_at(dir, &point, block_size).map_err(refused),
    })?;
    tracing::info!(
        "reference: {files} files as of {} on timeline {} (up to {})",
        point.start,
        point.timeline,
        point.end
    );
    let marker = Marker {
        point,
        major: facts.version.major(),
        block_size,
    };
    Ok(Checked {
        marker,
        reference: manifest,
        history,
    })
}

/// `PG_VERSION` of the directory (or the marker's major) must be the server's.
fn check_major(dir: &Path, local: &Local, server: u32) -> Result<(), Error> {
    let ours = match local {
        Local::Unfinished(m) => m.major,
        Local::Resume(r) => r.major,
        Local::Control(..) | Local::Unsupported(_) => {
            let path = dir.join("PG_VERSION");
            let text = fs::read_to_string(&path).map_err(Error::fs("read file", &path))?;
            text.trim().parse::<u32>().map_err(|_| {
                Error::Refused(format!(
                    "\"{}\" does not hold a major version; take a full clone",
                    path.display()
                ))
            })?
        }
    };
    if ours != server {
        return Err(Error::Refused(format!(
            "\"{}\" is a PostgreSQL {ours} data directory and the server is PostgreSQL {server}; \
             take a full clone",
            dir.display()
        )));
    }
    Ok(())
}

/// The server's block size (`SHOW block_size`), which a journal does not record: the marker
/// of a refresh from a journal keeps it.
async fn server_block_size(conn: &mut Connection) -> Result<u32, Error> {
    let value = conn.show("block_size").await?;
    value
        .trim()
        .parse::<u32>()
        .map_err(|_| Error::IncompatibleServer(format!("the server's block_size is \"{value}\"")))
}

/// `SHOW summarize_wal` must say `on`.
async fn check_summaries(conn: &mut Connection) -> Result<(), Error> {
    let value = conn.show("summarize_wal").await?;
    if value != "on" {
        return Err(Error::Refused(format!(
            "the server does not summarize WAL (summarize_wal = {value}), which --refresh needs: \
             run ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); on the primary \
             (the summaries start only then, so refresh copies made after that) or take a full \
             clone"
        )));
    }
    Ok(())
}

/// The directory's reference point must lie on the history of the server's timeline.
async fn check_timeline(
    conn: &mut Connection,
    server: TimelineId,
    point: &ReferencePoint,
) -> Result<Vec<HistoryEntry>, Error> {
    let entries = if server.0 > 1 {
        let (_, content) = timeline_history(conn, server).await?;
        parse_history(server, &content).map_err(refused)?
    } else {
        Vec::new()
    };
    point.check_history(server, &entries).map_err(|e| {
        Error::Refused(format!(
            "{e}; a promoted or diverged copy is pg_rewind's job, not --refresh's"
        ))
    })?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refresh::control::sample;

    fn refusal(r: Result<Local, Error>) -> String {
        match r {
            Err(Error::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_directory_is_checked_without_a_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert!(refusal(check_directory(d)).contains("is not a data directory"));

        fs::create_dir(d.join("global")).expect("mkdir");
        fs::write(d.join("global/pg_control"), sample(1800).encode()).expect("write");
        assert!(matches!(check_directory(d), Ok(Local::Control(_, None))));

        // Our own pid is alive; a pid far above pid_max is not.
        fs::write(
            d.join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .expect("pid");
        assert!(refusal(check_directory(d)).contains("a server is running on"));
        fs::write(d.join("postmaster.pid"), "2147483000\n").expect("pid");
        assert!(check_directory(d).is_ok());

        fs::remove_file(d.join("global/pg_control")).expect("rm");
        let marker = Marker {
            point: ReferencePoint {
                system_identifier: 1,
                timeline: TimelineId(1),
                start: pgclone_proto::Lsn(0x100),
                end: pgclone_proto::Lsn(0x200),
            },
            major: 18,
            block_size: 8192,
        };
        marker.write(d, false, 0o600).expect("marker");
        match check_directory(d) {
            Ok(Local::Unfinished(m)) => assert_eq!(m, marker),
            other => panic!("{other:?}"),
        }

        // A journal wins over the marker and over pg_control (which a clone writes last).
        fs::write(d.join("global/pg_control"), sample(1800).encode()).expect("write");
        let journal = concat!(
            "{\"header\":{\"format\":1,\"system_identifier\":\"42\",\"timeline\":1,",
            "\"major\":18,\"start_lsn\":\"0/2000028\",\"tablespaces\":[]}}\n"
        );
        fs::write(d.join(crate::sink::journal::JOURNAL_FILE), journal).expect("journal");
        match check_directory(d) {
            Ok(Local::Resume(r)) => assert_eq!(r.point.system_identifier, 42),
            other => panic!("{other:?}"),
        }
    }
}
