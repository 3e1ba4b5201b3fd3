//! `-z`, `-Z`, `--compress=[client-|server-]METHOD[:DETAIL]`: parsed and validated with
//! pg_basebackup's rules and messages (16+: a bare `0` means no compression).
//!
//! Client-side specifications are validated here; server-side ones are passed through for the
//! server to validate, as pg_basebackup does.
//!
//! `auto` (pgclone's own, the default) is decided per run once the server is known
//! ([`Compression::resolve`]): lz4 on the server where the output cannot change, else none.

use crate::error::Error;

/// A compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No compression.
    None,
    /// gzip (deflate).
    Gzip,
    /// LZ4 frames.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Method {
    /// The name pg_basebackup uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }

    /// The file-name suffix of an archive compressed this way.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Gzip => ".gz",
            Self::Lz4 => ".lz4",
            Self::Zstd => ".zst",
        }
    }

    /// The method an archive name's suffix stands for (`base.tar.gz` → gzip).
    pub fn from_archive_name(name: &str) -> Self {
        if name.ends_with(".gz") {
            Self::Gzip
        } else if name.ends_with(".lz4") {
            Self::Lz4
        } else if name.ends_with(".zst") {
            Self::Zstd
        } else {
            Self::None
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "gzip" => Some(Self::Gzip),
            "lz4" => Some(Self::Lz4),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// (min, max, default) level.
    fn levels(self) -> (i32, i32, i32) {
        match self {
            Self::None => (1, 1, 0),
            Self::Gzip => (1, 9, -1),
            Self::Lz4 => (1, 12, 0),
            Self::Zstd => (-131_072, 22, 3),
        }
    }
}

/// A validated client-side compression specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSpec {
    /// Algorithm.
    pub method: Method,
    /// Level, if given (else the algorithm's default).
    pub level: Option<i32>,
    /// zstd worker threads, if given (else one per core).
    pub workers: Option<i32>,
    /// zstd long-distance mode.
    pub long: bool,
}

impl ClientSpec {
    /// No compression.
    pub const NONE: Self = Self {
        method: Method::None,
        level: None,
        workers: None,
        long: false,
    };
}

/// Where `--compress` asked for compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compression {
    /// On the client (or none).
    Client(ClientSpec),
    /// On the server (15+): algorithm and detail, passed through.
    Server {
        /// Algorithm name as given.
        method: String,
        /// Detail as given.
        detail: Option<String>,
    },
    /// `--compress=auto` (the default): decided per run by [`Compression::resolve`].
    Auto,
}

/// The algorithm `auto` asks the server for. Measured (bench/RESULTS-link-*.md): as fast as
/// zstd level 1 over 1 Gbit/s and unshaped links for the least server CPU and no server
/// threads; zstd level 1 is faster only on slow links (100 Mbit/s: half lz4's time).
pub const AUTO_METHOD: &str = "lz4";

/// First server major that compresses its archives (BASE_BACKUP's COMPRESSION option).
pub const MIN_MAJOR_SERVER_COMPRESSION: u32 = 15;

/// What `auto` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoFacts {
    /// The archives are unpacked here into a data directory (plain format, no target, not
    /// `--refresh`): only then is the output the same whatever the server sends.
    pub unpacked: bool,
    /// The server's major version.
    pub server_major: u32,
    /// The connection is TCP (with or without TLS), not a Unix socket.
    pub tcp: bool,
}

impl Compression {
    /// No compression at all.
    pub const NONE: Self = Self::Client(ClientSpec::NONE);

    /// The client-side part (none when compressing on the server).
    pub fn client(&self) -> ClientSpec {
        match self {
            Self::Client(spec) => *spec,
            Self::Server { .. } | Self::Auto => ClientSpec::NONE,
        }
    }

    /// What to ask of this server: `auto` becomes lz4 on the server for an unpacked clone of a
    /// 15+ server over TCP (a Unix socket is a local copy, where compressing only costs CPU),
    /// else no compression; any other choice stays as given. The same under the name
    /// `pg_basebackup`: the data directory is byte for byte the one an uncompressed run writes.
    pub fn resolve(&self, facts: AutoFacts) -> Self {
        match self {
            Self::Auto
                if facts.unpacked
                    && facts.tcp
                    && facts.server_major >= MIN_MAJOR_SERVER_COMPRESSION =>
            {
                Self::Server {
                    method: AUTO_METHOD.into(),
                    detail: None,
                }
            }
            Self::Auto => Self::NONE,
            other => other.clone(),
        }
    }
}

