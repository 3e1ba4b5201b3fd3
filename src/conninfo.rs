//! libpq `key=value` connection strings: parsing (as `PQconninfoParse` does) and quoting (as
//! `appendConnStrVal` does, for `primary_conninfo`).

use std::collections::BTreeMap;

/// Keys pgclone understands in a connection string.
pub const KNOWN_KEYS: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "application_name",
    "fallback_application_name",
    "sslmode",
];

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
    /// URIs come with the connection-options work.
    #[error("connection URIs (postgresql://...) are not supported yet; use key=value pairs")]
    Uri,
}

/// Parses `key=value` pairs. Later duplicates override earlier ones, as in libpq.
pub fn parse(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    if s.starts_with("postgresql://") || s.starts_with("postgres://") {
        return Err(ConnInfoError::Uri);
    }
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::MissingEquals(key));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
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
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if !KNOWN_KEYS.contains(&key.as_str()) {
            return Err(ConnInfoError::UnknownKey(key));
        }
        out.insert(key, value);
    }
    Ok(out)
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
    fn parses_like_libpq() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "host=master port=5432",
                &[("host", "master"), ("port", "5432")],
            ),
            (
                "  host = master\tuser=rep  ",
                &[("host", "master"), ("user", "rep")],
            ),
            ("password='a b'", &[("password", "a b")]),
            (r"password='it\'s \\ here'", &[("password", r"it's \ here")]),
            (r"password=a\ b", &[("password", "a b")]),
            ("password=''", &[("password", "")]),
            ("host=a host=b", &[("host", "b")]),
            ("dbname=x=y", &[("dbname", "x=y")]),
            ("", &[]),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(map(want)), "{input:?}");
        }
    }

    #[test]
    fn rejects_what_libpq_rejects() {
        assert_eq!(
            parse("host"),
            Err(ConnInfoError::MissingEquals("host".into()))
        );
        assert_eq!(parse("password='abc"), Err(ConnInfoError::Unterminated));
        assert_eq!(
            parse("bogus=1"),
            Err(ConnInfoError::UnknownKey("bogus".into()))
        );
        assert_eq!(parse("postgresql://x"), Err(ConnInfoError::Uri));
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
    }
}
