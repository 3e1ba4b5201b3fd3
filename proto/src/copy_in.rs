//! The COPY-in exchange of a replication command that takes data from the client
//! (`UPLOAD_MANIFEST`, 17+), sans-IO: what the server answers at each step, and the CopyData
//! framing of what the client sends.
//!
//! The exchange (see `protocol.md` §14):
//! 1. the client sends the command as a simple Query;
//! 2. the server answers CopyInResponse (`G`), or ErrorResponse then ReadyForQuery;
//! 3. the client sends its data as CopyData messages of at most [`MAX_CHUNK`] bytes, then
//!    CopyDone ([`encode_chunk`], [`crate::frontend::copy_done`]);
//! 4. the server answers CommandComplete then ReadyForQuery, or ErrorResponse then
//!    ReadyForQuery. An error the server meets while the data is still arriving (a manifest
//!    that does not parse) comes the same way: the server ignores the rest of the data and the
//!    CopyDone, so the client may send everything before it reads.
//!
//! [`CopyIn`] follows steps 2 and 4; it does not read files, send bytes, or handle notices
//! (the caller prints them).

use bytes::BytesMut;

use crate::backend::BackendMessage;
use crate::error::{ProtocolError, ServerError};
use crate::frontend::{self, EncodeError};

/// Largest CopyData payload the client sends: 64 kB, as pg_basebackup, far below the
/// server's limit on one message.
pub const MAX_CHUNK: usize = 64 * 1024;

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyInStep {
    /// Keep reading messages.
    Read,
    /// The server is ready for the data: send it, then CopyDone, then call
    /// [`CopyIn::data_sent`] and keep reading.
    SendData,
    /// ReadyForQuery arrived: the exchange is over; [`CopyIn::finish`] says how it went.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The command is sent; CopyInResponse or an error comes next.
    AwaitCopyIn,
    /// The client is sending its data; nothing is read meanwhile.
    Sending,
    /// CopyDone is sent; CommandComplete or an error comes next.
    AwaitComplete,
    /// CommandComplete arrived; ReadyForQuery comes next.
    AwaitReady,
    /// The server reported an error; ReadyForQuery comes next.
    Failed,
    /// ReadyForQuery arrived.
    Done,
}

/// Follows the server's side of one COPY-in exchange.
#[derive(Debug)]
pub struct CopyIn {
    command: &'static str,
    stage: Stage,
    error: Option<ServerError>,
}

impl CopyIn {
    /// Starts following the exchange of `command` (named in protocol errors), just sent.
    pub fn new(command: &'static str) -> Self {
        Self {
            command,
            stage: Stage::AwaitCopyIn,
            error: None,
        }
    }

    /// Feeds one server message (NoticeResponse and ParameterStatus are ignored).
    pub fn handle_message(&mut self, msg: BackendMessage) -> Result<CopyInStep, ProtocolError> {
        let step = match (self.stage, msg) {
            (_, BackendMessage::NoticeResponse(_) | BackendMessage::ParameterStatus { .. }) => {
                CopyInStep::Read
            }
            (Stage::AwaitCopyIn | Stage::AwaitComplete, BackendMessage::ErrorResponse(e)) => {
                self.error = Some(e);
                self.stage = Stage::Failed;
                CopyInStep::Read
            }
            (Stage::AwaitCopyIn, BackendMessage::CopyInResponse(_)) => {
                self.stage = Stage::Sending;
                CopyInStep::SendData
            }
            (Stage::AwaitComplete, BackendMessage::CommandComplete(_)) => {
                self.stage = Stage::AwaitReady;
                CopyInStep::Read
            }
            (Stage::AwaitReady | Stage::Failed, BackendMessage::ReadyForQuery(_)) => {
                self.stage = Stage::Done;
                CopyInStep::Done
            }
            (stage, msg) => {
                return Err(ProtocolError::UnexpectedMessage {
                    expected: self.expected(stage),
                    got: msg.name(),
                })
            }
        };
        Ok(step)
    }

    /// Records that the data and CopyDone have been sent.
    pub fn data_sent(&mut self) {
        if self.stage == Stage::Sending {
            self.stage = Stage::AwaitComplete;
        }
    }

    /// The outcome once [`CopyInStep::Done`] was returned: the server's error, if it sent one.
    pub fn finish(self) -> Result<(), ServerError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn expected(&self, stage: Stage) -> &'static str {
        match stage {
            Stage::AwaitCopyIn => "CopyInResponse",
            Stage::Sending => "nothing while sending COPY data",
            Stage::AwaitComplete => "CommandComplete",
            Stage::AwaitReady | Stage::Failed => "ReadyForQuery",
            Stage::Done => self.command,
        }
    }
}

