//! The real binary supervising real processes: CPU, memory, restarts, exits, graceful stop.

mod util;

use std::time::{Duration, Instant};

use util::{Procwatch, marker, pids_with, procs_with, wait_for};

const T: Duration = Duration::from_secs(30);

/// The tests that measure CPU take turns: on a 2-core machine, two of them at once would
/// measure each other.
static CPU_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cpu_turn() -> std::sync::MutexGuard<'static, ()> {
    CPU_HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime (+ children's) of one PID, from /proc, in seconds.
fn proc_cpu(pid: i32) -> Option<f64> {
    Some(util::cpu_ticks(pid)?.iter().sum::<u64>() as f64 / clk_tck())
}

/// Scrapes with /proc read just before and just after: the kernel's CPU of `pid` at the moment
/// procwatch read it lies between the two.
fn bracketed_scrape(pw: &Procwatch, pid: i32, program: &str) -> (f64, f64, f64) {
    let before = proc_cpu(pid).expect("alive");
    let cpu = pw.scrape().cpu(program);
    let after = proc_cpu(pid).expect("alive");
    (before, cpu, after)
}

#[test]
fn busy_program_cpu_is_the_kernels_and_at_most_one_core() {
    let _turn = cpu_turn();
    let m = marker("busy");
    let pw = Procwatch::start_marked(
        "processes:\n  - name: busy\n    command: [sh, -c, 'while :; do :; done']\n",
        &[],
        &m,
    );
    let s0 = pw.wait_scrape(T, "busy to run", |s| {
        s.prog("procwatch_process_up", "busy") == Some(1.0)
    });
    let pid = s0.prog("procwatch_process_pid", "busy").unwrap() as i32;
    // procwatch reads the same ticks as the kernel shows: its figure lies between two /proc
    // reads taken around the scrape (a few ticks of slack), however loaded the
    // machine is, and however much CPU the busy loop gets.
    // Slack: in cgroup mode the figure is cpu.stat's (nanosecond accounting of the cgroup)
    // while /proc/PID/stat counts in ticks; the two differ by a few ticks.
    let tick = 5.0 / clk_tck();
    // Before the first reading, so that the wall time spans all the CPU time counted.
    let t0 = Instant::now();
    let (b0, c0, a0) = bracketed_scrape(&pw, pid, "busy");
    assert!(
        (b0 - tick..=a0 + tick).contains(&c0),
        "procwatch says {c0:.3}s, /proc says {b0:.3}s..{a0:.3}s"
    );
    // Until the loop has had 2 s of CPU, whatever the load: the rate is measured against it.
    let (b1, c1, a1) = wait_for(T, "2 s of CPU", || {
        std::thread::sleep(Duration::from_millis(200));
        Some(bracketed_scrape(&pw, pid, "busy")).filter(|(b, _, _)| b - a0 >= 2.0)
    });
    let wall = t0.elapsed().as_secs_f64();
    assert!(
        (b1 - tick..=a1 + tick).contains(&c1),
        "procwatch says {c1:.3}s, /proc says {b1:.3}s..{a1:.3}s"
    );
    // The CPU procwatch reports grew as the kernel's did, and never faster than one core.
    let (grew, kernel_grew) = (c1 - c0, b1 - a0);
    assert!(
        grew >= kernel_grew - tick && grew <= (a1 - b0) + tick,
        "procwatch grew {grew:.3}s, the kernel {kernel_grew:.3}..{:.3}s",
        a1 - b0
    );
    assert!(grew / wall <= 1.05, "CPU rate {:.3} s/s over {wall:.1}s", grew / wall);
}

#[test]
fn memory_and_process_count_cover_the_whole_tree() {
    let m = marker("mem");
    let hog = "import time; b = chr(120).encode() * (60 << 20); time.sleep(600)";
    let pw = Procwatch::start_marked(
        &format!(
            "processes:\n  - name: mem\n    command: [sh, -c, 'python3 -c \"{hog}\" & python3 -c \"{hog}\" & wait']\n"
        ),
        &[],
        &m,
    );
    let s = pw.wait_scrape(T, "two 60 MB children", |s| {
        s.prog("procwatch_process_resident_memory_bytes", "mem").unwrap_or(0.0) > 110e6
    });
    assert_eq!(s.prog("procwatch_process_tree_processes", "mem"), Some(3.0));
    assert!(s.prog("procwatch_process_virtual_memory_bytes", "mem").unwrap() > 120e6);
    assert!(s.prog("procwatch_process_threads", "mem").unwrap() >= 3.0);
    assert!(s.prog("procwatch_process_open_fds", "mem").unwrap() >= 3.0);
}

#[test]
fn crashing_program_is_restarted_with_backoff_and_counted() {
    // Before the start, so that the whole first backoff lies after it.
    let t0 = Instant::now();
    let pw = Procwatch::start(
        "processes:\n  - name: crash\n    command: [sh, -c, 'exit 3']\n    backoff: {initial: 100ms, max: 2s}\n",
        &[],
    );
    let s = pw.wait_scrape(T, "4 restarts", |s| {
        s.prog("procwatch_process_restarts_total", "crash").unwrap_or(0.0) >= 4.0
    });
    // 100 + 200 + 400 + 800 ms of backoff at least lie before the 4th restart (the delays
    // themselves, their cap and reset: `backoff_doubles_is_capped_and_resets`).
    assert!(t0.elapsed() >= Duration::from_millis(1500), "{:?}", t0.elapsed());
    let restarts = s.prog("procwatch_process_restarts_total", "crash").unwrap();
    let failures = s
        .get(
            "procwatch_process_exits_total",
            &[("name", "crash"), ("reason", "failure")],
        )
        .unwrap();
    assert!(
        failures >= restarts && failures <= restarts + 1.0,
        "{failures} exits, {restarts} restarts"
    );
    assert_eq!(
        s.get(
            "procwatch_process_exits_total",
            &[("name", "crash"), ("reason", "success")]
        ),
        Some(0.0)
    );
    assert_eq!(s.prog("procwatch_process_last_exit_code", "crash"), Some(3.0));
    // Backing off is down, and a down program has no PID.
    let s = pw.wait_scrape(T, "crash to be between runs", |s| {
        s.prog("procwatch_process_up", "crash") == Some(0.0)
    });
    assert_eq!(s.prog("procwatch_process_uptime_seconds", "crash"), Some(0.0));
}

#[test]
fn signal_exit_and_never_policy() {
    let pw = Procwatch::start(
        "processes:\n  - name: killed\n    command: [sh, -c, 'kill -9 $$']\n    restart: never\n",
        &[],
    );
    let s = pw.wait_scrape(T, "the signal exit", |s| {
        s.get(
            "procwatch_process_exits_total",
            &[("name", "killed"), ("reason", "signal")],
        ) == Some(1.0)
    });
    assert_eq!(s.prog("procwatch_process_last_exit_code", "killed"), Some(137.0));
    assert_eq!(s.prog("procwatch_process_restarts_total", "killed"), Some(0.0));
    assert_eq!(s.prog("procwatch_process_up", "killed"), Some(0.0));
    assert_eq!(s.prog("procwatch_process_pid", "killed"), None);
}

/// Children that burn CPU and exit between scrapes: both those their parent waits for and
/// orphans that procwatch reaps must be counted.
#[test]
fn short_lived_childrens_cpu_is_counted() {
    let _turn = cpu_turn();
    let m = marker("short");
    // Each child burns 0.2 s of its own CPU and exits.
    let burn = "import time\nwhile time.process_time() < 0.2: pass";
    let waited = format!("for i in 1 2 3 4 5 6 7 8; do python3 -c '{burn}'; done; sleep 600");
    // Double fork: the burners are orphaned at once and re-parented to procwatch.
    let orphaned = format!("for i in 1 2 3 4 5 6 7 8; do (python3 -c '{burn}' &); sleep 0.05; done; sleep 600");
    let yaml = format!(
        "processes:\n  - name: waited\n    command: [sh, -c, \"{}\"]\n  - name: orphaned\n    command: [sh, -c, \"{}\"]\n",
        waited.replace('\n', "\\n"),
        orphaned.replace('\n', "\\n")
    );
    let pw = Procwatch::start_marked(&yaml, &[], &m);
    let burned = 8.0 * 0.2;
    let s = pw.wait_scrape(Duration::from_secs(60), "both programs to burn 1.6 s", |s| {
        s.cpu("waited") >= 0.95 * burned && s.cpu("orphaned") >= 0.95 * burned
    });
    // Wait for the burners to be gone, then check nothing was counted twice.
    wait_for(T, "the burners to exit", || {
        (!procs_with(&m).iter().any(|(_, cmd)| cmd.starts_with("python3"))).then_some(())
    });
    let s2 = pw.scrape();
    for name in ["waited", "orphaned"] {
        let cpu = s2.cpu(name);
        assert!(cpu >= 0.95 * burned, "{name}: {cpu:.3}s of {burned}s");
        // Interpreter start-up adds a little; counting twice would add 100%.
        assert!(cpu < 1.6 * burned, "{name}: {cpu:.3}s counted for {burned}s burned");
        assert!(cpu >= s.cpu(name), "{name}: a counter went down");
    }
}

#[test]
fn sigterm_stops_everything_including_grandchildren_and_stubborn_programs() {
    let m = marker("term");
    let yaml = "shutdown_timeout: 20s\nprocesses:\n\
         \x20 - name: plain\n    command: [sleep, '600']\n\
         \x20 - name: family\n    command: [sh, -c, 'sleep 600 & sleep 601 & wait']\n\
         \x20 - name: stubborn\n    command: [sh, -c, 'trap \"\" TERM; sleep 602 & wait; sleep 603']\n    stop_timeout: 1s\n\
         \x20 - name: orphan\n    command: [sh, -c, '(setsid sleep 604 &); sleep 605']\n";
    let mut pw = Procwatch::start_marked(yaml, &[], &m);
    pw.wait_scrape(T, "every program up", |s| {
        ["plain", "family", "stubborn", "orphan"]
            .iter()
            .all(|n| s.prog("procwatch_process_up", n) == Some(1.0))
            && s.prog("procwatch_process_tree_processes", "family") == Some(3.0)
    });
    wait_for(T, "the setsid grandchild", || {
        procs_with(&m).iter().find(|(_, cmd)| cmd == "sleep 604").map(|p| p.0)
    });
    assert!(pids_with(&m).len() >= 8, "{:?}", pids_with(&m));
    let t0 = Instant::now();
    let status = pw.stop();
    assert!(status.success(), "exit status {status:?}\n{}", pw.stderr());
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "stubborn was given its stop_timeout"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let left = pids_with(&m);
    assert!(left.is_empty(), "left running: {left:?}\n{}", pw.stderr());
}

#[test]
fn command_that_cannot_start_is_counted_and_retried() {
    let pw = Procwatch::start(
        "processes:\n  - name: ghost\n    command: [/nonexistent/ghost]\n    backoff: {initial: 50ms, max: 200ms}\n  - name: fine\n    command: [sleep, '600']\n",
        &[],
    );
    let s = pw.wait_scrape(T, "ghost to be retried", |s| {
        s.prog("procwatch_process_restarts_total", "ghost").unwrap_or(0.0) >= 3.0
    });
    assert!(
        s.get(
            "procwatch_process_exits_total",
            &[("name", "ghost"), ("reason", "failure")]
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(s.prog("procwatch_process_last_exit_code", "ghost"), Some(127.0));
    assert_eq!(s.prog("procwatch_process_up", "fine"), Some(1.0));
    assert!(pw.stderr().contains("cannot start program"), "{}", pw.stderr());
}

#[test]
fn cwd_and_env_are_applied() {
    let m = marker("env");
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "processes:\n  - name: env\n    command: [sh, -c, 'echo \"$PWD $GREETING\" > out.txt; sleep 600']\n    cwd: {}\n    env: {{GREETING: hello}}\n",
        dir.path().display()
    );
    let _pw = Procwatch::start_marked(&yaml, &[], &m);
    let out = dir.path().join("out.txt");
    let text = wait_for(T, "the program to write out.txt", || {
        std::fs::read_to_string(&out).ok().filter(|t| t.ends_with('\n'))
    });
    assert_eq!(text.trim(), format!("{} hello", dir.path().display()));
}

/// Programs inherit procwatch's environment; a variable a program sets replaces procwatch's
/// (once, with the program's value) for that program only; a program's own PATH is where its
/// command is looked for. (The spawner builds procwatch's part of the environment once.)
#[test]
fn programs_inherit_procwatch_s_environment_and_their_env_replaces_it() {
    use std::os::unix::fs::PermissionsExt;
    let m = marker("inherit");
    let bin = tempfile::tempdir().unwrap();
    let tool = bin.path().join("pw-env-tool");
    // Written whole, then renamed: a large environment is more than one write().
    std::fs::write(
        &tool,
        "#!/bin/sh\nenv > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    let yaml = format!(
        "processes:\n  - name: own\n    command: [pw-env-tool, {0}/own.txt]\n    env: {{PW_TEST_REPLACED: program, PATH: '{path}'}}\n  - name: plain\n    command: [sh, -c, 'env > {0}/plain.tmp && mv {0}/plain.tmp {0}/plain.txt; exec sleep 600']\n",
        out.path().display()
    );
    let (dir, config) = util::config_dir(&yaml);
    let args = ["--config", config.to_str().unwrap()];
    let _pw = Procwatch::start_with(dir, config.clone(), &args, &m, |cmd| {
        cmd.env("PW_TEST_KEPT", "kept").env("PW_TEST_REPLACED", "procwatch");
    });
    let read = |name: &str| {
        let file = out.path().join(name);
        wait_for(T, &format!("the program to write {name}"), || {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| t.contains("PW_TEST_KEPT="))
        })
    };
    let vars = |text: &str, key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
            .collect()
    };
    let own = read("own.txt");
    assert_eq!(vars(&own, "PW_TEST_KEPT"), ["kept"], "{own}");
    assert_eq!(vars(&own, "PW_TEST_REPLACED"), ["program"], "{own}");
    assert_eq!(vars(&own, "PATH"), [path.as_str()], "{own}");
    let plain = read("plain.txt");
    assert_eq!(vars(&plain, "PW_TEST_KEPT"), ["kept"], "{plain}");
    assert_eq!(vars(&plain, "PW_TEST_REPLACED"), ["procwatch"], "{plain}");
    assert_eq!(vars(&plain, "PATH"), [std::env::var("PATH").unwrap()], "{plain}");
}

