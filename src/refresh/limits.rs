//! The WAL summaries' limit blocks of a refresh's range, read over an ordinary SQL connection
//! (PostgreSQL 17+): the safeguard against an upstream defect of incremental backups.
//!
//! A fork truncated in the range (VACUUM) and then extended again without WAL (bulk extension
//! leaves zero pages no record touches) comes as an `INCREMENTAL.` member whose truncation
//! block length lies above the truncation; `pg_combinebackup` fills the blocks in between from
//! the prior copy, and deleted rows come back. The summaries record the smallest length each
//! fork was cut to (0 when it was created or dropped) as its limit block; the in-place applier,
//! given those ([`crate::sink::inplace::Applier::with_limits`]), keeps no prior block at or
//! beyond it.
//!
//! [`fetch`] reads them with `pg_available_wal_summaries()` and `pg_wal_summary_contents()`
//! (EXECUTE granted to PUBLIC: any role that may log into the database will do) from the same
//! summary files the server reads for the backup: those overlapping the whole range from the
//! reference start to the backup's start, ends excluded (`GetWalSummaries`: a file that ends
//! exactly at the reference start is not read), and on each timeline of [`required_ranges`] the
//! files touching that timeline's part, ends included (`FilterWalSummaries`). The files must
//! cover every range without a gap, or it fails.
//!
//! What it does not do: decide what a failure means. A connection the server refuses (a role
//! only allowed replication in `pg_hba.conf`), a server before 17, a summary removed meanwhile
//! are errors; the caller should refuse the refresh by default (proceeding without limits is
//! `pg_combinebackup`'s result, defect included).

use pgclone_proto::query::ResultSet;
use pgclone_proto::relfile::{Fork, RelFork};
use pgclone_proto::{Lsn, ProtocolError, TimelineId};

pub use pgclone_proto::relfile::Limits;

use crate::conn::{self, ConnParams, Connection};
use crate::error::Error;
use crate::refresh::history::HistoryEntry;

/// Rows fetched from the cursor at a time (within the query collector's cap).
const FETCH_ROWS: usize = 5_000;

/// Most forks accepted with a limit, and most summary files: a bound on memory.
const MAX_ROWS: usize = 4_000_000;

/// Names the queries in errors.
const WHAT: &str = "pg_wal_summary_contents";

/// WAL of one timeline that the summaries must cover: `start` to `end`, both as LSNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineRange {
    /// The timeline.
    pub timeline: TimelineId,
    /// Where the range starts (the reference start LSN on its timeline; else where the
    /// timeline begins).
    pub start: Lsn,
    /// Where it ends (the backup's start LSN on its timeline; else where the timeline was
    /// left).
    pub end: Lsn,
}

/// The ranges the server requires summaries for, as it computes them: from the backup's
/// timeline (`backup_timeline`, starting at `backup_start`) back through `history` (the history
/// file of the backup's timeline, parsed) to the reference's timeline, which starts at the
/// reference LSN. `None` when the reference's timeline is not in that history.
pub fn required_ranges(
    history: &[HistoryEntry],
    backup_timeline: TimelineId,
    backup_start: Lsn,
    reference: (TimelineId, Lsn),
) -> Option<Vec<TimelineRange>> {
    // Every timeline of the path with where it begins and ends, newest first.
    let mut path = Vec::with_capacity(history.len() + 1);
    let begin_of = |i: usize| {
        i.checked_sub(1)
            .and_then(|p| history.get(p))
            .map_or(Lsn(0), |e| e.switch_point)
    };
    path.push((backup_timeline, begin_of(history.len()), backup_start));
    for (i, e) in history.iter().enumerate().rev() {
        path.push((e.timeline, begin_of(i), e.switch_point));
    }
    let mut ranges = Vec::new();
    for (timeline, begin, end) in path {
        if timeline == reference.0 {
            ranges.push(TimelineRange {
                timeline,
                start: reference.1,
                end,
            });
            return Some(ranges);
        }
        ranges.push(TimelineRange {
            timeline,
            start: begin,
            end,
        });
    }
    None
}

