//! TLS against real servers with certificates made at test time (openssl CLI): every sslmode
//! against TLS-on and TLS-off servers as libpq's table says, a host name that does not match,
//! client-certificate authentication, SCRAM-SHA-256-PLUS (proved with channel_binding=require)
//! on 11 and 18, and a `-R` replica that streams over TLS.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{checked_output, pgclone_cmd, Cluster, ClusterOptions, TestDir};

const PASSWORD: &str = "tls-pw";

struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// Runs `openssl` in `dir` with the words of `args`, then `more` as they are.
fn openssl(dir: &Path, args: &str, more: &[&str]) {
    checked_output(
        Command::new("openssl")
            .args(args.split_whitespace())
            .args(more)
            .current_dir(dir),
        &format!("openssl {args} {more:?}"),
    );
}

/// `<name>.key` and `<name>.crt` for `subj`, signed by `ca.crt` with the extensions `ext`.
fn signed_cert(dir: &Path, name: &str, subj: &str, ext: &str) {
    let req = format!("req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj");
    openssl(dir, &req, &[subj]);
    fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
    let sign = format!(
        "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt \
         -days 2 -extfile {name}.ext"
    );
    openssl(dir, &sign, &[]);
}

/// A CA, a server certificate for DNS:localhost only, and a client certificate for
/// `certuser`, all readable by the unprivileged account; keys 0600.
fn make_certs(work: &TestDir) -> Certs {
    let dir = work.mkdir("certs");
    let ca = "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj";
    openssl(&dir, ca, &["/CN=pgclone test CA"]);
    signed_cert(
        &dir,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost\n",
    );
    signed_cert(
        &dir,
        "client",
        "/CN=certuser",
        "extendedKeyUsage=clientAuth\n",
    );
    support::chown_to_pg_user(&dir);
    for key in ["server.key", "client.key", "ca.key"] {
        fs::set_permissions(dir.join(key), fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    Certs { dir }
}

fn server(major: u32, certs: Option<&Certs>) -> Cluster {
    let mut opts = ClusterOptions::new(major);
    opts.hba = vec![
        "hostssl replication replication 127.0.0.1/32 scram-sha-256".into(),
        "hostnossl replication plainonly 127.0.0.1/32 scram-sha-256".into(),
        "hostssl replication certuser 127.0.0.1/32 cert".into(),
        "host replication anyway 127.0.0.1/32 scram-sha-256".into(),
    ];
    if let Some(c) = certs {
        opts.conf = vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", c.path("server.crt")),
            format!("ssl_key_file = '{}'", c.path("server.key")),
            format!("ssl_ca_file = '{}'", c.path("ca.crt")),
        ];
    }
    let p = Cluster::start(&opts);
    for role in ["replication", "plainonly", "anyway"] {
        p.psql(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} WITH REPLICATION LOGIN PASSWORD '{PASSWORD}'"
        ));
    }
    p.psql("CREATE ROLE certuser WITH REPLICATION LOGIN");
    p
}

/// Runs a clone with this connection string; returns whether it succeeded (and the stderr).
fn try_clone(conninfo: &str) -> (bool, String) {
    let work = TestDir::new("tlsrun");
    let dest = work.join("copy");
    let run = pgclone_cmd()
        .args(["-d", conninfo])
        .dest(&dest)
        .args(["-X", "none", "-c", "fast", "-N", "--no-manifest"])
        .password(PASSWORD)
        .run();
    if !run.status.success() {
        assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
        assert!(!dest.exists());
    }
    (run.status.success(), run.stderr)
}

