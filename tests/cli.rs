//! The binary's command line: bad configs, --check-config, the demo, endpoints, exit codes.

mod util;

use std::time::Duration;

use util::{Procwatch, http, marker, pids_with, run_to_end};

const T: Duration = Duration::from_secs(30);

/// Each bad config: (yaml, what the message must contain). The first program of each would
/// start if validation did not come first.
fn bad_configs() -> Vec<(String, Vec<&'static str>)> {
    let ok = "processes:\n  - name: ok\n    command: [sleep, '600']\n".to_owned();
    vec![
        (
            format!("{ok}  - name: b\n    command: [x]\n    restrat: always\n"),
            vec![":6:5:", "processes[1].restrat", "unknown field"],
        ),
        (
            format!("{ok}  - name: ok\n    command: [x]\n"),
            vec![":4:11:", "processes[1].name", "duplicate"],
        ),
        (
            format!("{ok}  - name: b\n    command: []\n"),
            vec![":5:14:", "processes[1].command", "non-empty"],
        ),
        (
            format!("{ok}  - name: b\n    command: [x]\n    stop_timeout: soon\n"),
            vec![":6:19:", "processes[1].stop_timeout", "invalid duration"],
        ),
        (
            format!("{ok}  - name: b\n    command: [x]\n    stop_signal: TERMINATE\n"),
            vec![":6:18:", "processes[1].stop_signal", "unknown signal"],
        ),
        (
            format!("{ok}  - name: b\n    command: [x]\n    backoff: {{initial: 1x}}\n"),
            vec![":6:24:", "processes[1].backoff.initial", "invalid duration"],
        ),
        (
            format!("{ok}  - name: b\n    command: [x]\n    restart: sometimes\n"),
            vec![":6:14:", "processes[1].restart", "always, on-failure or never"],
        ),
        (
            format!("status_interval: often\n{ok}"),
            vec![":1:18:", "status_interval", "invalid duration"],
        ),
        (
            format!("{ok}  - name: b\n    command: 'x'\n"),
            vec![":5:14:", "processes[1].command"],
        ),
        (
            format!("{ok}watches:\n  - name: w\n    path: /tmp\n    exclude: ['[']\n"),
            vec![":7:15:", "watches[0].exclude[0]", "invalid glob"],
        ),
    ]
}

#[test]
fn each_bad_config_is_one_clear_error_and_starts_nothing() {
    let m = marker("badcfg");
    let dir = tempfile::tempdir().unwrap();
    for (i, (yaml, wants)) in bad_configs().into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, &yaml).unwrap();
        let (code, _, stderr) = run_to_end(
            &[
                "--config",
                path.to_str().unwrap(),
                "--web.listen-address",
                "127.0.0.1:0",
            ],
            dir.path(),
            &m,
        );
        assert_eq!(code, 1, "case {i}: {stderr}");
        assert!(
            stderr.contains(&format!("bad{i}.yaml:")),
            "case {i} names the file: {stderr}"
        );
        for w in wants {
            assert!(stderr.contains(w), "case {i}: {w:?} not in {stderr:?}\n{yaml}");
        }
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("procwatch:")).count(),
            1,
            "one error: {stderr}"
        );
        // --check-config says the same.
        let (code, _, stderr2) = run_to_end(&["--check-config", "--config", path.to_str().unwrap()], dir.path(), &m);
        assert_eq!(code, 1);
        assert_eq!(stderr, stderr2);
    }
    assert!(pids_with(&m).is_empty(), "a bad config started {:?}", pids_with(&m));
}

#[test]
fn missing_unreadable_and_binary_files_are_refused() {
    let m = marker("unreadable");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_to_end(&["--config", "nope.yaml"], dir.path(), &m);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("nope.yaml") && stderr.contains("No such file"),
        "{stderr}"
    );

    let bin = dir.path().join("bin.yaml");
    std::fs::write(&bin, [0u8, 159, 146, 150, 255, 0, 1]).unwrap();
    let (code, _, stderr) = run_to_end(&["--config", bin.to_str().unwrap()], dir.path(), &m);
    assert_eq!(code, 1);
    assert!(stderr.contains("not UTF-8"), "{stderr}");

    let big = dir.path().join("big.yaml");
    std::fs::write(&big, "#".repeat(10 << 20)).unwrap();
    let (code, _, stderr) = run_to_end(&["--config", big.to_str().unwrap()], dir.path(), &m);
    assert_eq!(code, 1);
    assert!(stderr.contains("at most"), "{stderr}");

    let deep = dir.path().join("deep.yaml");
    std::fs::write(&deep, format!("processes: {}", "[".repeat(100_000))).unwrap();
    let (code, _, stderr) = run_to_end(&["--config", deep.to_str().unwrap()], dir.path(), &m);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("deep.yaml:"), "{stderr}");

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let locked = dir.path().join("locked.yaml");
        std::fs::write(&locked, "processes: []\n").unwrap();
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        let (code, _, stderr) = run_to_end(&["--config", locked.to_str().unwrap()], dir.path(), &m);
        assert_eq!(code, 1);
        assert!(stderr.contains("Permission denied"), "{stderr}");
    }
}

