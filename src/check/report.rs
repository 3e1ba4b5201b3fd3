//! The findings on stdout: one line each (`problem walsenders: ...: what to do`) and a verdict,
//! or with `--json` one JSON document:
//!
//! ```json
//! {"program": "pgclone", "would_start": false, "problems": 1, "warnings": 0,
//!  "findings": [{"name": "walsenders", "severity": "problem",
//!                "message": "max_wal_senders = 3 and 2 are in use; ...",
//!                "hint": "raise it ...", "values": {"max_wal_senders": 3, ...}}]}
//! ```

use std::io::Write;

use serde::Serialize;

use crate::check::{would_start, Finding, Severity};

/// The JSON document.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    /// `pgclone` (or `pg_basebackup` when run so).
    pub program: &'static str,
    /// Whether a clone would start: no finding is a problem (the exit status is 0).
    pub would_start: bool,
    /// How many findings are problems.
    pub problems: usize,
    /// How many are warnings.
    pub warnings: usize,
    /// Every finding, in the order checked.
    pub findings: &'a [Finding],
}

/// The findings as one JSON document.
pub fn json(findings: &[Finding]) -> String {
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    let doc = Document {
        program: crate::program::name(),
        would_start: would_start(findings),
        problems: count(Severity::Problem),
        warnings: count(Severity::Warning),
        findings,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// One line: severity, name, message and (unless ok) what to do.
pub fn line(f: &Finding) -> String {
    let mut out = format!("{:<8}{}: {}", f.severity.word(), f.name, f.message);
    if let (Some(hint), false) = (&f.hint, f.severity == Severity::Ok) {
        out.push_str(": ");
        out.push_str(hint);
    }
    out
}

/// The findings as text: a line each, then the verdict.
pub fn text(findings: &[Finding]) -> String {
    let mut out: String = findings.iter().map(|f| line(f) + "\n").collect();
    let problems = findings
        .iter()
        .filter(|f| f.severity == Severity::Problem)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    if problems == 0 {
        out.push_str(&format!("a clone would start ({warnings} warning(s))\n"));
    } else {
        out.push_str(&format!(
            "a clone would not start: {problems} problem(s), {warnings} warning(s)\n"
        ));
    }
    out
}

/// Prints the findings on stdout.
pub fn print(findings: &[Finding], as_json: bool) {
    let body = if as_json {
        json(findings) + "\n"
    } else {
        text(findings)
    };
    let _ = std::io::stdout().lock().write_all(body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Finding> {
        vec![
            Finding::ok("connection", "connected").value("user", "postgres"),
            Finding::problem("walsenders", "max_wal_senders = 3 and 3 are in use")
                .hint("raise it or stop a standby")
                .value("max_wal_senders", 3)
                .value("in_use", 3),
            Finding::warning("tls", "no TLS").hint("add sslmode=require"),
        ]
    }

    /// The JSON document: the verdict, the counts, and each finding with its name, severity,
    /// message, hint and values.
    #[test]
    fn the_json_document_has_a_stable_shape() {
        let doc: serde_json::Value = serde_json::from_str(&json(&sample())).expect("parses");
        assert_eq!(doc["program"], "pgclone");
        assert_eq!(doc["would_start"], false);
        assert_eq!(doc["problems"], 1);
        assert_eq!(doc["warnings"], 1);
        let findings = doc["findings"].as_array().expect("array");
        assert_eq!(findings.len(), 3);
        for f in findings {
            let keys: Vec<&str> = f
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["hint", "message", "name", "severity", "values"]);
        }
        assert_eq!(findings[0]["severity"], "ok");
        assert_eq!(findings[0]["hint"], serde_json::Value::Null);
        assert_eq!(findings[1]["severity"], "problem");
        assert_eq!(findings[1]["values"]["max_wal_senders"], 3);
        assert_eq!(findings[2]["severity"], "warning");
        let clean: serde_json::Value = serde_json::from_str(&json(&sample()[..1])).expect("parses");
        assert_eq!(clean["would_start"], true);
    }

    /// A problem is one line: what was found, then what to do.
    #[test]
    fn text_lines_say_what_to_do() {
        let text = text(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ok      connection: connected");
        assert_eq!(
            lines[1],
            "problem walsenders: max_wal_senders = 3 and 3 are in use: raise it or stop a standby"
        );
        assert_eq!(lines[2], "warning tls: no TLS: add sslmode=require");
        assert_eq!(
            lines[3],
            "a clone would not start: 1 problem(s), 1 warning(s)"
        );
    }
}
