//! SIGINT, SIGTERM and SIGHUP: the first one cancels the clone (every task stops, both
//! connections close, what was created is removed, a `-C` slot is dropped) and makes pgclone
//! exit with 128 + the signal number; a second SIGINT or SIGTERM exits at once.
//!
//! SIGPIPE is already ignored by the Rust runtime (writes fail with EPIPE instead), and SIGXFSZ
//! is ignored here so that a file-size limit makes writes fail with EFBIG, a clean error,
//! instead of killing the process.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::error::signal_name;

/// The first termination signal received, and a token cancelled when it arrives.
#[derive(Debug, Clone)]
pub struct Interrupt {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Interrupt {
    /// Installs the handlers (inside the runtime) and starts listening.
    pub fn install() -> std::io::Result<Self> {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let this = Self {
            token: CancellationToken::new(),
            signal: Arc::new(AtomicI32::new(0)),
        };
        let listener = this.clone();
        tokio::spawn(async move {
            loop {
                let signo = tokio::select! {
                    _ = int.recv() => libc::SIGINT,
                    _ = term.recv() => libc::SIGTERM,
                    _ = hup.recv() => libc::SIGHUP,
                };
                let first = listener
                    .signal
                    .compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
                if first {
                    tracing::info!("received {}, cleaning up", signal_name(signo));
                    listener.token.cancel();
                } else if signo != libc::SIGHUP {
                    crate::output::error(
                        &format!(
                            "interrupted again by {}, exiting at once",
                            signal_name(signo)
                        ),
                        false,
                    );
                    std::process::exit(128 + signo);
                }
            }
        });
        Ok(this)
    }

    /// Cancelled when the first signal arrives.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The first signal received, if any.
    pub fn received(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }
}
