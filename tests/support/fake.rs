//! A scripted fake PostgreSQL 15 server (tests only): it authenticates anyone, answers the
//! commands pgclone sends before the backup, and replies to BASE_BACKUP with bytes the test
//! chooses, to play a compromised or broken server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// RowDescription with text columns.
pub fn row_description(cols: &[&str]) -> Vec<u8> {
    let mut body = (cols.len() as i16).to_be_bytes().to_vec();
    for c in cols {
        body.extend_from_slice(c.as_bytes());
        body.push(0);
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&25u32.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
    }
    msg(b'T', &body)
}

/// DataRow; `None` is NULL.
pub fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let mut body = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(s) => {
                body.extend_from_slice(&(s.len() as i32).to_be_bytes());
                body.extend_from_slice(s.as_bytes());
            }
        }
    }
    msg(b'D', &body)
}

/// CommandComplete.
pub fn command_complete(tag: &str) -> Vec<u8> {
    let mut body = tag.as_bytes().to_vec();
    body.push(0);
    msg(b'C', &body)
}

/// ReadyForQuery (idle).
pub fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

/// CopyOutResponse with no columns.
pub fn copy_out() -> Vec<u8> {
    msg(b'H', &[0, 0, 0])
}

/// CopyData.
pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    msg(b'd', payload)
}

/// CopyDone.
pub fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

/// The start of a 15+ BASE_BACKUP response for a single (main) tablespace, up to the first
/// archive's `n` message.
pub fn backup_prologue() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(row_description(&["recptr", "tli"]));
    out.extend(data_row(&[Some("0/2000028"), Some("1")]));
    out.extend(command_complete("SELECT"));
    out.extend(row_description(&["spcoid", "spclocation", "size"]));
    out.extend(data_row(&[None, None, Some("100")]));
    out.extend(command_complete("SELECT"));
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

fn serve(mut s: TcpStream, base_backup: &[u8]) {
    // StartupMessage (after an optional SSLRequest, which is declined): length, then the rest.
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut rest = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        if s.read_exact(&mut rest).is_err() {
            return;
        }
        if rest == [0x04, 0xd2, 0x16, 0x2f] {
            if s.write_all(b"N").is_err() {
                return;
            }
            continue;
        }
        break;
    }
    let mut hello = msg(b'R', &0i32.to_be_bytes());
    for (k, v) in [("server_version", "15.99"), ("integer_datetimes", "on")] {
        hello.extend(msg(b'S', format!("{k}\0{v}\0").as_bytes()));
    }
    hello.extend(msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
    hello.extend(ready());
    if s.write_all(&hello).is_err() {
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