/// Reads the smallest limit block of every fork over the summary files of `ranges` (see the
/// module docs), over an ordinary SQL connection made with `params` (host, port, user,
/// password or passfile, TLS) to its `dbname`, or `postgres` when it names none or
/// `replication` ([`ConnParams::for_sql`]). No ranges: no limits, without connecting.
///
/// Fails when the connection cannot be made or the queries fail; the caller decides what
/// that means (refusing the refresh is the safe default).
pub async fn fetch(params: &ConnParams, ranges: &[TimelineRange]) -> Result<Limits, Error> {
    if ranges.is_empty() {
        return Ok(Limits::new());
    }
    let (mut params, database) = params.for_sql();
    let mut conn = conn::connect(&mut params)
        .await
        .map_err(|e| explain_connect(e, &database))?;
    conn.set_label("WAL summaries");
    let result = read_limits(&mut conn, ranges).await;
    conn.close().await;
    result
}

/// Adds to a refused connection what it was for.
fn explain_connect(e: Error, database: &str) -> Error {
    match e {
        Error::Connect {
            target,
            reason,
            auth,
            transient,
        } => Error::Connect {
            target,
            reason: format!(
                "{reason}\n\t(--refresh reads the limit blocks of the WAL summaries over an \
                 ordinary SQL connection to database \"{database}\": allow the role to connect \
                 to it in pg_hba.conf, or name another database with -d \"dbname=...\")"
            ),
            auth,
            transient,
        },
        e => e,
    }
}

/// The summary files of `ranges`, checked for gaps, then their limit blocks; in one read-only
/// transaction.
async fn read_limits(conn: &mut Connection, ranges: &[TimelineRange]) -> Result<Limits, Error> {
    query(conn, "BEGIN READ ONLY").await?;
    let filter = range_filter(ranges);
    let mut files = Vec::new();
    let list = format!(
        "SELECT tli, start_lsn, end_lsn FROM pg_catalog.pg_available_wal_summaries() \
         WHERE {filter}"
    );
    for_each_row(conn, &list, |set, row| {
        files.push(summary_row(set, row)?);
        Ok(())
    })
    .await?;
    check_coverage(ranges, &mut files)?;
    let mut limits = Limits::new();
    let contents = format!(
        "SELECT c.reltablespace, c.reldatabase, c.relfilenode, c.relforknumber, \
         min(c.relblocknumber) \
         FROM (SELECT tli, start_lsn, end_lsn FROM pg_catalog.pg_available_wal_summaries() \
         WHERE {filter}) AS s, \
         LATERAL pg_catalog.pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) AS c \
         WHERE c.is_limit_block GROUP BY 1, 2, 3, 4"
    );
    for_each_row(conn, &contents, |set, row| {
        let (fork, limit) = limit_row(set, row)?;
        limits.record(fork, limit);
        Ok(())
    })
    .await?;
    query(conn, "COMMIT").await?;
    Ok(limits)
}

