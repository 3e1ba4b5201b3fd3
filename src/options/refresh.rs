//! `--refresh`: the flags it cannot go with, checked before any other combination so that the
//! message names `--refresh`. It rewrites an existing plain data directory in place: no backup
//! target, no tar format, no `-i` (the reference comes from the directory), no WAL inside the
//! archive (`-X fetch`: the WAL is streamed, or left to the standby with `-X none`), no
//! `--waldir` (the directory's own `pg_wal` is used; a link there is kept), no server-side
//! compression (members are applied as they arrive), and a manifest (the new `backup_manifest`
//! takes its WAL ranges and checksums from the server's).

use std::fs;
use std::path::Path;

use crate::error::{os_text, Error};
use crate::options::cli::Args;
use crate::sink::codec::{self, Compression};

/// Refuses the flags `--refresh` cannot go with, then checks that `-D` names an existing
/// directory. Reads nothing inside it (that is the run's preflight).
pub fn check(args: &Args) -> Result<(), Error> {
    let o = &args.output;
    let refused = |what: &str| Err(Error::Usage(format!("--refresh {what}")));
    if o.incremental.is_some() {
        return refused("and -i/--incremental are incompatible options");
    }
    if o.target.as_deref().is_some_and(|t| t != "client") {
        return refused("cannot be used with a backup target (-t)");
    }
    if matches!(o.format.as_deref(), Some(f) if f != "p" && f != "plain") {
        return refused("only works in plain format");
    }
    if matches!(o.wal_method.as_deref(), Some("f" | "fetch")) {
        return refused("cannot be used with -X fetch; use -X stream (the default) or -X none");
    }
    if o.waldir.is_some() {
        return refused(
            "keeps the data directory's own pg_wal (a link to a WAL directory stays a link); \
             --waldir cannot be used with it",
        );
    }
    let server_compressed = o
        .compress
        .as_deref()
        .is_some_and(|z| matches!(codec::spec::parse(z, false), Ok(Compression::Server { .. })));
    if server_compressed {
        return refused("cannot be used with server-side compression");
    }
    if args.general.no_manifest {
        return refused("needs the server's backup manifest; --no-manifest cannot be used with it");
    }
    let dir = match o.pgdata.as_deref() {
        Some(d) if !d.as_os_str().is_empty() && d != Path::new("-") => d,
        _ => return refused("needs -D naming the existing data directory to refresh"),
    };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Usage(format!(
            "--refresh needs an existing data directory: \"{}\" is not a directory",
            dir.display()
        ))),
        Err(e) => Err(Error::Usage(format!(
            "--refresh needs an existing data directory: \"{}\": {}",
            dir.display(),
            os_text(&e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use crate::options::config::tests::{config, usage_message};

    #[test]
    fn refresh_refuses_what_it_cannot_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("utf8");
        for (extra, msg) in [
            (
                &["-i", "/m"][..],
                "--refresh and -i/--incremental are incompatible options",
            ),
            (&["-F", "t"][..], "--refresh only works in plain format"),
            (
                &["-X", "fetch"][..],
                "--refresh cannot be used with -X fetch",
            ),
            (&["--waldir", "/w"][..], "--waldir cannot be used with it"),
            (
                &["-Z", "server-gzip"][..],
                "--refresh cannot be used with server-side compression",
            ),
            (
                &["--no-manifest"][..],
                "--no-manifest cannot be used with it",
            ),
        ] {
            let mut argv = vec!["--refresh", "-U", "u", "-D", d];
            argv.extend_from_slice(extra);
            let m = usage_message(&argv);
            assert!(m.contains(msg), "{argv:?}: {m}");
        }
        let m = usage_message(&["--refresh", "-U", "u", "-t", "blackhole"]);
        assert!(m.contains("backup target"), "{m}");
        let missing = dir.path().join("nope");
        let m = usage_message(&[
            "--refresh",
            "-U",
            "u",
            "-D",
            missing.to_str().expect("utf8"),
        ]);
        assert!(m.contains("No such file or directory"), "{m}");
        let c = config(&["--refresh", "-U", "u", "-D", d, "-R", "-X", "none"]).expect("valid");
        assert!(c.refresh && c.write_recovery_conf);
        assert!(!config(&["-U", "u", "-D", d]).expect("valid").refresh);
    }
}
