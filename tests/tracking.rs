//! Process tracking in both modes, on real cgroups: cgroup mode (as root here: each program in
//! its own cgroup v2) and proc mode (procwatch run as `nobody`, or `cgroup: off`). Daemons
//! that double-fork and `setsid`, and children that `setpgid`, are counted and stopped; a
//! `kill -9` of procwatch (its guardian's PID, or the supervisor's) leaves nothing running;
//! cgroups are cleaned up. Where cgroup mode cannot run (not root, no cgroup2), those tests
//! print why and pass.

mod util;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::{Procwatch, procs_with, wait_for};

const T: Duration = Duration::from_secs(30);

/// The cgroup2 mount, if procwatch can use cgroup mode here (root and a writable cgroup2).
fn cgroup2() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: cgroup mode needs root (or a delegated cgroup) and this test runs as a user");
        return None;
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = procwatch::cgroup::parse_mountinfo(&info);
    if mount.is_none() {
        eprintln!("skipped: no cgroup2 file system is mounted here");
    }
    mount
}

/// procwatch's own cgroup directory for the test process's cgroup.
fn own_cgroup(mount: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = procwatch::cgroup::parse_own_cgroup(&text).unwrap();
    mount.join(own.trim_start_matches('/'))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// As root: cgroup mode.
    Cgroup,
    /// As nobody: proc mode, because procwatch cannot write any cgroup.
    Unprivileged,
}

/// Starts procwatch on `yaml` (plus `files` written next to it) in `mode`.
fn start(mode: Mode, yaml: &str, files: &[(&str, &str)], marker: &str) -> Procwatch {
    start_with_flags(mode, yaml, files, marker, &[])
}

/// [`start`], with `flags` after `--config`.
fn start_with_flags(mode: Mode, yaml: &str, files: &[(&str, &str)], marker: &str, flags: &[&str]) -> Procwatch {
    let (dir, config) = util::config_dir(yaml);
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let arg = config.to_str().unwrap().to_owned();
    if mode == Mode::Unprivileged {
        // nobody must be able to read the config and run in the directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
    let args: Vec<&str> = ["--config", arg.as_str()]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    Procwatch::start_with(dir, config, &args, marker, |cmd| {
        if mode == Mode::Unprivileged {
            cmd.uid(65534).gid(65534);
        }
    })
}

/// Processes of this test with `needle` in their command line.
fn running(marker: &str, needle: &str) -> Vec<i32> {
    procs_with(marker)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(needle))
        .map(|(pid, _)| pid)
        .collect()
}

fn gone(marker: &str, what: &str) {
    wait_for(T, what, || procs_with(marker).is_empty().then_some(()));
}

/// A daemon that double-forks and `setsid`s, burns 2 s of CPU, and sleeps; the middle process
/// burns 0.5 s and exits (so the daemon is orphaned, and 0.5 s of the program's CPU is a dead
/// process's); the main process sleeps too. Each writes its own CPU time
/// (CLOCK_PROCESS_CPUTIME_ID: from its clone on, exact) to `cpu-<who>`; `burned` appears once
/// all three have.
const DAEMON: &str = "import os, time
def burn(s):
    t = time.process_time()
    while time.process_time() - t < s:
        pass
def say(who):
    open('cpu-' + who + '.tmp', 'w').write(repr(time.process_time()))
    os.rename('cpu-' + who + '.tmp', 'cpu-' + who)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        burn(2.0)
        say('daemon')
        while not os.path.exists('cpu-middle'):
            time.sleep(0.01)
        open('burned', 'w').close()
        time.sleep(600)
    burn(0.5)
    say('middle')
    os._exit(0)
say('main')
time.sleep(600)
";

const DAEMON_YAML: &str = "shutdown_timeout: 10s\nprocesses:\n  - name: daemon\n    command: [python3, daemon.py]\n  - name: plain\n    command: [sleep, '600']\n";

fn start_daemon(mode: Mode, marker: &str) -> Procwatch {
    let pw = start(mode, DAEMON_YAML, &[("daemon.py", DAEMON)], marker);
    pw.wait_scrape(T, "both up", |s| {
        s.prog("procwatch_process_up", "daemon") == Some(1.0) && s.prog("procwatch_process_up", "plain") == Some(1.0)
    });
    wait_for(T, "the daemon to burn its 2 s", || {
        pw.path("burned").exists().then_some(())
    });
    pw
}

#[test]
fn a_setsid_daemons_cpu_and_membership_are_counted_and_removal_stops_it() {
    let Some(mount) = cgroup2() else { return };
    let m = util::marker("daemon-cpu");
    let pw = start_daemon(Mode::Cgroup, &m);
    // Once the middle process has exited.
    let s = pw.wait_scrape(T, "the daemon's two processes", |s| {
        s.prog("procwatch_process_tree_processes", "daemon") == Some(2.0)
    });
    let cpu = s.cpu("daemon");
    // What the three processes say they used, the exited middle one's 0.5 s included: none
    // of it is lost. The cgroup counts somewhat more than its processes' own clocks (60 to 150
    // ms here, also with no procwatch involved: 2629 ms in cpu.stat for 2570 ms of its three
    // tasks' sum_exec_runtime), so the upper bound is looser.
    let used: f64 = ["main", "middle", "daemon"]
        .iter()
        .map(|who| {
            std::fs::read_to_string(pw.path(&format!("cpu-{who}")))
                .unwrap()
                .parse::<f64>()
                .unwrap()
        })
        .sum();
    assert!(used >= 2.5, "{used}");
    assert!(
        cpu >= 0.99 * used && cpu <= 1.10 * used,
        "daemon: {cpu:.3} s counted, {used:.3} s used by its three processes"
    );
    // The main process and the daemon (the middle process has exited).
    assert_eq!(
        s.prog("procwatch_process_tree_processes", "daemon"),
        Some(2.0),
        "{}",
        s.text
    );
    assert_eq!(running(&m, "daemon.py").len(), 2);

    // The program's cgroup is where procwatch said, and holds exactly those two.
    let programs = own_cgroup(&mount)
        .join(format!("procwatch-{}", pw.supervisor_pid()))
        .join("programs");
    let procs = std::fs::read_to_string(programs.join("daemon/cgroup.procs")).unwrap();
    assert_eq!(procs.split_whitespace().count(), 2, "{procs}");

    // Removed by a reload: the daemon goes too, and so does the cgroup; CPU stays counted
    // for `plain` (never decreasing).
    pw.write_config("processes:\n  - name: plain\n    command: [sleep, '600']\n");
    pw.signal(libc::SIGHUP);
    wait_for(T, "the daemon to be stopped", || {
        running(&m, "daemon.py").is_empty().then_some(())
    });
    wait_for(T, "the program's cgroup to be removed", || {
        (!programs.join("daemon").exists()).then_some(())
    });
    assert!(programs.join("plain").exists());
}

