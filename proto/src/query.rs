//! Simple-query results: collecting RowDescription / DataRow / CommandComplete into result sets,
//! and reading typed values out of them.
//!
//! [`ResultSetBuilder`] collects one result set and is shared with the BASE_BACKUP decoder;
//! [`SimpleQuery`] collects everything a simple Query returns up to ReadyForQuery.

use bytes::Bytes;

use crate::backend::{BackendMessage, FieldDescription};
use crate::error::{ProtocolError, ServerError};

/// Most rows accepted in one result set (replication commands return one row, or one per
/// tablespace).
pub const MAX_ROWS: usize = 10_000;

/// One result set in text format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultSet {
    /// The columns.
    pub columns: Vec<FieldDescription>,
    /// The rows; `None` is NULL.
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The command tag.
    pub tag: String,
}

impl ResultSet {
    /// Checks the shape: exactly `rows` rows (if given) of `columns` columns.
    pub fn expect_shape(
        &self,
        command: &'static str,
        rows: Option<usize>,
        columns: usize,
    ) -> Result<(), ProtocolError> {
        if self.columns.len() != columns {
            return Err(ProtocolError::BadResult {
                command,
                problem: format!("{} columns, expected {columns}", self.columns.len()),
            });
        }
        if let Some(rows) = rows {
            if self.rows.len() != rows {
                return Err(ProtocolError::BadResult {
                    command,
                    problem: format!("{} rows, expected {rows}", self.rows.len()),
                });
            }
        }
        Ok(())
    }

    /// The text value at (`row`, `col`), `None` for NULL.
    pub fn text(
        &self,
        command: &'static str,
        row: usize,
        col: usize,
    ) -> Result<Option<&str>, ProtocolError> {
        let value = self.rows.get(row).and_then(|r| r.get(col)).ok_or_else(|| {
            ProtocolError::BadResult {
                command,
                problem: format!("no value at row {row}, column {col}"),
            }
        })?;
        value
            .as_ref()
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| ProtocolError::BadResult {
                    command,
                    problem: format!("value at row {row}, column {col} is not UTF-8"),
                })
            })
            .transpose()
    }

    /// The non-NULL text value at (`row`, `col`).
    pub fn required_text(
        &self,
        command: &'static str,
        row: usize,
        col: usize,
    ) -> Result<&str, ProtocolError> {
        self.text(command, row, col)?
            .ok_or_else(|| ProtocolError::BadResult {
                command,
                problem: format!("NULL at row {row}, column {col}"),
            })
    }

    /// The raw bytes at (`row`, `col`), `None` for NULL.
    pub fn bytes(
        &self,
        command: &'static str,
        row: usize,
        col: usize,
    ) -> Result<Option<&Bytes>, ProtocolError> {
        self.rows
            .get(row)
            .and_then(|r| r.get(col))
            .map(Option::as_ref)
            .ok_or_else(|| ProtocolError::BadResult {
                command,
                problem: format!("no value at row {row}, column {col}"),
            })
    }
}

/// Collects one result set: RowDescription, DataRows, CommandComplete.
#[derive(Debug, Default)]
pub struct ResultSetBuilder {
    current: Option<ResultSet>,
}

impl ResultSetBuilder {
    /// Whether a RowDescription has been seen and its CommandComplete not yet.
    pub fn is_open(&self) -> bool {
        self.current.is_some()
    }

    /// Feeds a RowDescription, DataRow or CommandComplete. Returns the result set when a
    /// CommandComplete closes it. Other messages are an error.
    pub fn handle_message(
        &mut self,
        msg: BackendMessage,
        expected: &'static str,
    ) -> Result<Option<ResultSet>, ProtocolError> {
        match (self.current.as_mut(), msg) {
            (None, BackendMessage::RowDescription(columns)) => {
                self.current = Some(ResultSet {
                    columns,
                    ..ResultSet::default()
                });
                Ok(None)
            }
            (Some(set), BackendMessage::DataRow(row)) => {
                if row.len() != set.columns.len() {
                    return Err(ProtocolError::BadResult {
                        command: expected,
                        problem: format!(
                            "row of {} values for {} columns",
                            row.len(),
                            set.columns.len()
                        ),
                    });
                }
                if set.rows.len() >= MAX_ROWS {
                    return Err(ProtocolError::TooMany {
                        what: "rows",
                        max: MAX_ROWS,
                    });
                }
                set.rows.push(row);
                Ok(None)
            }
            (Some(_), BackendMessage::CommandComplete(tag)) => {
                let mut set = self.current.take().unwrap_or_default();
                set.tag = tag;
                Ok(Some(set))
            }
            // A command with no result set (CREATE_REPLICATION_SLOT on some versions returns
            // one, START_REPLICATION's end does not).
            (None, BackendMessage::CommandComplete(tag)) => Ok(Some(ResultSet {
                tag,
                ..ResultSet::default()
            })),
            (_, msg) => Err(ProtocolError::UnexpectedMessage {
                expected,
                got: msg.name(),
            }),
        }
    }
}

