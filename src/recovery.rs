//! `-R`: the standby configuration written into the clone, as pure functions of what the
//! connection actually used ([`primary_conninfo`]) and the server version.
//!
//! - Servers 10–11: `recovery.conf` with `standby_mode = 'on'`, `primary_conninfo` and
//!   `primary_slot_name` when a slot was named.
//! - Servers 12+: the same settings (without `standby_mode`) appended to
//!   `postgresql.auto.conf`, and an empty `standby.signal`.
//!
//! `primary_conninfo` holds only keys this standby's server understands and only what the
//! connection used: host, port, user, password (if one was sent), application_name (if set),
//! dbname (17+, if given). pg_basebackup instead writes every key its own libpq knows, which
//! breaks standbys of older servers (`invalid connection option "channel_binding"`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pgclone_proto::startup::AuthMethod;
use pgclone_proto::ServerVersion;

use crate::conn::conninfo::quote_value;
use crate::conn::{ChannelBinding, ConnParams, RootCert, Secret, ServerInfo, SslMode, TlsSettings};
use crate::error::Error;
use crate::sink::fs::{self as sinkfs, Existing};

/// What the standby needs to know to connect to its primary.
#[derive(Clone, PartialEq, Eq)]
pub struct PrimaryConnInfo {
    /// Host name, address, or socket directory that answered.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role.
    pub user: String,
    /// Password, if one was used to authenticate (and did not come from a passfile).
    pub password: Option<String>,
    /// The passfile the password came from, if it did.
    pub passfile: Option<String>,
    /// `application_name`, if set explicitly.
    pub application_name: Option<String>,
    /// `dbname` from `-d` (written for 17+ servers, for slot synchronization).
    pub dbname: Option<String>,
    /// TLS settings the connection used: `sslmode` and friends.
    pub tls: TlsUsed,
}

/// The TLS settings worth repeating in `primary_conninfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsUsed {
    /// `sslmode`, when TLS was used or the mode was set.
    pub sslmode: Option<String>,
    /// `sslrootcert` (a path, or `system` on 16+).
    pub sslrootcert: Option<String>,
    /// `sslcert` and `sslkey`.
    pub client_cert: Option<(String, String)>,
    /// `channel_binding` (13+ standbys), when set explicitly.
    pub channel_binding: Option<String>,
    /// `sslnegotiation=direct` (17+ standbys).
    pub direct: bool,
}

impl std::fmt::Debug for PrimaryConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("application_name", &self.application_name)
            .field("dbname", &self.dbname)
            .field("tls", &self.tls)
            .finish()
    }
}

impl PrimaryConnInfo {
    /// The libpq connection string, with values quoted as libpq parses them.
    pub fn conninfo(&self, version: ServerVersion) -> String {
        let mut parts = vec![format!("user={}", quote_value(&self.user))];
        if let Some(p) = &self.password {
            parts.push(format!("password={}", quote_value(p)));
        }
        if let Some(f) = &self.passfile {
            parts.push(format!("passfile={}", quote_value(f)));
        }
        parts.push(format!("host={}", quote_value(&self.host)));
        parts.push(format!("port={}", self.port));
        if let Some(a) = &self.application_name {
            parts.push(format!("application_name={}", quote_value(a)));
        }
        if let (Some(d), true) = (&self.dbname, version.is_at_least(17)) {
            parts.push(format!("dbname={}", quote_value(d)));
        }
        if let Some(mode) = &self.tls.sslmode {
            parts.push(format!("sslmode={}", quote_value(mode)));
        }
        if let Some(root) = &self.tls.sslrootcert {
            if root != "system" || version.is_at_least(16) {
                parts.push(format!("sslrootcert={}", quote_value(root)));
            }
        }
        if let Some((cert, key)) = &self.tls.client_cert {
            parts.push(format!("sslcert={}", quote_value(cert)));
            parts.push(format!("sslkey={}", quote_value(key)));
        }
        if let (Some(cb), true) = (&self.tls.channel_binding, version.is_at_least(13)) {
            parts.push(format!("channel_binding={}", quote_value(cb)));
        }
        if self.tls.direct && version.is_at_least(17) {
            parts.push("sslnegotiation=direct".into());
        }
        parts.join(" ")
    }
}

