//! Operating procwatch by hand: `procwatch ctl` against the real binary over the control
//! socket and over HTTP(S), the `/api/v1/` routes' guards (403 without
//! --web.enable-lifecycle, 401 without credentials), the socket's mode and clean-up, and
//! "stopped by hand" holding against the restart policy.

mod util;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use util::{Procwatch, ctl_with, http, wait_for};

const T: Duration = Duration::from_secs(30);

const TWO: &str = "status_interval: 0\nprocesses:\n  - name: a\n    command: [sleep, '600']\n  - name: b\n    command: [sleep, '600']\n";

fn pid_of(pw: &Procwatch, name: &str) -> Option<i32> {
    pw.scrape().prog("procwatch_process_pid", name).map(|p| p as i32)
}

fn wait_pid(pw: &Procwatch, name: &str) -> i32 {
    wait_for(T, &format!("{name} running"), || pid_of(pw, name))
}

fn actions(pw: &Procwatch, name: &str, action: &str) -> f64 {
    pw.scrape()
        .get(
            "procwatch_process_control_actions_total",
            &[("name", name), ("action", action)],
        )
        .unwrap_or(-1.0)
}

#[test]
fn ctl_restart_stop_start_signal_over_the_socket() {
    let pw = Procwatch::start(TWO, &[]);
    let (a0, b0) = (wait_pid(&pw, "a"), wait_pid(&pw, "b"));

    let (code, out, err) = pw.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("a "))
        .expect("a row for a");
    assert!(row.contains("running") && row.contains(&a0.to_string()), "{out}");

    let (code, out, err) = pw.ctl(&["restart", "a"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("a: restarted (pid {a0} -> ")), "{out}");
    let a1 = wait_pid(&pw, "a");
    assert_ne!(a1, a0);
    assert!(
        out.contains(&format!("-> {a1})")),
        "the answer names the new PID: {out}"
    );
    assert_eq!(pid_of(&pw, "b"), Some(b0), "restarting a never touches b");
    let s = pw.scrape();
    assert_eq!(
        s.prog("procwatch_process_restarts_total", "a"),
        Some(0.0),
        "not a policy restart"
    );
    assert_eq!(actions(&pw, "a", "restart"), 1.0);
    assert_eq!(actions(&pw, "b", "restart"), 0.0);

    let (code, out, err) = pw.ctl(&["stop", "a"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("a: stopped by hand"), "{out}");
    assert!(
        !std::path::Path::new(&format!("/proc/{a1}")).exists(),
        "a's process is gone once stop answers"
    );
    let (_, out, _) = pw.ctl(&["status", "a"]);
    assert!(out.contains("stopped-by-hand"), "{out}");
    assert_eq!(pw.scrape().prog("procwatch_process_up", "a"), Some(0.0));

    // A signal to a program that is down is refused; to one that runs, delivered.
    let (code, _, err) = pw.ctl(&["signal", "a", "HUP"]);
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");
    let (code, out, err) = pw.ctl(&["signal", "b", "USR1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("b: signal sent"), "{out}");
    // sleep dies of SIGUSR1: the policy (on-failure) restarts it, and it counts as a restart.
    wait_for(T, "b restarted by policy after the signal", || {
        let s = pw.scrape();
        (s.prog("procwatch_process_restarts_total", "b") == Some(1.0)).then_some(())
    });
    assert_eq!(actions(&pw, "b", "signal"), 1.0);

    let (code, out, err) = pw.ctl(&["start", "a"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("a: started (pid "), "{out}");
    wait_pid(&pw, "a");
    assert_eq!(actions(&pw, "a", "start"), 1.0);
    assert_eq!(actions(&pw, "a", "stop"), 1.0);

    let (code, out, err) = pw.ctl(&["status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &v["programs"][0];
    assert_eq!(a["name"], "a");
    assert_eq!(a["state"], "running");
    assert_eq!(a["control_actions"]["restart"], 1);

    let (code, out, err) = pw.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("unchanged"), "{out}");

    let (code, _, err) = pw.ctl(&["logs", "a", "-n", "5"]);
    assert_eq!(code, 0, "{err}");
}

/// A program that ignores SIGTERM is SIGKILLed after stop_timeout (`cgroup.kill` in cgroup
/// mode), and its next run must live: some kernels SIGKILL at once every child that
/// clone3(CLONE_INTO_CGROUP) places in a cgroup that `cgroup.kill` was written to.
#[test]
fn a_program_killed_after_its_stop_timeout_runs_again() {
    let pw = Procwatch::start(
        "status_interval: 0\nprocesses:\n  - name: deaf\n    command: [sh, -c, \"trap '' TERM; while :; do sleep 0.2; done\"]\n    stop_timeout: 1s\n",
        &[],
    );
    let p0 = wait_pid(&pw, "deaf");
    let (code, out, err) = pw.ctl(&["restart", "deaf"]);
    assert_eq!(code, 0, "{out}{err}");
    let p1 = wait_for(T, "a new run", || pid_of(&pw, "deaf").filter(|&p| p != p0));
    // A new run killed at its start is gone within milliseconds; this one must still be
    // the same run a second later, and only the first run has ended (by SIGKILL).
    std::thread::sleep(Duration::from_secs(1));
    let s = pw.scrape();
    assert_eq!(
        s.prog("procwatch_process_pid", "deaf"),
        Some(f64::from(p1)),
        "{}",
        pw.stderr()
    );
    assert_eq!(
        s.get(
            "procwatch_process_exits_total",
            &[("name", "deaf"), ("reason", "signal")]
        ),
        Some(1.0),
        "{}",
        pw.stderr()
    );
}

#[test]
fn ctl_logs_shows_the_last_lines_and_what_came_after() {
    // stdout and stderr are two pipes, read as they come: the stderr line is written only
    // once the five stdout lines are captured, so that the order of the six is known.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let cfg = format!(
        "status_interval: 0\nprocesses:\n  - name: talk\n    command: [sh, -c, 'for i in 1 2 3 4 5; do echo line-$i; done; while [ ! -e {go} ]; do sleep 0.01; done; echo oops >&2; sleep 600']\n",
        go = go.display()
    );
    let pw = Procwatch::start(&cfg, &[]);
    wait_for(T, "five stdout lines captured", || {
        let (code, out, _) = pw.ctl(&["logs", "talk", "-n", "100"]);
        (code == 0 && out.lines().count() == 5).then_some(())
    });
    std::fs::write(&go, "").unwrap();
    let out = wait_for(T, "six lines captured", || {
        let (code, out, _) = pw.ctl(&["logs", "talk", "-n", "100"]);
        (code == 0 && out.lines().count() == 6).then_some(out)
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["line-1", "line-2", "line-3", "line-4", "line-5", "oops"]);
    let (code, out, err) = pw.ctl(&["logs", "talk", "-n", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["line-5", "oops"]);
    let (status, _, body) = http(&pw.addr, "GET", "/api/v1/programs/talk/logs?lines=3&after=3", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["captured"], true);
    let got: Vec<&str> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["line-5", "oops"], "{v}");
    assert_eq!(v["lines"][1]["stream"], "stderr");
}

#[test]
fn ctl_errors_are_clear_and_exit_1() {
    let pw = Procwatch::start(TWO, &[]);
    wait_pid(&pw, "a");
    for args in [
        &["restart", "nope"][..],
        &["stop", "nope"],
        &["start", "a", "nope"],
        &["signal", "nope", "HUP"],
        &["status", "nope"],
        &["logs", "nope"],
    ] {
        let (code, _, err) = pw.ctl(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("no program named \"nope\""), "{args:?}: {err}");
    }
    let (code, _, err) = pw.ctl(&["signal", "a", "NOPE"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown signal \"NOPE\""), "{err}");

    let missing = pw.path("nobody.sock");
    let (code, _, err) = ctl_with(&["ctl", "--socket", missing.to_str().unwrap(), "status"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("procwatch is not running at control socket"), "{err}");

    // An address where nothing listens.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let (code, _, err) = ctl_with(&["ctl", "--url", &url, "status"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing listening at"), "{err}");
}

#[test]
fn stopped_by_hand_stays_stopped_until_started_or_changed_by_a_reload() {
    // Exits at once and would be restarted within 10 ms by its policy.
    let yaml = |arg: &str| {
        format!(
            "status_interval: 0\nprocesses:\n  - name: flappy\n    command: [sh, -c, 'sleep {arg}']\n    restart: always\n    backoff: {{initial: 10ms, max: 10ms}}\n"
        )
    };
    let pw = Procwatch::start(&yaml("0.2"), &[]);
    wait_pid(&pw, "flappy");
    let (code, _, err) = pw.ctl(&["stop", "flappy"]);
    assert_eq!(code, 0, "{err}");
    let exits = |pw: &Procwatch| {
        let s = pw.scrape();
        ["success", "failure", "signal"]
            .iter()
            .map(|r| {
                s.get("procwatch_process_exits_total", &[("name", "flappy"), ("reason", r)])
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let before = exits(&pw);
    // The policy would have restarted it about 5 times a second: a second of watching shows it
    // does not.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert_eq!(
            pid_of(&pw, "flappy"),
            None,
            "the policy restarted a program stopped by hand"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(exits(&pw), before);
    // A reload that leaves it unchanged leaves it stopped.
    let (code, _, err) = pw.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = pw.ctl(&["status", "flappy"]);
    assert!(out.contains("stopped-by-hand"), "{out}");
    // One that changes it starts it.
    pw.write_config(&yaml("0.3"));
    let (code, _, err) = pw.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    wait_pid(&pw, "flappy");
    // Stopped again, then started by hand.
    pw.ctl(&["stop", "flappy"]);
    assert_eq!(pid_of(&pw, "flappy"), None);
    let (code, _, err) = pw.ctl(&["start", "flappy"]);
    assert_eq!(code, 0, "{err}");
    wait_pid(&pw, "flappy");
}

#[test]
fn control_socket_mode_clean_up_and_stale_replacement() {
    let mut pw = Procwatch::start(TWO, &[]);
    let sock = pw.socket();
    let meta = std::fs::metadata(&sock).expect("the socket at $RUNTIME_DIRECTORY/procwatch.sock");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A second procwatch asked for the same path: an error, exit 1, and the first one's socket
    // still works.
    let (code, _, err) = util::run_to_end(
        &[
            "--config",
            pw.config.to_str().unwrap(),
            "--control.socket",
            sock.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        pw.dir.path(),
        &util::marker("second"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another procwatch is serving there"), "{err}");
    assert_eq!(pw.ctl(&["status"]).0, 0);

    assert!(pw.stop().success());
    assert!(!sock.exists(), "the socket is removed at exit");

    // After SIGKILL the file stays behind; the next procwatch replaces it.
    let pw2 = Procwatch::start(TWO, &[]);
    let sock2 = pw2.socket();
    let mut pw2 = pw2;
    // The supervisor (which serves the socket) dies; a SIGKILL of procwatch's PID (its
    // guardian) would be a clean stop, which removes the socket.
    // SAFETY: plain syscall to our own grandchild.
    unsafe { libc::kill(pw2.supervisor_pid(), libc::SIGKILL) };
    pw2.wait_exit(T);
    assert!(sock2.exists(), "a killed procwatch leaves its socket");
    let (code, _, _) = pw2.ctl(&["status"]);
    assert_eq!(code, 1, "nobody listens at a stale socket");
    let pw3 = Procwatch::start_in(
        tempfile::tempdir().unwrap(),
        pw2.config.clone(),
        &[
            "--config",
            pw2.config.to_str().unwrap(),
            "--control.socket",
            sock2.to_str().unwrap(),
        ],
        &util::marker("third"),
    );
    let (code, out, err) = ctl_with(&["ctl", "--socket", sock2.to_str().unwrap(), "status"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 programs"), "{out}");
    assert!(
        pw3.stderr().contains("replacing a stale control socket"),
        "{}",
        pw3.stderr()
    );

    // `none`: no socket.
    let pw4 = Procwatch::start(TWO, &["--control.socket", "none"]);
    assert!(!pw4.socket().exists());
}

#[test]
fn the_default_socket_held_by_another_procwatch_is_a_warning() {
    let pw = Procwatch::start(TWO, &[]);
    let dir = pw.dir.path().to_str().unwrap().to_owned();
    let second = Procwatch::start_with(
        tempfile::tempdir().unwrap(),
        pw.config.clone(),
        &["--config", pw.config.to_str().unwrap()],
        &util::marker("second-default"),
        |cmd| {
            cmd.env("RUNTIME_DIRECTORY", &dir);
        },
    );
    wait_for(T, "the warning", || {
        second
            .stderr()
            .contains("another procwatch serves the default control socket")
            .then_some(())
    });
    // The first one still answers on it.
    let (code, _, err) = pw.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_api_on_tcp_needs_the_lifecycle_flag_to_change_state() {
    let pw = Procwatch::start(TWO, &[]);
    let a0 = wait_pid(&pw, "a");
    let (status, head, body) = http(&pw.addr, "GET", "/api/v1/programs/a", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("application/json"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pid"], a0);
    for action in ["start", "stop", "restart", "signal?signal=HUP"] {
        let (status, _, body) = http(&pw.addr, "POST", &format!("/api/v1/programs/a/{action}"), "").unwrap();
        assert_eq!(status, 403, "{action}: {body}");
    }
    assert_eq!(pid_of(&pw, "a"), Some(a0));
    let (code, _, err) = ctl_with(&["ctl", "--url", &format!("http://{}", pw.addr), "restart", "a"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("403 Forbidden") && err.contains("--web.enable-lifecycle"),
        "{err}"
    );
    // Reading needs no flag.
    let (code, out, err) = ctl_with(&["ctl", "--url", &format!("http://{}", pw.addr), "status"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&a0.to_string()), "{out}");

    let pw = Procwatch::start(TWO, &["--web.enable-lifecycle"]);
    let a0 = wait_pid(&pw, "a");
    let (status, _, body) = http(&pw.addr, "POST", "/api/v1/programs/a/restart", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pid_before"], a0);
    assert_ne!(v["pid_after"], a0);
    let (status, _, body) = http(&pw.addr, "POST", "/api/v1/programs/nope/restart", "").unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = http(&pw.addr, "GET", "/api/v1/programs/a/restart", "").unwrap();
    assert_eq!(status, 405);
    let (status, _, body) = http(&pw.addr, "POST", "/api/v1/programs/a/signal?signal=BOGUS", "").unwrap();
    assert_eq!(status, 400, "{body}");
    let (code, out, err) = ctl_with(&["ctl", "--url", &format!("http://{}", pw.addr), "stop", "b"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("b: stopped by hand"), "{out}");
}

#[test]
fn ctl_over_https_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {d}/server.pem\n  key_file: {d}/server.key\nbasic_auth_users:\n  ops: '{hash}'\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let pw = Procwatch::start(
        TWO,
        &["--web.config.file", web.to_str().unwrap(), "--web.enable-lifecycle"],
    );
    let url = format!("https://{}", pw.addr);
    let ca_file = dir.path().join("ca.pem");
    let ca_file = ca_file.to_str().unwrap();
    let base = ["ctl", "--url", &url, "--ca-file", ca_file];
    let with = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        ctl_with(&args, env)
    };

    let (code, _, err) = with(&["restart", "a"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("401 Unauthorized") && err.contains("PROCWATCH_USER"),
        "{err}"
    );
    let (code, _, err) = with(
        &["status"],
        &[("PROCWATCH_USER", "ops"), ("PROCWATCH_PASSWORD", "wrong")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("were not accepted"), "{err}");
    let creds = [("PROCWATCH_USER", "ops"), ("PROCWATCH_PASSWORD", "s3cret")];
    let a0 = {
        let (code, out, err) = with(&["status", "-o", "json"], &creds);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["programs"][0]["pid"].as_i64().unwrap()
    };
    let (code, out, err) = with(&["restart", "a"], &creds);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("a: restarted (pid {a0} -> ")), "{out}");
    // The socket needs none of that: its guard is its file mode.
    let (code, _, err) = pw.ctl(&["restart", "b"]);
    assert_eq!(code, 0, "{err}");
    // Without the CA, the server is not trusted.
    let (code, _, err) = ctl_with(&["ctl", "--url", &url, "status"], &creds);
    assert_eq!(code, 1);
    assert!(err.contains("TLS"), "{err}");
}
