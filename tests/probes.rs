//! Probes and dependency order against real servers started by the tests: liveness restarts,
//! readiness gating `depends_on`, exec probes, one-shot tasks, restarts while a dependent
//! waits, shutdown order, and cycles refused.

mod util;

use std::time::Duration;

use util::{Procwatch, config_dir, marker, procs_with, run_to_end, wait_for};

const T: Duration = Duration::from_secs(30);

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP server on `port` answering 500 to every request while the file `sick` exists in
/// its working directory, 200 otherwise. Plain sockets: it is up within milliseconds.
const HEALTH_SERVER: &str = r#"
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
while True:
    c, _ = s.accept()
    c.recv(4096)
    status = "500 Internal Server Error" if os.path.exists("sick") else "200 OK"
    c.sendall(("HTTP/1.1 %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % status).encode())
    c.close()
"#;

/// Unix time, as the shell writes it, of lines `TAG TIME` in the file at `path`.
fn stamps(path: &std::path::Path, tag: &str) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(tag)?.trim().parse().ok())
        .collect()
}

/// `TAG` and the time with nanoseconds, appended to `log`: a shell snippet.
fn stamp(tag: &str) -> String {
    format!("echo {tag} $(date +%s.%N) >> log")
}

#[test]
fn http_server_that_starts_answering_500_is_restarted() {
    let port = free_port();
    let m = marker("liveness-http");
    let (dir, config) = config_dir(&format!(
        "processes:
  - name: web
    command: [python3, server.py, '{port}']
    backoff: {{initial: 100ms, max: 1s}}
    stop_timeout: 2s
    liveness:
      http: {{url: 'http://127.0.0.1:{port}/healthz', status: 200}}
      period: 200ms
      timeout: 1s
      failure_threshold: 2
      # Python takes a moment to listen.
      initial_delay: 2s
"
    ));
    std::fs::write(dir.path().join("server.py"), HEALTH_SERVER).unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_in(dir, config.clone(), &["--config", &config_arg], &m);
    let healthy = pw.wait_scrape(T, "web to pass its liveness probe", |s| {
        s.get("procwatch_probe_success", &[("name", "web"), ("probe", "liveness")]) == Some(1.0)
    });
    let first_pid = healthy.prog("procwatch_process_pid", "web").unwrap();
    // 0, unless a loaded machine kept Python from listening within the initial delay.
    let before = healthy.prog("procwatch_process_restarts_total", "web").unwrap();

    std::fs::write(pw.path("sick"), "").unwrap();
    let restarted = pw.wait_scrape(T, "web to be restarted", |s| {
        s.prog("procwatch_process_restarts_total", "web").unwrap_or(0.0) >= before + 1.0
            && s.prog("procwatch_process_pid", "web").is_some_and(|p| p != first_pid)
    });
    assert!(
        restarted
            .get(
                "procwatch_probe_failures_total",
                &[("name", "web"), ("probe", "liveness")]
            )
            .unwrap()
            >= 2.0
    );
    let log = pw.stderr();
    assert!(
        log.contains("liveness probe failed 2 times in a row") && log.contains("status 500"),
        "the restart is logged with the probe's last error:\n{log}"
    );
    // The run was ended by procwatch (SIGTERM), and counted as an exit.
    assert!(
        restarted.get(
            "procwatch_process_exits_total",
            &[("name", "web"), ("reason", "signal")]
        ) >= Some(1.0)
    );

    // Healthy again: no more restarts.
    std::fs::remove_file(pw.path("sick")).unwrap();
    let s = pw.wait_scrape(T, "web to pass again", |s| {
        s.get("procwatch_probe_success", &[("name", "web"), ("probe", "liveness")]) == Some(1.0)
            && s.prog("procwatch_process_up", "web") == Some(1.0)
    });
    let restarts = s.prog("procwatch_process_restarts_total", "web").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        pw.scrape().prog("procwatch_process_restarts_total", "web"),
        Some(restarts)
    );
    drop(pw);
    assert!(procs_with(&m).is_empty(), "left running: {:?}", procs_with(&m));
}