#[test]
fn programs_run_in_their_own_process_group() {
    let m = marker("pgrp");
    let pw = Procwatch::start_marked("processes:\n  - name: g\n    command: [sleep, '600']\n", &[], &m);
    let s = pw.wait_scrape(T, "g up", |s| s.prog("procwatch_process_up", "g") == Some(1.0));
    let pid = s.prog("procwatch_process_pid", "g").unwrap() as i32;
    // SAFETY: plain syscalls.
    let (pgid, sid) = unsafe { (libc::getpgid(pid), libc::getsid(pid)) };
    assert_eq!((pgid, sid), (pid, pid));
    let start = s.prog("procwatch_process_start_time_seconds", "g").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - start).abs() < 60.0);
}

#[test]
fn sigkill_of_procwatch_leaves_no_program_nor_descendant_running() {
    let m = marker("kill9");
    let mut pw = Procwatch::start_marked(
        "processes:\n  - name: plain\n    command: [sleep, '600']\n  - name: family\n    command: [sh, -c, 'sleep 600 & sleep 601 & wait']\n",
        &[],
        &m,
    );
    pw.wait_scrape(T, "both up with the family's children", |s| {
        s.prog("procwatch_process_up", "plain") == Some(1.0)
            && s.prog("procwatch_process_tree_processes", "family") == Some(3.0)
    });
    pw.signal(libc::SIGKILL);
    pw.wait_exit(T);
    wait_for(T, "every program and descendant to be gone", || {
        procs_with(&m).is_empty().then_some(())
    });
}