/// The SQL condition selecting the summary files of `ranges`, as the server selects them: the
/// files overlapping the whole span (ends excluded), of those the ones touching each
/// timeline's part (ends included).
fn range_filter(ranges: &[TimelineRange]) -> String {
    let span_start = ranges.iter().map(|r| r.start).min().unwrap_or_default();
    let span_end = ranges.iter().map(|r| r.end).max().unwrap_or_default();
    let per_timeline = ranges
        .iter()
        .map(|r| {
            format!(
                "(tli = {} AND end_lsn >= '{}'::pg_lsn AND start_lsn <= '{}'::pg_lsn)",
                r.timeline, r.start, r.end
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    format!(
        "end_lsn > '{span_start}'::pg_lsn AND start_lsn < '{span_end}'::pg_lsn AND \
         ({per_timeline})"
    )
}

/// One summary file: timeline, start, end.
type SummaryFile = (TimelineId, Lsn, Lsn);

/// Checks that on each range's timeline the files leave no gap from its start to its end (the
/// server checked the same when the backup started; a file removed since would show here).
fn check_coverage(ranges: &[TimelineRange], files: &mut [SummaryFile]) -> Result<(), Error> {
    files.sort();
    for r in ranges {
        let mut reached = r.start;
        for &(_, start, end) in files.iter().filter(|f| f.0 == r.timeline) {
            if start <= reached && end > reached {
                reached = end;
            }
        }
        if reached < r.end {
            return Err(Error::IncompatibleServer(format!(
                "the WAL summaries on timeline {} from {} to {} are incomplete: the first LSN \
                 not summarized is {reached}",
                r.timeline, r.start, r.end
            )));
        }
    }
    Ok(())
}

/// Runs one statement, discarding what it returns.
async fn query(conn: &mut Connection, sql: &str) -> Result<(), Error> {
    conn.simple_query(WHAT, sql)
        .await
        .map(drop)
        .map_err(sql_context)
}

/// A server error says what was being read, not "replication command".
fn sql_context(e: Error) -> Error {
    match e {
        Error::Server { source, .. } => Error::Server {
            context: "could not read the limit blocks of the WAL summaries".into(),
            source,
        },
        e => e,
    }
}

/// Runs `sql` through a cursor, [`FETCH_ROWS`] rows at a time, handing each row to `row`; at
/// most [`MAX_ROWS`] rows.
async fn for_each_row(
    conn: &mut Connection,
    sql: &str,
    mut row: impl FnMut(&ResultSet, usize) -> Result<(), ProtocolError>,
) -> Result<(), Error> {
    query(
        conn,
        &format!("DECLARE pgclone_rows NO SCROLL CURSOR FOR {sql}"),
    )
    .await?;
    let mut total = 0;
    loop {
        let sets = conn
            .simple_query(
                WHAT,
                &format!("FETCH FORWARD {FETCH_ROWS} FROM pgclone_rows"),
            )
            .await
            .map_err(sql_context)?;
        let set = sets.first().ok_or_else(|| bad("no result"))?;
        for i in 0..set.rows.len() {
            row(set, i).map_err(Error::protocol(WHAT))?;
        }
        total += set.rows.len();
        if total > MAX_ROWS {
            return Err(Error::protocol(WHAT)(ProtocolError::TooMany {
                what: "rows of WAL summaries",
                max: MAX_ROWS,
            }));
        }
        if set.rows.len() < FETCH_ROWS {
            break;
        }
    }
    query(conn, "CLOSE pgclone_rows").await
}

fn bad(problem: &str) -> Error {
    Error::protocol(WHAT)(ProtocolError::BadResult {
        command: WHAT,
        problem: problem.into(),
    })
}

/// `(tli, start_lsn, end_lsn)` of `pg_available_wal_summaries()`.
fn summary_row(set: &ResultSet, row: usize) -> Result<SummaryFile, ProtocolError> {
    set.expect_shape(WHAT, None, 3)?;
    Ok((
        set.required_text(WHAT, row, 0)?.parse()?,
        set.required_text(WHAT, row, 1)?.parse()?,
        set.required_text(WHAT, row, 2)?.parse()?,
    ))
}

/// `(reltablespace, reldatabase, relfilenode, relforknumber, min(relblocknumber))`.
fn limit_row(set: &ResultSet, row: usize) -> Result<(RelFork, u32), ProtocolError> {
    set.expect_shape(WHAT, None, 5)?;
    let value = |col: usize, what: &'static str| -> Result<i64, ProtocolError> {
        let text = set.required_text(WHAT, row, col)?;
        text.parse().map_err(|_| ProtocolError::BadValue {
            what,
            value: text.chars().take(32).collect(),
        })
    };
    let oid = |col: usize, what: &'static str| -> Result<u32, ProtocolError> {
        let v = value(col, what)?;
        u32::try_from(v).map_err(|_| ProtocolError::BadValue {
            what,
            value: v.to_string(),
        })
    };
    let fork_number = value(3, "relforknumber")?;
    let fork = RelFork {
        tablespace: oid(0, "reltablespace")?,
        database: oid(1, "reldatabase")?,
        relfilenode: oid(2, "relfilenode")?,
        fork: Fork::from_number(fork_number).ok_or(ProtocolError::BadValue {
            what: "relforknumber",
            value: fork_number.to_string(),
        })?,
    };
    Ok((fork, oid(4, "relblocknumber")?))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pgclone_proto::backend::FieldDescription;

    use super::*;

    fn entry(timeline: u32, switch_point: u64) -> HistoryEntry {
        HistoryEntry {
            timeline: TimelineId(timeline),
            switch_point: Lsn(switch_point),
        }
    }

    fn range(timeline: u32, start: u64, end: u64) -> TimelineRange {
        TimelineRange {
            timeline: TimelineId(timeline),
            start: Lsn(start),
            end: Lsn(end),
        }
    }

    #[test]
    fn ranges_follow_the_history_back_to_the_reference() {
        let t = TimelineId;
        // Same timeline: one range.
        assert_eq!(
            required_ranges(&[], t(1), Lsn(0x900), (t(1), Lsn(0x100))),
            Some(vec![range(1, 0x100, 0x900)])
        );
        // The reference on timeline 1, the backup on 3.
        let history = [entry(1, 0x500), entry(2, 0x700)];
        assert_eq!(
            required_ranges(&history, t(3), Lsn(0x900), (t(1), Lsn(0x100))),
            Some(vec![
                range(3, 0x700, 0x900),
                range(2, 0x500, 0x700),
                range(1, 0x100, 0x500)
            ])
        );
        assert_eq!(
            required_ranges(&history, t(3), Lsn(0x900), (t(2), Lsn(0x600))),
            Some(vec![range(3, 0x700, 0x900), range(2, 0x600, 0x700)])
        );
        assert_eq!(
            required_ranges(&history, t(3), Lsn(0x900), (t(4), Lsn(0x600))),
            None
        );
    }

    #[test]
    fn the_filter_takes_files_overlapping_the_span_and_touching_each_range() {
        assert_eq!(
            range_filter(&[range(2, 0x1_0000_0028, 0x1_0000_0100), range(1, 0x28, 0x50)]),
            "end_lsn > '0/28'::pg_lsn AND start_lsn < '1/100'::pg_lsn AND \
             ((tli = 2 AND end_lsn >= '1/28'::pg_lsn AND start_lsn <= '1/100'::pg_lsn) OR \
             (tli = 1 AND end_lsn >= '0/28'::pg_lsn AND start_lsn <= '0/50'::pg_lsn))"
        );
    }

    #[test]
    fn coverage_gaps_are_refused() {
        let f = |tli, s, e| (TimelineId(tli), Lsn(s), Lsn(e));
        let mut files = vec![f(1, 0x300, 0x500), f(1, 0x50, 0x300), f(2, 0x500, 0x900)];
        let ranges = [range(2, 0x500, 0x800), range(1, 0x100, 0x500)];
        assert!(check_coverage(&ranges, &mut files).is_ok());
        let mut gap = vec![f(1, 0x50, 0x300), f(1, 0x310, 0x500), f(2, 0x500, 0x900)];
        let err = check_coverage(&ranges, &mut gap).expect_err("gap");
        assert!(err.to_string().contains("0/300"), "{err}");
        let mut short = vec![f(1, 0x50, 0x500), f(2, 0x500, 0x700)];
        assert!(check_coverage(&ranges, &mut short).is_err());
    }

    fn set(columns: usize, rows: &[&[Option<&str>]]) -> ResultSet {
        ResultSet {
            columns: (0..columns)
                .map(|i| FieldDescription {
                    name: format!("c{i}"),
                    type_oid: 25,
                })
                .collect(),
            rows: rows
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                        .collect()
                })
                .collect(),
            tag: "FETCH".into(),
        }
    }

    #[test]
    fn limit_rows_are_parsed_without_trusting_them() {
        let good = set(
            5,
            &[&[Some("1663"), Some("5"), Some("16384"), Some("2"), Some("7")]],
        );
        assert_eq!(
            limit_row(&good, 0),
            Ok((
                RelFork {
                    tablespace: 1663,
                    database: 5,
                    relfilenode: 16384,
                    fork: Fork::Vm
                },
                7
            ))
        );
        for bad in [
            &[Some("1663"), Some("5"), Some("16384"), Some("4"), Some("7")][..],
            &[
                Some("1663"),
                Some("5"),
                Some("16384"),
                Some("0"),
                Some("-1"),
            ],
            &[
                Some("1663"),
                Some("5"),
                Some("16384"),
                Some("0"),
                Some("4294967296"),
            ],
            &[Some("x"), Some("5"), Some("16384"), Some("0"), Some("1")],
            &[Some("1663"), None, Some("16384"), Some("0"), Some("1")],
        ] {
            assert!(limit_row(&set(5, &[bad]), 0).is_err(), "{bad:?}");
        }
        assert!(limit_row(&set(4, &[&[None, None, None, None]]), 0).is_err());
        let files = set(3, &[&[Some("1"), Some("0/28"), Some("0/1000000")]]);
        assert_eq!(
            summary_row(&files, 0),
            Ok((TimelineId(1), Lsn(0x28), Lsn(0x100_0000)))
        );
        assert!(summary_row(&set(3, &[&[Some("0"), Some("0/28"), Some("0/1")]]), 0).is_err());
    }
}