#[test]
fn tcp_readiness_probe_gates_a_dependent() {
    let port = free_port();
    let m = marker("ready-gate");
    // db listens once the test has seen app waiting (the file `go`), and says when (just
    // before); app says when it starts.
    let listen = format!(
        "import socket, time, subprocess, os; \
         [time.sleep(0.05) for _ in iter(lambda: os.path.exists('go'), True)]; s = socket.socket(); \
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); \
         subprocess.run(['sh', '-c', '{}']); s.listen(); time.sleep(600)",
        stamp("listening")
    );
    let pw = Procwatch::start_marked(
        &format!(
            "processes:
  - name: app
    command: [sh, -c, '{} && exec sleep 600']
    depends_on: {{db: ready}}
  - name: db
    command: [python3, -c, \"{listen}\"]
    readiness: {{tcp: '127.0.0.1:{port}', period: 100ms}}
",
            stamp("app")
        ),
        &[],
        &m,
    );
    let waiting = pw.wait_scrape(T, "db up", |s| s.prog("procwatch_process_up", "db") == Some(1.0));
    assert_eq!(
        waiting.prog("procwatch_process_up", "app"),
        Some(0.0),
        "app waits for db"
    );
    assert_eq!(waiting.prog("procwatch_process_ready", "db"), Some(0.0));
    std::fs::write(pw.path("go"), "").unwrap();
    let s = pw.wait_scrape(T, "app to start", |s| {
        s.prog("procwatch_process_up", "app") == Some(1.0)
    });
    assert_eq!(s.prog("procwatch_process_ready", "db"), Some(1.0));
    assert_eq!(
        s.prog("procwatch_process_ready", "app"),
        Some(1.0),
        "no readiness probe: ready while running"
    );
    let log = pw.path("log");
    let app = wait_for(T, "app's start stamp", || {
        Some(stamps(&log, "app")).filter(|v| !v.is_empty())
    });
    let listening = stamps(&log, "listening");
    assert_eq!(listening.len(), 1);
    assert_eq!(app.len(), 1, "app started once");
    assert!(
        app[0] >= listening[0],
        "app started at {} before db listened at {}",
        app[0],
        listening[0]
    );
    assert!(pw.stderr().contains("waiting for dependency"));
}

#[test]
fn exec_probe_failures_are_counted_and_readiness_follows() {
    let m = marker("exec-probe");
    let pw = Procwatch::start_marked(
        "processes:
  - name: worker
    command: [sleep, '600']
    env: {CHECK_FILE: ready-flag}
    readiness:
      exec: [sh, -c, 'echo checking >&2; test -e \"$CHECK_FILE\"']
      period: 100ms
      failure_threshold: 1
",
        &[],
        &m,
    );
    let failing = pw.wait_scrape(T, "exec probe failures", |s| {
        s.get(
            "procwatch_probe_failures_total",
            &[("name", "worker"), ("probe", "readiness")],
        )
        .unwrap_or(0.0)
            >= 3.0
    });
    assert_eq!(failing.prog("procwatch_process_ready", "worker"), Some(0.0));
    assert_eq!(failing.prog("procwatch_process_up", "worker"), Some(1.0));
    assert_eq!(
        failing.get("procwatch_probe_success", &[("name", "worker"), ("probe", "readiness")]),
        Some(0.0)
    );
    assert!(
        failing
            .get(
                "procwatch_probe_duration_seconds",
                &[("name", "worker"), ("probe", "readiness")]
            )
            .is_some_and(|d| d > 0.0 && d < 1.0)
    );
    // `ctl status` and the API say the same.
    let api = |pw: &Procwatch| util::http(&pw.addr, "GET", "/api/v1/programs/worker", "").unwrap().2;
    assert!(api(&pw).contains("\"ready\":false"), "{}", api(&pw));
    // The check runs with the program's environment and working directory.
    std::fs::write(pw.path("ready-flag"), "").unwrap();
    let ready = pw.wait_scrape(T, "worker to be ready", |s| {
        s.prog("procwatch_process_ready", "worker") == Some(1.0)
    });
    let failures = ready
        .get(
            "procwatch_probe_failures_total",
            &[("name", "worker"), ("probe", "readiness")],
        )
        .unwrap();
    assert!(api(&pw).contains("\"ready\":true"), "{}", api(&pw));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        pw.scrape().get(
            "procwatch_probe_failures_total",
            &[("name", "worker"), ("probe", "readiness")]
        ),
        Some(failures),
        "passing checks are not failures"
    );
    // Not ready again after one failure (failure_threshold: 1).
    std::fs::remove_file(pw.path("ready-flag")).unwrap();
    pw.wait_scrape(T, "worker to be not ready", |s| {
        s.prog("procwatch_process_ready", "worker") == Some(0.0)
    });
    // Only the program itself runs: checks never pile up, and none is left behind.
    let procs = procs_with(&m);
    assert!(
        procs
            .iter()
            .filter(|(_, c)| c.starts_with("sh -c echo checking"))
            .count()
            <= 1,
        "{procs:?}"
    );
}