#[test]
fn sigterm_while_programs_are_still_being_spawned_is_a_graceful_stop() {
    let m = marker("early");
    let mut yaml = String::from("processes:\n");
    for i in 0..400 {
        yaml.push_str(&format!("  - name: p{i}\n    command: [sleep, '600']\n"));
    }
    // start_marked returns as soon as procwatch serves, while the spawner thread is still
    // starting the 400: stops race spawns in flight, and none may be missed.
    let mut pw = Procwatch::start_marked(&yaml, &[], &m);
    let status = pw.stop();
    assert!(status.success(), "exit status {status:?}\n{}", pw.stderr());
    let left = procs_with(&m);
    assert!(left.is_empty(), "{} left", left.len());
}

#[test]
fn shutdown_timeout_bounds_the_whole_stop() {
    let m = marker("bound");
    let mut pw = Procwatch::start_marked(
        "shutdown_timeout: 1s\nprocesses:\n  - name: stubborn\n    command: [sh, -c, 'trap \"\" TERM; sleep 600 & wait']\n    stop_timeout: 60s\n",
        &[],
        &m,
    );
    pw.wait_scrape(T, "stubborn and its child", |s| {
        s.prog("procwatch_process_tree_processes", "stubborn") == Some(2.0)
    });
    let t0 = Instant::now();
    assert!(pw.stop().success());
    // 1 s of shutdown_timeout, not 60 s of stop_timeout; the rest is the guardian's release.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let left = procs_with(&m);
    assert!(left.is_empty(), "left running: {left:?}");
}