/// Parses `-Z`/`--compress`. `target` tells whether a backup target was given (compression then
/// defaults to the server side).
pub fn parse(option: &str, target: bool) -> Result<Compression, Error> {
    if option == "auto" {
        return Ok(Compression::Auto);
    }
    let (location, rest) = if let Some(r) = option.strip_prefix("server-") {
        (Some(true), r)
    } else if let Some(r) = option.strip_prefix("client-") {
        (Some(false), r)
    } else {
        (None, option)
    };
    let (algorithm, detail) = split_algorithm(rest);
    let server = location.unwrap_or(target);
    if server {
        return Ok(Compression::Server {
            method: algorithm,
            detail,
        });
    }
    let method = Method::parse(&algorithm).ok_or_else(|| {
        Error::Usage(format!(
            "unrecognized compression algorithm: \"{algorithm}\""
        ))
    })?;
    let spec = parse_detail(method, detail.as_deref())
        .and_then(|spec| validate(spec).map(|()| spec))
        .map_err(|e| Error::Usage(format!("invalid compression specification: {e}")))?;
    Ok(Compression::Client(spec))
}

/// A bare integer is gzip at that level (0: none); else `ALGORITHM[:DETAIL]`.
fn split_algorithm(option: &str) -> (String, Option<String>) {
    if let Ok(level) = option.parse::<i64>() {
        return if level == 0 {
            ("none".into(), None)
        } else {
            ("gzip".into(), Some(option.into()))
        };
    }
    match option.split_once(':') {
        None => (option.into(), None),
        Some((alg, detail)) => (alg.into(), Some(detail.into())),
    }
}

