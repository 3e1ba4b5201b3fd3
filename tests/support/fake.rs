//! A scripted fake PostgreSQL 15 server (tests only): it authenticates anyone, answers the
//! commands pgclone sends before the backup, and replies to BASE_BACKUP with bytes the test
//! chooses, to play a compromised or broken server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

pub use pgclone_proto::testutil::{
    command_complete, copy_data, copy_done, copy_out, data_row, row_description,
};
use pgclone_proto::testutil::{frame, parameter_status, ready_for_query};

/// ReadyForQuery (idle).
pub fn ready() -> Vec<u8> {
    ready_for_query(b'I')
}

/// The first two result sets of a BASE_BACKUP response: the start position (0/2000028 on
/// timeline 1), then one row per tablespace as `[spcoid, spclocation, size]`.
pub fn backup_header(tablespaces: &[[Option<&str>; 3]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(row_description(&["recptr", "tli"]));
    out.extend(data_row(&[Some("0/2000028"), Some("1")]));
    out.extend(command_complete("SELECT"));
    out.extend(row_description(&["spcoid", "spclocation", "size"]));
    for row in tablespaces {
        out.extend(data_row(row));
    }
    out.extend(command_complete("SELECT"));
    out
}

/// The main tablespace's row in [`backup_header`].
pub const MAIN_TABLESPACE: [Option<&str>; 3] = [None, None, Some("100")];

/// The start of a 15+ BASE_BACKUP response for a single (main) tablespace, up to the first
/// archive's `n` message.
pub fn backup_prologue() -> Vec<u8> {
    let mut out = backup_header(&[MAIN_TABLESPACE]);
    out.extend(copy_out());
    out.extend(copy_data(b"nbase.tar\0\0"));
    out
}

/// The end of a 15+ BASE_BACKUP response after the archives.
pub fn backup_epilogue() -> Vec<u8> {
    let mut out = copy_done();
    out.extend(row_description(&["recptr", "tli"]));
    out.extend(data_row(&[Some("0/2000100"), Some("1")]));
    out.extend(command_complete("SELECT"));
    out.extend(command_complete("BASE_BACKUP"));
    out.extend(ready());
    out
}

fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.checked_sub(4)?];
    s.read_exact(&mut body).ok()?;
    Some((head[0], body))
}

/// Reads the StartupMessage (declining an SSLRequest first if one comes), then authenticates
/// anyone as a server of `version`. False if the client went away.
pub fn handshake(s: &mut TcpStream, version: &str) -> bool {
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return false;
        }
        let mut rest = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        if s.read_exact(&mut rest).is_err() {
            return false;
        }
        if rest == [0x04, 0xd2, 0x16, 0x2f] {
            if s.write_all(b"N").is_err() {
                return false;
            }
            continue;
        }
        break;
    }
    let mut hello = frame(b'R', &0i32.to_be_bytes());
    for (k, v) in [("server_version", version), ("integer_datetimes", "on")] {
        hello.extend(parameter_status(k, v));
    }
    hello.extend(frame(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
    hello.extend(ready());
    s.write_all(&hello).is_ok()
}

fn serve(mut s: TcpStream, base_backup: &[u8]) {
    if !handshake(&mut s, "15.99") {
        return;
    }
    while let Some((tag, body)) = read_message(&mut s) {
        if tag != b'Q' {
            return;
        }
        let sql = String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]).into_owned();
        let reply = if let Some(name) = sql.strip_prefix("SHOW ") {
            let value = match name {
                "data_directory_mode" => "0700",
                "wal_segment_size" => "16MB",
                "checkpoint_timeout" => "5min",
                _ => "",
            };
            let mut r = row_description(&[name]);
            r.extend(data_row(&[Some(value)]));
            r.extend(command_complete("SHOW"));
            r.extend(ready());
            r
        } else if sql == "IDENTIFY_SYSTEM" {
            let mut r = row_description(&["systemid", "timeline", "xlogpos", "dbname"]);
            r.extend(data_row(&[
                Some("7000000000000000001"),
                Some("1"),
                Some("0/2000000"),
                None,
            ]));
            r.extend(command_complete("IDENTIFY_SYSTEM"));
            r.extend(ready());
            r
        } else if sql.starts_with("BASE_BACKUP") {
            let _ = s.write_all(base_backup);
            // Whatever the script says, stop here: the rest of the session is not scripted.
            return;
        } else {
            return;
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Starts the fake server; every connection gets the same BASE_BACKUP reply. Returns the port.
pub fn start(base_backup: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let reply = base_backup.clone();
            thread::spawn(move || serve(stream, &reply));
        }
    });
    port
}