#[test]
fn sslmodes_follow_libpqs_table() {
    let work = TestDir::new("tls");
    let certs = make_certs(&work);
    let on = server(16, Some(&certs));
    let off = server(16, None);
    let root = certs.path("ca.crt");
    // (server, user, sslmode, expected success)
    let cases = [
        // hostssl user on a TLS server: plaintext is refused, TLS works.
        (&on, "replication", "disable", false),
        (&on, "replication", "allow", true),
        (&on, "replication", "prefer", true),
        (&on, "replication", "require", true),
        (&on, "replication", "verify-ca", true),
        (&on, "replication", "verify-full", true),
        // hostnossl user on a TLS server: only plaintext works; prefer falls back to it.
        (&on, "plainonly", "disable", true),
        (&on, "plainonly", "allow", true),
        (&on, "plainonly", "prefer", true),
        (&on, "plainonly", "require", false),
        // A server without TLS.
        (&off, "anyway", "disable", true),
        (&off, "anyway", "allow", true),
        (&off, "anyway", "prefer", true),
        (&off, "anyway", "require", false),
        (&off, "anyway", "verify-ca", false),
        (&off, "anyway", "verify-full", false),
    ];
    for (server, user, mode, ok) in cases {
        let conninfo = format!(
            "host=localhost port={} user={user} sslmode={mode} sslrootcert={root}",
            server.port
        );
        let (got, stderr) = try_clone(&conninfo);
        assert_eq!(got, ok, "{conninfo}:\n{stderr}");
        if !ok && std::ptr::eq(server, &off) {
            assert!(
                stderr.contains("server does not support SSL, but SSL was required"),
                "{stderr}"
            );
        }
    }
    // verify-full checks the name: the certificate is for localhost, not 127.0.0.1.
    let (ok, stderr) = try_clone(&format!(
        "host=127.0.0.1 port={} user=replication sslmode=verify-full sslrootcert={root}",
        on.port
    ));
    assert!(!ok);
    assert!(
        stderr.contains("does not match host name \"127.0.0.1\""),
        "{stderr}"
    );
    // An untrusted root fails verification.
    let (ok, stderr) = try_clone(&format!(
        "host=localhost port={} user=replication sslmode=verify-ca sslrootcert={}",
        on.port,
        certs.path("client.crt")
    ));
    assert!(!ok);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    // Client certificate authentication (pg_hba `cert`).
    let (ok, stderr) = try_clone(&format!(
        "host=localhost port={} user=certuser sslmode=verify-full sslrootcert={root} sslcert={} sslkey={}",
        on.port,
        certs.path("client.crt"),
        certs.path("client.key")
    ));
    assert!(ok, "{stderr}");
    // channel_binding=require on a server without TLS cannot work.
    let (ok, stderr) = try_clone(&format!(
        "host=localhost port={} user=anyway channel_binding=require",
        off.port
    ));
    assert!(!ok);
    assert!(stderr.contains("channel binding"), "{stderr}");
}

/// channel_binding=require only succeeds if SCRAM-SHA-256-PLUS was negotiated and the server
/// accepted the binding to its certificate.
#[test]
fn scram_plus_on_11_and_18() {
    let work = TestDir::new("plus");
    let certs = make_certs(&work);
    for major in [11, 18] {
        let s = server(major, Some(&certs));
        let (ok, stderr) = try_clone(&format!(
            "host=localhost port={} user=replication sslmode=verify-full sslrootcert={} channel_binding=require",
            s.port,
            certs.path("ca.crt")
        ));
        assert!(ok, "{major}: {stderr}");
        // md5 or trust cannot bind: require refuses them.
        let (ok, stderr) = try_clone(&format!(
            "host=localhost port={} user=certuser sslmode=require sslcert={} sslkey={} channel_binding=require",
            s.port,
            certs.path("client.crt"),
            certs.path("client.key")
        ));
        assert!(!ok, "{major}: cert auth cannot provide channel binding");
        assert!(stderr.contains("channel binding required"), "{stderr}");
    }
}

#[test]
fn replica_made_over_tls_streams_over_tls() {
    let work = TestDir::new("tlsrep");
    let certs = make_certs(&work);
    let p = server(17, Some(&certs));
    let dest = work.join("replica");
    let conninfo = format!(
        "host=localhost port={} user=replication sslmode=verify-full sslrootcert={}",
        p.port,
        certs.path("ca.crt")
    );
    pgclone_cmd()
        .args(["-d", &conninfo])
        .dest(&dest)
        .args(["-R", "-c", "fast"])
        .password(PASSWORD)
        .run()
        .assert_ok();
    let auto = fs::read_to_string(dest.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(auto.contains("sslmode=''verify-full''"), "{auto}");
    assert!(
        auto.contains(&format!("sslrootcert=''{}''", certs.path("ca.crt"))),
        "{auto}"
    );
    let replica = Cluster::start_existing(17, &dest, &[]);
    replica.wait_for(
        "SELECT status FROM pg_stat_wal_receiver",
        "streaming",
        Duration::from_secs(60),
    );
    p.wait_for(
        "SELECT bool_and(s.ssl) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
        "t",
        Duration::from_secs(60),
    );
}
