//! libpq connection strings: parsing both syntaxes into one map of keys (as `PQconninfoParse`
//! does), the environment variables that stand for the same keys, and quoting values (as
//! `appendConnStrVal` does, for `primary_conninfo`).
//!
//! Two syntaxes are accepted, as libpq accepts them (fe-connect.c `conninfo_parse` and
//! `conninfo_uri_parse_options`):
//! - `key=value` pairs separated by whitespace; values may be single-quoted, with `\'` and `\\`
//!   inside quotes and `\x` escapes in bare values; spaces around `=` are allowed.
//! - URIs `postgresql://[user[:password]@][host[:port][,host[:port]...]][/dbname][?key=value&...]`
//!   (or `postgres://`), percent-decoded part by part. Hosts and ports of a list are joined with
//!   commas into `host` and `port` (an empty port in the list stands for the default, so
//!   `postgresql://a,b:5433` gives `port=,5433`); `[...]` holds an IPv6 address; a host
//!   beginning with `%2F` is a Unix socket directory. Query parameters are keys, as in
//!   `?sslmode=require&host=/tmp`; libpq's JDBC-style `ssl=true` means `sslmode=require`.
//!
//! Only the keys in [`KNOWN_KEYS`] are accepted (plus libpq's old `requiressl`, which becomes
//! `sslmode`); others fail naming the key, as libpq fails on keys it does not know. Later
//! settings of a key override earlier ones. No defaults are filled in: the map holds exactly
//! what the string says.
//!
//! Unlike libpq, error messages never repeat a password: the URI's password, a `password`
//! query value and a bare word right after an unquoted `password=` value are replaced by
//! [`REDACTED`]. Percent-decoded text must be UTF-8.

use std::collections::BTreeMap;

/// Keys pgclone accepts in a connection string (libpq's names).
///
/// `replication` is accepted and stored as libpq does, but pgclone always connects with its
/// own `replication=true`; `target_session_attrs` is stored unchecked; `service` names a
/// section of the connection service file, which the resolver reads (`service.rs`).
pub const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "passfile",
    "dbname",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslnegotiation",
    "channel_binding",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "options",
    "replication",
    "target_session_attrs",
    "service",
];

/// Every libpq environment variable pgclone reads, as `(variable, key)` pairs in the order of
/// libpq's option table; each stands for its key, under the service file, `-d` and the flags.
/// `PGSERVICE` names the service to look up; `PGSERVICEFILE` and `PGSYSCONFDIR` stand for no
/// key: they say where service files are (`service.rs`). This is the one list: connection
/// parameters are resolved by reading exactly these variables and no other `PG*` one, so a
/// harness that must not inherit a developer's connection settings (the tests' command
/// builder) removes every variable named here.
///
/// Not listed, because they are not connection settings: `HOME` (for `~/.pgpass`,
/// `~/.pg_service.conf` and `~/.postgresql/`) and `USER` (the role name when the password
/// database has no entry).
pub const ENV_VARS: &[(&str, Option<&str>)] = &[
    ("PGSERVICE", Some("service")),
    ("PGSERVICEFILE", None),
    ("PGSYSCONFDIR", None),
    ("PGHOST", Some("host")),
    ("PGHOSTADDR", Some("hostaddr")),
    ("PGPORT", Some("port")),
    ("PGUSER", Some("user")),
    ("PGPASSWORD", Some("password")),
    ("PGPASSFILE", Some("passfile")),
    ("PGDATABASE", Some("dbname")),
    ("PGAPPNAME", Some("application_name")),
    ("PGCONNECT_TIMEOUT", Some("connect_timeout")),
    ("PGSSLMODE", Some("sslmode")),
    ("PGSSLROOTCERT", Some("sslrootcert")),
    ("PGSSLCERT", Some("sslcert")),
    ("PGSSLKEY", Some("sslkey")),
    ("PGSSLCRL", Some("sslcrl")),
    ("PGSSLNEGOTIATION", Some("sslnegotiation")),
    ("PGCHANNELBINDING", Some("channel_binding")),
    ("PGOPTIONS", Some("options")),
];

/// What error messages show instead of a password.
pub const REDACTED: &str = "(password hidden)";

/// The key an environment variable stands for (`PGHOST` -> `host`), if pgclone reads it.
pub fn env_key(var: &str) -> Option<&'static str> {
    ENV_VARS
        .iter()
        .find(|(v, _)| *v == var)
        .and_then(|(_, k)| *k)
}