#[test]
fn exec_probe_is_killed_at_its_timeout() {
    let m = marker("exec-timeout");
    let pw = Procwatch::start_marked(
        "processes:
  - name: worker
    command: [sleep, '600']
    liveness:
      exec: [sh, -c, 'sleep 30 & sleep 30']
      period: 100ms
      timeout: 300ms
      failure_threshold: 100
",
        &[],
        &m,
    );
    let s = pw.wait_scrape(T, "timed-out checks", |s| {
        s.get(
            "procwatch_probe_failures_total",
            &[("name", "worker"), ("probe", "liveness")],
        )
        .unwrap_or(0.0)
            >= 3.0
    });
    let took = s
        .get(
            "procwatch_probe_duration_seconds",
            &[("name", "worker"), ("probe", "liveness")],
        )
        .unwrap();
    assert!((0.3..3.0).contains(&took), "a check lasts its timeout: {took}");
    // Each timed-out check's whole group was killed: at most the one in flight is alive.
    let sleeps = procs_with(&m).into_iter().filter(|(_, c)| c == "sleep 30").count();
    assert!(sleeps <= 2, "{sleeps} probe processes alive");
    assert!(pw.stderr().contains("timed out after 300ms; killed"));
}

#[test]
fn one_shot_migration_gates_a_server_with_completed_successfully() {
    let m = marker("migrate");
    let pw = Procwatch::start_marked(
        &format!(
            "processes:
  - name: server
    command: [sh, -c, 'test -e migrated && {} && exec sleep 600']
    depends_on: {{migrate: completed_successfully}}
  - name: migrate
    command: [sh, -c, 'sleep 1; touch migrated; {}']
    restart: never
  - name: never-served
    command: [sh, -c, '{}; exec sleep 600']
    depends_on: {{broken: completed_successfully}}
  - name: broken
    command: [sh, -c, 'exit 3']
    restart: never
",
            stamp("server"),
            stamp("migrated"),
            stamp("never-served")
        ),
        &[],
        &m,
    );
    let s = pw.wait_scrape(T, "server to run", |s| {
        s.prog("procwatch_process_up", "server") == Some(1.0)
    });
    // The server found the migration done on its first run.
    assert_eq!(s.prog("procwatch_process_restarts_total", "server"), Some(0.0));
    let log = pw.path("log");
    let server = wait_for(T, "server's start stamp", || {
        Some(stamps(&log, "server")).filter(|v| !v.is_empty())
    });
    assert!(server[0] >= stamps(&log, "migrated")[0]);
    // A failed one-shot holds its dependents, said in the log.
    assert_eq!(s.prog("procwatch_process_up", "never-served"), Some(0.0));
    assert!(stamps(&log, "never-served").is_empty());
    wait_for(T, "the stuck dependency to be logged", || {
        pw.stderr().contains("will not start again by itself").then_some(())
    });
}

