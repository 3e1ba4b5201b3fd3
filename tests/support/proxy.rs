//! A loopback TCP proxy for fault tests: forwards connections to a real server and, per
//! connection (in accept order), cuts or stalls the server → client direction at a chosen
//! byte offset.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// What happens to one connection's server → client bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    #[default]
    None,
    /// Forward this many bytes, then close both directions (FIN).
    CutAt(u64),
    /// Forward this many bytes, then forward nothing more while keeping the sockets open.
    StallAt(u64),
    /// Forward everything, but flip the bits of the byte at this offset (corruption in flight).
    FlipAt(u64),
}

/// A running proxy; stops (and closes every connection) on drop.
pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Proxies to 127.0.0.1:`upstream`; the n-th accepted connection gets `faults[n]`.
    pub fn start(upstream: u16, faults: Vec<Fault>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let fault = faults.get(n).copied().unwrap_or_default();
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let up = flag.clone();
                thread::spawn(move || pump(client, server, Fault::None, up));
                let down = flag.clone();
                thread::spawn(move || pump(s2, c2, fault, down));
            }
        });
        Self { port, stop }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, fault: Fault, stop: Arc<AtomicBool>) {
    let limit = match fault {
        Fault::None | Fault::FlipAt(_) => u64::MAX,
        Fault::CutAt(n) | Fault::StallAt(n) => n,
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; 32 * 1024];
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    while !stop.load(Ordering::SeqCst) {
        let room = usize::try_from(limit - sent)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if room == 0 {
            break;
        }
        match from.read(&mut buf[..room]) {
            Ok(0) => break,
            Ok(n) => {
                if let Fault::FlipAt(at) = fault {
                    if (sent..sent + n as u64).contains(&at) {
                        buf[(at - sent) as usize] ^= 0xff;
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    if let Fault::StallAt(_) = fault {
        while !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
