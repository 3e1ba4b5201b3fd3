//! Records the byte streams in `fixtures/` from real servers (not part of the normal run):
//!
//! ```text
//! cargo test --test record_fixtures -- --ignored
//! ```
//!
//! For each recorded major, a primary is started, slimmed down to the `template1` database
//! (so the stream stays near 8 MB), and pgclone is run through a loopback proxy that writes
//! both directions to `fixtures/pg<major>/backup.{server,client}.bin.gz`. Trust authentication
//! is used because a SCRAM exchange cannot be replayed (its nonce is random).

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use flate2::write::GzEncoder;
use flate2::Compression;
use support::{pgclone_cmd, Cluster, ClusterOptions, TestDir};

fn pump(mut from: TcpStream, mut to: TcpStream, log: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().expect("lock").extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Proxies one connection to `upstream`, returning the listening port and a handle giving
/// (server→client, client→server) bytes.
/// Bytes seen by the proxy: (server → client, client → server).
type Recording = (Vec<u8>, Vec<u8>);

fn tee(upstream: u16) -> (u16, thread::JoinHandle<Recording>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = thread::spawn(move || {
        let (client, _) = listener.accept().expect("accept");
        let server = TcpStream::connect(("127.0.0.1", upstream)).expect("upstream");
        let s2c = Arc::new(Mutex::new(Vec::new()));
        let c2s = Arc::new(Mutex::new(Vec::new()));
        let a = {
            let (from, to, log) = (
                server.try_clone().expect("clone"),
                client.try_clone().expect("clone"),
                s2c.clone(),
            );
            thread::spawn(move || pump(from, to, log))
        };
        let b = {
            let log = c2s.clone();
            thread::spawn(move || pump(client, server, log))
        };
        a.join().expect("pump");
        b.join().expect("pump");
        let s = s2c.lock().expect("lock").clone();
        let c = c2s.lock().expect("lock").clone();
        (s, c)
    });
    (port, handle)
}

fn write_gz(path: &std::path::Path, bytes: &[u8]) {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(bytes).expect("gzip");
    fs::write(path, enc.finish().expect("gzip")).expect("write fixture");
}

fn record(major: u32) {
    let primary = Cluster::start(&ClusterOptions::new(major));
    primary.psql("ALTER DATABASE template0 IS_TEMPLATE false");
    primary.psql("ALTER DATABASE template0 ALLOW_CONNECTIONS true");
    for sql in [
        "DROP DATABASE template0",
        "DROP DATABASE postgres",
        "CHECKPOINT",
    ] {
        primary.psql_in("template1", sql);
    }
    let (port, proxy) = tee(primary.port);
    let work = TestDir::new("record");
    let dest = work.join("copy");
    pgclone_cmd()
        .server(port, "postgres")
        .dest(&dest)
        .args(["-X", "none", "-c", "fast", "-N"])
        .env("PGAPPNAME", "pgclone-fixture")
        .run()
        .assert_ok();
    let (server, client) = proxy.join().expect("proxy");
    let dir = support::repo().join(format!("fixtures/pg{major}"));
    fs::create_dir_all(&dir).expect("fixture dir");
    write_gz(&dir.join("backup.server.bin.gz"), &server);
    write_gz(&dir.join("backup.client.bin.gz"), &client);
    eprintln!(
        "pg{major}: {} server bytes, {} client bytes",
        server.len(),
        client.len()
    );
}

#[test]
#[ignore = "records fixtures; run by hand"]
fn record_fixtures() {
    for major in [10, 14, 17] {
        record(major);
    }
}
