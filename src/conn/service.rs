//! The connection service file (libpq's `pg_service.conf`): finding the section of a named
//! service and reading its settings, as libpq's `parseServiceInfo` does. The resolver
//! (`params.rs`) layers what it gives under the connection string and over the environment.
//!
//! Where a service is looked for, in order (libpq 18's rules):
//! 1. the user file: `PGSERVICEFILE` when set (an error if it cannot be opened), else
//!    `~/.pg_service.conf` when it exists (`HOME`; skipped when `HOME` is unset or empty:
//!    libpq would then ask the password database, pgclone does not);
//! 2. the system file: `PGSYSCONFDIR/pg_service.conf` when `PGSYSCONFDIR` is set, else the
//!    first of [`DEFAULT_SYSTEM_FILES`] that exists (libpq has one directory compiled in;
//!    pgclone, which has no build of its own to follow, looks where the common builds put it).
//!
//! The first file that has a section for the service wins: files are never merged. A file
//! without the section sends the search on; when neither has it, the error is libpq's
//! `definition of service "x" not found`.
//!
//! The format: lines, each trimmed of blanks at both ends; empty lines and lines starting with
//! `#` are skipped; `[name]` starts a section (text after the `]` is ignored, as libpq does).
//! Inside the wanted section every line is `key=value`, split at the first `=` with nothing
//! trimmed around it, so `host = x` is a syntax error as in libpq. Keys are connection keys
//! ([`conninfo::KNOWN_KEYS`]); the first setting of a key in the section wins; `service`
//! itself is refused (no nesting). Lines outside the section are not checked, and reading
//! stops at the next section header. A line of 1023 bytes or more (its newline counted) is
//! too long, as in libpq's fixed buffer. LDAP lookups (`ldap://...` lines) are not supported:
//! such a line is a syntax error that says so (libpq built without LDAP calls it a syntax
//! error too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::conninfo;

/// The system-wide service files pgclone tries when `PGSYSCONFDIR` is not set, in order: the
/// `sysconfdir` of Debian and Ubuntu's packages, of the PGDG RPMs, and of a source build with
/// the default prefix (`pg_config --sysconfdir` names the one of a given build).
pub const DEFAULT_SYSTEM_FILES: &[&str] = &[
    "/etc/postgresql-common/pg_service.conf",
    "/etc/sysconfig/pgsql/pg_service.conf",
    "/usr/local/pgsql/etc/pg_service.conf",
];

/// libpq reads service files through a 1024-byte buffer: a line that fills it (1023 bytes
/// with the newline) is refused.
const MAX_LINE: usize = 1023;

/// A service found in a file: the settings of its section, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The file whose section was used.
    pub file: PathBuf,
    /// The section's settings, each key once (its first setting); empty values are kept.
    pub settings: BTreeMap<String, String>,
}

/// Why a service could not be used, worded as libpq words it (with a detail added after a
/// colon where libpq says only "syntax error").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// No file has a section for the service.
    #[error("definition of service \"{0}\" not found")]
    NotFound(String),
    /// A file to read could not be opened (libpq says "not found" whatever the reason).
    #[error("service file \"{}\" not found", .0.display())]
    FileNotFound(PathBuf),
    /// A line of 1023 bytes or more (its newline counted).
    #[error("line {line} too long in service file \"{}\"", file.display())]
    LineTooLong {
        /// The file.
        file: PathBuf,
        /// The 1-based line number.
        line: usize,
    },
    /// A line of the section that is not a setting pgclone knows.
    #[error("syntax error in service file \"{}\", line {line}{detail}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// Empty, or `: ` and what is wrong.
        detail: String,
    },
    /// `service=` inside a section.
    #[error(
        "nested service specifications not supported in service file \"{}\", line {line}",
        file.display()
    )]
    Nested {
        /// The file.
        file: PathBuf,
        /// The 1-based line number.
        line: usize,
    },
}

