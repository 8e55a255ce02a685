//! process-exporter's signals, checked against what each test made happen: storage I/O, page
//! faults and context switches of processes that already exited, the fd limit a program set;
//! collector groups; OpenMetrics, gzip and HEAD on /metrics.

mod util;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use util::{Procwatch, Scrape, http, marker};

const T: Duration = Duration::from_secs(60);
const MIB: f64 = 1024.0 * 1024.0;

/// Waits until `done` exists (the program's last act) and then until no process marked `m`
/// has `needle` in its command line, without scraping: a scrape while it lived would report
/// its figures, and the high-water mark would keep them.
fn wait_ran(m: &str, done: &Path, needle: &str) {
    util::wait_for(T, &format!("{} to exist", done.display()), || {
        done.exists().then_some(())
    });
    let running = || util::procs_with(m).iter().any(|(_, cmd)| cmd.contains(needle));
    util::wait_for(T, &format!("{needle} to end"), || (!running()).then_some(()));
}

#[test]
fn a_child_that_wrote_64_mib_and_exited_shows_in_write_bytes() {
    let m = marker("io");
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let out = dir.path().join("out");
    // `parent` waits for its child, so the child's I/O is added to the parent's /proc/PID/io;
    // `oneshot` ends too, and procwatch reaps it (wait4 rusage, its waited-for child included).
    // Nothing is scraped before both writers are gone.
    let yaml = format!(
        "status_interval: 0\nprocesses:\n  \
           - name: parent\n    command: [sh, -c, 'dd if=/dev/zero of={o}.1 bs=1M count=64 conv=fsync 2>/dev/null; touch {o}.done; exec sleep 600']\n  \
           - name: oneshot\n    restart: never\n    command: [sh, -c, 'dd if=/dev/zero of={o}.2 bs=1M count=64 conv=fsync 2>/dev/null; touch {o}.done2']\n",
        o = out.display()
    );
    let pw = Procwatch::start_marked(&yaml, &[], &m);
    wait_ran(&m, &out.with_extension("done2"), &format!("{}.2", out.display()));
    let done = out.with_extension("done");
    util::wait_for(T, "the parent's child to be done", || done.exists().then_some(()));
    // Gone from /proc is not yet reaped by procwatch (oneshot) or by its shell (parent's
    // `touch`): wait for procwatch to say both.
    let s = pw.wait_scrape(T, "oneshot reaped and parent's children gone", |s| {
        s.prog("procwatch_process_up", "oneshot") == Some(0.0)
            && s.prog("procwatch_process_tree_processes", "parent") == Some(1.0)
    });
    for name in ["parent", "oneshot"] {
        let written = s.prog("procwatch_process_write_bytes_total", name).unwrap();
        assert!(
            (64.0 * MIB..80.0 * MIB).contains(&written),
            "{name} wrote {written} bytes, not about 64 MiB"
        );
        assert!(s.prog("procwatch_process_read_bytes_total", name).is_some());
    }
}

#[test]
fn a_child_that_touched_100_mib_and_exited_shows_its_minor_faults() {
    let m = marker("faults");
    // Every 4 KiB page of 100 MiB is touched once: at least 25,600 minor faults (no huge pages
    // here: transparent huge pages need madvise on this kind of host, and Python does not).
    let touch = "b = bytearray(100 << 20); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]";
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let yaml = format!(
        "status_interval: 0\nprocesses:\n  - name: toucher\n    command: [sh, -c, 'python3 -c \"{touch}\"; touch {}; exec sleep 600']\n",
        done.display()
    );
    let pw = Procwatch::start_marked(&yaml, &[], &m);
    util::wait_for(T, "the child to be done", || done.exists().then_some(()));
    // The child is gone (and `touch` after it): what is counted is what it left in its
    // parent's cminflt.
    let s = pw.wait_scrape(T, "toucher's children gone", |s| {
        s.prog("procwatch_process_tree_processes", "toucher") == Some(1.0)
    });
    let faults = s.prog("procwatch_process_minor_page_faults_total", "toucher").unwrap();
    assert!(faults >= 25_000.0, "{faults}");
    assert!(s.prog("procwatch_process_major_page_faults_total", "toucher").is_some());
}

