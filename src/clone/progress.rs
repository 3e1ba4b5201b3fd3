//! `-P`: progress on stderr, redrawn in place on a terminal (`\r`), one line at a time
//! otherwise, at most once a second. Shows what pg_basebackup shows (kB done/total, percent,
//! tablespaces) plus the rate and an estimate of the time left.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress state of one backup.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    tty: bool,
    total_kb: Option<u64>,
    done: u64,
    tablespaces: usize,
    tablespaces_done: usize,
    started: Instant,
    last_draw: Option<Instant>,
}

const INTERVAL: Duration = Duration::from_secs(1);

impl Progress {
    /// A reporter; draws nothing unless `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tty: std::io::stderr().is_terminal(),
            total_kb: None,
            done: 0,
            tablespaces: 0,
            tablespaces_done: 0,
            started: Instant::now(),
            last_draw: None,
        }
    }

    /// The server's size estimate (kB) and number of tablespaces (including the main one).
    pub fn set_total(&mut self, total_kb: Option<u64>, tablespaces: usize) {
        self.total_kb = total_kb;
        self.tablespaces = tablespaces;
        self.started = Instant::now();
        self.last_draw = Some(self.started);
    }

    /// Bytes received for the backup so far.
    pub fn bytes(&self) -> u64 {
        self.done
    }

    /// Counts `n` more bytes and redraws if a second has passed.
    pub fn add(&mut self, n: usize) {
        self.done += n as u64;
        if self.enabled && self.last_draw.is_none_or(|t| t.elapsed() >= INTERVAL) {
            self.draw(false);
        }
    }

    /// One more archive is complete.
    pub fn archive_done(&mut self) {
        self.tablespaces_done += 1;
    }

    /// Final redraw, ending the line.
    pub fn finish(&mut self) {
        if self.enabled {
            self.draw(true);
        }
    }

    fn draw(&mut self, last: bool) {
        self.last_draw = Some(Instant::now());
        let done_kb = self.done / 1024;
        // The estimate can be low (files grow during the backup): grow the total with it.
        let total_kb = self.total_kb.map(|t| t.max(done_kb));
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / elapsed / 1e6;
        let mut line = match total_kb {
            Some(total) => {
                let pct = (done_kb * 100).checked_div(total).unwrap_or(100);
                let width = total.to_string().len();
                format!("{done_kb:>width$}/{total} kB ({pct}%)")
            }
            None => format!("{done_kb} kB"),
        };
        line.push_str(&format!(
            ", {}/{} tablespace{}, {rate:.1} MB/s",
            self.tablespaces_done,
            self.tablespaces,
            if self.tablespaces == 1 { "" } else { "s" }
        ));
        if let (Some(total), false) = (total_kb, last) {
            if rate > 0.0 && total > done_kb {
                let left = (total - done_kb) as f64 * 1024.0 / 1e6 / rate;
                line.push_str(&format!(", ETA {}", format_secs(left as u64)));
            }
        }
        let mut err = std::io::stderr().lock();
        let end = if self.tty && !last { "\r" } else { "\n" };
        let _ = write!(err, "{line:<78}{end}");
        let _ = err.flush();
    }
}

fn format_secs(s: u64) -> String {
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::format_secs;

    #[test]
    fn eta_format() {
        assert_eq!(format_secs(5), "0:05");
        assert_eq!(format_secs(3725), "1:02:05");
    }
}
