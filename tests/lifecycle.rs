//! procwatch's own life: signals that must not end it, `/-/ready` and the reload gauge during
//! start-up, and the exit code of a start-up error.

mod util;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::{Procwatch, http, wait_for};

const T: Duration = Duration::from_secs(30);

/// Every signal whose default action would end procwatch (signal(7): Term or Core) and that
/// is not a stop, a reload or a fault: each is logged, and procwatch and its program go on.
#[test]
fn signals_that_would_end_procwatch_are_logged_and_ignored() {
    let marker = util::marker("signals");
    let mut pw = Procwatch::start_marked(
        "processes:\n  - name: sleeper\n    command: [sleep, '600']\n",
        &[],
        &marker,
    );
    let pid = |pw: &Procwatch| pw.scrape().prog("procwatch_process_pid", "sleeper");
    let before = wait_for(T, "sleeper to run", || pid(&pw));
    let rtmin = libc::SIGRTMIN();
    let rtmax = libc::SIGRTMAX();
    let named = [
        (libc::SIGUSR1, "SIGUSR1".to_owned()),
        (libc::SIGUSR2, "SIGUSR2".to_owned()),
        (libc::SIGALRM, "SIGALRM".to_owned()),
        (libc::SIGVTALRM, "SIGVTALRM".to_owned()),
        (libc::SIGPROF, "SIGPROF".to_owned()),
        (libc::SIGIO, "SIGIO".to_owned()),
        (libc::SIGXCPU, "SIGXCPU".to_owned()),
        (libc::SIGXFSZ, "SIGXFSZ".to_owned()),
        (libc::SIGTRAP, "SIGTRAP".to_owned()),
        (libc::SIGSTKFLT, "SIGSTKFLT".to_owned()),
        (libc::SIGPWR, "SIGPWR".to_owned()),
        (rtmin, "SIGRTMIN+0".to_owned()),
        (rtmin + 5, "SIGRTMIN+5".to_owned()),
        (rtmax, format!("SIGRTMIN+{}", rtmax - rtmin)),
    ];
    for (number, name) in &named {
        pw.signal(*number);
        let needle = format!("signal={name}");
        wait_for(T, &format!("{name} to be logged"), || {
            // The name whole: SIGRTMIN+1 is not SIGRTMIN+10.
            let log = pw.stderr();
            log.match_indices(&needle)
                .any(|(at, _)| matches!(log[at + needle.len()..].chars().next(), Some(' ' | '\n')))
                .then_some(())
        });
        assert!(pw.child.try_wait().unwrap().is_none(), "{name} ended procwatch");
    }
    // SIGPIPE is ignored (not logged: a log line about it could itself meet a closed pipe).
    pw.signal(libc::SIGPIPE);
    assert_eq!(http(&pw.addr, "GET", "/-/healthy", "").unwrap().0, 200);
    assert!(pw.child.try_wait().unwrap().is_none(), "SIGPIPE ended procwatch");
    assert_eq!(pid(&pw), Some(before), "the program was restarted or lost");
    // Still stopping cleanly afterwards.
    assert_eq!(pw.stop().code(), Some(0), "{}", pw.stderr());
    assert!(util::pids_with(&marker).is_empty(), "a program outlived procwatch");
}

/// SIGQUIT (default: core dump) is a clean stop like SIGTERM: programs stopped, exit 0.
#[test]
fn sigquit_stops_cleanly() {
    let marker = util::marker("sigquit");
    let mut pw = Procwatch::start_marked(
        "processes:\n  - name: sleeper\n    command: [sleep, '600']\n",
        &[],
        &marker,
    );
    wait_for(T, "sleeper to run", || {
        pw.scrape().prog("procwatch_process_pid", "sleeper")
    });
    pw.signal(libc::SIGQUIT);
    let status = pw.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", pw.stderr());
    assert!(pw.stderr().contains("SIGQUIT: stopping"), "{}", pw.stderr());
    assert!(util::pids_with(&marker).is_empty(), "a program outlived procwatch");
}

/// While the first config is being applied (here: hundreds of programs starting),
/// `/-/ready` answers 503, and the reload gauge already says the config was good.
#[test]
fn ready_waits_for_the_first_apply_and_the_gauge_never_reads_0() {
    // Seeing a 503 needs a request to land in a window of some tens of ms, which a loaded
    // machine may not give this thread; what is checked on every answer holds on each try.
    for attempt in 1..=3 {
        if start_once_and_count_not_ready() > 0 {
            return;
        }
        eprintln!("attempt {attempt}: start-up too quick to see /-/ready answer 503");
    }
    panic!("start-up was too quick to see /-/ready answer 503 in 3 attempts");
}

