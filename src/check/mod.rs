//! `pgclone check`: will a clone with these flags start? It connects over replication as the
//! clone would (and, for what a replication connection cannot ask, over an ordinary SQL
//! connection as the same role), looks at the destination, and reports one finding per
//! question, each `ok`, `warning` or `problem`. It creates nothing: no slot, no backup on the
//! server, no file or directory here.
//!
//! - `server`: the connections and what they learn ([`server::Facts`]); the findings about
//!   the connection, the version, `wal_level`, TLS, data checksums, `summarize_wal`
//! - `capacity`: free walsenders and replication slots, the `-S`/`-C` slot, free disk space
//! - `dest`: the destination, `--waldir` and every tablespace path, and the filesystems under
//!   them ([`dest::Place`])
//! - `report`: the findings as text lines or as one JSON document

pub mod capacity;
pub mod dest;
pub mod report;
pub mod server;

use std::process::ExitCode;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::options::Config;

/// How much a finding stands in the way of a clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Nothing to do.
    Ok,
    /// The clone would start, but something deserves a look (or could not be learned).
    Warning,
    /// The clone would not start (or would fail), until this is fixed.
    Problem,
}

impl Severity {
    /// The word printed before the finding.
    pub fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Problem => "problem",
        }
    }
}

/// One answer of the check: what was found, what to do about it, and the measured values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// What was checked (`walsenders`, `destination`, ...); stable, for scripts.
    pub name: &'static str,
    /// How much it matters.
    pub severity: Severity,
    /// What was found, in one line.
    pub message: String,
    /// What to do about it (for warnings and problems).
    pub hint: Option<String>,
    /// The figures the message is made of (`max_wal_senders`, `free_bytes`, ...).
    pub values: Map<String, Value>,
}

impl Finding {
    /// A finding of `severity`.
    pub fn new(name: &'static str, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            name,
            severity,
            message: message.into(),
            hint: None,
            values: Map::new(),
        }
    }

    /// An `ok` finding.
    pub fn ok(name: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, Severity::Ok, message)
    }

    /// A `warning` finding.
    pub fn warning(name: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, Severity::Warning, message)
    }

    /// A `problem` finding.
    pub fn problem(name: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, Severity::Problem, message)
    }

    /// Adds what to do.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a measured value.
    pub fn value(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.values.insert(key.to_owned(), value.into());
        self
    }
}

/// Whether a clone would start: no finding is a problem.
pub fn would_start(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.severity != Severity::Problem)
}

/// Runs the check for `cfg` and prints the findings (as JSON with `json`): exit 0 when a clone
/// would start, 1 otherwise.
pub fn run(cfg: &Config, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            crate::output::error(&format!("could not start the runtime: {e}"), false);
            return ExitCode::from(1);
        }
    };
    let findings = runtime.block_on(gather(cfg));
    report::print(&findings, json);
    if would_start(&findings) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Asks the server, then looks here; every finding in the order printed.
pub async fn gather(cfg: &Config) -> Vec<Finding> {
    let facts = server::learn(cfg).await;
    let mut findings = server::findings(cfg, &facts);
    findings.extend(capacity::server_findings(cfg, &facts));
    let places = dest::Places::probe(cfg, &facts);
    findings.extend(dest::findings(cfg, &places));
    findings.extend(capacity::disk_findings(cfg, &facts, &places));
    findings
}