/// Finds the service `name` in the user file, then the system file (see the module
/// documentation), reading `PGSERVICEFILE`, `HOME` and `PGSYSCONFDIR` through `env`.
pub fn lookup(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Service, ServiceError> {
    let files: [&dyn Fn() -> Option<PathBuf>; 2] = [&|| user_file(env), &|| system_file(env)];
    for file in files.into_iter().filter_map(|file| file()) {
        if let Some(settings) = read_section(&file, name)? {
            tracing::debug!("using service \"{name}\" from \"{}\"", file.display());
            return Ok(Service { file, settings });
        }
    }
    Err(ServiceError::NotFound(name.to_owned()))
}

/// `PGSERVICEFILE` (even when it does not exist: reading it then fails), else
/// `~/.pg_service.conf` if it exists.
fn user_file(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(file) = env("PGSERVICEFILE") {
        return Some(PathBuf::from(file));
    }
    let home = env("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".pg_service.conf")).filter(|f| f.exists())
}

/// `PGSYSCONFDIR/pg_service.conf`, else the first of [`DEFAULT_SYSTEM_FILES`]; only if it
/// exists.
fn system_file(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match env("PGSYSCONFDIR") {
        // Joined as text, as libpq does: an empty PGSYSCONFDIR means `/pg_service.conf`.
        Some(dir) => Some(PathBuf::from(format!("{dir}/pg_service.conf"))).filter(|f| f.exists()),
        None => DEFAULT_SYSTEM_FILES
            .iter()
            .map(PathBuf::from)
            .find(|f| f.exists()),
    }
}

/// The settings of section `name` in `file`, or `None` when it has no such section.
fn read_section(file: &Path, name: &str) -> Result<Option<BTreeMap<String, String>>, ServiceError> {
    let text = std::fs::read(file).map_err(|_| ServiceError::FileNotFound(file.to_owned()))?;
    parse_section(&text, file, name)
}

/// The settings of section `name` in a service file's `text`; `file` names it in errors.
pub fn parse_section(
    text: &[u8],
    file: &Path,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, ServiceError> {
    let mut section: Option<BTreeMap<String, String>> = None;
    for (i, raw) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        if raw.len() >= MAX_LINE {
            return Err(ServiceError::LineTooLong {
                file: file.to_owned(),
                line,
            });
        }
        let content = raw.trim_ascii();
        if content.is_empty() || content[0] == b'#' {
            continue;
        }
        if let Some(header) = content.strip_prefix(b"[") {
            if section.is_some() {
                break;
            }
            if header
                .strip_prefix(name.as_bytes())
                .is_some_and(|rest| rest.first() == Some(&b']'))
            {
                section = Some(BTreeMap::new());
            }
            continue;
        }
        if let Some(settings) = section.as_mut() {
            let (key, value) = setting(content, file, line)?;
            settings.entry(key).or_insert(value);
        }
    }
    Ok(section)
}

/// One `key=value` line of the wanted section.
fn setting(content: &[u8], file: &Path, line: usize) -> Result<(String, String), ServiceError> {
    let syntax = |detail: &str| ServiceError::Syntax {
        file: file.to_owned(),
        line,
        detail: detail.to_owned(),
    };
    if content.starts_with(b"ldap") {
        return Err(syntax(": LDAP lookups are not supported"));
    }
    let Ok(content) = std::str::from_utf8(content) else {
        return Err(syntax(": not valid UTF-8"));
    };
    let Some((key, value)) = content.split_once('=') else {
        return Err(syntax(""));
    };
    if key == "service" {
        return Err(ServiceError::Nested {
            file: file.to_owned(),
            line,
        });
    }
    if !conninfo::KNOWN_KEYS.contains(&key) {
        return Err(syntax(&format!(": invalid connection option \"{key}\"")));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str, name: &str) -> Result<Option<Vec<(String, String)>>, ServiceError> {
        parse_section(text.as_bytes(), Path::new("/f"), name)
            .map(|found| found.map(|s| s.into_iter().collect()))
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        let mut v: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        Some(v)
    }

    /// The section of the named service is read; comments, blank lines, blanks around lines
    /// and other sections are skipped; `[name]` matches only exactly that name.
    #[test]
    fn reads_the_named_section() {
        let text = "# comment\n\
                    [other]\nhost=o\n\
                    \n  [main]  \n\thost=h  \n  # note\nport=5433\nuser=rep\n\
                    [mainly]\nhost=m\n";
        assert_eq!(
            section(text, "main"),
            Ok(pairs(&[("host", "h"), ("port", "5433"), ("user", "rep")]))
        );
        assert_eq!(section(text, "other"), Ok(pairs(&[("host", "o")])));
        assert_eq!(section(text, "mainly"), Ok(pairs(&[("host", "m")])));
        assert_eq!(section(text, "mai"), Ok(None));
        assert_eq!(section(text, "absent"), Ok(None));
        assert_eq!(section("", "x"), Ok(None));
        // An empty section is found, and holds nothing.
        assert_eq!(section("[x]\n[y]\nhost=y\n", "x"), Ok(pairs(&[])));
    }

    /// Values are taken as written after the first `=` (no quotes, `=` allowed in them, an
    /// empty value kept); the first setting of a key wins; text after `]` is ignored.
    #[test]
    fn values_are_raw_and_the_first_setting_wins() {
        let text =
            "[s] trailing\noptions=-c work_mem=64MB\npassword='q'\nhost=a\nhost=b\ndbname=\n";
        assert_eq!(
            section(text, "s"),
            Ok(pairs(&[
                ("options", "-c work_mem=64MB"),
                ("password", "'q'"),
                ("host", "a"),
                ("dbname", ""),
            ]))
        );
        // No newline at the end, CRLF line ends.
        assert_eq!(
            section("[s]\r\nport=1\r\nuser=u", "s"),
            Ok(pairs(&[("port", "1"), ("user", "u")]))
        );
    }

    /// Lines outside the wanted section are not checked, and reading stops at the section's
    /// end: what follows it cannot fail the lookup.
    #[test]
    fn only_the_wanted_section_is_checked() {
        let text = "[a]\nnot a setting\nbogus=1\n[b]\nhost=b\n[c]\nservice=x\n";
        assert_eq!(section(text, "b"), Ok(pairs(&[("host", "b")])));
    }

    #[test]
    fn errors_are_the_ones_libpq_gives() {
        let f = || PathBuf::from("/f");
        let syntax = |line, detail: &str| ServiceError::Syntax {
            file: f(),
            line,
            detail: detail.to_owned(),
        };
        let cases: Vec<(&str, ServiceError)> = vec![
            ("[s]\nhost\n", syntax(2, "")),
            (
                "[s]\nhost = x\n",
                syntax(2, ": invalid connection option \"host \""),
            ),
            (
                "[s]\nbogus=1\n",
                syntax(2, ": invalid connection option \"bogus\""),
            ),
            (
                "[s]\nrequiressl=1\n",
                syntax(2, ": invalid connection option \"requiressl\""),
            ),
            (
                "[s]\nldap://ldap.example.com/dc=example?pgconnectinfo?one?(cn=db)\n",
                syntax(2, ": LDAP lookups are not supported"),
            ),
            (
                "#\n[s]\nhost=h\nservice=t\n",
                ServiceError::Nested { file: f(), line: 4 },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(section(text, "s"), Err(want), "{text:?}");
        }
        let long = format!("[s]\nhost={}\n", "h".repeat(MAX_LINE - 6));
        assert_eq!(
            section(&long, "s"),
            Err(ServiceError::LineTooLong { file: f(), line: 2 })
        );
        let fits = format!("[s]\nhost={}\n", "h".repeat(MAX_LINE - 7));
        assert!(section(&fits, "s").is_ok());
        // A long line anywhere before the end of the section counts, as libpq reads it.
        let long_before = format!("# {}\n[s]\nhost=h\n", "x".repeat(MAX_LINE));
        assert!(matches!(
            section(&long_before, "s"),
            Err(ServiceError::LineTooLong { line: 1, .. })
        ));
    }

    #[test]
    fn every_error_is_worded_like_libpq() {
        let f = PathBuf::from("/etc/pg_service.conf");
        let shown = [
            ServiceError::NotFound("x".into()),
            ServiceError::FileNotFound(f.clone()),
            ServiceError::LineTooLong {
                file: f.clone(),
                line: 3,
            },
            ServiceError::Syntax {
                file: f.clone(),
                line: 4,
                detail: String::new(),
            },
            ServiceError::Nested { file: f, line: 5 },
        ]
        .map(|e| e.to_string());
        assert_eq!(
            shown.join("\n"),
            "definition of service \"x\" not found\n\
             service file \"/etc/pg_service.conf\" not found\n\
             line 3 too long in service file \"/etc/pg_service.conf\"\n\
             syntax error in service file \"/etc/pg_service.conf\", line 4\n\
             nested service specifications not supported in service file \"/etc/pg_service.conf\", line 5"
        );
    }

    /// A test directory holding service files, and an environment pointing at it.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            for sub in ["home", "sys", "empty"] {
                std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
            }
            Self { dir }
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(rel);
            std::fs::write(&path, text).expect("write");
            path
        }

        fn path(&self, rel: &str) -> String {
            self.dir.path().join(rel).display().to_string()
        }

        /// `HOME` and `PGSYSCONFDIR` in the test directory, plus `extra`.
        fn env(&self, extra: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
            let mut vars = vec![
                ("HOME".to_owned(), self.path("home")),
                ("PGSYSCONFDIR".to_owned(), self.path("sys")),
            ];
            for (k, v) in extra {
                vars.retain(|(n, _)| n != k);
                vars.push(((*k).to_owned(), v.clone()));
            }
            move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        }
    }

    /// The user file is searched first and the first file with the section wins whole: a
    /// key only the system file's section sets is not merged in. Without the section in the
    /// user file, the system file's is used.
    #[test]
    fn the_user_file_wins_and_files_are_not_merged() {
        let t = Files::new();
        let user = t.write("home/.pg_service.conf", "[a]\nhost=user\n[b]\nport=1\n");
        let sys = t.write(
            "sys/pg_service.conf",
            "[a]\nhost=sys\nuser=sysuser\n[c]\nport=3\n",
        );
        let env = t.env(&[]);
        let a = lookup("a", &env).expect("a");
        assert_eq!(
            (a.file, a.settings),
            (user.clone(), map(&[("host", "user")]))
        );
        let c = lookup("c", &env).expect("c");
        assert_eq!((c.file, c.settings), (sys, map(&[("port", "3")])));
        assert_eq!(lookup("b", &env).map(|s| s.file), Ok(user));
        assert_eq!(lookup("d", &env), Err(ServiceError::NotFound("d".into())));
    }

    /// `PGSERVICEFILE` replaces `~/.pg_service.conf`, and must be readable when a service is
    /// looked up; a missing `~/.pg_service.conf` or system file is skipped.
    #[test]
    fn pgservicefile_replaces_the_home_file() {
        let t = Files::new();
        t.write("home/.pg_service.conf", "[a]\nhost=home\n");
        let own = t.write("own.conf", "[a]\nhost=own\n");
        let env = t.env(&[("PGSERVICEFILE", own.display().to_string())]);
        assert_eq!(lookup("a", &env).map(|s| s.file), Ok(own));

        let missing = t.path("missing.conf");
        let env = t.env(&[("PGSERVICEFILE", missing.clone())]);
        assert_eq!(
            lookup("a", &env),
            Err(ServiceError::FileNotFound(missing.into()))
        );

        let env = t.env(&[("HOME", t.path("empty"))]);
        assert_eq!(lookup("a", &env), Err(ServiceError::NotFound("a".into())));
        let env = t.env(&[("HOME", String::new()), ("PGSYSCONFDIR", t.path("home"))]);
        assert_eq!(lookup("a", &env), Err(ServiceError::NotFound("a".into())));
        t.write("home/pg_service.conf", "[a]\nhost=sys\n");
        assert_eq!(
            lookup("a", &env).map(|s| s.settings),
            Ok(map(&[("host", "sys")]))
        );
    }

    /// An error in the user file stops the search, even when the system file has the
    /// service; an error in the system file counts only when the user file lacks it.
    #[test]
    fn a_broken_file_is_an_error_where_it_is_read() {
        let t = Files::new();
        t.write("home/.pg_service.conf", "[a]\nbroken\n[b]\nhost=b\n");
        t.write("sys/pg_service.conf", "[a]\nhost=sys\n[c]\nbroken\n");
        let env = t.env(&[]);
        assert!(matches!(
            lookup("a", &env),
            Err(ServiceError::Syntax { line: 2, .. })
        ));
        assert!(lookup("b", &env).is_ok());
        assert!(matches!(
            lookup("c", &env),
            Err(ServiceError::Syntax { line: 4, .. })
        ));
    }

    fn map(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }
}