#[test]
fn a_program_that_died_keeps_its_counters() {
    let m = marker("reaped");
    // Faults and context switches of a main process that procwatch reaped come from wait4.
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let touch = format!(
        "b = bytearray(40 << 20); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; open(\"{}\", \"w\").close()",
        done.display()
    );
    let yaml = format!(
        "status_interval: 0\nprocesses:\n  - name: once\n    restart: never\n    command: [python3, -c, '{touch}']\n"
    );
    let pw = Procwatch::start_marked(&yaml, &[], &m);
    wait_ran(&m, &done, "python3");
    let s = pw.wait_scrape(T, "once to be down", |s| {
        s.prog("procwatch_process_up", "once") == Some(0.0)
    });
    let faults = s.prog("procwatch_process_minor_page_faults_total", "once").unwrap();
    assert!(faults >= 10_000.0, "{faults}");
    let switches = s.get(
        "procwatch_process_context_switches_total",
        &[("name", "once"), ("type", "voluntary")],
    );
    assert!(switches.is_some_and(|v| v >= 1.0), "{switches:?}");
}

#[test]
fn context_switches_of_threads_that_exited_count_while_their_process_lives() {
    if let Err(e) = procwatch::procfs::taskstats::Taskstats::open() {
        eprintln!("!!! SKIPPED: {e}; procwatch then reads task/TID/status, where a thread's switches go with it");
        return;
    }
    let m = marker("threads");
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    // Four threads sleep 300 times each (a voluntary switch per sleep), then exit; the
    // process lives on, its main thread asleep.
    let script = format!(
        "import threading, time; f = lambda: [time.sleep(0.0005) for _ in range(300)]; ts = [threading.Thread(target=f) for _ in range(4)]; [t.start() for t in ts]; [t.join() for t in ts]; open(\"{}\", \"w\").close(); time.sleep(600)",
        done.display()
    );
    let yaml = format!("status_interval: 0\nprocesses:\n  - name: threads\n    command: [python3, -c, '{script}']\n");
    let pw = Procwatch::start_marked(&yaml, &[], &m);
    util::wait_for(T, "the threads to be done", || done.exists().then_some(()));
    let s = pw.wait_scrape(T, "one thread left", |s| {
        s.prog("procwatch_process_threads", "threads") == Some(1.0)
    });
    let switches = s
        .get(
            "procwatch_process_context_switches_total",
            &[("name", "threads"), ("type", "voluntary")],
        )
        .unwrap();
    assert!(switches >= 1200.0, "4 exited threads slept 1200 times: {switches}");
}

/// A program whose main thread exited while another runs: /proc's files of its leader (a
/// zombie) show no memory and no fds, though the process holds both.
#[test]
fn a_program_whose_main_thread_exited_still_shows_its_memory_and_fds() {
    let m = marker("leader");
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let script = dir.path().join("leader.py");
    std::fs::write(
        &script,
        format!(
            "import ctypes, threading, time\nb = bytearray(50 << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\nthreading.Thread(target=lambda: time.sleep(600)).start()\nopen(\"{}\", \"w\").close()\nctypes.CDLL(None).pthread_exit(None)\n",
            done.display()
        ),
    )
    .unwrap();
    let yaml = format!(
        "status_interval: 0\nprocesses:\n  - name: leader\n    command: [python3, {}]\n",
        script.display()
    );
    let pw = Procwatch::start_marked(&yaml, &[], &m);
    util::wait_for(T, "the main thread to exit", || done.exists().then_some(()));
    let zombie = |s: &Scrape| -> Option<()> {
        let pid = s.prog("procwatch_process_pid", "leader")? as i32;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')').next()?.trim_start().starts_with('Z').then_some(())
    };
    let s = pw.wait_scrape(T, "the leader to be a zombie", |s| zombie(s).is_some());
    let rss = s.prog("procwatch_process_resident_memory_bytes", "leader").unwrap();
    assert!(rss >= 50.0 * 1024.0 * 1024.0, "{rss}");
    assert!(s.prog("procwatch_process_virtual_memory_bytes", "leader").unwrap() >= rss);
    let fds = s.prog("procwatch_process_open_fds", "leader").unwrap();
    assert!(fds >= 3.0, "stdio at least: {fds}");
}