fn daemon_stopped_on_sigterm(mode: Mode) {
    let m = util::marker(&format!("daemon-term-{mode:?}"));
    let mut pw = start_daemon(mode, &m);
    let status = pw.stop();
    assert!(status.success(), "{status:?}\n{}", pw.stderr());
    let left = procs_with(&m);
    assert!(left.is_empty(), "left running: {left:?}\n{}", pw.stderr());
}

#[test]
fn sigterm_stops_a_setsid_daemon_in_cgroup_mode() {
    if cgroup2().is_none() {
        return;
    }
    daemon_stopped_on_sigterm(Mode::Cgroup);
}

#[test]
fn sigterm_stops_a_setsid_daemon_in_proc_mode() {
    daemon_stopped_on_sigterm(Mode::Unprivileged);
}

/// A procwatch the kernel refuses taskstats (here: not root) reads context switches from
/// /proc/PID/status and says so once; with the ctxswitch group off it asks nothing and says
/// nothing.
#[test]
fn without_taskstats_procwatch_says_once_where_context_switches_come_from() {
    let line = "context switches are read from /proc/PID/task/TID/status";
    for (flags, times) in [(&[][..], 1), (&["--no-collector.ctxswitch"][..], 0)] {
        let m = util::marker(&format!("no-taskstats-{times}"));
        let yaml = "processes:\n  - name: plain\n    command: [sleep, '600']\n";
        let pw = start_with_flags(Mode::Unprivileged, yaml, &[], &m, flags);
        let s = pw.wait_scrape(T, "plain up", |s| s.prog("procwatch_process_up", "plain") == Some(1.0));
        assert_eq!(
            s.text.contains("procwatch_process_context_switches_total{"),
            times == 1,
            "{flags:?}"
        );
        pw.scrape();
        assert_eq!(pw.stderr().matches(line).count(), times, "{flags:?}:\n{}", pw.stderr());
    }
}

/// A stop sends the stop signal once: many programs take a second SIGTERM for "quit now",
/// and a shell's TERM trap starts over at each. The program counts them for a second after
/// the first and exits.
fn one_stop_signal(proc_mode: bool) {
    let m = util::marker(&format!("one-term-{proc_mode}"));
    let script = "import signal, time\nhits = []\nsignal.signal(signal.SIGTERM, lambda s, f: hits.append(s))\nopen('ready', 'w').close()\nwhile not hits:\n    time.sleep(0.01)\ntime.sleep(1)\nopen('count', 'w').write(str(len(hits)))\n";
    let yaml = format!(
        "{}status_interval: 0\nprocesses:\n  - name: counter\n    command: [python3, term.py]\n    cwd: .\n    stop_timeout: 10s\n",
        if proc_mode { "cgroup: off\n" } else { "" }
    );
    let mut pw = start(Mode::Cgroup, &yaml, &[("term.py", script)], &m);
    wait_for(T, "the TERM handler to be set", || {
        pw.path("ready").exists().then_some(())
    });
    assert!(pw.stop().success(), "{}", pw.stderr());
    assert_eq!(
        std::fs::read_to_string(pw.path("count")).unwrap(),
        "1",
        "SIGTERMs the program got"
    );
}

#[test]
fn a_stop_sends_the_stop_signal_once_in_cgroup_mode() {
    if cgroup2().is_none() {
        return;
    }
    one_stop_signal(false);
}

#[test]
fn a_stop_sends_the_stop_signal_once_in_proc_mode() {
    one_stop_signal(true);
}

/// `kill -9` of procwatch's PID (the guardian: the supervisor stops everything and says so),
/// or of the supervisor (the guardian kills everything left).
fn daemon_stopped_on_sigkill(mode: Mode, target_supervisor: bool) {
    let m = util::marker(&format!("daemon-kill-{mode:?}-{target_supervisor}"));
    let mut pw = start_daemon(mode, &m);
    let sup = pw.supervisor_pid();
    if target_supervisor {
        // The daemon's main process, the daemon and `plain` (the middle process is a zombie
        // its parent never reaps; zombies have no environment to carry the marker).
        let programs = wait_for(T, "the three programs' processes", || {
            let n = util::procs_with(&m)
                .iter()
                .filter(|(p, _)| *p != sup && *p != pw.pid())
                .count();
            (n == 3).then_some(n)
        });
        // SAFETY: plain syscall to our own grandchild.
        unsafe { libc::kill(sup, libc::SIGKILL) };
        pw.wait_exit(T);
        // The daemon at least, which only the guardian can end; the others die of their
        // parent-death signal at the same time, and are counted if seen alive. None twice.
        let err = pw.stderr();
        let killed: usize = err
            .split_once("the supervisor was killed")
            .and_then(|(_, rest)| rest.split_once("killed=")?.1.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("the guardian says what it did:\n{err}"));
        assert!(
            (1..=programs).contains(&killed),
            "killed={killed} of {programs} processes:\n{err}"
        );
    } else {
        pw.signal(libc::SIGKILL);
        pw.wait_exit(T);
    }
    gone(&m, "every program, daemon and procwatch process to be gone");
    if !target_supervisor {
        assert!(
            pw.stderr().contains("the guardian process is gone"),
            "the supervisor says why it stops:\n{}",
            pw.stderr()
        );
    }
    if mode == Mode::Cgroup {
        let mount = cgroup2().unwrap();
        let dir = own_cgroup(&mount).join(format!("procwatch-{sup}"));
        wait_for(T, "procwatch's cgroups to be removed", || (!dir.exists()).then_some(()));
    }
}

