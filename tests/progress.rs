//! Progress by phase against real servers: the JSON events of a `-X stream -R` clone parsed
//! line by line (phases in order, growing bytes, the end with durations and the manifest
//! verdict) and of a `-X fetch` clone (the WAL spotted in the base archive); a spread
//! checkpoint, shown with its hint in the text and the JSON; a `--max-rate` clone whose time
//! left agrees with the time the copy then took; failures ending with an `error` event.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{free_port, pgclone_cmd, run_cmd, Cluster, ClusterOptions, Run, TestDir};

const WAIT: Duration = Duration::from_secs(60);

/// The events of a `--progress-file`, every line parsed (a line that does not parse fails the
/// test), each checked to carry schema version 1.
fn events(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).expect("progress file");
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{text}"));
            assert_eq!(v["v"], 1, "{line}");
            assert!(v["at"].as_u64().is_some(), "{line}");
            assert!(v["elapsed_ms"].as_u64().is_some(), "{line}");
            v
        })
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// The phases the `phase` events entered, in order.
fn phases(events: &[Value]) -> Vec<String> {
    of_kind(events, "phase")
        .iter()
        .map(|e| e["phase"].as_str().expect("phase name").to_owned())
        .collect()
}

/// The `end` event, which must be the last line.
fn end_event(events: &[Value]) -> &Value {
    let last = events.last().expect("events");
    assert_eq!(last["event"], "end", "the last event ends the run");
    assert_eq!(of_kind(events, "end").len(), 1);
    last
}

/// A clone with `--progress=json --progress-file <dest>.progress`; returns the run and the
/// events.
fn json_clone(p: &Cluster, dest: &Path, extra: &[&str]) -> (Run, Vec<Value>) {
    let file = dest.with_extension("progress");
    let run = pgclone_cmd()
        .server(p.port, "postgres")
        .dest(dest)
        .arg("--progress=json")
        .arg("--progress-file")
        .arg(&file)
        .args(extra)
        .run();
    let events = events(&file);
    (run, events)
}

/// The common checks of a successful run's events: the phase sequence, an `ok` end whose
/// durations name the same phases, progress events at most once a second with bytes that
/// never go back, and the end's bytes equal to the last count.
fn check_ok(events: &[Value], want: &[&str]) {
    assert_eq!(phases(events), want, "{events:#?}");
    let end = end_event(events);
    assert_eq!(end["outcome"], "ok", "{end}");
    assert_eq!(end["error"], Value::Null);
    let durations = end["phases"].as_object().expect("phases");
    let mut named: Vec<_> = durations.keys().collect();
    let mut wanted = want.to_vec();
    named.sort();
    wanted.sort_unstable();
    assert_eq!(named, wanted, "{end}");
    let progress = of_kind(events, "progress");
    let mut last = (0, 0);
    for e in &progress {
        let (bytes, at) = (
            e["bytes"].as_u64().expect("bytes"),
            e["at"].as_u64().expect("at"),
        );
        assert!(bytes >= last.0, "bytes went back: {e}");
        assert!(
            at >= last.1 + 900 || last.1 == 0,
            "two progress events within a second: {e}"
        );
        last = (bytes, at);
    }
    assert!(end["bytes"].as_u64().expect("bytes") >= last.0);
}

