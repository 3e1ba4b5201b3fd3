//! `pgclone generate` from the built binary: the manual pages are roff that names the flags
//! and the subcommands, and the bash completion script is valid bash that completes the
//! values of `--wal-method`.

mod support;

use std::fs;
use std::process::Command;

use support::{pgclone_cmd, TestDir};

/// `pgclone generate man DIR` writes `pgclone.1` (a `.TH` page, after the two lines that
/// define the apostrophe string `Aq` the page uses, documenting `--pgdata` and naming
/// `pgclone-verify(1)` and `pgclone-check(1)`), `pgclone-verify.1` and `pgclone-check.1`, and
/// prints their paths.
#[test]
fn man_pages_are_roff_with_the_flags_and_subcommands() {
    let work = TestDir::new("generate-man");
    let dir = work.join("man1");
    let run = pgclone_cmd()
        .direct()
        .args(["generate", "man"])
        .arg(&dir)
        .run();
    run.assert_ok();
    let page = dir.join("pgclone.1");
    let verify = dir.join("pgclone-verify.1");
    let check = dir.join("pgclone-check.1");
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [&page, &verify, &check].map(|p| p.display().to_string())
    );
    let roff = fs::read_to_string(&page).expect("pgclone.1");
    let body: Vec<&str> = roff
        .lines()
        .skip_while(|l| l.starts_with(".ie ") || l.starts_with(".el "))
        .collect();
    assert!(body[0].starts_with(".TH pgclone 1"), "{roff}");
    assert!(roff.lines().take(2).all(|l| l.contains(".ds Aq")), "{roff}");
    for needle in [
        r"\-\-pgdata",
        r"\-\-wal\-method",
        "pgclone\\-verify(1)",
        "pgclone\\-check(1)",
        "stream",
    ] {
        assert!(roff.contains(needle), "{needle} not in pgclone.1");
    }
    assert!(
        !roff.contains("generate"),
        "the hidden subcommand stays out"
    );
    let verify_roff = fs::read_to_string(&verify).expect("pgclone-verify.1");
    assert!(verify_roff.contains(r"\-\-manifest\-path"), "{verify_roff}");
}

/// What bash's completion function offers for the words of a command line (the last word is
/// the one being completed).
fn complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let words_array: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let code = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={cword}; \
         _pgclone pgclone '{}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words_array.join(" "),
        words[cword],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &code])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    got.sort();
    got
}

/// `pgclone generate completions bash` prints a script `bash -n` accepts whose function
/// completes `--wal-method`/`-X` with the WAL methods, options by prefix, and the `verify`
/// subcommand; the other shells' scripts are generated too.
#[test]
fn bash_completion_completes_wal_methods() {
    let work = TestDir::new("generate-completions");
    let run = pgclone_cmd()
        .direct()
        .args(["generate", "completions", "bash"])
        .run();
    run.assert_ok();
    let script = work.join("pgclone.bash");
    fs::write(&script, &run.stdout).expect("write the script");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash -n");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    assert_eq!(
        complete(&script, &["pgclone", "--wal-method", ""]),
        ["fetch", "none", "stream"]
    );
    assert_eq!(
        complete(&script, &["pgclone", "-D", "/x", "-X", "s"]),
        ["stream"]
    );
    assert_eq!(complete(&script, &["pgclone", "--wal-m"]), ["--wal-method"]);
    assert!(complete(&script, &["pgclone", "ver"]).contains(&"verify".to_owned()));

    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let run = pgclone_cmd()
            .direct()
            .args(["generate", "completions", shell])
            .run();
        run.assert_ok();
        assert!(run.stdout.contains("wal-method"), "{shell}: {}", run.stdout);
    }
}