#[test]
fn sigkill_of_procwatch_leaves_no_daemon_in_cgroup_mode() {
    if cgroup2().is_none() {
        return;
    }
    daemon_stopped_on_sigkill(Mode::Cgroup, false);
    daemon_stopped_on_sigkill(Mode::Cgroup, true);
}

#[test]
fn sigkill_of_procwatch_leaves_no_daemon_in_proc_mode() {
    daemon_stopped_on_sigkill(Mode::Unprivileged, false);
    daemon_stopped_on_sigkill(Mode::Unprivileged, true);
}

/// A program whose child moves to its own process group, then exits 1: restarted by
/// policy, each run leaves a `setpgid` child behind unless the stop reaches it.
const SETPGID_YAML: &str = "processes:\n  - name: grouper\n    command: [python3, grouper.py]\n    restart: always\n    backoff: {initial: 100ms, max: 100ms}\n  - name: plain\n    command: [sleep, '600']\n";
const GROUPER: &str = "import os, time
if os.fork() == 0:
    os.setpgid(0, 0)
    time.sleep(600)
time.sleep(0.3)
raise SystemExit(1)
";

/// Processes of the test that lead their own process group but not their session.
fn setpgid_children(marker: &str) -> Vec<i32> {
    let mut reader = procwatch::procfs::Reader::default();
    running(marker, "grouper.py")
        .into_iter()
        .filter(|&pid| reader.stat(pid).is_some_and(|st| st.pgrp == pid && st.session != pid))
        .collect()
}

fn setpgid_child_stopped(mode: Mode) {
    let m = util::marker(&format!("setpgid-{mode:?}"));
    let pw = start(mode, SETPGID_YAML, &[("grouper.py", GROUPER)], &m);
    pw.wait_scrape(T, "four restarts", |s| {
        s.prog("procwatch_process_restarts_total", "grouper").unwrap_or(0.0) >= 4.0
    });
    // At most the current run's child is alive; each earlier run's went with its run.
    let kids = setpgid_children(&m);
    assert!(kids.len() <= 1, "setpgid children of earlier runs still run: {kids:?}");
    pw.write_config("processes:\n  - name: plain\n    command: [sleep, '600']\n");
    pw.signal(libc::SIGHUP);
    wait_for(T, "grouper and its children to be stopped", || {
        running(&m, "grouper.py").is_empty().then_some(())
    });
}

#[test]
fn a_setpgid_child_is_stopped_on_restart_and_removal_in_cgroup_mode() {
    if cgroup2().is_none() {
        return;
    }
    setpgid_child_stopped(Mode::Cgroup);
}

#[test]
fn a_setpgid_child_is_stopped_on_restart_and_removal_in_proc_mode() {
    setpgid_child_stopped(Mode::Unprivileged);
}

/// A grouper in perl (quicker to start than python): its child moves to its own process group
/// in the same session and sleeps; the main process exits 1 after 0.2 s. Once the main is
/// reaped, the child is one of procwatch's re-parented children: only the listing of those
/// finds it.
const PERL_GROUPER: &str = "if (!fork) { setpgrp(0, 0); sleep 600; exit } select(undef, undef, undef, 0.2); exit 1";

/// Proc mode shares one listing of procwatch's children among every stop under way. Many
/// programs stop at once (a reload that removes 150, then SIGTERM with 150 more) while six
/// groupers restart several times a second, each run's stop finding its re-parented child
/// through a listing: a listing made before the child was re-parented (by another stop) must
/// not let a stop end without it, so no more than one child per grouper ever runs; the mass
/// stops end by the stop signal alone, and nothing is left.
#[test]
fn stops_of_many_programs_at_once_in_proc_mode_still_find_re_parented_children() {
    const GROUPERS: usize = 6;
    let m = util::marker("many-stops");
    let config = |sleepers: usize| {
        let mut y = String::from("cgroup: off\nshutdown_timeout: 30s\nprocesses:\n");
        for i in 0..GROUPERS {
            y.push_str(&format!(
                "  - name: g{i}\n    command: [perl, -e, '{PERL_GROUPER}']\n    restart: always\n    backoff: {{initial: 50ms, max: 50ms}}\n"
            ));
        }
        for i in 0..sleepers {
            y.push_str(&format!("  - name: s{i}\n    command: [sleep, '600']\n"));
        }
        y
    };
    let mut pw = start(Mode::Cgroup, &config(300), &[], &m);
    let restarts = |s: &util::Scrape| {
        (0..GROUPERS)
            .map(|i| {
                s.prog("procwatch_process_restarts_total", &format!("g{i}"))
                    .unwrap_or(0.0)
            })
            .fold(f64::INFINITY, f64::min)
    };
    let s = pw.wait_scrape(T, "300 sleepers up and every grouper restarted", |s| {
        (0..300).all(|i| s.prog("procwatch_process_up", &format!("s{i}")) == Some(1.0)) && restarts(s) >= 2.0
    });
    let before = restarts(&s);
    let mut most = 0;
    let mut check = || {
        let mut reader = procwatch::procfs::Reader::default();
        let kids: Vec<i32> = running(&m, "perl")
            .into_iter()
            .filter(|&pid| reader.stat(pid).is_some_and(|st| st.pgrp == pid && st.session != pid))
            .collect();
        most = most.max(kids.len());
        assert!(kids.len() <= GROUPERS, "children of earlier runs still run: {kids:?}");
    };
    pw.write_config(&config(150));
    pw.signal(libc::SIGHUP);
    wait_for(
        T,
        "150 sleepers to be stopped, and every grouper to restart 3 times more",
        || {
            check();
            let s = pw.scrape();
            ((150..300).all(|i| s.prog("procwatch_process_up", &format!("s{i}")).is_none())
                && restarts(&s) >= before + 3.0)
                .then_some(())
        },
    );
    assert!(most >= 1, "the groupers' children were seen running");
    let sleepers = procs_with(&m)
        .iter()
        .filter(|(_, cmd)| cmd.starts_with("sleep "))
        .count();
    assert_eq!(sleepers, 150, "the sleepers removed are gone, the others run");
    let status = pw.stop();
    assert!(status.success(), "{status:?}\n{}", pw.stderr());
    let left = procs_with(&m);
    assert!(left.is_empty(), "left running: {left:?}");
    let log = pw.stderr();
    assert!(
        !log.contains("sending SIGKILL"),
        "every stop ended by the stop signal:\n{log}"
    );
    assert!(
        !log.contains("the guardian killed processes"),
        "nothing was left for the guardian:\n{log}"
    );
}