/// Splits a comma-separated `host`, `hostaddr` or `port` value the way libpq does
/// (`parse_comma_separated_list`): every comma separates, nothing is trimmed, and empty
/// elements are kept (an empty port means the default), so `""` is one empty element and
/// `"a,"` is `["a", ""]`.
pub fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::to_owned).collect()
}

/// Whether `s` is a URI rather than `key=value` pairs (libpq's `uri_prefix_length`).
pub fn is_uri(s: &str) -> bool {
    uri_prefix_len(s).is_some()
}

/// A connection string that does not parse, worded as libpq words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// `missing "=" after "x" in connection info string`
    #[error("missing \"=\" after \"{0}\" in connection info string")]
    MissingEquals(String),
    /// `unterminated quoted string in connection info string`
    #[error("unterminated quoted string in connection info string")]
    Unterminated,
    /// `invalid connection option "x"`
    #[error("invalid connection option \"{0}\"")]
    UnknownKey(String),
    /// `invalid URI query parameter: "x"`: an unknown key in a URI's query.
    #[error("invalid URI query parameter: \"{0}\"")]
    UnknownUriParam(String),
    /// `missing key/value separator "=" in URI query parameter: "x"`
    #[error("missing key/value separator \"=\" in URI query parameter: \"{0}\"")]
    UriParamMissingEquals(String),
    /// `extra key/value separator "=" in URI query parameter: "x"`
    #[error("extra key/value separator \"=\" in URI query parameter: \"{0}\"")]
    UriParamExtraEquals(String),
    /// `invalid percent-encoded token: "x"` (the whole part being decoded).
    #[error("invalid percent-encoded token: \"{0}\"")]
    BadPercent(String),
    /// `forbidden value %00 in percent-encoded value: "x"`
    #[error("forbidden value %00 in percent-encoded value: \"{0}\"")]
    PercentNul(String),
    /// `unexpected spaces found in "x", use percent-encoded spaces (%20) instead`
    #[error("unexpected spaces found in \"{0}\", use percent-encoded spaces (%20) instead")]
    UriSpaces(String),
    /// Not in libpq (which works on bytes): percent-decoding gave bytes that are not UTF-8.
    #[error("percent-decoded value is not valid UTF-8: \"{0}\"")]
    NotUtf8(String),
    /// `end of string reached when looking for matching "]" in IPv6 host address in URI: "x"`
    #[error(
        "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{0}\""
    )]
    Ipv6Unterminated(String),
    /// `IPv6 host address may not be empty in URI: "x"`
    #[error("IPv6 host address may not be empty in URI: \"{0}\"")]
    Ipv6Empty(String),
    /// `unexpected character "c" at position N in URI (expected ":" or "/"): "x"`
    #[error(
        "unexpected character \"{ch}\" at position {pos} in URI (expected \":\" or \"/\"): \"{uri}\""
    )]
    UriUnexpectedChar {
        /// The character after `]`.
        ch: char,
        /// Its 1-based byte position in `uri`.
        pos: usize,
        /// The URI, its password hidden.
        uri: String,
    },
}

/// Parses a connection string in either syntax into its keys.
pub fn parse(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    match uri_prefix_len(s) {
        Some(prefix) => parse_uri(s, prefix),
        None => parse_pairs(s),
    }
}

