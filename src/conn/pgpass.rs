//! libpq's password file (`~/.pgpass`, or `PGPASSFILE` / `passfile=`), read as libpq's
//! `passwordFromFile` reads it.
//!
//! Each line is `hostname:port:database:username:password`. A field that is exactly `*`
//! matches anything; `\:` and `\\` stand for `:` and `\`. Lines starting with `#` are
//! comments, empty lines are skipped, and the first matching line wins. Only a trailing
//! newline and carriage returns are stripped from a line; other trailing whitespace belongs to
//! the password. Anything after the password's first unescaped `:` is ignored.
//!
//! What the caller passes, as libpq does:
//! - `host`: the `host` setting, or `hostaddr` when no `host` was given. For a Unix-socket
//!   connection to the default socket directory (or no host at all) pass `"localhost"`:
//!   libpq substitutes `localhost` for an empty host and for its compiled-in default socket
//!   directory, so a `localhost` line matches such a connection. Any other socket directory is
//!   matched literally (a line starting `/var/run/postgresql:`). An empty `host` is taken as
//!   `localhost` here too.
//! - `port`: the port as written (an empty one is taken as `5432`).
//! - `dbname`: for physical replication (pg_basebackup, pgclone) libpq's database name is
//!   `replication`, so pass `"replication"`: that is what the database field must match.
//! - `user`: the user name connected as.
//!
//! The password never appears in a `Debug` or error output of this module.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The default port libpq substitutes for an empty one.
const DEFAULT_PORT: &str = "5432";

/// A password file that is not used. Each is a warning, worded as libpq words it: the caller
/// prints it and carries on as if there were no password file.
#[derive(Debug, thiserror::Error)]
pub enum PassfileError {
    /// The file can be read or written by group or others (`mode & 0o077 != 0`).
    #[error(
        "WARNING: password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
        .0.display()
    )]
    Insecure(PathBuf),
    /// The file is a directory, device, FIFO or socket.
    #[error("WARNING: password file \"{}\" is not a plain file", .0.display())]
    NotPlainFile(PathBuf),
    /// Not in libpq, which ignores such files silently: the file exists but could not be
    /// opened or read.
    #[error("WARNING: could not read password file \"{}\": {source}", .path.display())]
    Read {
        /// The password file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Not in libpq, which works on bytes: the matching line's password is not UTF-8.
    #[error("WARNING: password file \"{}\" line {line}: the password is not valid UTF-8", .path.display())]
    NotUtf8 {
        /// The password file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
    },
}

/// `$HOME/.pgpass`, where libpq looks when neither `passfile` nor `PGPASSFILE` is set. `None`
/// when `HOME` is unset or empty (libpq would then ask `getpwuid`; pgclone does not).
pub fn default_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".pgpass"))
}