/// Each run stamps its start and end (`date +%s%N`); runs 1-5 and 7-8 exit at once, run 6
/// stays up 0.9 s, longer than `max`. The gaps between one run's end and the next one's start
/// are the backoff: 200, 400, 800 (the cap), 800, 800, then 200 again after the long run (the
/// reset), 400. The delays procwatch chose (its log) must be exactly those; each gap must be at
/// least its delay, and not grossly more (a loaded machine adds process starts to each gap).
#[test]
fn backoff_doubles_is_capped_and_resets() {
    let _turn = cpu_turn();
    let m = marker("backoff-seq");
    let script = "n=$(cat runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > runs; echo \"s $(date +%s%N)\" >> stamps; [ $n -eq 6 ] && sleep 0.9; echo \"e $(date +%s%N)\" >> stamps; [ $n -ge 8 ] && sleep 600; exit 1";
    let yaml = format!(
        "status_interval: 0\nprocesses:\n  - name: seq\n    command: [sh, -c, '{script}', {m}]\n    backoff: {{initial: 200ms, max: 800ms}}\n"
    );
    let mut pw = Procwatch::start_marked(&yaml, &[], &m);
    let stamps = pw.path("stamps");
    let text = wait_for(Duration::from_secs(60), "8 runs", || {
        let t = std::fs::read_to_string(&stamps).ok()?;
        (t.lines().count() >= 16).then_some(t)
    });
    let ns: Vec<(char, u128)> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.chars().next().unwrap(), v.trim().parse().unwrap())
        })
        .collect();
    let gaps: Vec<u128> = ns
        .windows(2)
        .filter(|w| w[0].0 == 'e' && w[1].0 == 's')
        .map(|w| (w[1].1 - w[0].1) / 1_000_000)
        .collect();
    let want = [200u128, 400, 800, 800, 800, 200, 400];
    assert_eq!(gaps.len(), want.len(), "{gaps:?}");
    let err = pw.stderr();
    let delays: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("restarting after backoff") && l.contains("program=seq"))
        .filter_map(|l| l.split_once("delay=")?.1.split_whitespace().next())
        .take(want.len())
        .collect();
    let want_delays: Vec<String> = want.iter().map(|w| format!("{w}ms")).collect();
    assert_eq!(delays, want_delays, "{err}");
    for (i, (&got, &w)) in gaps.iter().zip(&want).enumerate() {
        assert!(
            got >= w && got < w + 1500,
            "gap {i}: {got} ms, want {w} ms; all: {gaps:?}"
        );
    }
    assert!(pw.stop().success());
    assert!(procs_with(&m).is_empty());
}

