//! `-P`'s text: on a terminal a bar redrawn in place (indicatif), elsewhere (and with `-v`,
//! whose messages would tear the bar) one line at a time. The copy's line is pg_basebackup's figures as pgclone always printed them (kB
//! done/total, percent, tablespaces) plus the rate and the time left; the waiting phases have a
//! line of their own; the run ends with a summary of the time each phase took.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::clone::progress::figures::Snapshot;
use crate::clone::progress::phase::Phase;

/// Off a terminal, a waiting phase's line is repeated this often.
const WAIT_REPEAT: Duration = Duration::from_secs(5);

/// The copy's line: `  1234/5678 kB (21%), 0/1 tablespace, 12.3 MB/s, ETA 0:05`, the rate
/// and the time left once known. `last` (the copy is complete) drops the time left.
pub fn copy_line(s: &Snapshot, last: bool) -> String {
    let done_kb = s.bytes / 1024;
    let total_kb = s.total_bytes.map(|t| t / 1024);
    let mut line = match total_kb {
        Some(total) => {
            let pct = (done_kb * 100).checked_div(total).unwrap_or(100);
            let width = total.to_string().len();
            format!("{done_kb:>width$}/{total} kB ({pct}%)")
        }
        None => format!("{done_kb} kB"),
    };
    line.push_str(&format!(
        ", {}/{} tablespace{}",
        s.tablespaces_done,
        s.tablespaces,
        if s.tablespaces == 1 { "" } else { "s" },
    ));
    if let Some(rate) = s.rate {
        line.push_str(&format!(", {:.1} MB/s", rate / 1e6));
    }
    if let (Some(eta), false) = (s.eta, last) {
        line.push_str(&format!(", ETA {}", clock(eta)));
    }
    if let (Some(ts), true) = (&s.tablespace, s.tablespaces > 1 && !last) {
        line.push_str(&format!(", copying {ts}"));
    }
    line
}

/// A waiting phase's line, `in_phase` into it.
pub fn wait_line(s: &Snapshot, in_phase: Duration, hint: Option<&str>) -> String {
    let waited = clock(in_phase);
    match s.phase {
        Phase::Connecting => format!("connecting: {waited}"),
        Phase::Checkpoint => match hint {
            Some(hint) => format!("waiting for the server's checkpoint: {waited} ({hint})"),
            None => format!("waiting for the server's checkpoint: {waited}"),
        },
        Phase::Copying => copy_line(s, false),
        Phase::Wal => match s.wal_flushed {
            Some(lsn) => {
                format!("waiting for the end-of-backup WAL: {waited}, flushed up to {lsn}")
            }
            None => format!("waiting for the end-of-backup WAL: {waited}"),
        },
        Phase::Standby => "writing the standby settings".to_owned(),
        Phase::Sync => format!("syncing data to disk: {waited}"),
    }
}

/// The last line: `done in 12.3 s: connecting 0.1 s, checkpoint 2.0 s, ...`.
pub fn summary(phases: &[(Phase, Duration)], total: Duration, ok: bool) -> String {
    let parts: Vec<String> = phases
        .iter()
        .map(|(p, d)| format!("{} {}", p.name(), span(*d)))
        .collect();
    let verdict = if ok { "done in" } else { "failed after" };
    format!("{verdict} {}: {}", span(total), parts.join(", "))
}

/// Minutes and seconds (`0:05`, `1:02:05`).
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A phase's length: tenths of seconds under a minute, else [`clock`].
fn span(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        clock(d)
    }
}

/// Where the text goes: a bar on a terminal, lines elsewhere.
#[derive(Debug)]
pub enum Text {
    /// Lines on stderr.
    Lines(Lines),
    /// A bar redrawn in place.
    Bar(Bar),
}

impl Text {
    /// The bar (on a terminal), or lines.
    pub fn new(bar: bool) -> Self {
        if bar {
            Self::Bar(Bar::new())
        } else {
            Self::Lines(Lines::default())
        }
    }

    /// A tick: draw the current figures.
    pub fn tick(&mut self, s: &Snapshot, in_phase: Duration, hint: Option<&str>) {
        match self {
            Self::Lines(l) => l.tick(s, in_phase, hint),
            Self::Bar(b) => b.tick(s, in_phase, hint),
        }
    }

    /// Every archive arrived: the copy's last line.
    pub fn copied(&mut self, s: &Snapshot) {
        let line = copy_line(s, true);
        match self {
            Self::Lines(_) => print_line(&line),
            Self::Bar(b) => b.bar.println(line),
        }
    }