#[test]
fn the_mode_is_logged_and_exported() {
    let m = util::marker("mode");
    let yaml = "processes:\n  - name: plain\n    command: [sleep, '600']\n";
    let mut cases = vec![(Mode::Unprivileged, yaml.to_owned(), "proc", "cannot write")];
    cases.push((Mode::Cgroup, format!("cgroup: off\n{yaml}"), "proc", "cgroup: off"));
    if cgroup2().is_some() {
        cases.push((Mode::Cgroup, yaml.to_owned(), "cgroup", "cgroup mode: programs in"));
    }
    for (mode, yaml, metric, why) in cases {
        let pw = start(mode, &yaml, &[], &m);
        let s = pw.wait_scrape(T, "plain up", |s| s.prog("procwatch_process_up", "plain") == Some(1.0));
        // Pressure (PSI) of the program's cgroup in cgroup mode; no such family in proc mode.
        let psi = s.get(
            "procwatch_process_pressure_waiting_seconds_total",
            &[("name", "plain"), ("resource", "cpu")],
        );
        assert_eq!(psi.is_some(), metric == "cgroup", "{mode:?}: {}", s.text);
        assert_eq!(
            s.get("procwatch_tracking_info", &[("mode", metric)]),
            Some(1.0),
            "{mode:?}: {}",
            s.text
        );
        let log = pw.stderr();
        let line = log
            .lines()
            .find(|l| l.contains("tracking: "))
            .expect("one tracking line");
        assert!(
            line.contains(&format!("mode={metric}")) && line.contains(why),
            "{mode:?}: {line}"
        );
        assert_eq!(log.matches("tracking: ").count(), 1, "{log}");
    }
}

/// The memory families come from the memory controller of the program's cgroup; where the
/// controller is not there (this host keeps it in cgroup v1), they are absent, not 0.
#[test]
fn memory_families_follow_the_memory_controller() {
    let Some(mount) = cgroup2() else { return };
    let own = own_cgroup(&mount);
    let has_memory = std::fs::read_to_string(own.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == "memory");
    let m = util::marker("memory");
    let pw = start(
        Mode::Cgroup,
        "processes:\n  - name: plain\n    command: [sleep, '600']\n",
        &[],
        &m,
    );
    let s = pw.wait_scrape(T, "plain up", |s| s.prog("procwatch_process_up", "plain") == Some(1.0));
    let memory = s.prog("procwatch_process_memory_bytes", "plain");
    if !has_memory {
        eprintln!(
            "skipped the live OOM and memory check: no memory controller in {} (a hybrid host keeps it in cgroup v1); the parsers are tested from fixtures",
            own.display()
        );
        assert_eq!(memory, None, "no controller, no family: {}", s.text);
        assert_eq!(s.prog("procwatch_process_oom_kills_total", "plain"), None);
        return;
    }
    assert!(memory.is_some_and(|b| b > 0.0), "{}", s.text);
    assert_eq!(s.prog("procwatch_process_oom_kills_total", "plain"), Some(0.0));
}