/// `backoff: {initial: 0s}` restarts at once 5 times in a row, then no faster than every 100 ms
/// (was: 430 restarts a second), and the program is shown backing off meanwhile.
#[test]
fn zero_backoff_has_a_floor_for_a_program_that_keeps_exiting_at_once() {
    let m = marker("backoff-floor");
    let yaml = format!(
        "status_interval: 0\nprocesses:\n  - name: spin\n    command: [sh, -c, 'exit 0', {m}]\n    restart: always\n    backoff: {{initial: 0s, max: 0s}}\n"
    );
    let _turn = cpu_turn();
    let mut pw = Procwatch::start_marked(&yaml, &[], &m);
    // The first restarts are at once.
    pw.wait_scrape(T, "5 restarts", |s| {
        s.prog("procwatch_process_restarts_total", "spin").unwrap_or(0.0) >= 5.0
    });
    let t0 = Instant::now();
    let first = pw.scrape().prog("procwatch_process_restarts_total", "spin").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let later = pw.scrape().prog("procwatch_process_restarts_total", "spin").unwrap();
    let secs = t0.elapsed().as_secs_f64();
    // About one restart per 100 ms after the burst; a run that a loaded machine stretches
    // past 100 ms earns another burst of 5. Without the floor: hundreds a second.
    assert!(
        later - first <= 30.0 * secs,
        "{first} then {later} restarts in {secs:.2} s"
    );
    assert!(later - first >= 5.0, "it still restarts: {first} then {later}");
    wait_for(T, "spin shown backing off", || {
        let (code, out, _) = pw.ctl(&["status", "spin"]);
        (code == 0 && out.contains("backoff")).then_some(())
    });
    assert!(pw.stop().success());
}