#[test]
fn a_dependency_restarting_while_its_dependent_waits() {
    let port = free_port();
    let m = marker("dep-restart");
    // db's first run dies before it listens; its second run listens. app must start exactly
    // once, after the second run is ready (process-compose #189 and #530).
    let (dir, config) = config_dir(&format!(
        "processes:
  - name: app
    command: [sh, -c, '{} && exec sleep 600']
    depends_on: {{db: ready}}
  - name: db
    command: [sh, db.sh]
    backoff: {{initial: 500ms, max: 1s}}
    readiness: {{tcp: '127.0.0.1:{port}', period: 100ms}}
",
        stamp("app")
    ));
    std::fs::write(
        dir.path().join("db.sh"),
        format!(
            "if [ ! -e crashed-once ]; then touch crashed-once; sleep 0.5; exit 1; fi
exec python3 -c \"import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(600)\"
"
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_in(dir, config.clone(), &["--config", &config_arg], &m);
    let s = pw.wait_scrape(T, "app to start", |s| {
        s.prog("procwatch_process_up", "app") == Some(1.0)
    });
    assert_eq!(s.prog("procwatch_process_restarts_total", "db"), Some(1.0));
    assert_eq!(s.prog("procwatch_process_ready", "db"), Some(1.0));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stamps(&pw.path("log"), "app").len(), 1, "app started once");
    let apps = procs_with(&m).into_iter().filter(|(_, c)| c == "sleep 600").count();
    assert_eq!(apps, 1, "one app process");
}

#[test]
fn a_waiting_dependent_restarted_by_a_reload_starts_once() {
    let port = free_port();
    let m = marker("dep-reload");
    let yaml = |note: &str| {
        format!(
            "processes:
  - name: app
    command: [sh, -c, '{} && exec sleep 600']
    env: {{NOTE: {note}}}
    depends_on: {{db: ready}}
  - name: db
    command: [sleep, '600']
    readiness: {{tcp: '127.0.0.1:{port}', period: 100ms}}
",
            stamp("app")
        )
    };
    let pw = Procwatch::start_marked(&yaml("one"), &[], &m);
    wait_for(T, "app to wait", || {
        pw.stderr().contains("waiting for dependency").then_some(())
    });
    // app's config changes while it waits: its waiting runner is replaced, not doubled.
    pw.write_config(&yaml("two"));
    pw.signal(libc::SIGHUP);
    wait_for(T, "the reload", || {
        pw.stderr().contains("config reloaded").then_some(())
    });
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    pw.wait_scrape(T, "app to start", |s| {
        s.prog("procwatch_process_up", "app") == Some(1.0)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stamps(&pw.path("log"), "app").len(), 1, "app started once");
    drop(listener);
}

#[test]
fn shutdown_stops_dependents_before_their_dependencies() {
    let m = marker("shutdown-order");
    // Each program logs when it gets SIGTERM; app takes 700 ms to stop. The trap forks
    // nothing (bash's $EPOCHREALTIME, and a read that times out on a FIFO nobody writes):
    // a stop signals every member of the program, and a `date` or `sleep` the trap forked
    // while the stop still looks for new members gets the SIGTERM too.
    let on_term = |tag: &str, delay: &str| {
        // `\$`: the time is taken when the trap runs, not when it is set.
        format!(
            "mkfifo {tag}.fifo; exec 3<>{tag}.fifo; trap \"echo {tag} \\$EPOCHREALTIME >> log; read -t {delay} -u 3; exit 0\" TERM; : > {tag}.ready; while :; do sleep 0.1; done"
        )
    };
    let mut pw = Procwatch::start_marked(
        &format!(
            "shutdown_timeout: 20s
processes:
  - name: db
    command: [bash, -c, '{}']
  - name: app
    command: [bash, -c, '{}']
    depends_on: {{db: started, cache: started}}
  - name: cache
    command: [bash, -c, '{}']
    depends_on: {{db: started}}
",
            on_term("db", "0.001"),
            on_term("app", "0.7"),
            on_term("cache", "0.001")
        ),
        &[],
        &m,
    );
    // Up is not yet trapping: a TERM before the trap is set kills bash without a line.
    wait_for(T, "all three traps to be set", || {
        ["db", "app", "cache"]
            .iter()
            .all(|n| pw.path(&format!("{n}.ready")).exists())
            .then_some(())
    });
    assert!(pw.stop().success());
    let log = pw.path("log");
    let (db, app, cache) = (stamps(&log, "db"), stamps(&log, "app"), stamps(&log, "cache"));
    assert_eq!(
        (db.len(), app.len(), cache.len()),
        (1, 1, 1),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    // app stops first (it took 0.7 s after its TERM), then cache, then db.
    assert!(
        cache[0] >= app[0] + 0.6,
        "cache stopped before app had: {cache:?} {app:?}"
    );
    assert!(db[0] >= cache[0], "db stopped before cache: {db:?} {cache:?}");
    assert!(procs_with(&m).is_empty());
}

#[test]
fn a_dependency_cycle_is_refused_with_its_position() {
    let (dir, config) = config_dir(
        "processes:
  - {name: a, command: [x], depends_on: {b: started}}
  - name: b
    command: [x]
    depends_on:
      a: ready
",
    );
    let (code, _, stderr) = run_to_end(&["--config", config.to_str().unwrap()], dir.path(), &marker("cycle"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("procwatch.yaml:6:7: processes[1].depends_on.a: dependency cycle: a -> b -> a"),
        "{stderr}"
    );
}

/// The READY column of the status table in `text` (the last report in it): program -> (state, ready).
fn ready_column(text: &str) -> std::collections::HashMap<String, (String, String)> {
    let last = text.rsplit("procwatch status:").next().unwrap_or_default();
    last.lines()
        .skip_while(|l| !l.trim_start().starts_with("NAME"))
        .skip(1)
        .take_while(|l| l.starts_with("  ") && !l.trim_start().starts_with("WATCH"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((
                cols.first()?.to_string(),
                (cols.get(1)?.to_string(), cols.get(2)?.to_string()),
            ))
        })
        .collect()
}

#[test]
fn readiness_shows_in_the_status_report_and_ctl_status() {
    let m = marker("ready-status");
    let pw = Procwatch::start_marked(
        "status_interval: 200ms
processes:
  - name: gated
    command: [sleep, '600']
    readiness: {exec: [test, -e, ready-flag], period: 100ms, failure_threshold: 1}
  - name: plain
    command: [sleep, '600']
  - name: oneshot
    command: ['true']
    restart: never
",
        &[],
        &m,
    );
    pw.wait_scrape(T, "gated failing its probe, plain up, oneshot done", |s| {
        s.get(
            "procwatch_probe_failures_total",
            &[("name", "gated"), ("probe", "readiness")],
        )
        .unwrap_or(0.0)
            >= 2.0
            && s.prog("procwatch_process_up", "plain") == Some(1.0)
            && s.get(
                "procwatch_process_exits_total",
                &[("name", "oneshot"), ("reason", "success")],
            ) == Some(1.0)
    });
    // The exit is published with `backoff`; `stopped` follows once its output is drained.
    wait_for(T, "oneshot stopped", || {
        let (_, out, _) = pw.ctl(&["status"]);
        (ready_column(&out).get("oneshot").map(|(s, _)| s.as_str()) == Some("stopped")).then_some(())
    });
    let expect = |ready_gated: &str| {
        [
            ("gated", ("running", ready_gated)),
            ("plain", ("running", "yes")),
            ("oneshot", ("stopped", "no")),
        ]
        .into_iter()
        .map(|(n, (s, r))| (n.to_owned(), (s.to_owned(), r.to_owned())))
        .collect::<std::collections::HashMap<_, _>>()
    };
    let json_ready = |pw: &Procwatch| -> Vec<(String, bool)> {
        let (code, out, err) = pw.ctl(&["status", "-o", "json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut got: Vec<(String, bool)> = v["programs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_owned(), p["ready"].as_bool().unwrap()))
            .collect();
        got.sort();
        got
    };
    for ready_gated in ["no", "yes"] {
        // `ctl status`, as a table and as JSON.
        let (code, out, err) = pw.ctl(&["status"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(ready_column(&out), expect(ready_gated), "{out}");
        let gated = ready_gated == "yes";
        assert_eq!(
            json_ready(&pw),
            [
                ("gated".to_owned(), gated),
                ("oneshot".to_owned(), false),
                ("plain".to_owned(), true)
            ]
        );
        // The periodic report on stdout: a report made from now on says the same.
        let from = pw.stdout().len();
        wait_for(T, "a status report with the expected readiness", || {
            let text = pw.stdout();
            let report = &text[from.min(text.len())..];
            // The last report may be half written: look at the one before it, if complete.
            let complete = report.rsplit_once("procwatch status:").map(|(before, _)| before)?;
            (complete.contains("procwatch status:") && ready_column(complete) == expect(ready_gated)).then_some(())
        });
        if !gated {
            std::fs::write(pw.path("ready-flag"), "").unwrap();
            pw.wait_scrape(T, "gated to be ready", |s| {
                s.prog("procwatch_process_ready", "gated") == Some(1.0)
            });
        }
    }
}

/// An exec probe's command gets fds 0, 1 and 2 and nothing else, as a program does: not an fd
/// procwatch itself inherited without close-on-exec (here fd 9, as a jobserver pipe or a
/// shell's stray fd would be), which `std::process::Command` used to pass on.
#[test]
fn an_exec_probe_gets_only_its_stdio() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let m = marker("probe-fds");
    let yaml = "processes:\n  - name: web\n    command: [sleep, '600']\n    readiness:\n      exec: [sh, -c, 'ls -l /proc/self/fd/ > fds.tmp && mv fds.tmp probe-fds']\n      period: 100ms\n  - name: nope\n    command: [sleep, '600']\n    readiness: {exec: [/no/such/command], period: 100ms}\n";
    let (dir, config) = config_dir(yaml);
    let stray = std::fs::File::open(&config).unwrap();
    let stray_fd = stray.as_raw_fd();
    let pw = Procwatch::start_with(
        dir,
        config.clone(),
        &["--config", config.to_str().unwrap()],
        &m,
        |cmd| {
            // SAFETY: only dup2 between fork and exec; the copy at 9 is not close-on-exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(stray_fd, 9) == 9 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                })
            };
        },
    );
    drop(stray);
    let listing = wait_for(T, "the probe's listing", || {
        std::fs::read_to_string(pw.path("probe-fds")).ok()
    });
    // `N -> TARGET` lines; ls's own fd on the directory it lists is the one other.
    let fds: Vec<(u32, &str)> = listing
        .lines()
        .filter_map(|l| {
            let (left, target) = l.split_once(" -> ")?;
            Some((left.split_whitespace().last()?.parse().ok()?, target))
        })
        .collect();
    let others: Vec<&(u32, &str)> = fds
        .iter()
        .filter(|(fd, target)| *fd > 2 && !target.starts_with("/proc/"))
        .collect();
    assert!(
        others.is_empty(),
        "the probe got more than its stdio: {others:?}\n{listing}"
    );
    assert_eq!(fds.iter().filter(|(fd, _)| *fd <= 2).count(), 3, "{listing}");
    // A command that cannot start still says why (the spawn's own error pipe survives).
    wait_for(T, "the reason nope's check cannot start", || {
        pw.stderr()
            .contains(r#"cannot start \"/no/such/command\": No such file or directory"#)
            .then_some(())
    });
}
