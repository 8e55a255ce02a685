//! Captured output through the real binary: every line passed on behind its program's name, in
//! order, counted exactly per stream over restarts; `inherit`; files with rotation; long lines
//! cut and counted; the last stderr lines in the record of a crash; and procwatch's own stdout
//! or stderr stalled by a reader who never reads, which must stall nothing else.

mod util;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{BIN, MARKER_VAR, Procwatch, config_dir, marker, wait_for};

const T: Duration = Duration::from_secs(30);

fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.strip_prefix(prefix)).collect()
}

#[test]
fn every_line_is_counted_per_stream_over_restarts() {
    // Three runs of 100 stdout and 50 stderr lines; the third exits 0 and is not restarted.
    let yaml = "status_interval: 0\nprocesses:\n  - name: counted\n    command: [sh, -c, 'n=$(cat runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > runs; i=0; while [ $i -lt 100 ]; do i=$((i+1)); echo \"out $n $i\"; [ $((i % 2)) = 0 ] && echo \"err $n $i\" >&2; done; [ $n -ge 3 ] && exit 0; exit 1']\n    restart: on-failure\n    backoff: {initial: 10ms, max: 10ms}\n";
    let pw = Procwatch::start(yaml, &[]);
    // The exit is published when the run is reaped, its last lines when the output thread has
    // read them from the pipe: wait for both. A count past 300 or 150 never matches.
    let s = pw.wait_scrape(T, "three runs and all their lines", |s| {
        let lines = |stream| {
            s.get(
                "procwatch_process_log_lines_total",
                &[("name", "counted"), ("stream", stream)],
            )
        };
        s.get(
            "procwatch_process_exits_total",
            &[("name", "counted"), ("reason", "success")],
        ) == Some(1.0)
            && lines("stdout") == Some(300.0)
            && lines("stderr") == Some(150.0)
    });
    let get = |metric: &str, stream: &str| s.get(metric, &[("name", "counted"), ("stream", stream)]);
    // "out R I\n": 8 bytes for I < 10, 9 for I < 100, 10 for 100; "err R I\n" for even I alike.
    let out_bytes = 3 * (9 * 8 + 90 * 9 + 10);
    let err_bytes = 3 * (4 * 8 + 45 * 9 + 10);
    assert_eq!(
        get("procwatch_process_log_bytes_total", "stdout"),
        Some(out_bytes as f64)
    );
    assert_eq!(
        get("procwatch_process_log_bytes_total", "stderr"),
        Some(err_bytes as f64)
    );
    assert_eq!(get("procwatch_process_log_truncated_lines_total", "stdout"), Some(0.0));
    let last = s
        .prog("procwatch_process_last_output_timestamp_seconds", "counted")
        .expect("last output time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(last <= now && now - last < 60.0, "{last} vs {now}");
    // And every line reached procwatch's stdout, in order.
    let out = wait_for(T, "the last line on stdout", || {
        let o = pw.stdout();
        o.contains("counted | out 3 100\n").then_some(o)
    });
    let mut want = Vec::new();
    for run in 1..=3 {
        for i in 1..=100 {
            want.push(format!("out {run} {i}"));
        }
    }
    let got: Vec<&str> = lines_of(&out, "counted | ")
        .into_iter()
        .filter(|l| l.starts_with("out"))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn lines_are_prefixed_aligned_and_kept_in_order() {
    let yaml = "status_interval: 0\nprocesses:\n  - name: a\n    command: [sh, -c, 'seq 1 5000']\n    restart: never\n  - name: longer_name\n    command: [sh, -c, 'seq 1 5000 >&2']\n    restart: never\n";
    let pw = Procwatch::start(yaml, &[]);
    let out = wait_for(T, "both programs' last lines", || {
        let o = pw.stdout();
        (o.contains("a           | 5000\n") && o.contains("longer_name | 5000\n")).then_some(o)
    });
    let want: Vec<String> = (1..=5000).map(|i| i.to_string()).collect();
    // The name column is as wide as the longest name: no line of one program ends up in the
    // other's, none is split, none is merged.
    assert_eq!(lines_of(&out, "a           | "), want);
    assert_eq!(lines_of(&out, "longer_name | "), want);
    assert_eq!(out.lines().count(), 10_000, "{}", &out[..out.len().min(500)]);
}

#[test]
fn inherit_leaves_output_untouched_and_uncounted() {
    let yaml = "status_interval: 0\nprocesses:\n  - name: raw\n    command: [sh, -c, 'echo raw-line; exec sleep 600']\n    output: inherit\n  - name: framed\n    command: [sh, -c, 'echo framed-line; exec sleep 600']\n";
    let pw = Procwatch::start(yaml, &[]);
    let out = wait_for(T, "both lines", || {
        let o = pw.stdout();
        (o.contains("raw-line") && o.contains("framed-line")).then_some(o)
    });
    assert!(out.lines().any(|l| l == "raw-line"), "{out}");
    assert!(out.lines().any(|l| l == "framed | framed-line"), "{out}");
    let s = pw.scrape();
    // Not captured: unknown, so absent (not 0).
    assert_eq!(
        s.get(
            "procwatch_process_log_lines_total",
            &[("name", "raw"), ("stream", "stdout")]
        ),
        None
    );
    assert_eq!(
        s.get(
            "procwatch_process_log_lines_total",
            &[("name", "framed"), ("stream", "stdout")]
        ),
        Some(1.0)
    );
}

#[test]
fn a_file_output_rotates_by_size_relative_to_the_config() {
    let m = marker("rotate");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let config = dir.path().join("conf/procwatch.yaml");
    // 200 lines, files of at most 1000 bytes, 3 files kept.
    std::fs::write(
        &config,
        "status_interval: 0\nprocesses:\n  - name: filed\n    command: [sh, -c, 'i=1000; while [ $i -lt 1200 ]; do echo \"line number $i ---\"; i=$((i+1)); done']\n    restart: never\n    output: {file: logs/filed.log, max_size: 1000, max_files: 3, prefix: true}\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("conf/logs")).unwrap();
    let pw = Procwatch::start_in(dir, config, &["--config", "conf/procwatch.yaml"], &m);
    let logs = pw.path("conf/logs");
    wait_for(T, "the last line in the file", || {
        std::fs::read_to_string(logs.join("filed.log"))
            .ok()?
            .contains("line number 1199")
            .then_some(())
    });
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["filed.log", "filed.log.1", "filed.log.2"]);
    let read = |n: &str| std::fs::read_to_string(logs.join(n)).unwrap();
    // "filed | line number NNNN ---\n" is 29 bytes: 34 whole lines (986 bytes) fill a file;
    // 200 lines make 5 full files and 30 lines, of which the last 2 full files and the 30 stay.
    for n in ["filed.log.1", "filed.log.2"] {
        assert_eq!(read(n).len(), 34 * 29, "{n}");
    }
    let all = [read("filed.log.2"), read("filed.log.1"), read("filed.log")].concat();
    let want: String = (1200 - all.lines().count()..1200)
        .map(|i| format!("filed | line number {i} ---\n"))
        .collect();
    assert_eq!(all, want);
    assert_eq!(all.lines().count(), 2 * 34 + 30);
    // Nothing of it on procwatch's stdout.
    assert!(!pw.stdout().contains("line number"), "{}", pw.stdout());
}

#[test]
fn a_very_long_line_is_cut_and_counted() {
    let yaml = "status_interval: 0\nprocesses:\n  - name: long\n    command: [sh, -c, 'head -c 100000 /dev/zero | tr \"\\\\0\" x; echo; echo after']\n    restart: never\n";
    let pw = Procwatch::start(yaml, &[]);
    let s = pw.wait_scrape(T, "both lines counted", |s| {
        s.get(
            "procwatch_process_log_lines_total",
            &[("name", "long"), ("stream", "stdout")],
        ) == Some(2.0)
    });
    assert_eq!(
        s.get(
            "procwatch_process_log_truncated_lines_total",
            &[("name", "long"), ("stream", "stdout")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.get(
            "procwatch_process_log_bytes_total",
            &[("name", "long"), ("stream", "stdout")]
        ),
        Some(100_007.0)
    );
    let out = wait_for(T, "the line after", || {
        let o = pw.stdout();
        o.contains("long | after\n").then_some(o)
    });
    let lines = lines_of(&out, "long | ");
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], "x".repeat(16 * 1024));
    assert_eq!(lines[1], "after");
}

#[test]
fn the_record_of_a_crash_carries_its_last_stderr_lines() {
    let yaml = "status_interval: 0\nprocesses:\n  - name: crashy\n    command: [sh, -c, 'echo starting; echo \"warming up\" >&2; echo \"fatal: disk full\" >&2; exit 3']\n    restart: never\n";
    let pw = Procwatch::start(yaml, &[]);
    let log = wait_for(T, "the exited record", || {
        let e = pw.stderr();
        e.contains("message=exited").then_some(e)
    });
    let record = log
        .lines()
        .find(|l| l.contains("message=exited") && l.contains("program=crashy"))
        .expect("exited record");
    assert!(record.contains("code=3"), "{record}");
    assert!(record.contains("fatal: disk full"), "{record}");
    assert!(record.contains("warming up"), "{record}");
    assert!(
        !record.contains("starting"),
        "stdout lines are not stderr lines: {record}"
    );
}

/// procwatch with one of its standard streams a pipe that the test never reads.
struct Stalled {
    pw: Procwatch,
    _reader: std::io::PipeReader,
}

/// Starts procwatch with its stdout (`stream` 1) or stderr (2) a pipe that nobody drains once
/// procwatch serves. With stderr stalled the address is read from the pipe first.
fn start_stalled(yaml: &str, stream: i32, m: &str) -> Stalled {
    let (dir, config) = config_dir(yaml);
    let (mut reader, writer) = std::io::pipe().unwrap();
    // The smallest pipe: it fills at once.
    // SAFETY: fcntl on a pipe we own.
    unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let addr = util::free_addr();
    let mut cmd = Command::new(BIN);
    cmd.args(["--config", config.to_str().unwrap(), "--web.listen-address", &addr])
        .args(["--log.level", "debug"])
        .current_dir(dir.path())
        .env(MARKER_VAR, m)
        .stdin(Stdio::null());
    if stream == 1 {
        cmd.stdout(writer)
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
    } else {
        cmd.stderr(writer)
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap());
    }
    let child = cmd.spawn().unwrap();
    if stream == 2 {
        // Read until procwatch says it serves, then never again.
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("addr=") {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "procwatch closed its stderr");
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let pw = Procwatch::adopt(child, dir, config, addr);
    Stalled { pw, _reader: reader }
}

fn stalled_stream_stalls_nothing(stream: i32) {
    let m = marker(if stream == 1 {
        "stalled-stdout"
    } else {
        "stalled-stderr"
    });
    // A flood of output and of log records; a program restarted every few ms; status reports.
    let yaml = "status_interval: 100ms\nshutdown_timeout: 5s\nprocesses:\n  - name: flood\n    command: [sh, -c, 'yes flood-line; exec sleep 600']\n  - name: flood_err\n    command: [sh, -c, 'yes flood-line >&2; exec sleep 600']\n  - name: restarter\n    command: [sh, -c, 'echo bye; exit 1']\n    backoff: {initial: 20ms, max: 20ms}\n";
    let mut st = start_stalled(yaml, stream, &m);
    let pw = &st.pw;
    let restarts = |s: &util::Scrape| s.prog("procwatch_process_restarts_total", "restarter").unwrap_or(0.0);
    let first = pw.wait_scrape(T, "some restarts", |s| restarts(s) >= 5.0);
    // Well past what the stalled pipe can hold: the pipes are full by now.
    std::thread::sleep(Duration::from_millis(500));
    pw.wait_scrape(T, "restarts to go on", |s| restarts(s) >= restarts(&first) + 20.0);
    // A reload is applied (a new program starts) and scrapes go on.
    pw.write_config(&format!("{yaml}  - name: added\n    command: [sleep, '600']\n"));
    pw.signal(libc::SIGHUP);
    pw.wait_scrape(T, "the added program", |s| {
        s.prog("procwatch_process_up", "added") == Some(1.0)
    });
    // The flooding programs block on their own output, as on a terminal, and that is all.
    let started = Instant::now();
    st.pw.signal(libc::SIGTERM);
    let status = st.pw.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(7), "{:?}", started.elapsed());
    assert!(util::procs_with(&m).is_empty(), "{:?}", util::procs_with(&m));
}

#[test]
fn a_stalled_stdout_stalls_no_signal_restart_reload_or_scrape() {
    stalled_stream_stalls_nothing(1);
}

#[test]
fn a_stalled_stderr_stalls_no_signal_restart_reload_or_scrape() {
    stalled_stream_stalls_nothing(2);
}