/// What `-R` writes into `primary_conninfo` for the connection described by `info` (opened
/// with `params`): only what this connection used.
pub fn primary_conninfo(info: &ServerInfo, params: &ConnParams) -> PrimaryConnInfo {
    let (password, passfile) = password_used(info.password.as_ref(), info.auth);
    PrimaryConnInfo {
        host: info.host.as_conninfo_value(),
        port: info.port,
        user: params.user.clone(),
        password,
        passfile,
        application_name: params
            .application_name_explicit
            .then(|| params.application_name.clone()),
        dbname: params.dbname.clone(),
        tls: tls_used(&params.tls, info.tls),
    }
}

/// The password to repeat, or the passfile it came from: a password from a passfile is
/// referred to by the file, not copied (as libpq `-R` does); none when the server trusted us.
fn password_used(
    used: Option<&(Secret, Option<PathBuf>)>,
    auth: AuthMethod,
) -> (Option<String>, Option<String>) {
    match (used, auth != AuthMethod::Trust) {
        (Some((_, Some(file))), true) => (None, Some(file.display().to_string())),
        (Some((secret, None)), true) => (Some(secret.expose().to_owned()), None),
        _ => (None, None),
    }
}

/// The TLS settings the connection used (`encrypted`: whether it is), for `primary_conninfo`.
fn tls_used(t: &TlsSettings, encrypted: bool) -> TlsUsed {
    let mode_set = t.mode != SslMode::Prefer;
    TlsUsed {
        sslmode: (encrypted || mode_set).then(|| t.mode.name().to_owned()),
        sslrootcert: match (&t.root_cert, encrypted) {
            (Some(RootCert::System), true) => Some("system".into()),
            (Some(RootCert::File(p)), true) if t.mode.requires_tls() || t.root_cert_explicit => {
                Some(p.display().to_string())
            }
            _ => None,
        },
        client_cert: match (&t.client_cert, encrypted) {
            (Some((c, k)), true) => Some((c.display().to_string(), k.display().to_string())),
            _ => None,
        },
        channel_binding: (t.channel_binding != ChannelBinding::Prefer)
            .then(|| t.channel_binding.name().to_owned()),
        direct: t.direct && encrypted,
    }
}

/// A value in a configuration file: single-quoted, with `'` and `\` doubled (what
/// pg_basebackup's `escape_single_quotes_ascii` does; the server's parser undoes it).
fn config_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The recovery settings text for a server of `version`.
pub fn settings(info: &PrimaryConnInfo, slot: Option<&str>, version: ServerVersion) -> String {
    let mut text = String::new();
    if !version.is_at_least(12) {
        text.push_str("standby_mode = 'on'\n");
    }
    text.push_str(&format!(
        "primary_conninfo = {}\n",
        config_string(&info.conninfo(version))
    ));
    if let Some(slot) = slot {
        text.push_str(&format!("primary_slot_name = {}\n", config_string(slot)));
    }
    text
}

/// The mode of the file holding `info`'s settings (`postgresql.auto.conf`, `recovery.conf`):
/// the clone's file mode `mode`, but owner-only (0600) when the settings hold a password,
/// where pg_basebackup 18 writes 0640 with group access. Other files (`standby.signal`) keep
/// `mode`.
pub fn settings_mode(info: &PrimaryConnInfo, mode: u32) -> u32 {
    if info.password.is_some() {
        mode & 0o600
    } else {
        mode
    }
}