/// A program gets fds 0, 1 and 2 and nothing else of procwatch's (which holds hundreds: kept
/// /proc and cgroup files, two pipes per program), whichever tracking mode spawned it; and
/// when it ends, its output pipes reach end of file (procwatch's spawner keeps no copy).
#[test]
fn a_program_gets_only_its_stdio_and_procwatch_keeps_no_copy_of_its_pipes() {
    let m = marker("fds");
    let mut yaml = String::from("processes:\n");
    for i in 0..40 {
        yaml.push_str(&format!("  - name: p{i}\n    command: [sleep, '600']\n"));
    }
    yaml.push_str("  - name: once\n    command: [sh, -c, 'echo last words; sleep 0.2']\n    restart: never\n");
    let pw = Procwatch::start_marked(&yaml, &[], &m);
    let pid = wait_for(T, "p39 to run", || pw.scrape().prog("procwatch_process_pid", "p39")) as i32;
    let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap().display().to_string();
            (e.file_name().to_string_lossy().into_owned(), target)
        })
        .collect();
    fds.sort();
    let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["0", "1", "2"], "{fds:?}");
    assert_eq!(fds[0].1, "/dev/null", "{fds:?}");
    assert!(
        fds[1].1.starts_with("pipe:") && fds[2].1.starts_with("pipe:"),
        "{fds:?}"
    );
    // The one-shot's run ends only once its pipes are at end of file: were a copy of their
    // write ends kept by procwatch, it would never be shown as exited.
    wait_for(T, "the one-shot's exit to be recorded", || {
        pw.scrape()
            .get(
                "procwatch_process_exits_total",
                &[("name", "once"), ("reason", "success")],
            )
            .filter(|&n| n == 1.0)
    });
    wait_for(T, "its line to be passed on", || {
        pw.stdout().contains("last words").then_some(())
    });
}