/// `-X stream -R` on 17: connecting, checkpoint, copying, wal, standby, sync (the settings are
/// written before the fsync, which covers them), an ok end with the manifest's verdict, the
/// WAL connection's flushed position in the progress events; the clone starts as a standby and
/// sees a row written after it. Then `-X fetch` into a second directory: the WAL is spotted
/// in the base archive (wal after copying, no standby).
#[test]
fn json_events_follow_the_phases() {
    let p = Cluster::start(&ClusterOptions::new(17));
    p.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g");
    let work = TestDir::new("progress-json");

    let dest = work.join("stream");
    // -r: a copy of about 2 s, for progress events while copying.
    let (run, events) = json_clone(&p, &dest, &["-c", "fast", "-R", "-r", "20M"]);
    run.assert_ok();
    check_ok(
        &events,
        &[
            "connecting",
            "checkpoint",
            "copying",
            "wal",
            "standby",
            "sync",
        ],
    );
    let end = end_event(&events);
    let check = &end["manifest_check"];
    assert!(
        check["files"].as_u64().expect("files checked") > 900,
        "{end}"
    );
    assert_eq!(check["mismatches"], 0);
    let copying: Vec<_> = of_kind(&events, "progress")
        .into_iter()
        .filter(|e| e["phase"] == "copying")
        .collect();
    assert!(!copying.is_empty(), "{events:#?}");
    for e in &copying {
        assert!(e["total_bytes"].as_u64().is_some(), "{e}");
        assert_eq!(e["tablespace"], "base", "{e}");
    }
    let flushed = of_kind(&events, "progress")
        .into_iter()
        .filter_map(|e| e["wal_flushed_lsn"].as_str())
        .next_back();
    assert!(flushed.is_some_and(|l| l.contains('/')), "{events:#?}");
    let checkpoint = &of_kind(&events, "phase")[1];
    assert_eq!(checkpoint["hint"], Value::Null, "no hint with -c fast");
    assert_eq!(checkpoint["previous"], "connecting");
    // The events went to the file; nothing else was said.
    assert_eq!(run.stderr, "");

    let standby = Cluster::start_existing(17, &dest, &[]);
    standby.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    p.psql("CREATE TABLE after_clone(x text); INSERT INTO after_clone VALUES ('after')");
    standby.wait_for(
        "SELECT count(*) FROM pg_tables WHERE tablename = 'after_clone'",
        "1",
        WAIT,
    );
    drop(standby);

    let dest = work.join("fetch");
    let (run, events) = json_clone(&p, &dest, &["-c", "fast", "-X", "fetch"]);
    run.assert_ok();
    check_ok(
        &events,
        &["connecting", "checkpoint", "copying", "wal", "sync"],
    );
    let flushed = of_kind(&events, "progress")
        .iter()
        .any(|e| e["wal_flushed_lsn"] != Value::Null);
    assert!(!flushed, "no WAL connection with -X fetch");

    // A failure once the backup runs: the end event says so, after the phases reached.
    let (run, events) = json_clone(&p, &work.join("noslot"), &["-c", "fast", "-S", "nosuch"]);
    assert!(!run.status.success());
    let end = end_event(&events);
    assert_eq!(end["outcome"], "error", "{end}");
    let error = end["error"].as_str().expect("error text");
    assert!(error.contains("nosuch"), "{error}");
    assert!(phases(&events).len() > 1, "{events:#?}");
}

/// A spread checkpoint (the default) on a server with a short `checkpoint_timeout` and dirty
/// buffers takes seconds: `-P` shows the checkpoint phase with the hint that `-c fast` starts
/// at once, and the summary its duration; `--progress=json` has the hint in the checkpoint's
/// phase event, and the checkpoint lasting over a second.
#[test]
fn a_spread_checkpoint_is_shown_with_its_hint() {
    let mut opts = ClusterOptions::new(16);
    opts.conf = vec![
        "checkpoint_timeout = 30s".into(),
        "checkpoint_completion_target = 0.9".into(),
    ];
    let p = Cluster::start(&opts);
    let work = TestDir::new("progress-spread");
    // A clean start, then some dirty buffers for the checkpointer to pace (about 0.1 s each).
    let dirty = "CHECKPOINT; CREATE TABLE IF NOT EXISTS d(v text); \
                 INSERT INTO d SELECT md5(g::text) FROM generate_series(1, 5000) g";

    p.psql(dirty);
    let run = pgclone_cmd()
        .server(p.port, "postgres")
        .dest(&work.join("text"))
        .arg("-P")
        .run();
    run.assert_ok();
    let hint = "-c fast starts at once";
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("waiting for the server's checkpoint: "))
        .unwrap_or_else(|| panic!("no checkpoint line:\n{}", run.stderr));
    assert!(line.contains(hint), "{line}");
    let summary = run.stderr.lines().last().expect("summary");
    assert!(summary.starts_with("done in "), "{summary}");
    assert!(summary.contains(", checkpoint "), "{summary}");
    assert!(run.stderr.lines().any(|l| l.contains("kB (100%)")));

    p.psql(dirty);
    let (run, events) = json_clone(&p, &work.join("json"), &[]);
    run.assert_ok();
    let checkpoint = of_kind(&events, "phase")
        .into_iter()
        .find(|e| e["phase"] == "checkpoint")
        .expect("checkpoint phase")
        .clone();
    assert!(checkpoint["hint"].as_str().expect("hint").contains(hint));
    let ms = end_event(&events)["phases"]["checkpoint"]
        .as_u64()
        .expect("ms");
    assert!(ms > 1000, "the spread checkpoint took {ms} ms");
    assert!(of_kind(&events, "progress")
        .iter()
        .any(|e| e["phase"] == "checkpoint" && e["bytes"] == 0));
}