/// Writes the standby configuration into the data directory `dest`. Files written or appended
/// to get `mode`, the clone's file mode (0600, or 0640 when the server allows group access, as
/// pg_basebackup 18 writes them), except that the settings file is 0600 when it holds a
/// password ([`settings_mode`]); never wider, even where the server's `postgresql.auto.conf`
/// was.
pub fn write(
    dest: &Path,
    info: &PrimaryConnInfo,
    slot: Option<&str>,
    version: ServerVersion,
    mode: u32,
) -> Result<(), Error> {
    let text = settings(info, slot, version);
    let settings_mode = settings_mode(info, mode);
    if version.is_at_least(12) {
        let auto = dest.join("postgresql.auto.conf");
        let mut f = sinkfs::open(&auto, Existing::Append, settings_mode)
            .map_err(Error::fs("open", &auto))?;
        f.write_all(text.as_bytes())
            .map_err(Error::fs("write to file", &auto))?;
        f.set_permissions(fs::Permissions::from_mode(settings_mode))
            .map_err(Error::fs("set permissions of file", &auto))?;
        let signal = dest.join("standby.signal");
        sinkfs::write_file(&signal, b"", mode).map_err(Error::fs("write file", &signal))?;
    } else {
        let conf = dest.join("recovery.conf");
        sinkfs::write_file(&conf, text.as_bytes(), settings_mode)
            .map_err(Error::fs("write file", &conf))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::conninfo;

    fn info(password: Option<&str>) -> PrimaryConnInfo {
        PrimaryConnInfo {
            host: "master".into(),
            port: 5432,
            user: "replication".into(),
            password: password.map(str::to_owned),
            passfile: None,
            application_name: None,
            dbname: Some("app".into()),
            tls: TlsUsed::default(),
        }
    }

    #[test]
    fn tls_settings_only_where_the_standby_understands_them() {
        let mut i = info(None);
        i.tls = TlsUsed {
            sslmode: Some("verify-full".into()),
            sslrootcert: Some("/etc/ca.crt".into()),
            client_cert: None,
            channel_binding: Some("require".into()),
            direct: true,
        };
        let v12 = i.conninfo(ServerVersion(120000));
        assert!(
            v12.contains("sslmode='verify-full' sslrootcert='/etc/ca.crt'"),
            "{v12}"
        );
        assert!(
            !v12.contains("channel_binding") && !v12.contains("sslnegotiation"),
            "{v12}"
        );
        let v17 = i.conninfo(ServerVersion(170000));
        assert!(
            v17.contains("channel_binding=require") && v17.contains("sslnegotiation=direct"),
            "{v17}"
        );
    }

    #[test]
    fn password_is_repeated_only_when_sent_and_passfile_by_name() {
        let typed = (Secret::new("pw".into()), None);
        let from_file = (
            Secret::new("pw".into()),
            Some(PathBuf::from("/home/u/.pgpass")),
        );
        assert_eq!(
            password_used(Some(&typed), AuthMethod::ScramSha256),
            (Some("pw".into()), None)
        );
        assert_eq!(
            password_used(Some(&from_file), AuthMethod::Md5),
            (None, Some("/home/u/.pgpass".into()))
        );
        assert_eq!(password_used(Some(&typed), AuthMethod::Trust), (None, None));
        assert_eq!(password_used(None, AuthMethod::Cleartext), (None, None));
    }

    #[test]
    fn tls_used_repeats_what_the_connection_used() {
        let default = TlsSettings::default();
        assert_eq!(tls_used(&default, false), TlsUsed::default());
        let plain_tls = tls_used(&default, true);
        assert_eq!(plain_tls.sslmode.as_deref(), Some("prefer"));
        assert_eq!(plain_tls.sslrootcert, None);

        let t = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some(RootCert::File(PathBuf::from("/etc/ca.crt"))),
            client_cert: Some((PathBuf::from("/c.crt"), PathBuf::from("/c.key"))),
            direct: true,
            channel_binding: ChannelBinding::Require,
            ..TlsSettings::default()
        };
        let used = tls_used(&t, true);
        assert_eq!(used.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(used.sslrootcert.as_deref(), Some("/etc/ca.crt"));
        assert_eq!(
            used.client_cert,
            Some(("/c.crt".to_owned(), "/c.key".to_owned()))
        );
        assert_eq!(used.channel_binding.as_deref(), Some("require"));
        assert!(used.direct);

        // Unencrypted: the mode and channel binding were set, nothing of TLS was used.
        let unused = tls_used(&t, false);
        assert_eq!(unused.sslmode.as_deref(), Some("verify-full"));
        assert_eq!((unused.sslrootcert, unused.client_cert), (None, None));
        assert!(!unused.direct);

        // A default root certificate counts only when TLS is required or it was named.
        let prefer = TlsSettings {
            root_cert: Some(RootCert::File(PathBuf::from(
                "/home/u/.postgresql/root.crt",
            ))),
            ..TlsSettings::default()
        };
        assert_eq!(tls_used(&prefer, true).sslrootcert, None);
        let system = TlsSettings {
            mode: SslMode::Require,
            root_cert: Some(RootCert::System),
            ..TlsSettings::default()
        };
        assert_eq!(
            tls_used(&system, true).sslrootcert.as_deref(),
            Some("system")
        );
    }

    #[test]
    fn settings_for_10_and_12() {
        let v10 = ServerVersion(100023);
        assert_eq!(
            settings(&info(Some("replication")), None, v10),
            "standby_mode = 'on'\nprimary_conninfo = 'user=replication password=replication host=master port=5432'\n"
        );
        let v12 = ServerVersion(120022);
        assert_eq!(
            settings(&info(None), Some("slot_1"), v12),
            "primary_conninfo = 'user=replication host=master port=5432'\nprimary_slot_name = 'slot_1'\n"
        );
        assert!(settings(&info(None), None, ServerVersion(170000)).contains("dbname=app"));
    }

    #[test]
    fn hostile_values_survive_both_layers_of_quoting() {
        let pw = r"se'cr\et x=y";
        let text = settings(&info(Some(pw)), None, ServerVersion(150000));
        // Undo the configuration-file layer: strip the quotes, un-double ' and \.
        let line = text.lines().next().expect("line");
        let quoted = line.strip_prefix("primary_conninfo = ").expect("key");
        let inner = &quoted[1..quoted.len() - 1];
        let unescaped = inner.replace("''", "'").replace(r"\\", r"\");
        let parsed = conninfo::parse(&unescaped).expect("libpq syntax");
        assert_eq!(parsed.get("password").map(String::as_str), Some(pw));
        assert_eq!(parsed.get("host").map(String::as_str), Some("master"));
    }

    #[test]
    fn debug_hides_password() {
        assert!(!format!("{:?}", info(Some("hunter2"))).contains("hunter2"));
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    /// Every file `-R` writes has the clone's file mode: 0600, or 0640 with group access,
    /// except the settings file when it holds a password (0600); a server's
    /// `postgresql.auto.conf` wider than that is narrowed.
    #[test]
    fn writes_files_with_the_clone_file_mode() {
        for mode in [0o600, 0o640] {
            let tmp = tempfile::tempdir().expect("tmp");
            let auto = tmp.path().join("postgresql.auto.conf");
            fs::write(&auto, "# server's\n").expect("write");
            fs::set_permissions(&auto, fs::Permissions::from_mode(0o644)).expect("chmod");
            write(
                tmp.path(),
                &info(Some("pw")),
                Some("s"),
                ServerVersion(160000),
                mode,
            )
            .expect("write");
            let text = fs::read_to_string(&auto).expect("read");
            assert!(text.starts_with("# server's\nprimary_conninfo = "));
            assert_eq!(mode_of(&auto), 0o600);
            assert_eq!(mode_of(&tmp.path().join("standby.signal")), mode);

            let tmp = tempfile::tempdir().expect("tmp");
            write(tmp.path(), &info(None), None, ServerVersion(110000), mode).expect("write");
            let conf = tmp.path().join("recovery.conf");
            assert!(fs::read_to_string(&conf)
                .expect("read")
                .starts_with("standby_mode = 'on'\n"));
            assert_eq!(mode_of(&conf), mode);
            assert!(!tmp.path().join("standby.signal").exists());

            let tmp = tempfile::tempdir().expect("tmp");
            write(tmp.path(), &info(None), None, ServerVersion(160000), mode).expect("write");
            assert_eq!(mode_of(&tmp.path().join("postgresql.auto.conf")), mode);
            let tmp = tempfile::tempdir().expect("tmp");
            write(
                tmp.path(),
                &info(Some("pw")),
                None,
                ServerVersion(110000),
                mode,
            )
            .expect("write");
            assert_eq!(mode_of(&tmp.path().join("recovery.conf")), 0o600);
        }
    }
}