#[test]
fn check_config_prints_what_would_run() {
    let m = marker("check");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.yaml");
    std::fs::write(
        &path,
        "processes:\n  - name: web\n    command: [python3, -m, http.server]\n    restart: always\n    stop_signal: INT\nwatches:\n  - name: up\n    path: /srv/uploads\n",
    )
    .unwrap();
    let (code, stdout, _) = run_to_end(&["--check-config", "--config", path.to_str().unwrap()], dir.path(), &m);
    assert_eq!(code, 0);
    assert!(stdout.contains("config OK: 1 programs, 1 watches"), "{stdout}");
    assert!(
        stdout.contains("program web") && stdout.contains("http.server") && stdout.contains("stop INT"),
        "{stdout}"
    );
    assert!(stdout.contains("watch up: /srv/uploads"), "{stdout}");
}

#[test]
fn demo_config_runs_with_no_config_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unused");
    let mut pw = Procwatch::start_in(dir, config, &[], &marker("demo"));
    let s = pw.wait_scrape(T, "the demo's programs", |s| {
        s.prog("procwatch_process_up", "ticker") == Some(1.0)
            && s.prog("procwatch_process_restarts_total", "worker").unwrap_or(0.0) >= 1.0
            && s.get("procwatch_file_watch_up", &[("watch", "cwd")]) == Some(1.0)
    });
    assert!(s.prog("procwatch_process_up", "flaky").is_some());
    assert_eq!(s.get("procwatch_config_last_reload_successful", &[]), Some(1.0));
    assert!(pw.stop().success());
}

#[test]
fn endpoints_answer_as_the_design_says() {
    let pw = Procwatch::start("processes:\n  - name: web\n    command: [sleep, '600']\n", &[]);
    let (status, head, body) = http(&pw.addr, "GET", "/metrics", "").unwrap();
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.contains("procwatch_build_info{version=\""), "{body}");
    assert!(body.contains("process_resident_memory_bytes "), "{body}");
    let (status, _, body) = http(&pw.addr, "GET", "/", "").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("<td>web</td>") && body.contains("href=\"/metrics\""),
        "{body}"
    );
    for method in ["GET", "HEAD"] {
        assert_eq!(http(&pw.addr, method, "/-/healthy", "").unwrap().0, 200, "{method}");
        assert_eq!(http(&pw.addr, method, "/-/ready", "").unwrap().0, 200, "{method}");
    }
    assert_eq!(
        http(&pw.addr, "HEAD", "/-/healthy", "").unwrap().2,
        "",
        "HEAD has no body"
    );
    assert_eq!(http(&pw.addr, "GET", "/nope", "").unwrap().0, 404);
    assert_eq!(http(&pw.addr, "POST", "/-/reload", "").unwrap().0, 403);
    assert_eq!(http(&pw.addr, "GET", "/-/reload", "").unwrap().0, 405);
}

#[test]
fn custom_telemetry_path() {
    let pw = Procwatch::start("processes: []\n", &["--web.telemetry-path", "/prom"]);
    let (status, _, body) = http(&pw.addr, "GET", "/prom", "").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("procwatch_build_info"));
    assert_eq!(http(&pw.addr, "GET", "/metrics", "").unwrap().0, 404);
}

#[test]
fn status_report_is_printed_every_interval() {
    let pw = Procwatch::start(
        "status_interval: 200ms\nprocesses:\n  - name: reporter\n    command: [sleep, '600']\n",
        &[],
    );
    let out = util::wait_for(T, "two status reports", || {
        let out = pw.stdout();
        (out.matches("procwatch status:").count() >= 2).then_some(out)
    });
    let line = out
        .lines()
        .find(|l| l.contains("reporter"))
        .expect("a row for the program");
    assert!(line.contains("running") && line.contains("sleep 600"), "{line}");
}

#[test]
fn port_in_use_is_a_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let m = marker("bind");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "processes:\n  - name: a\n    command: [sleep, '600']\n").unwrap();
    let (code, _, stderr) = run_to_end(
        &["--config", path.to_str().unwrap(), "--web.listen-address", &addr],
        dir.path(),
        &m,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(pids_with(&m).is_empty());
}

#[test]
fn version_and_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("version");
    let (code, stdout, _) = run_to_end(&["--version"], dir.path(), &m);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("procwatch {}", env!("CARGO_PKG_VERSION")));

    let pw = Procwatch::start("processes: []\n", &["--log.format", "json"]);
    let log = pw.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("procwatch starting"))
        .expect("a start line");
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO");
    assert!(v["fields"]["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
}

#[test]
fn listen_address_comes_from_the_config_when_the_flag_is_absent() {
    let (dir, config) = util::config_dir("listen_address: 127.0.0.1:0\nprocesses: []\n");
    let stderr = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(util::BIN)
        .args(["--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let addr = util::wait_for(T, "the address line", || {
        util::logged_addr(&std::fs::read_to_string(&stderr).ok()?)
    });
    assert!(addr.starts_with("127.0.0.1:") && addr != "127.0.0.1:9407", "{addr}");
    assert_eq!(http(&addr, "GET", "/-/healthy", "").unwrap().0, 200);
    // SAFETY: plain syscall to our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn bad_flags_are_start_up_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("flags");
    for (args, want) in [
        (
            &["--web.listen-address", "nowhere"][..],
            "invalid listen address \"nowhere\"",
        ),
        (
            &["--web.telemetry-path", "metrics"][..],
            "--web.telemetry-path \"metrics\"",
        ),
        (&["--web.telemetry-path", "/"][..], "--web.telemetry-path \"/\""),
    ] {
        let (code, _, stderr) = run_to_end(args, dir.path(), &m);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{want:?} not in {stderr}");
    }
    assert!(pids_with(&m).is_empty(), "nothing started");
}