/// The password for a connection from the password file at `path`, or `Ok(None)` when no line
/// matches, the file does not exist, or `dbname` or `user` is empty (libpq does not look
/// then). See the module documentation for what to pass. An `Err` is a warning to print; the
/// file is then ignored, as libpq ignores it.
pub fn lookup(
    path: &Path,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Result<Option<String>, PassfileError> {
    if dbname.is_empty() || user.is_empty() {
        return Ok(None);
    }
    let host = if host.is_empty() { "localhost" } else { host };
    let port = if port.is_empty() { DEFAULT_PORT } else { port };
    let read_error = |source| PassfileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(PassfileError::NotPlainFile(path.to_owned()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(PassfileError::Insecure(path.to_owned()));
        }
    }
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(read_error)? == 0 {
            return Ok(None);
        }
        number += 1;
        if line.first() == Some(&b'#') {
            continue;
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        if let Some(password) = match_line(&line, &[host, port, dbname, user]) {
            return String::from_utf8(password)
                .map(Some)
                .map_err(|_| PassfileError::NotUtf8 {
                    path: path.to_owned(),
                    line: number,
                });
        }
    }
}

/// Opens without blocking on a FIFO (libpq's `fopen` would hang there; the file-type check
/// then refuses it).
fn open(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// The de-escaped password if the line's first fields match `tokens` in order.
fn match_line(line: &[u8], tokens: &[&str]) -> Option<Vec<u8>> {
    let mut rest = line;
    for token in tokens {
        rest = match_field(rest, token.as_bytes())?;
    }
    let mut password = Vec::with_capacity(rest.len());
    let mut i = 0;
    while let Some(&c) = rest.get(i) {
        if c == b':' {
            break;
        }
        if c == b'\\' && i + 1 < rest.len() {
            i += 1;
        }
        password.push(rest[i]);
        i += 1;
    }
    Some(password)
}

/// libpq's `pwdfMatchesString`: the rest of the line after this field if the field matches
/// `token`. `*` alone matches anything; a backslash makes the next byte literal. As in libpq,
/// an unescaped `:` in the file also matches a `:` in the token (an IPv6 address) while the
/// token is not used up.
fn match_field<'a>(buf: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if buf.starts_with(b"*:") {
        return Some(&buf[2..]);
    }
    let mut b = 0;
    let mut t = 0;
    while b < buf.len() {
        let mut escaped = false;
        if buf[b] == b'\\' {
            b += 1;
            escaped = true;
        }
        let c = buf.get(b).copied();
        if c == Some(b':') && t == token.len() && !escaped {
            return Some(&buf[b + 1..]);
        }
        if t == token.len() || c != Some(token[t]) {
            return None;
        }
        b += 1;
        t += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn passfile(dir: &tempfile::TempDir, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.path().join("pgpass");
        let mut f = File::create(&path).expect("create");
        f.write_all(content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    /// Looks each file up for a connection (host, port, dbname, user) and checks the password.
    fn check(cases: &[(&str, [&str; 4], Option<&str>)]) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (content, [host, port, db, user], want) in cases {
            let path = passfile(&dir, content.as_bytes(), 0o600);
            let got = lookup(&path, host, port, db, user);
            assert_eq!(
                got.as_ref().ok(),
                Some(&want.map(str::to_owned)),
                "{content:?} {host} {port} {db} {user}"
            );
        }
    }

    #[test]
    fn matches_like_libpq() {
        // (file, expected password) for host h, port 5432, database db, user u.
        let cases: &[(&str, Option<&str>)] = &[
            ("h:5432:db:u:pw\n", Some("pw")),
            ("h:5432:db:u:pw", Some("pw")),
            ("h:5432:db:u:pw\r\n", Some("pw")),
            ("h:5432:db:u:pw\r\r\n", Some("pw")),
            ("h:5432:db:u:pw  \n", Some("pw  ")),
            ("h:5432:db:u:\n", Some("")),
            ("h:5432:db:u\n", None),
            ("hh:5432:db:u:pw\n", None),
            ("*:5432:*:u:pw\n", Some("pw")),
            ("**:5432:db:u:pw\n", None),
            // Escapes in fields and in the password.
            (r"h:5432:db:u:a\bc", Some("abc")),
            (r"h:5432:db:u:abc\", Some(r"abc\")),
            (r"h:5432:db:u:\*", Some("*")),
            (r"\*:5432:db:u:pw", None),
            // Fields after the password are ignored.
            ("h:5432:db:u:pw:extra\n", Some("pw")),
            // Comments, blank lines, first match wins.
            ("#h:5432:db:u:no\nh:5432:db:u:yes\n", Some("yes")),
            (" #h:5432:db:u:pw\n", None),
            ("\n\r\nh:5432:db:u:pw\n", Some("pw")),
            // Case matters.
            ("H:5432:db:u:pw\n", None),
            ("h:5432:db:u:pässwört\n", Some("pässwört")),
            ("", None),
        ];
        let default: Vec<_> = cases
            .iter()
            .map(|(file, want)| (*file, ["h", "5432", "db", "u"], *want))
            .collect();
        check(&default);

        // Other connections.
        let rep = ["h", "6000", "replication", "rep"];
        let any = ["h", "1", "d", "u"];
        let escaped = ["h", "5432", "d:b", r"u\x"];
        let v6 = ["::1", "5432", "db", "u"];
        let local = ["localhost", "5432", "db", "u"];
        let tmp = ["/tmp", "5432", "db", "u"];
        check(&[
            ("h:5432:db:u:pw\n", ["other", "5432", "db", "u"], None),
            ("h:5432:db:u:pw\n", ["h", "5433", "db", "u"], None),
            ("h:5432:db:u:pw\n", ["h", "5432", "db2", "u"], None),
            ("h:5432:db:u:pw\n", ["h", "5432", "db", "u2"], None),
            ("h:5432:db:u:pw\n", ["hh", "5432", "db", "u"], None),
            ("*:*:*:*:any\n", any, Some("any")),
            ("h:*:replication:rep:r\n", rep, Some("r")),
            ("*:5432:*:u:pw\n", ["x", "5432", "y", "u"], Some("pw")),
            ("h*:5432:db:u:pw\n", ["hx", "5432", "db", "u"], None),
            ("h*:5432:db:u:pw\n", ["h*", "5432", "db", "u"], Some("pw")),
            (r"h:5432:d\:b:u\\x:p\:w\\", escaped, Some(r"p:w\")),
            (r"\*:5432:db:u:pw", ["*", "5432", "db", "u"], Some("pw")),
            // IPv6: escaped or not, as libpq.
            (r"\:\:1:5432:db:u:pw", v6, Some("pw")),
            ("::1:5432:db:u:pw", v6, Some("pw")),
            // First match wins.
            ("h:*:*:u:first\n*:*:*:*:second\n", any, Some("first")),
            ("x:*:*:u:first\n*:*:*:*:second\n", any, Some("second")),
            // Socket connections: the caller passes localhost; empty host and port default.
            ("localhost:5432:db:u:pw\n", local, Some("pw")),
            ("localhost:5432:db:u:pw\n", ["", "", "db", "u"], Some("pw")),
            ("/tmp:5432:db:u:pw\n", tmp, Some("pw")),
            ("localhost:5432:db:u:pw\n", tmp, None),
            // libpq does not look without a database or user name.
            ("*:*:*:*:pw\n", ["h", "5432", "", "u"], None),
            ("*:*:*:*:pw\n", ["h", "5432", "db", ""], None),
        ]);
    }

    #[test]
    fn refuses_group_or_world_access() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o640, 0o604, 0o660, 0o644, 0o610, 0o601, 0o777] {
            let path = passfile(&dir, b"*:*:*:*:hunter2\n", mode);
            let err = lookup(&path, "h", "5432", "db", "u").expect_err("insecure");
            assert!(matches!(err, PassfileError::Insecure(_)), "{mode:o}");
            assert_eq!(
                err.to_string(),
                format!(
                    "WARNING: password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                    path.display()
                )
            );
        }
        for mode in [0o600, 0o400, 0o700] {
            let path = passfile(&dir, b"*:*:*:*:pw\n", mode);
            assert_eq!(
                lookup(&path, "h", "5432", "db", "u").ok(),
                Some(Some("pw".to_owned())),
                "{mode:o}"
            );
        }
    }

    #[test]
    fn missing_file_is_no_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let got = lookup(&dir.path().join("nope"), "h", "5432", "db", "u");
        assert_eq!(got.ok(), Some(None));
    }

    #[test]
    fn not_a_plain_file_is_ignored_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("dir");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let err = lookup(&sub, "h", "5432", "db", "u").expect_err("directory");
        assert!(matches!(err, PassfileError::NotPlainFile(_)));
        assert_eq!(
            err.to_string(),
            format!(
                "WARNING: password file \"{}\" is not a plain file",
                sub.display()
            )
        );

        // A FIFO must not hang the lookup.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("cstring");
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = lookup(&fifo, "h", "5432", "db", "u").expect_err("fifo");
        assert!(matches!(err, PassfileError::NotPlainFile(_)));
    }

    #[test]
    fn non_utf8_password_is_a_warning_without_the_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = passfile(&dir, b"# c\nh:5432:db:u:hunter\xff2\n", 0o600);
        let err = lookup(&path, "h", "5432", "db", "u").expect_err("not utf-8");
        assert!(
            matches!(err, PassfileError::NotUtf8 { line: 2, .. }),
            "{err:?}"
        );
        // Other lines may be anything.
        let path = passfile(&dir, b"\xff:*:*:*:x\nh:5432:db:u:pw\n", 0o600);
        assert_eq!(
            lookup(&path, "h", "5432", "db", "u").ok(),
            Some(Some("pw".to_owned()))
        );
    }

    #[test]
    fn errors_never_show_the_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = passfile(&dir, b"*:*:*:*:hunter2\xff\n", 0o644);
        let insecure = lookup(&path, "h", "5432", "db", "u").expect_err("insecure");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let not_utf8 = lookup(&path, "h", "5432", "db", "u").expect_err("not utf-8");
        for err in [insecure, not_utf8] {
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn default_path_is_under_home() {
        // Only read HOME: tests run in parallel, so setting it here would race.
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => assert_eq!(default_path(), Some(Path::new(&home).join(".pgpass"))),
            None => assert_eq!(default_path(), None),
        }
    }
}