#[test]
fn max_fds_is_the_limit_the_program_set() {
    let pw = Procwatch::start(
        "processes:\n  - name: limited\n    command: [sh, -c, 'ulimit -S -n 1234; exec sleep 600']\n",
        &[],
    );
    pw.wait_scrape(T, "max_fds 1234", |s| {
        s.prog("procwatch_process_max_fds", "limited") == Some(1234.0)
    });
}

/// (soft, hard) RLIMIT_NOFILE of `pid`, from /proc/PID/limits.
fn nofile_of(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let v: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (v[0], v[1])
}

#[test]
fn programs_get_procwatch_s_starting_nofile_limit_back_or_the_one_they_configured() {
    // procwatch raises its own limit for its kept files (as root the hard one too): its
    // programs must not inherit that, and a `limits: {nofile}` above where procwatch started
    // must survive the restore.
    use std::os::unix::process::CommandExt;
    let hard = nofile_of(std::process::id()).1;
    let soft = 4096.min(hard / 2);
    let wanted = soft + 1000;
    let yaml = format!(
        "processes:\n  - name: plain\n    command: [sleep, '600']\n  - name: own\n    command: [sleep, '600']\n    limits: {{nofile: {wanted}}}\n"
    );
    let (dir, config) = util::config_dir(&yaml);
    let arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_with(dir, config, &["--config", &arg], &marker("nofile"), |cmd| {
        // SAFETY: setrlimit between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                Ok(())
            });
        }
    });
    let s = pw.wait_scrape(T, "both up with their limits", |s| {
        s.prog("procwatch_process_max_fds", "plain").is_some() && s.prog("procwatch_process_max_fds", "own").is_some()
    });
    assert_eq!(s.prog("procwatch_process_max_fds", "own"), Some(wanted as f64));
    assert_eq!(s.prog("procwatch_process_max_fds", "plain"), Some(soft as f64));
    let pid = |name| s.prog("procwatch_process_pid", name).unwrap() as u32;
    assert_eq!(
        nofile_of(pid("plain")),
        (soft, hard),
        "the limits procwatch started with"
    );
    assert_eq!(nofile_of(pid("own")), (wanted, wanted), "the configured limit");
    let own = nofile_of(pw.supervisor_pid() as u32);
    if may_raise_hard_limits() {
        // procwatch gives itself systemd's hard limit for a service.
        assert!(own.0 == own.1 && own.1 >= hard.max(524_288), "procwatch's own: {own:?}");
    } else {
        println!("no CAP_SYS_RESOURCE here: procwatch's hard limit stays {hard}");
        assert_eq!(own, (hard, hard), "procwatch's own, raised to its hard limit");
    }
}

/// Whether this process has CAP_SYS_RESOURCE (may raise a hard limit), as procwatch will.
fn may_raise_hard_limits() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap();
    // Bit 24: CAP_SYS_RESOURCE (linux/capability.h).
    u64::from_str_radix(eff.trim(), 16).unwrap() & (1 << 24) != 0
}

#[test]
fn no_collector_io_leaves_io_out_and_the_rest_in() {
    let pw = Procwatch::start(
        "processes:\n  - name: p\n    command: [sleep, '600']\n",
        &["--no-collector.io", "--no-collector.faults"],
    );
    let s = pw.wait_scrape(T, "p up", |s| s.prog("procwatch_process_up", "p") == Some(1.0));
    for gone in [
        "procwatch_process_read_bytes",
        "procwatch_process_write_bytes",
        "page_faults",
    ] {
        assert!(!s.text.contains(gone), "{gone} is still there:\n{}", s.text);
    }
    assert!(
        s.text.contains("procwatch_process_context_switches_total{"),
        "{}",
        s.text
    );
    assert!(s.text.contains("procwatch_process_swap_bytes{"), "{}", s.text);
}

#[test]
fn every_no_collector_flag_is_accepted() {
    let flags: Vec<String> = procwatch::metrics::Group::ALL
        .iter()
        .map(|g| format!("--no-collector.{}", g.as_str()))
        .collect();
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let pw = Procwatch::start("processes:\n  - name: p\n    command: [sleep, '600']\n", &args);
    let s = pw.wait_scrape(T, "p up", |s| s.prog("procwatch_process_up", "p") == Some(1.0));
    for gone in ["bytes_total", "page_faults", "context_switches", "swap_bytes"] {
        assert!(!s.text.contains(gone), "{gone} is still there:\n{}", s.text);
    }
}