/// Quotes a value for a connection string the way libpq's `appendConnStrVal` does: bare if it
/// is non-empty and made only of `[A-Za-z0-9_.]`, else in single quotes with `'` and `\`
/// backslash-escaped.
pub fn quote_value(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if bare {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// C's `isspace` in the C locale, which libpq uses.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn uri_prefix_len(s: &str) -> Option<usize> {
    ["postgresql://", "postgres://"]
        .into_iter()
        .find(|p| s.starts_with(p))
        .map(str::len)
}

/// Stores a value under a key as libpq's `conninfo_storeval` does: `requiressl` becomes
/// `sslmode`, an unknown key is refused (`Err(())`, the caller words the error).
fn store(out: &mut BTreeMap<String, String>, key: &str, value: String) -> Result<(), ()> {
    if key == "requiressl" {
        let mode = if value.starts_with('1') {
            "require"
        } else {
            "prefer"
        };
        out.insert("sslmode".to_owned(), mode.to_owned());
        return Ok(());
    }
    if !KNOWN_KEYS.contains(&key) {
        return Err(());
    }
    out.insert(key.to_owned(), value);
    Ok(())
}

/// `key=value` pairs (libpq's `conninfo_parse`).
fn parse_pairs(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    // Set after an unquoted `password=` value: a stray word that follows may be the rest of a
    // password with a space in it, so errors do not repeat it.
    let mut after_bare_password = false;
    loop {
        while chars.next_if(|c| is_space(*c)).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !is_space(*c)) {
            key.push(c);
        }
        while chars.next_if(|c| is_space(*c)).is_some() {}
        let shown = |key: &str| {
            if after_bare_password {
                REDACTED.to_owned()
            } else {
                key.to_owned()
            }
        };
        if chars.next() != Some('=') {
            return Err(ConnInfoError::MissingEquals(shown(&key)));
        }
        while chars.next_if(|c| is_space(*c)).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        if quoted {
            loop {
                match chars.next() {
                    None => return Err(ConnInfoError::Unterminated),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConnInfoError::Unterminated),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next() {
                if is_space(c) {
                    break;
                }
                if c == '\\' {
                    // A trailing backslash is dropped, as in libpq.
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if store(&mut out, &key, value).is_err() {
            return Err(ConnInfoError::UnknownKey(shown(&key)));
        }
        after_bare_password = key == "password" && !quoted;
    }
    Ok(out)
}

fn hex_digit(b: Option<&u8>) -> Option<u8> {
    match b? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'a'..=b'f' => Some(c - b'a' + 10),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one part of a URI as libpq's `conninfo_uri_decode`: spaces around it are
/// dropped, spaces inside are an error, `%00` is forbidden. `secret` hides the text in errors.
fn uri_decode(s: &str, secret: bool) -> Result<String, ConnInfoError> {
    let shown = || {
        if secret {
            REDACTED.to_owned()
        } else {
            s.to_owned()
        }
    };
    let b = s.as_bytes();
    let mut i = b.iter().take_while(|c| **c == b' ').count();
    let mut out = Vec::with_capacity(b.len());
    while let Some(&c) = b.get(i) {
        if c == b' ' {
            break;
        }
        if c != b'%' {
            out.push(c);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (hex_digit(b.get(i + 1)), hex_digit(b.get(i + 2))) else {
            return Err(ConnInfoError::BadPercent(shown()));
        };
        let byte = (hi << 4) | lo;
        if byte == 0 {
            return Err(ConnInfoError::PercentNul(shown()));
        }
        out.push(byte);
        i += 3;
    }
    if b[i..].iter().any(|c| *c != b' ') {
        return Err(ConnInfoError::UriSpaces(shown()));
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::NotUtf8(shown()))
}

/// Lenient decoding, only to recognise a `password` key when hiding it.
fn loose_decode(s: &str) -> String {
    uri_decode(s, false).unwrap_or_else(|_| s.to_owned())
}

/// The URI for an error message: the userinfo password and `password` query values replaced
/// by [`REDACTED`]. Also returns how far that moved a byte position after the userinfo.
fn redact_uri(uri: &str, prefix: usize) -> (String, isize) {
    let rest = &uri[prefix..];
    let mut out = uri[..prefix].to_owned();
    let mut shift = 0isize;
    let mut tail = rest;
    if let Some(at) = userinfo_end(rest) {
        let userinfo = &rest[..at];
        match userinfo.find(':') {
            Some(colon) if colon + 1 < userinfo.len() => {
                out.push_str(&userinfo[..=colon]);
                out.push_str(REDACTED);
                shift = REDACTED.len() as isize - (userinfo.len() - colon - 1) as isize;
            }
            _ => out.push_str(userinfo),
        }
        out.push('@');
        tail = &rest[at + 1..];
    }
    match tail.split_once('?') {
        None => out.push_str(tail),
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((k, _)) if loose_decode(k) == "password" => format!("{k}={REDACTED}"),
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
    }
    (out, shift)
}

/// `postgresql://` URIs (libpq's `conninfo_uri_parse_options`): credentials, the host list,
/// `/dbname`, then the query.
fn parse_uri(uri: &str, prefix: usize) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let mut out = BTreeMap::new();
    let mut cur = UriCursor {
        uri,
        prefix,
        rest: &uri[prefix..],
        p: 0,
    };
    cur.userinfo(&mut out)?;
    let (hosts, ports) = cur.host_list()?;
    if !hosts.is_empty() {
        out.insert("host".to_owned(), uri_decode(&hosts, false)?);
    }
    if !ports.is_empty() {
        out.insert("port".to_owned(), uri_decode(&ports, false)?);
    }
    if cur.peek() == Some(b'/') {
        cur.p += 1;
        let dbname = cur.take_until(b"?");
        if !dbname.is_empty() {
            out.insert("dbname".to_owned(), uri_decode(dbname, false)?);
        }
    }
    // What is left starts with `?`.
    if cur.peek().is_some() {
        parse_uri_params(&cur.rest[cur.p + 1..], &mut out)?;
    }
    Ok(out)
}

/// Where the userinfo of a URI's part after the prefix ends: at an `@` that comes before any
/// `/`. `None` when there is no userinfo.
fn userinfo_end(rest: &str) -> Option<usize> {
    rest.find(['@', '/'])
        .filter(|i| rest.as_bytes().get(*i) == Some(&b'@'))
}

/// A position in a URI after its prefix, moved along by [`parse_uri`]'s steps. Works on bytes:
/// every delimiter is ASCII, so slices stay on character boundaries.
struct UriCursor<'a> {
    /// The whole URI, for error messages.
    uri: &'a str,
    /// The length of its `postgresql://` prefix.
    prefix: usize,
    /// The URI after the prefix.
    rest: &'a str,
    /// The byte position in `rest`.
    p: usize,
}

impl<'a> UriCursor<'a> {
    /// The byte at the position, `None` at the end.
    fn peek(&self) -> Option<u8> {
        self.rest.as_bytes().get(self.p).copied()
    }

    /// Moves to the first byte in `stops` (or the end) and returns what it passed.
    fn take_until(&mut self, stops: &[u8]) -> &'a str {
        let start = self.p;
        while self.peek().is_some_and(|c| !stops.contains(&c)) {
            self.p += 1;
        }
        &self.rest[start..self.p]
    }

    /// `user[:password]@`, if there, into `user` and `password` (each only when non-empty).
    fn userinfo(&mut self, out: &mut BTreeMap<String, String>) -> Result<(), ConnInfoError> {
        let Some(at) = userinfo_end(self.rest) else {
            return Ok(());
        };
        let userinfo = &self.rest[..at];
        let (user, password) = match userinfo.split_once(':') {
            Some((u, pw)) => (u, Some(pw)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            out.insert("user".to_owned(), uri_decode(user, false)?);
        }
        if let Some(pw) = password.filter(|pw| !pw.is_empty()) {
            out.insert("password".to_owned(), uri_decode(pw, true)?);
        }
        self.p = at + 1;
        Ok(())
    }

    /// `host[:port]` pairs separated by commas, as the comma-joined (still encoded) `host` and
    /// `port` values; a pair without a port leaves its element of `port` empty.
    fn host_list(&mut self) -> Result<(String, String), ConnInfoError> {
        let mut hosts = String::new();
        let mut ports = String::new();
        loop {
            let host = if self.peek() == Some(b'[') {
                self.ipv6_host()?
            } else {
                self.take_until(b":/?,")
            };
            hosts.push_str(host);
            if self.peek() == Some(b':') {
                self.p += 1;
                ports.push_str(self.take_until(b"/?,"));
            }
            if self.peek() != Some(b',') {
                return Ok((hosts, ports));
            }
            self.p += 1;
            hosts.push(',');
            ports.push(',');
        }
    }

    /// `[address]`, at a `[`: the address, which must be non-empty, closed, and followed by
    /// the end or one of `:/?,`.
    fn ipv6_host(&mut self) -> Result<&'a str, ConnInfoError> {
        self.p += 1;
        let host = self.take_until(b"]");
        if self.peek().is_none() {
            return Err(ConnInfoError::Ipv6Unterminated(self.redacted().0));
        }
        if host.is_empty() {
            return Err(ConnInfoError::Ipv6Empty(self.redacted().0));
        }
        self.p += 1;
        if self.peek().is_some_and(|c| !b":/?,".contains(&c)) {
            let (uri, shift) = self.redacted();
            return Err(ConnInfoError::UriUnexpectedChar {
                ch: self.rest[self.p..].chars().next().unwrap_or('?'),
                pos: (self.prefix + self.p + 1).saturating_add_signed(shift),
                uri,
            });
        }
        Ok(host)
    }

    /// The URI with its passwords hidden, and how far that moved positions after the userinfo.
    fn redacted(&self) -> (String, isize) {
        redact_uri(self.uri, self.prefix)
    }
}

/// The query of a URI (libpq's `conninfo_uri_parse_params`).
fn parse_uri_params(
    mut params: &str,
    out: &mut BTreeMap<String, String>,
) -> Result<(), ConnInfoError> {
    while !params.is_empty() {
        let (param, next) = params.split_once('&').unwrap_or((params, ""));
        let Some((raw_key, raw_value)) = param.split_once('=') else {
            return Err(ConnInfoError::UriParamMissingEquals(param.to_owned()));
        };
        if raw_value.contains('=') {
            return Err(ConnInfoError::UriParamExtraEquals(raw_key.to_owned()));
        }
        let key = uri_decode(raw_key, false)?;
        let value = uri_decode(raw_value, key == "password")?;
        let (key, value) = if key == "ssl" && value == "true" {
            ("sslmode".to_owned(), "require".to_owned())
        } else {
            (key, value)
        };
        if store(out, &key, value).is_err() {
            return Err(ConnInfoError::UnknownUriParam(key));
        }
        params = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn key_value_strings_parse_like_libpq() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "host=master port=5432",
                &[("host", "master"), ("port", "5432")],
            ),
            (
                "service=main user=rep",
                &[("service", "main"), ("user", "rep")],
            ),
            (
                "  host = master\tuser=rep  ",
                &[("host", "master"), ("user", "rep")],
            ),
            ("host\n=\x0bmaster\r\n", &[("host", "master")]),
            ("password='a b'", &[("password", "a b")]),
            (r"password='it\'s \\ here'", &[("password", r"it's \ here")]),
            (r"password='a\b'", &[("password", "ab")]),
            (r"password=a\ b", &[("password", "a b")]),
            (r"password=it\'s", &[("password", "it's")]),
            (r"password=ab\", &[("password", "ab")]),
            ("password=a'b'", &[("password", "a'b'")]),
            ("password=''", &[("password", "")]),
            ("password=", &[("password", "")]),
            ("password= user=x", &[("password", "user=x")]),
            ("password='' user=x", &[("password", ""), ("user", "x")]),
            ("password='x'user=y", &[("password", "x"), ("user", "y")]),
            ("host=a host=b", &[("host", "b")]),
            ("dbname=x=y", &[("dbname", "x=y")]),
            ("dbname=%41", &[("dbname", "%41")]),
            (
                "host=/tmp,h2 port=,5433",
                &[("host", "/tmp,h2"), ("port", ",5433")],
            ),
            ("requiressl=1", &[("sslmode", "require")]),
            ("requiressl=0 ", &[("sslmode", "prefer")]),
            ("replication=true", &[("replication", "true")]),
            (
                "target_session_attrs=read-write",
                &[("target_session_attrs", "read-write")],
            ),
            (
                "application_name='ünï cödé'",
                &[("application_name", "ünï cödé")],
            ),
            ("", &[]),
            (" \t\n", &[]),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(map(want)), "{input:?}");
        }
    }

    #[test]
    fn uris_parse_like_libpq() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("postgresql://", &[]),
            ("postgres://", &[]),
            ("postgresql://host", &[("host", "host")]),
            ("postgresql://host/", &[("host", "host")]),
            ("postgresql://host:", &[("host", "host")]),
            ("postgresql://:5433", &[("port", "5433")]),
            ("postgresql:///db", &[("dbname", "db")]),
            ("postgresql://@host", &[("host", "host")]),
            ("postgresql://:@host", &[("host", "host")]),
            ("postgresql://u:@host", &[("user", "u"), ("host", "host")]),
            (
                "postgresql://:pw@host",
                &[("password", "pw"), ("host", "host")],
            ),
            (
                "postgresql://u:p:w@h",
                &[("user", "u"), ("password", "p:w"), ("host", "h")],
            ),
            (
                "postgresql://h?sslmode=require&application_name=x",
                &[
                    ("host", "h"),
                    ("sslmode", "require"),
                    ("application_name", "x"),
                ],
            ),
            ("postgresql://h/?", &[("host", "h")]),
            ("postgresql://h?", &[("host", "h")]),
            (
                "postgresql://h/db?user=a&",
                &[("host", "h"), ("dbname", "db"), ("user", "a")],
            ),
            ("postgresql://h?host=/tmp", &[("host", "/tmp")]),
            (
                "postgresql:///?service=main&port=5434",
                &[("service", "main"), ("port", "5434")],
            ),
            ("postgresql://?host=/tmp", &[("host", "/tmp")]),
            ("postgresql://h?port=", &[("host", "h"), ("port", "")]),
            (
                "postgresql://h?ssl=true",
                &[("host", "h"), ("sslmode", "require")],
            ),
            (
                "postgresql://h?requiressl=1",
                &[("host", "h"), ("sslmode", "require")],
            ),
            ("postgresql://[::1]", &[("host", "::1")]),
            (
                "postgresql://[::1]:5433",
                &[("host", "::1"), ("port", "5433")],
            ),
            (
                "postgresql://[fe80::1%25eth0]/db",
                &[("host", "fe80::1%eth0"), ("dbname", "db")],
            ),
            (
                "postgresql://[::1]:1,[::2],h3:3/db",
                &[("host", "::1,::2,h3"), ("port", "1,,3"), ("dbname", "db")],
            ),
            ("postgresql://a,b", &[("host", "a,b"), ("port", ",")]),
            (
                "postgresql://a,b:5433",
                &[("host", "a,b"), ("port", ",5433")],
            ),
            ("postgresql://a:1,", &[("host", "a,"), ("port", "1,")]),
            (
                "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
                &[("host", "/var/run/postgresql"), ("dbname", "db")],
            ),
            (
                "postgresql://%2ftmp:5433",
                &[("host", "/tmp"), ("port", "5433")],
            ),
            (
                "postgresql://us%40er:p%40ss%2Fw%3Ard@h/d%20b",
                &[
                    ("user", "us@er"),
                    ("password", "p@ss/w:rd"),
                    ("host", "h"),
                    ("dbname", "d b"),
                ],
            ),
            (
                "postgresql://h/db?application%5Fname=a%26b%3Dc",
                &[
                    ("host", "h"),
                    ("dbname", "db"),
                    ("application_name", "a&b=c"),
                ],
            ),
            ("postgresql://h/%C3%A9", &[("host", "h"), ("dbname", "é")]),
            ("postgresql://h/é", &[("host", "h"), ("dbname", "é")]),
            (
                "postgresql://h/db?user=%20a%20",
                &[("host", "h"), ("dbname", "db"), ("user", " a ")],
            ),
            (
                "postgresql://h/db?user= a ",
                &[("host", "h"), ("dbname", "db"), ("user", "a")],
            ),
            ("postgresql://h/a/b", &[("host", "h"), ("dbname", "a/b")]),
            (
                "postgresql://h?dbname=x&dbname=y",
                &[("host", "h"), ("dbname", "y")],
            ),
            (
                "postgresql://u@h:5432/db?host=other",
                &[
                    ("user", "u"),
                    ("host", "other"),
                    ("port", "5432"),
                    ("dbname", "db"),
                ],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(map(want)), "{input:?}");
        }
    }

    #[test]
    fn uris_and_key_value_strings_agree() {
        let cases: &[(&str, &str)] = &[
            (
                "postgresql://rep:secret@master:5433/postgres",
                "user=rep password=secret host=master port=5433 dbname=postgres",
            ),
            (
                "postgres://rep@master",
                "host = master user = rep",
            ),
            (
                "postgresql://a:1,b:2,c/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "host=a,b,c port=1,2, dbname=db sslmode=verify-full sslrootcert=/etc/ca.pem",
            ),
            (
                "postgresql://%2Fvar%2Frun%2Fpostgresql:5432",
                "host=/var/run/postgresql port=5432",
            ),
            (
                "postgresql:///?host=/tmp&port=5433&user=me",
                "host='/tmp' port='5433' user='me'",
            ),
            (
                "postgresql://[::1]:5432,127.0.0.1/x",
                "host=::1,127.0.0.1 port=5432, dbname=x",
            ),
            (
                "postgresql://u:it's%20a%20%5C%20pw@h",
                r"user=u password='it\'s a \\ pw' host=h",
            ),
            (
                "postgresql://h?application_name=my%20app&options=-c%20x%3Dy&connect_timeout=10",
                r"host=h application_name=my\ app options='-c x=y' connect_timeout=10",
            ),
            (
                "postgresql://h?keepalives=1&keepalives_idle=5&keepalives_interval=2&keepalives_count=3",
                "host=h keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3",
            ),
            (
                "postgresql://h?hostaddr=10.0.0.1&passfile=%2Fp&sslcert=c&sslkey=k&sslcrl=r&sslnegotiation=direct&channel_binding=require&fallback_application_name=f&target_session_attrs=any&replication=true",
                "host=h hostaddr=10.0.0.1 passfile=/p sslcert=c sslkey=k sslcrl=r sslnegotiation=direct channel_binding=require fallback_application_name=f target_session_attrs=any replication=true",
            ),
        ];
        for (uri, pairs) in cases {
            let a = parse(uri);
            assert!(a.is_ok(), "{uri}: {a:?}");
            assert_eq!(a, parse(pairs), "{uri} vs {pairs}");
        }
    }

    #[test]
    fn errors_are_the_ones_libpq_gives() {
        use ConnInfoError as E;
        let unexpected = |ch, pos, uri: &str| E::UriUnexpectedChar {
            ch,
            pos,
            uri: uri.to_owned(),
        };
        let cases: &[(&str, E)] = &[
            ("host", E::MissingEquals("host".into())),
            ("host x=y", E::MissingEquals("host".into())),
            ("host=a b", E::MissingEquals("b".into())),
            (" postgresql://h", E::MissingEquals("postgresql://h".into())),
            ("password='abc", E::Unterminated),
            (r"password='abc\'", E::Unterminated),
            (r"password='abc\", E::Unterminated),
            ("bogus=1", E::UnknownKey("bogus".into())),
            ("=1", E::UnknownKey(String::new())),
            ("Service=x", E::UnknownKey("Service".into())),
            ("Host=x", E::UnknownKey("Host".into())),
            // A bare word after an unquoted password may be the password's second half.
            ("password=abc def", E::MissingEquals(REDACTED.into())),
            ("password=abc def=x", E::UnknownKey(REDACTED.into())),
            ("password='abc' def", E::MissingEquals("def".into())),
            ("postgresql://h?bogus=1", E::UnknownUriParam("bogus".into())),
            ("postgresql://h?ssl=false", E::UnknownUriParam("ssl".into())),
            (
                "postgresql://h?b%6Fgus=1",
                E::UnknownUriParam("bogus".into()),
            ),
            (
                "postgresql://h?sslmode",
                E::UriParamMissingEquals("sslmode".into()),
            ),
            (
                "postgresql://h?user=a&&port=1",
                E::UriParamMissingEquals(String::new()),
            ),
            (
                "postgresql://h?user=a=b",
                E::UriParamExtraEquals("user".into()),
            ),
            ("postgresql://h/d%zz", E::BadPercent("d%zz".into())),
            ("postgresql://h/db%4", E::BadPercent("db%4".into())),
            ("postgresql://h/db%", E::BadPercent("db%".into())),
            ("postgresql://u%@h", E::BadPercent("u%".into())),
            ("postgresql://h%,b", E::BadPercent("h%,b".into())),
            ("postgresql://h:1%", E::BadPercent("1%".into())),
            ("postgresql://h?user=%g0", E::BadPercent("%g0".into())),
            ("postgresql://h?us%er=x", E::BadPercent("us%er".into())),
            ("postgresql://u:se%cret@h", E::BadPercent(REDACTED.into())),
            (
                "postgresql://h?password=se%cret",
                E::BadPercent(REDACTED.into()),
            ),
            (
                "postgresql://h?pass%77ord=se cret",
                E::UriSpaces(REDACTED.into()),
            ),
            ("postgresql://h/a%00b", E::PercentNul("a%00b".into())),
            ("postgresql://h/a b", E::UriSpaces("a b".into())),
            ("postgresql://u:a b@h", E::UriSpaces(REDACTED.into())),
            ("postgresql://h/%FF", E::NotUtf8("%FF".into())),
            (
                "postgresql://[::1",
                E::Ipv6Unterminated("postgresql://[::1".into()),
            ),
            (
                "postgresql://u:pw@[::1?password=x",
                E::Ipv6Unterminated(format!(
                    "postgresql://u:{REDACTED}@[::1?password={REDACTED}"
                )),
            ),
            ("postgresql://[]", E::Ipv6Empty("postgresql://[]".into())),
            (
                "postgresql://[::1]x",
                unexpected('x', 19, "postgresql://[::1]x"),
            ),
            (
                "postgres://[::1]ü",
                unexpected('ü', 17, "postgres://[::1]ü"),
            ),
            (
                "postgresql://u:p@[::1]x",
                unexpected(
                    'x',
                    23 - 1 + REDACTED.len(),
                    &format!("postgresql://u:{REDACTED}@[::1]x"),
                ),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn every_error_is_worded_like_libpq() {
        let inputs = [
            "host",
            "password='abc",
            "bogus=1",
            "password=abc def",
            "postgresql://h?bogus=1",
            "postgresql://h?sslmode",
            "postgresql://h?user=a=b",
            "postgresql://h/d%zz",
            "postgresql://u:se%cret@h",
            "postgresql://h/a%00b",
            "postgresql://h/a b",
            "postgresql://h/%FF",
            "postgresql://[::1",
            "postgresql://[]",
            "postgresql://[::1]x",
        ];
        let shown: Vec<String> = inputs
            .iter()
            .map(|input| parse(input).map_or_else(|e| e.to_string(), |_| "parsed".into()))
            .collect();
        let want = r#"missing "=" after "host" in connection info string
unterminated quoted string in connection info string
invalid connection option "bogus"
missing "=" after "(password hidden)" in connection info string
invalid URI query parameter: "bogus"
missing key/value separator "=" in URI query parameter: "sslmode"
extra key/value separator "=" in URI query parameter: "user"
invalid percent-encoded token: "d%zz"
invalid percent-encoded token: "(password hidden)"
forbidden value %00 in percent-encoded value: "a%00b"
unexpected spaces found in "a b", use percent-encoded spaces (%20) instead
percent-decoded value is not valid UTF-8: "%FF"
end of string reached when looking for matching "]" in IPv6 host address in URI: "postgresql://[::1"
IPv6 host address may not be empty in URI: "postgresql://[]"
unexpected character "x" at position 19 in URI (expected ":" or "/"): "postgresql://[::1]x""#;
        assert_eq!(shown.join("\n"), want);
    }

    #[test]
    fn errors_never_show_the_password() {
        for input in [
            "postgresql://u:hunter2%@h",
            "postgresql://u:hunter2 x@h",
            "postgresql://u:hunter2@[::1",
            "postgresql://u:hunter2@[]",
            "postgresql://u:hunter2@[::1]x",
            "postgresql://h?password=hunter2%zz",
            "postgresql://h?password=hunter2&bogus=1",
            "postgresql://[::1?password=hunter2",
            "password=hunt er2",
            "password=hunter2 x=y",
        ] {
            let err = parse(input).expect_err(input);
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("hunter2"), "{input}: {shown}");
        }
    }

    #[test]
    fn lists_split_like_libpq() {
        let cases: &[(&str, &[&str])] = &[
            ("a", &["a"]),
            ("a,b", &["a", "b"]),
            (",5433", &["", "5433"]),
            ("a,", &["a", ""]),
            ("", &[""]),
            (" a , b", &[" a ", " b"]),
        ];
        for (input, want) in cases {
            assert_eq!(split_list(input), *want, "{input:?}");
        }
    }

    #[test]
    fn environment_variables_map_to_keys() {
        let cases = [
            ("PGHOST", Some("host")),
            ("PGHOSTADDR", Some("hostaddr")),
            ("PGPORT", Some("port")),
            ("PGUSER", Some("user")),
            ("PGPASSWORD", Some("password")),
            ("PGPASSFILE", Some("passfile")),
            ("PGAPPNAME", Some("application_name")),
            ("PGCONNECT_TIMEOUT", Some("connect_timeout")),
            ("PGSSLMODE", Some("sslmode")),
            ("PGSSLROOTCERT", Some("sslrootcert")),
            ("PGSSLCERT", Some("sslcert")),
            ("PGSSLKEY", Some("sslkey")),
            ("PGSSLCRL", Some("sslcrl")),
            ("PGSSLNEGOTIATION", Some("sslnegotiation")),
            ("PGCHANNELBINDING", Some("channel_binding")),
            ("PGOPTIONS", Some("options")),
            ("PGDATABASE", Some("dbname")),
            ("PGSERVICE", Some("service")),
            ("PGSERVICEFILE", None),
            ("PGSYSCONFDIR", None),
            ("PGREQUIRESSL", None),
            ("pghost", None),
        ];
        for (var, want) in cases {
            assert_eq!(env_key(var), want, "{var}");
        }
        assert_eq!(ENV_VARS.len(), 20);
        for key in ENV_VARS.iter().filter_map(|(_, key)| *key) {
            assert!(KNOWN_KEYS.contains(&key), "{key}");
        }
    }

    #[test]
    fn uri_detection() {
        assert!(is_uri("postgresql://"));
        assert!(is_uri("postgres://x"));
        assert!(!is_uri("postgresql:/x"));
        assert!(!is_uri("POSTGRESQL://x"));
        assert!(!is_uri(" postgresql://x"));
        assert!(!is_uri("host=x"));
    }

    #[test]
    fn quoting_round_trips() {
        for v in [
            "simple",
            "with space",
            "it's",
            r"back\slash",
            "",
            "a=b",
            "x'\\'y",
            "tab\there",
            "ünï",
        ] {
            let s = format!("password={}", quote_value(v));
            assert_eq!(
                parse(&s)
                    .ok()
                    .and_then(|m| m.get("password").cloned())
                    .as_deref(),
                Some(v),
                "{s}"
            );
        }
        assert_eq!(quote_value("host.example_1"), "host.example_1");
        assert_eq!(quote_value("/tmp"), "'/tmp'");
        assert_eq!(quote_value("it's"), r"'it\'s'");
        assert_eq!(quote_value(""), "''");
    }
}