/// Starts procwatch with many programs, polls `/-/ready` and `/metrics` until ready, checking
/// the gauge and that ready means the first config applied, stops it; returns how many 503s.
fn start_once_and_count_not_ready() -> usize {
    const N: usize = 1500;
    let mut yaml = String::from("status_interval: 0\nprocesses:\n");
    for i in 0..N {
        yaml.push_str(&format!("  - {{name: p{i}, command: [sleep, '600']}}\n"));
    }
    let (dir, config) = util::config_dir(&yaml);
    let marker = util::marker("ready");
    // A port chosen here, so that the first request goes out as soon as procwatch listens,
    // not after its log line has been read: start-up with the clone3 spawn is quick.
    let addr = format!("127.0.0.1:{}", util::free_port());
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(util::BIN)
        .args(["--config", config.to_str().unwrap(), "--web.listen-address", &addr])
        .env(util::MARKER_VAR, &marker)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (mut not_ready, mut ready) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    // Polled without the 25 ms pause of `wait_for`: the window before the first apply ends
    // is short. Connection refused means procwatch is not listening yet.
    let mut poll = || -> Option<()> {
        let (status, _, _) = http(&addr, "GET", "/-/ready", "").ok()?;
        let (_, _, body) = http(&addr, "GET", "/metrics", "").ok()?;
        let scrape = util::Scrape::parse(body);
        assert_eq!(
            scrape.get("procwatch_config_last_reload_successful", &[]),
            Some(1.0),
            "the gauge read 0 during start-up"
        );
        let programs = scrape.text.matches("procwatch_process_up{").count();
        match status {
            503 => not_ready += 1,
            200 => {
                ready += 1;
                // Ready means every program of the first config is there.
                assert_eq!(programs, N, "ready before the first config was applied");
            }
            other => panic!("/-/ready answered {other}"),
        }
        (ready > 0).then_some(())
    };
    while poll().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for /-/ready to answer 200"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: plain syscall to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_for(T, "procwatch to exit", || child.try_wait().ok().flatten());
    assert_eq!(status.code(), Some(0));
    assert!(util::pids_with(&marker).is_empty(), "a program outlived procwatch");
    not_ready
}

/// A supervisor that cannot start (here: no thread can be created under RLIMIT_NPROC) is a
/// start-up error: exit 1 with the reason, as the contract says.
#[test]
fn a_supervisor_start_up_error_exits_1() {
    let (dir, config) = util::config_dir("processes: []\n");
    // Readable by the unprivileged user procwatch runs as here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run procwatch as an unprivileged user");
        return;
    }
    // Root has CAP_SYS_RESOURCE, so only an ordinary user feels RLIMIT_NPROC, which counts
    // every thread of that uid: one that no other process uses (not even another test run),
    // limited to the threads the runtime has before the supervisor starts its own.
    let uid = 200_000 + std::process::id() % 100_000;
    let log = dir.path().join("stderr.log");
    let mut cmd = Command::new(util::BIN);
    cmd.args([
        "--config",
        config.to_str().unwrap(),
        "--web.listen-address",
        "127.0.0.1:0",
        "--control.socket",
        "none",
    ])
    .current_dir(dir.path())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The guardian, the supervisor's main thread and the runtime's two workers.
            let limit = libc::rlimit {
                rlim_cur: 4,
                rlim_max: 4,
            };
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
                || libc::setrlimit(libc::RLIMIT_NPROC, &limit) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Never left behind: a procwatch that hung here would hold this uid's threads.
    let mut child = cmd.spawn().unwrap();
    let status = util::wait_for_or_kill(&mut child, T);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("start the supervisor threads"), "{stderr}");
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
}

/// Loading a config that logs (here: an include that matches nothing) once started the log's
/// writer thread before the guardian was forked off. The guardian then had a second thread
/// that took SIGHUP and SIGTERM without forwarding them (about one signal in three was lost,
/// and the harness waited 20 s for a stop), and the supervisor had a log sink without a
/// writer. Now every thread of the guardian blocks what it forwards, each signal is acted on,
/// and the supervisor's log reaches a piped stderr.
#[test]
fn a_warning_while_loading_loses_no_signal_and_no_log_line() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let marker = util::marker("early-log");
    let (dir, config) =
        util::config_dir("include: [nothing/*.yaml]\nprocesses:\n  - name: sleeper\n    command: [sleep, '600']\n");
    let addr = util::free_addr();
    let mut child = Command::new(util::BIN)
        .args(["--config", config.to_str().unwrap(), "--web.listen-address", &addr])
        .args(["--control.socket", "none"])
        .env(util::MARKER_VAR, &marker)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut pw = Procwatch::adopt(child, dir, config, addr);
    let text = || log.lock().unwrap().clone();
    wait_for(T, "the sleeper to run", || {
        pw.scrape().prog("procwatch_process_pid", "sleeper")
    });

    let forwarded = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];
    let guardian = pw.pid();
    for task in std::fs::read_dir(format!("/proc/{guardian}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap();
        for sig in forwarded {
            assert_ne!(
                blocked & (1 << (sig - 1)),
                0,
                "a guardian thread takes signal {sig}:\n{status}"
            );
        }
    }

    for n in 1..=5 {
        pw.signal(libc::SIGHUP);
        // Each reload to its end: a SIGTERM during one would (rightly) preempt it.
        wait_for(T, &format!("reload {n} to be logged through the pipe"), || {
            let t = text();
            (t.matches("SIGHUP: reloading config").count() == n && t.matches("config reloaded").count() == n)
                .then_some(())
        });
    }
    pw.signal(libc::SIGTERM);
    let status = pw.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", text());
    let text = text();
    assert!(text.contains("SIGTERM: stopping"), "{text}");
    // At start and at each of the five reloads.
    assert_eq!(text.matches("include matches no file").count(), 6, "{text}");
    let left = util::procs_with(&marker);
    assert!(left.is_empty(), "outlived procwatch: {left:?}\n{text}");
}