/// Progress of a simple query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryStatus {
    /// Keep feeding messages.
    Pending,
    /// ReadyForQuery arrived; call [`SimpleQuery::finish`].
    Done,
}

/// Collects the results of a simple Query up to ReadyForQuery.
#[derive(Debug)]
pub struct SimpleQuery {
    command: &'static str,
    builder: ResultSetBuilder,
    results: Vec<ResultSet>,
    error: Option<ServerError>,
}

impl SimpleQuery {
    /// Starts collecting the results of `command` (named in errors).
    pub fn new(command: &'static str) -> Self {
        Self {
            command,
            builder: ResultSetBuilder::default(),
            results: Vec::new(),
            error: None,
        }
    }

    /// Feeds one message (notices must be handled by the caller).
    pub fn handle_message(&mut self, msg: BackendMessage) -> Result<QueryStatus, ProtocolError> {
        match msg {
            BackendMessage::ReadyForQuery(_) if !self.builder.is_open() => {
                return Ok(QueryStatus::Done)
            }
            BackendMessage::ErrorResponse(e) => {
                // The server abandons the command and sends ReadyForQuery next.
                self.builder = ResultSetBuilder::default();
                self.error.get_or_insert(e);
            }
            BackendMessage::EmptyQueryResponse | BackendMessage::NoticeResponse(_) => {}
            msg => {
                if let Some(set) = self.builder.handle_message(msg, self.command)? {
                    if self.results.len() >= 16 {
                        return Err(ProtocolError::TooMany {
                            what: "result sets",
                            max: 16,
                        });
                    }
                    self.results.push(set);
                }
            }
        }
        Ok(QueryStatus::Pending)
    }

    /// The result sets, or the server's error.
    pub fn finish(self) -> Result<Vec<ResultSet>, ServerError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.results),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> FieldDescription {
        FieldDescription {
            name: name.into(),
            type_oid: 25,
        }
    }

    #[test]
    fn collects_a_show_result() {
        let mut q = SimpleQuery::new("SHOW");
        for msg in [
            BackendMessage::RowDescription(vec![col("wal_segment_size")]),
            BackendMessage::DataRow(vec![Some(Bytes::from_static(b"16MB"))]),
            BackendMessage::CommandComplete("SHOW".into()),
        ] {
            assert_eq!(q.handle_message(msg), Ok(QueryStatus::Pending));
        }
        assert_eq!(
            q.handle_message(BackendMessage::ReadyForQuery(b'I')),
            Ok(QueryStatus::Done)
        );
        let sets = q.finish().expect("no error");
        assert_eq!(sets.len(), 1);
        let set = &sets[0];
        set.expect_shape("SHOW", Some(1), 1).expect("shape");
        assert_eq!(set.required_text("SHOW", 0, 0).ok(), Some("16MB"));
        assert!(set.text("SHOW", 1, 0).is_err());
    }

    #[test]
    fn server_error_is_kept_until_ready() {
        let mut q = SimpleQuery::new("SHOW");
        let e = ServerError {
            severity: "ERROR".into(),
            code: crate::sqlstate::UNDEFINED_OBJECT.into(),
            message: "unrecognized configuration parameter".into(),
            ..ServerError::default()
        };
        q.handle_message(BackendMessage::ErrorResponse(e.clone()))
            .expect("ok");
        assert_eq!(
            q.handle_message(BackendMessage::ReadyForQuery(b'I')),
            Ok(QueryStatus::Done)
        );
        assert_eq!(q.finish(), Err(e));
    }

    #[test]
    fn rejects_rows_without_description_and_ragged_rows() {
        let mut q = SimpleQuery::new("X");
        assert!(q
            .handle_message(BackendMessage::DataRow(vec![None]))
            .is_err());
        let mut q = SimpleQuery::new("X");
        q.handle_message(BackendMessage::RowDescription(vec![col("a")]))
            .expect("ok");
        assert!(q
            .handle_message(BackendMessage::DataRow(vec![None, None]))
            .is_err());
    }
}