/// GET /metrics with raw headers; the body as bytes.
fn get_raw(addr: &str, method: &str, headers: &str) -> (String, Vec<u8>) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).to_lowercase();
    (head, all[split + 4..].to_vec())
}

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes).read_to_string(&mut out).unwrap();
    out
}

#[test]
fn openmetrics_gzip_and_head_round_trip() {
    let pw = Procwatch::start("processes:\n  - name: p\n    command: [sleep, '600']\n", &[]);
    pw.wait_scrape(T, "p up", |s| s.prog("procwatch_process_up", "p") == Some(1.0));

    let (head, plain) = get_raw(&pw.addr, "GET", "");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(!head.contains("content-encoding"), "{head}");
    let plain = String::from_utf8(plain).unwrap();
    assert!(!plain.contains("# EOF"));
    assert!(
        plain.contains("procwatch_process_minor_page_faults_total{name=\"p\"}"),
        "{plain}"
    );

    let om = "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
    let (head, body) = get_raw(&pw.addr, "GET", om);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE procwatch_process_restarts counter\n"), "{text}");
    assert!(
        text.contains("procwatch_process_restarts_total{name=\"p\"} 0\n"),
        "{text}"
    );

    // Asked for 0.0.1 (first), it is answered as 0.0.1; unversioned, as 1.0.0.
    for (accept, version) in [
        (
            "application/openmetrics-text;version=0.0.1;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5",
            "0.0.1",
        ),
        ("application/openmetrics-text", "1.0.0"),
    ] {
        let (head, body) = get_raw(&pw.addr, "GET", &format!("Accept: {accept}\r\n"));
        assert!(
            head.contains(&format!(
                "content-type: application/openmetrics-text; version={version}; charset=utf-8"
            )),
            "{accept}: {head}"
        );
        assert!(String::from_utf8(body).unwrap().ends_with("# EOF\n"));
    }

    let (head, body) = get_raw(&pw.addr, "GET", &format!("{om}Accept-Encoding: gzip\r\n"));
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let unpacked = gunzip(&body);
    assert!(unpacked.ends_with("# EOF\n"), "{unpacked}");
    assert!(unpacked.contains("procwatch_process_up{name=\"p\"} 1\n"));

    let (head, body) = get_raw(&pw.addr, "GET", "Accept-Encoding: gzip, deflate\r\n");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let unpacked = Scrape::parse(gunzip(&body));
    assert_eq!(unpacked.prog("procwatch_process_up", "p"), Some(1.0));

    let (head, body) = get_raw(&pw.addr, "HEAD", "");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(body.is_empty(), "HEAD has no body");
    let (status, _, _) = http(&pw.addr, "POST", "/metrics", "").unwrap();
    assert_eq!(status, 405);

    // Both formats through real parsers: promtool's lint on the text format (it reads no
    // other), and the OpenMetrics reference parser of the Python client (Debian's
    // python3-prometheus-client), which insists on # EOF, types and suffixes.
    lint("promtool", &["check", "metrics"], &plain);
    lint(
        "/usr/bin/python3",
        &[
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
             n = len(list(p(sys.stdin.read())))\nassert n > 20, n",
        ],
        &text,
    );
}

/// Runs `tool args` with `input` on stdin and asserts it succeeds; skips loudly where the tool
/// is missing, unless PROCWATCH_REQUIRE_PROMETHEUS is set (as .ci/run does).
fn lint(tool: &str, args: &[&str], input: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let probe = Command::new(tool)
        .args(if tool.ends_with("python3") {
            &["-c", "import prometheus_client"][..]
        } else {
            &["--version"][..]
        })
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("PROCWATCH_REQUIRE_PROMETHEUS").is_none(),
            "{tool} (with prometheus_client for python3) is missing and PROCWATCH_REQUIRE_PROMETHEUS is set"
        );
        eprintln!("skipped: {tool} {args:?} is not available (apt-get install prometheus python3-prometheus-client)");
        return;
    }
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}:\n{}{}\n{input}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