/// `-r 3M` of a ~40 MB cluster: the time left announced at mid-copy is within half of the
/// time the copy then took (a check of the estimate, not of our speed).
#[test]
fn time_left_agrees_with_the_copy_under_max_rate() {
    let p = Cluster::start(&ClusterOptions::new(15));
    p.psql("CREATE TABLE big AS SELECT g, md5(g::text) AS v FROM generate_series(1, 150000) g");
    let work = TestDir::new("progress-rate");
    let (run, events) = json_clone(&p, &work.join("copy"), &["-c", "fast", "-r", "3M"]);
    run.assert_ok();
    let copy_end = of_kind(&events, "phase")
        .into_iter()
        .find(|e| e["previous"] == "copying")
        .expect("a phase after copying")["at"]
        .as_u64()
        .expect("at");
    let copying: Vec<_> = of_kind(&events, "progress")
        .into_iter()
        .filter(|e| e["phase"] == "copying" && e["eta_s"].is_u64())
        .collect();
    assert!(copying.len() >= 5, "{events:#?}");
    let fraction =
        |e: &Value| e["bytes"].as_f64().unwrap_or(0.0) / e["total_bytes"].as_f64().unwrap_or(1.0);
    let mid = copying
        .iter()
        .min_by_key(|e| ((fraction(e) - 0.5).abs() * 1000.0) as u64)
        .expect("a mid-copy event");
    let eta = mid["eta_s"].as_f64().expect("eta");
    let actual = (copy_end - mid["at"].as_u64().expect("at")) as f64 / 1000.0;
    assert!(
        (eta - actual).abs() <= 0.5 * actual,
        "at {:.0}% the time left was {eta} s, the copy took {actual:.1} s more: {mid}",
        fraction(mid) * 100.0
    );
    let rate = mid["rate_bytes_per_s"].as_f64().expect("rate");
    assert!(rate < 3.5e6, "the rate {rate} is the throttled one");
}

/// `--refresh` of a stopped standby (17) reports the phases that apply: connecting,
/// checkpoint, copying, wal, sync (its last steps, `-R` among them); the refreshed standby
/// streams again and sees a row written after it.
#[test]
fn a_refresh_reports_its_phases() {
    let p = Cluster::start(&support::summarizing(17, &[]));
    p.psql("CREATE TABLE r AS SELECT g AS x FROM generate_series(1, 10000) g");
    let work = TestDir::new("progress-refresh");
    let dir = work.join("standby");
    support::fast_clone(&p, &dir, &["-R"]).assert_ok();
    let mut standby = Cluster::start_existing(17, &dir, &[]);
    standby.wait_for("SELECT status FROM pg_stat_wal_receiver", "streaming", WAIT);
    standby.stop();
    drop(standby);
    p.psql("INSERT INTO r SELECT generate_series(1, 1000)");

    let (run, events) = json_clone(&p, &dir, &["-c", "fast", "--refresh", "-R"]);
    run.assert_ok();
    check_ok(
        &events,
        &["connecting", "checkpoint", "copying", "wal", "sync"],
    );
    let standby = Cluster::start_existing(17, &dir, &[]);
    standby.wait_for("SELECT pg_is_in_recovery()", "t", WAIT);
    p.psql("INSERT INTO r VALUES (-1)");
    standby.wait_for("SELECT count(*) FROM r WHERE x = -1", "1", WAIT);
}

/// A clone that cannot connect ends with an `error` event naming the cause, after the
/// connecting phase only; the error is still printed on stderr. The events go to an inherited
/// descriptor (`--progress-fd=3`).
#[test]
fn a_failed_clone_ends_with_an_error_event() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let work = TestDir::new("progress-fail");
    let path = work.join("events");
    let file = fs::File::create(&path).expect("events file");
    let raw = file.as_raw_fd();
    let mut cmd = pgclone_cmd()
        .direct()
        .server(free_port(), "postgres")
        .dest(&work.join("copy"))
        .args(["--progress=json", "--progress-fd=3"])
        .command();
    // SAFETY: only async-signal-safe dup2 and fcntl run between fork and exec (the latter
    // for when the file already is descriptor 3, close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let run = run_cmd(cmd);
    drop(file);
    assert!(!run.status.success());
    let events = events(&path);
    assert_eq!(phases(&events), ["connecting"]);
    let end = end_event(&events);
    assert_eq!(end["outcome"], "error");
    let error = end["error"].as_str().expect("error text");
    assert!(run.stderr.contains(error), "{error}\n{}", run.stderr);
    assert_eq!(end["manifest_check"], Value::Null);
}