#[test]
fn cgroup_required_without_cgroups_is_a_start_up_error() {
    let (dir, config) =
        util::config_dir("cgroup: required\nprocesses:\n  - name: plain\n    command: [sleep, '600']\n");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let m = util::marker("required");
    let cfg = config.to_str().unwrap();
    let args = ["--config", cfg, "--web.listen-address", "127.0.0.1:0"];
    let (code, _, err) = util::run_to_end_as_nobody(&args, dir.path(), &m);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cgroup: required"), "{err}");
    // --check-config says the same.
    let (code, out, _) = util::run_to_end_as_nobody(&["--check-config", "--config", cfg], dir.path(), &m);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn check_config_names_the_mode() {
    let (dir, config) = util::config_dir("cgroup: off\nprocesses:\n  - name: plain\n    command: [sleep, '600']\n");
    let (code, out, err) = util::run_to_end(
        &["--check-config", "--config", config.to_str().unwrap()],
        dir.path(),
        "check",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tracking: proc mode: cgroup: off"), "{out}");
}

#[test]
fn leftover_cgroups_of_a_killed_procwatch_are_removed_at_start() {
    let Some(mount) = cgroup2() else { return };
    let own = own_cgroup(&mount);
    // A process left running in it, as after a SIGKILL of the whole procwatch process group,
    // and named after a PID that is no procwatch's: this process's own (a dead instance's PID
    // that another program has since taken; a PID no process has is the easy case).
    let m = util::marker("leftover");
    let mut leftover = std::process::Command::new("sleep")
        .arg("600")
        .env(util::MARKER_VAR, &m)
        .spawn()
        .unwrap();
    let left = own.join(format!("procwatch-{}", leftover.id()));
    let prog = left.join("programs").join("old");
    std::fs::create_dir_all(&prog).unwrap();
    std::fs::write(prog.join("cgroup.procs"), leftover.id().to_string()).unwrap();

    let pw = start(
        Mode::Cgroup,
        "processes:\n  - name: plain\n    command: [sleep, '600']\n",
        &[],
        &util::marker("leftover-pw"),
    );
    pw.wait_scrape(T, "plain up", |s| s.prog("procwatch_process_up", "plain") == Some(1.0));
    let killed = util::wait_for(T, "the leftover killed", || leftover.try_wait().unwrap());
    assert!(!left.exists(), "{} is still there ({killed:?})", left.display());
    // Not asserted: which procwatch logs the removal. Another test's, starting in between,
    // may have removed it first.
}

/// A procwatch in a PID namespace of its own (`unshare --pid`), started by a test.
struct InNamespace {
    unshare: std::process::Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl InNamespace {
    /// Starts procwatch with `yaml` in a new PID namespace; returns once its `plain` is up.
    fn start(yaml: &str, marker: &str) -> InNamespace {
        let (dir, config) = util::config_dir(yaml);
        let log = dir.path().join("stderr.log");
        let unshare = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", util::BIN, "--config"])
            .arg(&config)
            .args(["--web.listen-address", "127.0.0.1:0"])
            .env(util::MARKER_VAR, marker)
            .env("RUNTIME_DIRECTORY", dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr = wait_for(T, "the address", || {
            util::logged_addr(&std::fs::read_to_string(&log).ok()?)
        });
        let pw = InNamespace {
            unshare,
            addr,
            log,
            _dir: dir,
        };
        wait_for(T, "plain up in the namespace", || {
            (pw.scrape()?.prog("procwatch_process_up", "plain") == Some(1.0)).then_some(())
        });
        pw
    }

    fn scrape(&self) -> Option<util::Scrape> {
        Some(util::Scrape::parse(
            util::http(&self.addr, "GET", "/metrics", "").ok()?.2,
        ))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        // unshare ignores SIGTERM while it waits: stop procwatch, its only child, instead.
        let u = self.unshare.id();
        if let Some(pw) = std::fs::read_to_string(format!("/proc/{u}/task/{u}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse::<i32>().ok())
        {
            // SAFETY: plain syscall to our own grandchild.
            unsafe { libc::kill(pw, libc::SIGTERM) };
        }
        let _ = self.unshare.wait();
    }
}

/// procwatches started in PID namespaces of their own (containers sharing the host's cgroup
/// namespace) in the cgroup of a running one. A PID names no process across namespaces,
/// and each of the two is PID 2 in its own: each must leave the others' cgroups and programs
/// alone.
#[test]
fn procwatches_in_other_pid_namespaces_leave_live_ones_cgroups_alone() {
    let Some(mount) = cgroup2() else { return };
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot make a PID namespace here (unshare --pid needs CAP_SYS_ADMIN)");
        return;
    }
    let yaml = "processes:\n  - name: plain\n    command: [sleep, '600']\n";
    let outer = start(Mode::Cgroup, yaml, &[], &util::marker("pidns-outer"));
    let s = outer.wait_scrape(T, "plain up", |s| s.prog("procwatch_process_up", "plain") == Some(1.0));
    let outer_pid = s.prog("procwatch_process_pid", "plain");
    let own = own_cgroup(&mount);
    let base = own.join(format!("procwatch-{}", outer.supervisor_pid()));
    assert!(base.is_dir(), "{} is missing", base.display());

    let first = InNamespace::start(yaml, &util::marker("pidns-first"));
    let first_pid = first.scrape().unwrap().prog("procwatch_process_pid", "plain");
    let second = InNamespace::start(yaml, &util::marker("pidns-second"));
    // (Leftovers of other tests' dead instances may be removed.)
    let live = [base.clone(), own.join("procwatch-2")];
    for (who, pw) in [("first", &first), ("second", &second)] {
        let err = pw.stderr();
        let removed = err
            .lines()
            .filter(|l| l.contains("removing the cgroups"))
            .filter_map(|l| l.split_once(" cgroup=")?.1.split_whitespace().next());
        for r in removed {
            assert!(!live.iter().any(|l| Path::new(r) == l), "{who} removed {r}:\n{err}");
        }
    }
    // The supervisor is PID 2 in each namespace (its guardian is 1): one name each.
    assert!(own.join("procwatch-2").is_dir());
    assert!(own.join("procwatch-2.1").is_dir(), "the second took the first's cgroup");
    assert!(base.is_dir(), "{} was removed", base.display());
    let s = outer.scrape();
    assert_eq!(s.prog("procwatch_process_up", "plain"), Some(1.0));
    assert_eq!(
        s.prog("procwatch_process_pid", "plain"),
        outer_pid,
        "the outer program was restarted"
    );
    let s = first.scrape().unwrap();
    assert_eq!(s.prog("procwatch_process_up", "plain"), Some(1.0));
    assert_eq!(
        s.prog("procwatch_process_pid", "plain"),
        first_pid,
        "the first's program was restarted"
    );
    drop((first, second));
    assert!(!own.join("procwatch-2").exists() && !own.join("procwatch-2.1").exists());
}

/// Instances sharing a cgroup take turns to claim their `procwatch-<pid>/`; one whose start
/// is stopped half-way (SIGSTOP, a debugger) holds the turn. Another starts all the same, after
/// a bounded wait, and says why it waited. The turn is held here by the test itself.
#[test]
fn a_start_held_up_by_another_instance_goes_on_after_a_bounded_wait() {
    let Some(mount) = cgroup2() else { return };
    let scratch = Scratch::make(&mount, "turn");
    // Another process in the cgroup: procwatch shares it, and works in procwatch-<pid>/.
    let mut other = std::process::Command::new("sleep");
    other.arg("600");
    scratch.enter(&mut other, "");
    let mut other = other.spawn().unwrap();
    let held = std::fs::File::open(&scratch.0).unwrap();
    // SAFETY: a plain syscall on an open file.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let (dir, config) = util::config_dir(PLAIN_YAML);
    let t0 = std::time::Instant::now();
    let pw = Procwatch::start_with(
        dir,
        config.clone(),
        &["--config", config.to_str().unwrap()],
        &util::marker("turn"),
        |cmd| scratch.enter(cmd, ""),
    );
    pw.wait_scrape(T, "plain up", |s| s.prog("procwatch_process_up", "plain") == Some(1.0));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(10),
        "it did not wait for the turn: {waited:?}"
    );
    assert!(
        pw.stderr()
            .contains("another procwatch starting in this cgroup holds it up"),
        "{}",
        pw.stderr()
    );
    assert!(scratch.0.join(format!("procwatch-{}", pw.supervisor_pid())).is_dir());
    drop(pw);
    drop(held);
    let _ = other.kill();
    let _ = other.wait();
}

#[test]
fn cgroups_are_removed_at_exit() {
    let Some(mount) = cgroup2() else { return };
    let m = util::marker("cg-exit");
    let mut pw = start(
        Mode::Cgroup,
        "processes:\n  - name: plain\n    command: [sleep, '600']\n",
        &[],
        &m,
    );
    pw.wait_scrape(T, "plain up", |s| s.prog("procwatch_process_up", "plain") == Some(1.0));
    let dir = own_cgroup(&mount).join(format!("procwatch-{}", pw.supervisor_pid()));
    assert!(dir.join("programs/plain").exists());
    assert!(pw.stop().success());
    assert!(!dir.exists(), "{} is still there", dir.display());
}

/// The reload is stopping `stubborn` (TERM ignored, stop_timeout 60 s) when SIGTERM comes: the
/// shutdown takes over that stop (it used to go on in a detached task nobody waited for, and
/// procwatch exited at once, leaving it to the guardian), ends it with SIGKILL when
/// shutdown_timeout passes, and exits.
fn sigterm_during_a_reload(mode: Mode) {
    let m = util::marker(&format!("reload-term-{mode:?}"));
    let pw_yaml = "shutdown_timeout: 2s\nprocesses:\n  - name: stubborn\n    command: [sh, -c, 'trap \"\" TERM; sleep 600 & wait; sleep 601']\n    stop_timeout: 60s\n  - name: plain\n    command: [sleep, '600']\n";
    let mut pw = start(mode, pw_yaml, &[], &m);
    pw.wait_scrape(T, "stubborn and its child", |s| {
        s.prog("procwatch_process_tree_processes", "stubborn") == Some(2.0)
    });
    pw.write_config("shutdown_timeout: 2s\nprocesses:\n  - name: plain\n    command: [sleep, '600']\n");
    pw.signal(libc::SIGHUP);
    wait_for(T, "the reload to stop stubborn", || {
        pw.stderr().contains("SIGHUP: reloading config").then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    pw.signal(libc::SIGTERM);
    let status = pw.wait_exit(T);
    assert!(status.success(), "{status:?}\n{}", pw.stderr());
    // 2 s of shutdown_timeout, not 60 s of stop_timeout.
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    gone(&m, "everything to be gone");
    let log = pw.stderr();
    assert!(
        log.contains("shutdown_timeout passed; killing what is left"),
        "the shutdown waited for the reload's stop and ended it:\n{log}"
    );
    assert!(
        !log.contains("the guardian killed processes"),
        "nothing was left for the guardian:\n{log}"
    );
}

#[test]
fn sigterm_during_a_reload_stops_within_shutdown_timeout() {
    if cgroup2().is_some() {
        sigterm_during_a_reload(Mode::Cgroup);
    }
    sigterm_during_a_reload(Mode::Unprivileged);
}

/// A fresh cgroup under the test's own, for procwatch to be alone in (as in a unit systemd
/// delegates, or at the root of a container's cgroup namespace). On drop, everything in it is
/// killed and the whole subtree removed.
struct Scratch(PathBuf);

impl Scratch {
    fn make(mount: &Path, name: &str) -> Scratch {
        let dir = own_cgroup(mount).join(format!("pwtest-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        Scratch(dir)
    }

    /// Makes `cmd` start in `sub` of this cgroup (`""`: in itself).
    fn enter(&self, cmd: &mut std::process::Command, sub: &str) {
        let procs = self.0.join(sub).join("cgroup.procs");
        // SAFETY: the closure only writes to a file (async-signal-safe system calls) before exec.
        unsafe { cmd.pre_exec(move || std::fs::write(&procs, "0")) };
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        procwatch::cgroup::kill_and_remove(&self.0);
        if self.0.exists() {
            eprintln!("!!! {} could not be removed", self.0.display());
        }
    }
}

/// The processes of the cgroup `dir`, sorted (as this test's PID namespace sees them).
fn pids_in(dir: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut pids: Vec<i32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
    pids.sort();
    pids
}

fn words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn first_child(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

const PLAIN_YAML: &str = "processes:\n  - name: plain\n    command: [sleep, '600']\n";

/// What procwatch alone in cgroup `base` (or in `base/supervisor/` already) does, as systemd
/// does for a service with `Delegate=yes`: procwatch and its guardian in `base/supervisor/`,
/// nothing in `base` itself, each program in `base/programs/<name>/`, and for the programs'
/// cgroups every one of memory, pids, io and cpu that `base` is offered. This host offers
/// none of them in cgroup v2 (a hybrid host keeps them in v1): that part is skipped with the
/// reason printed, and what is checked instead is that nothing was enabled and the tracking
/// line says so.
fn assert_works_in_its_own_subtree(base: &Path, ours: [i32; 2], program: i32, log: &str) {
    assert_eq!(
        pids_in(base),
        Vec::<i32>::new(),
        "no process in the inner node {}",
        base.display()
    );
    let mut ours = ours.to_vec();
    ours.sort();
    assert_eq!(
        pids_in(&base.join("supervisor")),
        ours,
        "procwatch and its guardian:\n{log}"
    );
    assert_eq!(pids_in(&base.join("programs/plain")), [program]);
    assert!(
        !std::fs::read_dir(base)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("procwatch-")),
        "no procwatch-<pid> subtree"
    );
    let offered = words(&base.join("cgroup.controllers"));
    let wanted: Vec<&str> = procwatch::cgroup::CONTROLLERS
        .into_iter()
        .filter(|c| offered.iter().any(|o| o == c))
        .collect();
    let line = log
        .lines()
        .find(|l| l.contains("tracking: "))
        .expect("the tracking line");
    if wanted.is_empty() {
        eprintln!(
            "!!! SKIPPED the controller check: {} is offered none of {:?} in cgroup v2 (offered: {offered:?}; this hybrid host keeps them in cgroup v1). Checked instead: nothing enabled, and the tracking line says so.",
            base.display(),
            procwatch::cgroup::CONTROLLERS
        );
        assert_eq!(
            words(&base.join("programs/cgroup.subtree_control")),
            Vec::<String>::new()
        );
        assert!(line.contains("no controllers"), "{line}");
        return;
    }
    let file = |c: &str| match c {
        "memory" => "memory.current",
        "pids" => "pids.current",
        "io" => "io.stat",
        _ => "cpu.max",
    };
    for c in &wanted {
        for dir in [base.to_path_buf(), base.join("programs")] {
            let on = words(&dir.join("cgroup.subtree_control"));
            assert!(
                on.iter().any(|o| o == c),
                "{c} on for the children of {}: {on:?}",
                dir.display()
            );
        }
        assert!(base.join("programs/plain").join(file(c)).exists(), "{c}: {}", file(c));
    }
    assert!(line.contains(&format!("controllers {}", wanted.join(","))), "{line}");
}

/// procwatch alone in its cgroup (a unit with `Delegate=yes`), and already in its
/// `supervisor/` leaf with the unit's cgroup empty (`DelegateSubgroup=supervisor`): it works
/// in that cgroup's `programs/`, never in a `procwatch-<pid>/` of its own, and at exit removes
/// programs/ and leaves the unit's cgroup to its owner.
#[test]
fn alone_in_a_delegated_cgroup_it_works_in_programs_beside_supervisor() {
    let Some(mount) = cgroup2() else { return };
    for sub in ["", "supervisor"] {
        let scratch = Scratch::make(&mount, &format!("deleg{}", sub.len()));
        if !sub.is_empty() {
            std::fs::create_dir(scratch.0.join(sub)).unwrap();
        }
        let m = util::marker(&format!("delegated-{sub}"));
        // What a procwatch killed with its whole process group left in this cgroup: a
        // program's cgroup with a process still in it, removed at the next start.
        let old = scratch.0.join("programs/old");
        std::fs::create_dir_all(&old).unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("600").env(util::MARKER_VAR, &m);
        scratch.enter(&mut cmd, "programs/old");
        let mut leftover = cmd.spawn().unwrap();
        let (dir, config) = util::config_dir(PLAIN_YAML);
        let mut pw = Procwatch::start_with(
            dir,
            config.clone(),
            &["--config", config.to_str().unwrap()],
            &m,
            |cmd| scratch.enter(cmd, sub),
        );
        let s = pw.wait_scrape(T, "plain up", |s| s.prog("procwatch_process_up", "plain") == Some(1.0));
        assert_eq!(s.get("procwatch_tracking_info", &[("mode", "cgroup")]), Some(1.0));
        let program = s.prog("procwatch_process_pid", "plain").unwrap() as i32;
        // Killed at start (a cgroup empties a moment before its process can be waited for).
        let status = wait_for(T, "the leftover killed", || leftover.try_wait().unwrap());
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the leftover was killed"
        );
        assert!(!old.exists(), "the leftover's cgroup was removed");
        let log = pw.stderr();
        assert!(
            log.contains(&format!("programs in {}", scratch.0.join("programs").display())),
            "{log}"
        );
        assert_works_in_its_own_subtree(&scratch.0, [pw.pid(), pw.supervisor_pid()], program, &log);
        assert!(pw.stop().success(), "{}", pw.stderr());
        assert!(!scratch.0.join("programs").exists(), "programs/ removed at exit");
        assert!(procs_with(&m).is_empty(), "{:?}", procs_with(&m));
    }
}

/// A container with its own cgroup namespace and a writable cgroupfs (docker run --privileged
/// --cgroupns=private, podman, a Kubernetes pod with a writable /sys/fs/cgroup): procwatch is
/// the namespace's PID 1, alone in the namespace's root cgroup, and sees cgroup2 mounted at
/// /sys/fs/cgroup with that root. Made here with `unshare` in a fresh cgroup: it moves to
/// `supervisor/` and works in `programs/` of the container's cgroup, as systemd does as a
/// container's init; SIGTERM (docker stop) takes everything down.
#[test]
fn in_a_containers_cgroup_namespace_it_works_in_programs_beside_supervisor() {
    let Some(mount) = cgroup2() else { return };
    // Inside: cgroup2 mounted where a container sees it (its root is the namespace's root).
    let mount_it = "umount -l /sys/fs/cgroup 2>/dev/null; mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 99";
    let probe = std::process::Command::new("unshare")
        .args(["--cgroup", "--mount", "--pid", "--fork", "sh", "-c", mount_it])
        .status();
    if !probe.as_ref().is_ok_and(|s| s.success()) {
        eprintln!(
            "!!! SKIPPED: cannot make cgroup, mount and PID namespaces and mount cgroup2 in them here (needs CAP_SYS_ADMIN): {probe:?}"
        );
        return;
    }
    let scratch = Scratch::make(&mount, "cgns");
    let m = util::marker("cgns");
    let (dir, config) = util::config_dir(PLAIN_YAML);
    let go = dir.path().join("go");
    let c = std::ffi::CString::new(go.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let log = dir.path().join("stderr.log");
    // Then procwatch, once the test says go.
    let script = format!("{mount_it}; read go < \"$1\"; shift; exec \"$@\"");
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--cgroup",
        "--mount",
        "--pid",
        "--kill-child",
        "--mount-proc",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(&go)
    .arg(util::BIN)
    .args([
        "--config",
        config.to_str().unwrap(),
        "--web.listen-address",
        "127.0.0.1:0",
    ])
    .args(["--log.level", "debug"])
    .current_dir(dir.path())
    .env(util::MARKER_VAR, &m)
    .env("RUNTIME_DIRECTORY", dir.path())
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    scratch.enter(&mut cmd, "");
    let mut unshare = cmd.spawn().unwrap();
    let outer = unshare.id() as i32;
    // The namespace's PID 1 was forked in the scratch cgroup, which is its namespace's root;
    // unshare itself goes back out, so that PID 1 is alone there, as in a container.
    let init = wait_for(T, "the namespace's PID 1", || first_child(outer));
    std::fs::write(own_cgroup(&mount).join("cgroup.procs"), outer.to_string()).unwrap();
    // (sh's umount and mount are done once it waits for go alone.)
    wait_for(T, "PID 1 alone in the namespace's root cgroup", || {
        (pids_in(&scratch.0) == [init]).then_some(())
    });
    let mut fifo = wait_for(T, "PID 1 to wait for go", || {
        if let Ok(Some(status)) = unshare.try_wait() {
            panic!(
                "exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        // Without blocking: ENXIO until PID 1 has the FIFO open.
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&go)
            .ok()
    });
    std::io::Write::write_all(&mut fifo, b"go\n").unwrap();
    drop(fifo);
    let addr = wait_for(T, "procwatch to log its address", || {
        if let Ok(Some(status)) = unshare.try_wait() {
            panic!(
                "exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        util::logged_addr(&std::fs::read_to_string(&log).ok()?)
    });
    let s = wait_for(T, "plain up", || {
        let (status, _, body) = util::http(&addr, "GET", "/metrics", "").ok()?;
        let s = util::Scrape::parse(body);
        (status == 200 && s.prog("procwatch_process_up", "plain") == Some(1.0)).then_some(s)
    });
    assert_eq!(
        s.get("procwatch_tracking_info", &[("mode", "cgroup")]),
        Some(1.0),
        "{}",
        s.text
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("cgroup mode: programs in /sys/fs/cgroup/programs"),
        "{text}"
    );
    // PIDs as seen from outside the namespace: the guardian is its PID 1.
    let supervisor = first_child(init).unwrap();
    let program = procs_with(&m)
        .into_iter()
        .find(|(_, cmd)| cmd == "sleep 600")
        .map(|(pid, _)| pid)
        .expect("the program");
    assert_works_in_its_own_subtree(&scratch.0, [init, supervisor], program, &text);

    // docker stop: SIGTERM to the container's PID 1.
    // SAFETY: plain syscall to our own grandchild.
    unsafe { libc::kill(init, libc::SIGTERM) };
    let status = util::wait_for_or_kill(&mut unshare, T).expect("procwatch exits on SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
    assert!(
        !scratch.0.join("programs").exists(),
        "programs/ removed at exit:\n{text}"
    );
    gone(&m, "every program and procwatch process to be gone");
}

/// A cgroup namespace whose cgroup2 mount was made outside it (the host's, bound in): the
/// mount shows `/..`, so procwatch's own cgroup (`/` in the namespace) is not the directory at
/// the mount point, which is an ancestor's. procwatch says so and stays in proc mode; it used
/// to take that ancestor for its own cgroup and work there.
#[test]
fn a_cgroup2_mount_from_outside_the_cgroup_namespace_means_proc_mode() {
    let Some(mount) = cgroup2() else { return };
    let scratch = Scratch::make(&mount, "outside");
    let (dir, config) = util::config_dir(PLAIN_YAML);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--cgroup",
        util::BIN,
        "--check-config",
        "--config",
        config.to_str().unwrap(),
    ])
    .current_dir(dir.path());
    scratch.enter(&mut cmd, "");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && stdout.is_empty() {
        eprintln!(
            "!!! SKIPPED: cannot make a cgroup namespace here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert!(
        stdout.contains(&format!(
            "tracking: proc mode: the cgroup2 file system at {}",
            mount.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("does not hold procwatch's cgroup"), "{stdout}");
}

/// 200 programs that each take 300 ms to exit after SIGTERM, stopped together by SIGTERM: every
/// stop waits on `cgroup.events` at once. They share one inotify instance: an instance per stop
/// ran out of `fs.inotify.max_user_instances` (128 by default) and fell back to polling, with a
/// warning per program.
#[test]
fn hundreds_of_programs_stopping_at_once_wait_without_polling() {
    if cgroup2().is_none() {
        return;
    }
    let m = util::marker("hundreds-stopping");
    let mut yaml = String::from("processes:\n");
    for i in 0..200 {
        yaml.push_str(&format!(
            "  - name: slow{i}\n    command: [sh, -c, 'trap \"sleep 0.3; exit 0\" TERM; sleep 600 & wait']\n"
        ));
    }
    let mut pw = start(Mode::Cgroup, &yaml, &[], &m);
    pw.wait_scrape(T, "all 200 up", |s| {
        (0..200).all(|i| s.prog("procwatch_process_up", &format!("slow{i}")) == Some(1.0))
    });
    let status = pw.stop();
    assert!(status.success(), "{status:?}\n{}", pw.stderr());
    let log = pw.stderr();
    assert!(!log.contains("cannot watch cgroup.events"), "{log}");
    let left = procs_with(&m);
    assert!(left.is_empty(), "left running: {left:?}\n{log}");
}

/// One program of 1001 processes: its `cgroup.procs` (cgroup mode) or its main process's
/// children file (proc mode) spans several pages of the kernel's seq_file. Every scrape
/// counts them all: the reads of a kept file used to stop at the first page once the reused
/// buffer had grown (1001 at the first scrape, 682 from the second on).
fn every_scrape_counts_a_big_tree(mode: Mode) {
    let m = util::marker(&format!("big-tree-{mode:?}"));
    let yaml = "processes:\n  - name: tree\n    command: [sh, -c, 'for i in $(seq 1000); do sleep 600 & done; wait']\n";
    let mut pw = start(mode, yaml, &[], &m);
    pw.wait_scrape(T, "1001 processes", |s| {
        s.prog("procwatch_process_tree_processes", "tree") == Some(1001.0)
    });
    for scrape in 2..=4 {
        let s = pw.scrape();
        assert_eq!(
            s.prog("procwatch_process_tree_processes", "tree"),
            Some(1001.0),
            "scrape {scrape} after the first full count"
        );
    }
    assert!(pw.stop().success());
    let left = procs_with(&m);
    assert!(left.is_empty(), "left running: {} processes", left.len());
}

#[test]
fn every_scrape_counts_a_big_tree_in_cgroup_mode() {
    if cgroup2().is_none() {
        return;
    }
    every_scrape_counts_a_big_tree(Mode::Cgroup);
}

#[test]
fn every_scrape_counts_a_big_tree_in_proc_mode() {
    every_scrape_counts_a_big_tree(Mode::Unprivileged);
}