fn parse_detail(method: Method, detail: Option<&str>) -> Result<ClientSpec, String> {
    let mut spec = ClientSpec {
        method,
        ..ClientSpec::NONE
    };
    let Some(detail) = detail else {
        return Ok(spec);
    };
    if let Ok(level) = detail.parse::<i32>() {
        spec.level = Some(level);
        return Ok(spec);
    }
    for item in detail.split(',') {
        let (keyword, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if keyword.is_empty() {
            return Err("found empty string where a compression option was expected".into());
        }
        match keyword {
            "level" => spec.level = Some(integer(keyword, value)?),
            "workers" => spec.workers = Some(integer(keyword, value)?),
            "long" => spec.long = boolean(keyword, value)?,
            other => return Err(format!("unrecognized compression option: \"{other}\"")),
        }
    }
    Ok(spec)
}

fn integer(keyword: &str, value: Option<&str>) -> Result<i32, String> {
    let value =
        value.ok_or_else(|| format!("compression option \"{keyword}\" requires a value"))?;
    value
        .parse()
        .map_err(|_| format!("value for compression option \"{keyword}\" must be an integer"))
}

/// PostgreSQL's `parse_bool`: true/false/yes/no (and unique prefixes), on/off, 1/0; no value
/// means true.
fn boolean(keyword: &str, value: Option<&str>) -> Result<bool, String> {
    let Some(value) = value else {
        return Ok(true);
    };
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &str| !v.is_empty() && word.starts_with(v.as_str());
    if prefix_of("true") || prefix_of("yes") || v == "on" || v == "1" {
        Ok(true)
    } else if prefix_of("false")
        || prefix_of("no")
        || (v.len() >= 2 && "off".starts_with(v.as_str()))
        || v == "0"
    {
        Ok(false)
    } else {
        Err(format!(
            "value for compression option \"{keyword}\" must be a Boolean value"
        ))
    }
}

fn validate(spec: ClientSpec) -> Result<(), String> {
    let name = spec.method.name();
    if let Some(level) = spec.level {
        if spec.method == Method::None && level != 0 {
            return Err(format!(
                "compression algorithm \"{name}\" does not accept a compression level"
            ));
        }
        let (min, max, default) = spec.method.levels();
        if spec.method != Method::None && (level < min || level > max) && level != default {
            return Err(format!(
                "compression algorithm \"{name}\" expects a compression level between {min} and {max} (default at {default})"
            ));
        }
    }
    if spec.workers.is_some() && spec.method != Method::Zstd {
        return Err(format!(
            "compression algorithm \"{name}\" does not accept a worker count"
        ));
    }
    if spec.long && spec.method != Method::Zstd {
        return Err(format!(
            "compression algorithm \"{name}\" does not support long-distance mode"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(option: &str) -> ClientSpec {
        match parse(option, false) {
            Ok(Compression::Client(spec)) => spec,
            other => panic!("{option}: {other:?}"),
        }
    }

    #[test]
    fn parses_like_pg_basebackup() {
        assert_eq!(client("0"), ClientSpec::NONE);
        assert_eq!(
            client("5"),
            ClientSpec {
                method: Method::Gzip,
                level: Some(5),
                ..ClientSpec::NONE
            }
        );
        assert_eq!(
            client("gzip"),
            ClientSpec {
                method: Method::Gzip,
                ..ClientSpec::NONE
            }
        );
        assert_eq!(
            client("client-lz4:level=0"),
            ClientSpec {
                method: Method::Lz4,
                level: Some(0),
                ..ClientSpec::NONE
            }
        );
        assert_eq!(
            client("zstd:level=-5,workers=4,long"),
            ClientSpec {
                method: Method::Zstd,
                level: Some(-5),
                workers: Some(4),
                long: true
            }
        );
        assert_eq!(
            parse("server-zstd:level=3", false).ok(),
            Some(Compression::Server {
                method: "zstd".into(),
                detail: Some("level=3".into())
            })
        );
        assert_eq!(
            parse("gzip", true).ok(),
            Some(Compression::Server {
                method: "gzip".into(),
                detail: None
            })
        );
    }

    fn facts(unpacked: bool, server_major: u32, tcp: bool) -> AutoFacts {
        AutoFacts {
            unpacked,
            server_major,
            tcp,
        }
    }

    fn is_lz4(c: &Compression) -> bool {
        matches!(c, Compression::Server { method, detail: None } if method == "lz4")
    }

    #[test]
    fn auto_asks_for_lz4_only_for_unpacked_clones_of_15_plus_over_tcp() {
        assert_eq!(parse("auto", false).ok(), Some(Compression::Auto));
        assert_eq!(parse("auto", true).ok(), Some(Compression::Auto));
        assert!(is_lz4(&Compression::Auto.resolve(facts(true, 15, true))));
        assert!(is_lz4(&Compression::Auto.resolve(facts(true, 18, true))));
        // tar format, a target, --refresh; a 14 server; a Unix socket: nothing
        for f in [
            facts(false, 16, true),
            facts(true, 14, true),
            facts(true, 10, true),
            facts(true, 16, false),
        ] {
            assert_eq!(Compression::Auto.resolve(f), Compression::NONE, "{f:?}");
        }
        // an explicit choice is never changed
        for option in ["none", "0", "gzip", "server-zstd:level=1", "client-lz4"] {
            let given = parse(option, false).expect(option);
            assert_eq!(given.resolve(facts(true, 16, true)), given, "{option}");
            assert_eq!(given.resolve(facts(true, 14, false)), given, "{option}");
        }
        assert_eq!(Compression::Auto.client(), ClientSpec::NONE);
    }

    #[test]
    fn rejects_with_pg_basebackup_messages() {
        // The same texts pg_basebackup 18 prints (tests/compression.rs checks them against
        // the real binary).
        for (option, msg) in [
            ("gzip:12", "invalid compression specification: compression algorithm \"gzip\" expects a compression level between 1 and 9 (default at -1)"),
            ("gzip:x", "invalid compression specification: unrecognized compression option: \"x\""),
            ("gzip:level", "invalid compression specification: compression option \"level\" requires a value"),
            ("none:5", "invalid compression specification: compression algorithm \"none\" does not accept a compression level"),
            ("zstd:", "invalid compression specification: found empty string where a compression option was expected"),
            ("zstd:long=maybe", "invalid compression specification: value for compression option \"long\" must be a Boolean value"),
            ("brotli", "unrecognized compression algorithm: \"brotli\""),
        ] {
            match parse(option, false) {
                Err(Error::Usage(m)) => assert_eq!(m, msg, "{option}"),
                other => panic!("{option}: {other:?}"),
            }
        }
    }
}