/// Programs are started by several spawner threads at once, and a program may exit before its
/// spawner has registered its PID: the reaper must still give each exit to its program (were
/// one lost, that program would show as running forever). 300 programs that exit at once,
/// in both modes: every exit is counted, with its own exit code.
fn programs_that_exit_at_once_are_each_counted(mode: &str) {
    const N: usize = 300;
    let m = marker(&format!("exit-at-once-{mode}"));
    let mut yaml = format!("cgroup: {mode}\nprocesses:\n");
    for i in 0..N {
        yaml.push_str(&format!(
            "  - name: p{i}\n    command: [sh, -c, 'exit {}']\n    restart: never\n",
            i % 7 + 1
        ));
    }
    let pw = Procwatch::start_marked(&yaml, &[], &m);
    let s = pw.wait_scrape(T, "every program's exit to be counted", |s| {
        (0..N).all(|i| {
            s.get(
                "procwatch_process_exits_total",
                &[("name", &format!("p{i}")), ("reason", "failure")],
            ) == Some(1.0)
        })
    });
    for i in 0..N {
        let name = format!("p{i}");
        assert_eq!(s.prog("procwatch_process_up", &name), Some(0.0), "p{i} still up");
        assert_eq!(
            s.prog("procwatch_process_last_exit_code", &name),
            Some((i % 7 + 1) as f64),
            "p{i}'s exit code"
        );
    }
}

#[test]
fn programs_that_exit_at_once_are_each_counted_in_cgroup_mode() {
    programs_that_exit_at_once_are_each_counted("auto");
}

#[test]
fn programs_that_exit_at_once_are_each_counted_in_proc_mode() {
    programs_that_exit_at_once_are_each_counted("off");
}

/// Where clone3 is refused (ENOSYS under a container's default seccomp profile or systemd's
/// `RestrictNamespaces=`), a program writes itself into its cgroup's `cgroup.procs` before
/// exec: it still runs in its own cgroup from its first instruction, and procwatch says once
/// which placement it uses. Here procwatch runs under a seccomp filter that fails clone3
/// with ENOSYS, as Docker's does.
#[test]
fn without_clone3_a_program_joins_its_cgroup_before_exec() {
    if util::cgroup_controllers_here().is_none() {
        eprintln!("skipped: cgroup v2 cannot be used here (not root, or no cgroup2 mount)");
        return;
    }
    let m = marker("no-clone3");
    let (dir, config) = util::config_dir(
        "cgroup: required\nprocesses:\n  - name: early\n    command: [sh, -c, 'cat /proc/self/cgroup > cgroup.txt; exec sleep 600']\n  - name: other\n    command: [sleep, '600']\n",
    );
    let arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_with(dir, config.clone(), &["--config", &arg], &m, |cmd| {
        // SAFETY: the closure runs between fork and exec and makes only prctl calls on a
        // filter that lives on its stack.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, || {
                deny_clone3().map_err(std::io::Error::from_raw_os_error)
            });
        }
    });
    let file = config.parent().unwrap().join("cgroup.txt");
    let text = wait_for(T, "the program to write its cgroup", || {
        std::fs::read_to_string(&file).ok().filter(|t| t.contains("0::"))
    });
    let v2 = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert!(v2.ends_with("/programs/early"), "{text}");
    let other = wait_for(T, "other to run", || pw.scrape().prog("procwatch_process_pid", "other")) as i32;
    let own = std::fs::read_to_string(format!("/proc/{other}/cgroup")).unwrap();
    assert!(
        own.lines()
            .any(|l| l.starts_with("0::") && l.ends_with("/programs/other")),
        "{own}"
    );
    let log = pw.stderr();
    assert_eq!(
        log.matches("clone3(CLONE_INTO_CGROUP) is refused here").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("cannot start program"), "{log}");
}

/// A seccomp filter that fails clone3 with ENOSYS (x86_64) and allows everything else.
fn deny_clone3() -> Result<(), i32> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const SYS_CLONE3: u32 = 435;
    const LD_ABS_W: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let stmt = |code, k| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
    let filter = [
        stmt(LD_ABS_W, 4),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
        stmt(LD_ABS_W, 0),
        jump(JEQ_K, SYS_CLONE3, 0, 1),
        stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32),
        stmt(RET_K, RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl calls with a valid filter program that outlives them.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(*libc::__errno_location());
        }
    }
    Ok(())
}