    /// The run ended: the summary.
    pub fn end(&mut self, summary: &str) {
        if let Self::Bar(b) = self {
            b.bar.finish_and_clear();
        }
        print_line(summary);
    }
}

fn print_line(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// One line at a time: the copy's every second, a waiting phase's at the first tick in it
/// (ticks come every second) and then every five seconds.
#[derive(Debug, Default)]
pub struct Lines {
    /// The phase last drawn, and how far into it.
    last: Option<(Phase, Duration)>,
}

impl Lines {
    fn tick(&mut self, s: &Snapshot, in_phase: Duration, hint: Option<&str>) {
        let due = match (s.phase, self.last) {
            (Phase::Copying, _) => s.tablespaces > 0,
            (Phase::Standby, _) => false,
            (phase, Some((p, at))) if p == phase => in_phase >= at + WAIT_REPEAT,
            _ => true,
        };
        if due {
            self.last = Some((s.phase, in_phase));
            print_line(&wait_line(s, in_phase, hint));
        }
    }
}

/// The bar: the copy's bytes against the estimate, or a spinner while waiting.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
    copying: bool,
}

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style("{spinner} {wide_msg}"));
        Self {
            bar,
            copying: false,
        }
    }

    fn tick(&mut self, s: &Snapshot, in_phase: Duration, hint: Option<&str>) {
        let copying = s.phase == Phase::Copying && s.total_bytes.is_some();
        if copying {
            self.bar.set_length(s.total_bytes.unwrap_or(0));
            self.bar.set_position(s.bytes);
        } else {
            self.bar.tick();
        }
        self.bar.set_message(wait_line(s, in_phase, hint));
        if copying != self.copying {
            self.copying = copying;
            let template = if copying {
                "[{bar:20}] {wide_msg}"
            } else {
                "{spinner} {wide_msg}"
            };
            self.bar.set_style(style(template));
        }
        // The calls above draw at most one of them (indicatif limits its rate): draw all.
        self.bar.force_draw();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copying() -> Snapshot {
        Snapshot {
            phase: Phase::Copying,
            bytes: 1000 * 1024,
            total_bytes: Some(4000 * 1024),
            rate: Some(2.5e6),
            eta: Some(Duration::from_secs(65)),
            tablespace: Some("/srv/ts".into()),
            tablespaces_done: 0,
            tablespaces: 2,
            wal_flushed: None,
        }
    }

    /// The copy's line keeps the format `-P` always had (tests and scripts match
    /// `kB (100%)`), the tablespace at the end when there are several.
    #[test]
    fn copy_line_as_before() {
        assert_eq!(
            copy_line(&copying(), false),
            "1000/4000 kB (25%), 0/2 tablespaces, 2.5 MB/s, ETA 1:05, copying /srv/ts"
        );
        let done = Snapshot {
            bytes: 4000 * 1024,
            tablespaces_done: 1,
            tablespaces: 1,
            ..copying()
        };
        assert_eq!(
            copy_line(&done, true),
            "4000/4000 kB (100%), 1/1 tablespace, 2.5 MB/s"
        );
    }

    #[test]
    fn waiting_lines() {
        let s = Snapshot {
            phase: Phase::Checkpoint,
            ..copying()
        };
        assert_eq!(
            wait_line(&s, Duration::from_secs(7), Some("-c fast starts at once")),
            "waiting for the server's checkpoint: 0:07 (-c fast starts at once)"
        );
        let s = Snapshot {
            phase: Phase::Wal,
            wal_flushed: Some(pgclone_proto::Lsn(0x300_0148)),
            ..copying()
        };
        assert_eq!(
            wait_line(&s, Duration::from_secs(2), None),
            "waiting for the end-of-backup WAL: 0:02, flushed up to 0/3000148"
        );
    }

    #[test]
    fn summary_names_each_phase() {
        let phases = [
            (Phase::Connecting, Duration::from_millis(120)),
            (Phase::Copying, Duration::from_secs(75)),
        ];
        assert_eq!(
            summary(&phases, Duration::from_secs(76), true),
            "done in 1:16: connecting 0.1 s, copying 1:15"
        );
        assert!(summary(&phases, Duration::from_secs(76), false).starts_with("failed after"));
    }

    /// In the first tenth of a second of the copy the rate is not known yet: not shown.
    #[test]
    fn no_rate_yet() {
        let s = Snapshot {
            rate: None,
            eta: None,
            tablespaces: 1,
            ..copying()
        };
        assert_eq!(copy_line(&s, false), "1000/4000 kB (25%), 0/1 tablespace");
    }

    #[test]
    fn clock_format() {
        assert_eq!(clock(Duration::from_secs(5)), "0:05");
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
    }
}