/// Appends one CopyData message holding `data` (at most [`MAX_CHUNK`] bytes) to `out`.
pub fn encode_chunk(data: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    if data.len() > MAX_CHUNK {
        return Err(EncodeError {
            what: "CopyData",
            reason: format!("{} bytes, more than {MAX_CHUNK}", data.len()),
        });
    }
    frontend::copy_data(data, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{decode, CopyResponse, DEFAULT_MAX_MESSAGE_LEN};
    use crate::testutil::frame;

    fn copy_in_response() -> BackendMessage {
        BackendMessage::CopyInResponse(CopyResponse {
            format: 0,
            columns: 0,
        })
    }

    fn server_error(message: &str) -> ServerError {
        ServerError {
            severity: "ERROR".into(),
            code: "XX000".into(),
            message: message.into(),
            ..ServerError::default()
        }
    }

    #[test]
    fn upload_accepted() {
        let mut c = CopyIn::new("UPLOAD_MANIFEST");
        assert_eq!(
            c.handle_message(copy_in_response()),
            Ok(CopyInStep::SendData)
        );
        c.data_sent();
        let notice = BackendMessage::NoticeResponse(server_error("fyi"));
        assert_eq!(c.handle_message(notice), Ok(CopyInStep::Read));
        assert_eq!(
            c.handle_message(BackendMessage::CommandComplete("UPLOAD_MANIFEST".into())),
            Ok(CopyInStep::Read)
        );
        assert_eq!(
            c.handle_message(BackendMessage::ReadyForQuery(b'I')),
            Ok(CopyInStep::Done)
        );
        assert_eq!(c.finish(), Ok(()));
    }

    #[test]
    fn the_server_wire_bytes_decode_into_the_same_steps() {
        // What a 17 server sends: CopyInResponse with format 0 and no columns.
        let mut wire = BytesMut::from(&frame(b'G', &[0, 0, 0])[..]);
        let msg = decode(&mut wire, DEFAULT_MAX_MESSAGE_LEN)
            .expect("valid")
            .expect("complete");
        let mut c = CopyIn::new("UPLOAD_MANIFEST");
        assert_eq!(c.handle_message(msg), Ok(CopyInStep::SendData));
    }

    /// Feeds an ErrorResponse and ReadyForQuery; the outcome is that error.
    fn assert_refused(mut c: CopyIn, message: &str) {
        let e = server_error(message);
        assert_eq!(
            c.handle_message(BackendMessage::ErrorResponse(e.clone())),
            Ok(CopyInStep::Read)
        );
        assert_eq!(
            c.handle_message(BackendMessage::ReadyForQuery(b'I')),
            Ok(CopyInStep::Done)
        );
        assert_eq!(c.finish(), Err(e));
    }

    #[test]
    fn refused_before_the_copy() {
        assert_refused(CopyIn::new("UPLOAD_MANIFEST"), "syntax error");
    }

    #[test]
    fn refused_after_the_data() {
        let mut c = CopyIn::new("UPLOAD_MANIFEST");
        c.handle_message(copy_in_response()).expect("ok");
        c.data_sent();
        assert_refused(c, "manifest checksum mismatch");
    }

    #[test]
    fn out_of_order_messages_are_protocol_errors() {
        let mut c = CopyIn::new("UPLOAD_MANIFEST");
        assert_eq!(
            c.handle_message(BackendMessage::CommandComplete("X".into())),
            Err(ProtocolError::UnexpectedMessage {
                expected: "CopyInResponse",
                got: "CommandComplete"
            })
        );
        let mut c = CopyIn::new("UPLOAD_MANIFEST");
        c.handle_message(copy_in_response()).expect("ok");
        // Nothing may arrive before the data is sent: the caller does not read then.
        assert!(c
            .handle_message(BackendMessage::ReadyForQuery(b'I'))
            .is_err());
        c.data_sent();
        assert!(c.handle_message(copy_in_response()).is_err());
        assert!(c
            .handle_message(BackendMessage::CopyData(bytes::Bytes::new()))
            .is_err());
        let mut c = CopyIn::new("UPLOAD_MANIFEST");
        c.handle_message(copy_in_response()).expect("ok");
        c.data_sent();
        c.handle_message(BackendMessage::CommandComplete("UPLOAD_MANIFEST".into()))
            .expect("ok");
        assert!(c
            .handle_message(BackendMessage::CommandComplete("X".into()))
            .is_err());
        c.handle_message(BackendMessage::ReadyForQuery(b'I'))
            .expect("ok");
        assert_eq!(
            c.handle_message(BackendMessage::ReadyForQuery(b'I')),
            Err(ProtocolError::UnexpectedMessage {
                expected: "UPLOAD_MANIFEST",
                got: "ReadyForQuery"
            })
        );
    }

    #[test]
    fn chunks_are_copy_data_of_bounded_size() {
        let mut out = BytesMut::new();
        encode_chunk(b"{\"x\"", &mut out).expect("small");
        assert_eq!(&out[..], &frame(b'd', b"{\"x\"")[..]);
        let mut out = BytesMut::new();
        encode_chunk(&vec![b'a'; MAX_CHUNK], &mut out).expect("at the cap");
        assert_eq!(out.len(), 5 + MAX_CHUNK);
        assert!(encode_chunk(&vec![b'a'; MAX_CHUNK + 1], &mut BytesMut::new()).is_err());
    }
}
