//! The measured figures: the real procwatch binary against the floor, the bare cost of reading
//! the same /proc files procwatch reads for each process. Prints a table.
//!
//!     cargo bench --bench procwatch                 # everything
//!     cargo bench --bench procwatch -- quick        # N = 10, 100, 1000 only, fewer rounds
//!
//! Figures are CPU time, from /proc/PID/stat of procwatch (utime + stime) and from
//! CLOCK_PROCESS_CPUTIME_ID for the floor loop, so they hold on a loaded machine too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_procwatch");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--stamp") {
        return stamp(&args[2]);
    }
    if args.get(1).map(String::as_str) == Some("--hold") {
        return hold(&args[2], &args[3]);
    }
    let quick = args.iter().any(|a| a == "quick");
    // `-- files`, `-- restart`, `-- start`, `-- control`, `-- scrape`, `-- encode`, `-- output`
    // or `-- probes` runs one part only;
    // `-- N` (a number) measures scrapes (and starts) at N programs only.
    // `-- proc` runs `start` and `restart` in proc mode (`cgroup: off`); by default procwatch
    // runs in the mode it picks (cgroup mode where cgroup v2 can be used).
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let only = |part: &str| {
        let parts = [
            "files", "restart", "start", "control", "scrape", "encode", "output", "probes",
        ];
        !args.iter().any(|a| parts.contains(&a.as_str())) || args.iter().any(|a| a == part)
    };
    let clk = clk_tck();
    let mode = if args.iter().any(|a| a == "proc") {
        "cgroup: off\n"
    } else {
        ""
    };
    println!("procwatch benchmark: {}", machine());
    println!();
    if only("scrape") {
        scrapes(quick, clk, &sizes);
    }
    if only("encode") {
        for n in [1000, 5000] {
            encoders(n, quick);
        }
    }
    if only("start") {
        start_all(quick, &sizes, mode);
    }
    if only("restart") {
        restart_latency(quick, mode);
    }
    if only("control") {
        control_restart(quick);
    }
    if only("files") {
        file_events(quick, clk);
    }
    if only("output") {
        output_throughput(quick, clk);
        output_rings(quick);
    }
    if only("probes") {
        probes(quick, clk);
    }
}

/// The probes' HTTP server: in this process (its CPU is not procwatch's), on a free loopback
/// port with a deep accept queue, one thread. `GET /N` answers 500 while program N has failures
/// left to answer (see `fail`), 200 otherwise; every request is counted and every 500 recorded.
struct HealthServer {
    port: u16,
    sick: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>>,
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// (program, Unix time) of every 500 answered.
    failed: std::sync::Arc<std::sync::Mutex<Vec<(usize, f64)>>>,
}

impl HealthServer {
    fn start(n: usize) -> HealthServer {
        use std::os::fd::FromRawFd;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        // SAFETY: plain socket calls on a socket we own; listen(2) with a queue deep enough
        // for a burst of every probe at once (std's TcpListener asks for 128).
        let listener = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as u16;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len), 0);
            assert_eq!(libc::listen(fd, 4096), 0);
            std::net::TcpListener::from_raw_fd(fd)
        };
        let port = listener.local_addr().unwrap().port();
        let sick: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let served = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (s, v, f) = (Arc::clone(&sick), Arc::clone(&served), Arc::clone(&failed));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let i: Option<usize> = text
                    .strip_prefix("GET /")
                    .and_then(|r| r.split(' ').next())
                    .and_then(|p| p.parse().ok());
                let ill = i.is_some_and(|i| {
                    s.get(i).is_some_and(|b| {
                        b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
                            .is_ok()
                    })
                });
                let reply: &[u8] = if ill {
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = conn.write_all(reply);
                if let (true, Some(i)) = (ill, i) {
                    f.lock().unwrap().push((i, unix_now()));
                }
                v.fetch_add(1, Ordering::Relaxed);
            }
        });
        HealthServer {
            port,
            sick,
            served,
            failed,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Program `i`'s next `checks` checks fail.
    fn fail(&self, i: usize, checks: u64) {
        self.sick[i].store(checks, std::sync::atomic::Ordering::Relaxed);
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// 1000 programs (`sleep`) with an http liveness probe every 10 s against a real server,
/// beside the same 1000 without probes, in the same run: procwatch's CPU over a window with
/// no scrapes, in % of one core. Then some of them start failing their probe: the time from
/// the server's first 500 to the new run (bound: period x failure_threshold + the restart), and
/// from the last failed check to the new run (procwatch's own reaction: stop and start).
fn probes(quick: bool, clk: f64) {
    const N: usize = 1000;
    const PERIOD: u64 = 10;
    const THRESHOLD: u64 = 3;
    let window = Duration::from_secs(if quick { 30 } else { 60 });
    let sick_n = if quick { 20 } else { 50 };
    let server = HealthServer::start(N);
    let cpu_over = |pw: &Pw| {
        let c0 = pw.cpu(clk);
        let t0 = Instant::now();
        std::thread::sleep(window);
        let pct = (pw.cpu(clk) - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
        (pct, loadavg())
    };
    let up = |pw: &Pw| {
        wait(Duration::from_secs(600), || {
            (sum(&pw.get("/metrics"), "procwatch_process_up{") as usize == N).then_some(())
        })
    };

    // The same programs without probes.
    let pw = Pw::start(&programs_yaml(N), &[]);
    up(&pw);
    // Past the start-up's tail, as in the probes' case below.
    std::thread::sleep(Duration::from_secs(10));
    let (idle, idle_load) = cpu_over(&pw);
    pw.stop();

    let mut yaml = String::from("status_interval: 0\nshutdown_timeout: 60s\nprocesses:\n");
    for i in 0..N {
        yaml.push_str(&format!(
            "  - name: p{i}\n    command: [sleep, '100000']\n    restart: always\n    backoff: {{initial: 0s, max: 0s}}\n    liveness: {{http: {{url: 'http://127.0.0.1:{}/{i}', status: 200}}, period: {PERIOD}s, timeout: 1s, failure_threshold: {THRESHOLD}}}\n",
            server.port
        ));
    }
    let pw = Pw::start(&yaml, &[]);
    up(&pw);
    // Every probe has checked at least once, and as long after the start as above.
    let t_up = Instant::now();
    wait(Duration::from_secs(120), || (server.served() >= N as u64).then_some(()));
    std::thread::sleep(Duration::from_secs(10).saturating_sub(t_up.elapsed()));
    let served0 = server.served();
    let (probed, probed_load) = cpu_over(&pw);
    let served = server.served() - served0;
    let body = pw.get("/metrics");
    let failures = sum(&body, "procwatch_probe_failures_total{");
    let restarts0 = sum(&body, "procwatch_process_restarts_total{");
    println!(
        "probes: {N} programs with an http liveness probe every {PERIOD}s: procwatch CPU {probed:.3}% of a core over {} s ({served} checks served, {:.0}/s; {failures} failed) (load average {probed_load}); the same {N} without probes: {idle:.3}% (load average {idle_load}); the probes' own: {:.3}%, {:.0} µs of CPU per check",
        window.as_secs(),
        served as f64 / window.as_secs_f64(),
        probed - idle,
        (probed - idle) / 100.0 * window.as_secs_f64() / served.max(1) as f64 * 1e6,
    );

    // Liveness: `sick_n` programs, spread over the 1000, start failing at once, each for
    // `THRESHOLD` checks in a row (the new run is healthy).
    let started_at = |body: &str| -> Vec<f64> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let mut at = vec![0.0; N];
        for p in v["programs"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let i: usize = name[1..].parse().unwrap();
            at[i] = p["started_at"].as_f64().unwrap_or(0.0);
        }
        at
    };
    let sick: Vec<usize> = (0..sick_n).map(|k| k * (N / sick_n)).collect();
    let before = started_at(&pw.get("/api/v1/programs"));
    server.failed.lock().unwrap().clear();
    let t0 = unix_now();
    for &i in &sick {
        server.fail(i, THRESHOLD);
    }
    let mut restarted: Vec<Option<f64>> = vec![None; N];
    wait(Duration::from_secs(PERIOD * THRESHOLD + 60), || {
        let now = started_at(&pw.get("/api/v1/programs"));
        for &i in &sick {
            if restarted[i].is_none() && now[i] > before[i] {
                restarted[i] = Some(now[i]);
            }
        }
        // Each poll is a gather of 1000 programs: not too often, not to weigh on procwatch.
        std::thread::sleep(Duration::from_secs(1));
        sick.iter().all(|&i| restarted[i].is_some()).then_some(())
    });
    let failed = server.failed.lock().unwrap().clone();
    let mut total = Vec::new();
    let mut reaction = Vec::new();
    for &i in &sick {
        let new_run = restarted[i].unwrap();
        total.push(new_run - t0);
        let last = failed
            .iter()
            .filter(|&&(j, t)| j == i && t <= new_run)
            .map(|&(_, t)| t)
            .fold(f64::NAN, f64::max);
        reaction.push((new_run - last) * 1e3);
    }
    let body = pw.get("/metrics");
    let restarts = sum(&body, "procwatch_process_restarts_total{") - restarts0;
    let after = started_at(&pw.get("/api/v1/programs"));
    pw.stop();
    let others = (0..N).filter(|i| !sick.contains(i)).count();
    let kept = (0..N).filter(|i| !sick.contains(i) && after[*i] == before[*i]).count();
    total.sort_by(f64::total_cmp);
    reaction.sort_by(f64::total_cmp);
    let q = |v: &[f64], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    println!(
        "liveness restart, {} of {N} programs failing (period {PERIOD}s x failure_threshold {THRESHOLD} = {} s, backoff 0s): probe failing from -> new run min {:.2} s, median {:.2} s, max {:.2} s; last failed check -> new run median {:.1} ms, p90 {:.1} ms, max {:.1} ms; restarts counted {restarts} ({} expected); {kept} of the other {others} kept their run (load average {})",
        sick.len(),
        PERIOD * THRESHOLD,
        total[0],
        q(&total, 50),
        total[total.len() - 1],
        q(&reaction, 50),
        q(&reaction, 90),
        reaction[reaction.len() - 1],
        sick.len(),
        loadavg()
    );
}

/// One program writes 100-byte lines as fast as it can; procwatch reads, frames, counts,
/// prefixes and passes every line to its stdout (/dev/null here, through its stdout queue).
/// Rate from procwatch's own counter; RSS before and at its peak during the flood.
fn output_throughput(quick: bool, clk: f64) {
    let lines: u64 = if quick { 1_000_000 } else { 3_000_000 };
    let line = "x".repeat(99);
    let yaml = format!(
        "status_interval: 0\nprocesses:\n  - name: flood\n    command: [sh, -c, 'sleep 1; yes {line} | head -n {lines}; exec sleep 100000']\n"
    );
    let pw = Pw::start(&yaml, &[]);
    let counted = |b: &str| sum(b, "procwatch_process_log_lines_total{name=\"flood\",stream=\"stdout\"}");
    wait(Duration::from_secs(30), || {
        (sum(&pw.get("/metrics"), "procwatch_process_up{") == 1.0).then_some(())
    });
    let rss0 = pw.rss();
    let mut peak = rss0;
    // From the first line counted to the last.
    let (n0, t0, cpu0) = wait(Duration::from_secs(30), || {
        let n = counted(&pw.get("/metrics"));
        (n > 0.0).then(|| (n, Instant::now(), pw.cpu(clk)))
    });
    let body = wait(Duration::from_secs(300), || {
        peak = peak.max(pw.rss());
        let b = pw.get("/metrics");
        (counted(&b) as u64 >= lines).then_some(b)
    });
    let took = t0.elapsed();
    let cpu = pw.cpu(clk) - cpu0;
    let n = counted(&body) as u64;
    let bytes = sum(
        &body,
        "procwatch_process_log_bytes_total{name=\"flood\",stream=\"stdout\"}",
    ) as u64;
    let mb = (n as f64 - n0) * 100.0 / 1e6;
    println!(
        "output: {lines} lines of 100 bytes ({} MB) from one program: {:.0} MB/s ({:.2} M lines/s), counted {n} lines and {bytes} bytes ({}); procwatch CPU {:.1} ns/line; RSS {:.1} MiB before, {:.1} MiB at the peak (+{:.1} MiB)",
        lines * 100 / 1_000_000,
        mb / took.as_secs_f64(),
        (n as f64 - n0) / took.as_secs_f64() / 1e6,
        if n == lines && bytes == lines * 100 {
            "exact"
        } else {
            "NOT EXACT"
        },
        cpu.as_secs_f64() * 1e9 / (n as f64 - n0),
        rss0 as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        (peak.saturating_sub(rss0)) as f64 / 1048576.0,
    );
    pw.stop();
}

/// 1000 programs that each wrote more than their ring holds (300 log lines of about 95 bytes,
/// with times, ids and numbers that vary, as servers write), beside the same 1000 programs
/// silent, in the same run: procwatch's RSS with every ring full, and what the rings add.
fn output_rings(quick: bool) {
    let n = if quick { 300 } else { 1000 };
    let lines = 300;
    let mut kept = 0;
    let mut rss = |talk: bool| {
        let mut yaml = String::from("status_interval: 0\nshutdown_timeout: 60s\nprocesses:\n");
        for i in 0..n {
            let write = if talk {
                format!(
                    "awk 'BEGIN{{srand({i}); for(i=0;i<{lines};i++) printf \"2026-11-27T19:%02d:%02d.%03dZ INFO request id=%08x path=/api/v1/items/%d status=%d took=%dms\\n\", i/60%60, i%60, int(rand()*1000), int(rand()*4294967295), int(rand()*10000), (rand()<0.8?200:500), int(rand()*300)}}'; "
                )
            } else {
                String::new()
            };
            yaml.push_str(&format!(
                "  - name: p{i}\n    command: [sh, -c, \"{}exec sleep 100000\"]\n",
                write.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        }
        let pw = Pw::start(&yaml, &[]);
        let want = if talk { n * lines } else { 0 };
        wait(Duration::from_secs(300), || {
            let b = pw.get("/metrics");
            (sum(&b, "procwatch_process_up{") as usize == n
                && sum(&b, "procwatch_process_log_lines_total{") as usize == want)
                .then_some(())
        });
        // Past the rings' compaction (quiet for 5 s, then the next pass), two scrapes in, as
        // the scrape table measures.
        std::thread::sleep(Duration::from_secs(7));
        pw.get("/metrics");
        pw.get("/metrics");
        let rss = pw.rss();
        if talk {
            // A ring serves its last lines (at least 8 KiB of them), the newest last.
            let body = pw.get("/api/v1/programs/p7/logs?lines=1000");
            kept = body.matches("\"text\"").count();
            assert!(kept >= 8192 / 100, "{body}");
            assert!(body.contains(&format!("{{\"seq\":{},", lines - 1)), "{body}");
        }
        pw.stop();
        rss
    };
    let silent = rss(false);
    let full = rss(true);
    println!(
        "output rings: {n} programs with full rings ({lines} log lines of ~95 bytes each written): RSS {:.1} MiB; the same {n} programs silent: {:.1} MiB; the rings add {:.2} KiB per program, and hold {kept} lines each (load average {})",
        full as f64 / 1048576.0,
        silent as f64 / 1048576.0,
        (full as f64 - silent as f64) / 1024.0 / n as f64,
        loadavg()
    );
}

fn scrapes(quick: bool, clk: f64, only: &[usize]) {
    println!(
        "{:>13} {:>8} {:>11} {:>10} {:>10} {:>6} {:>11} {:>11} {:>11} {:>9} {:>12}",
        "programs",
        "start s",
        "scrape cpu",
        "floor",
        "per proc",
        "ratio",
        "latency p50",
        "latency p99",
        "idle cpu",
        "rss",
        "o/r/c floor"
    );
    let sizes: &[usize] = if !only.is_empty() {
        only
    } else if quick {
        &[10, 100, 1000]
    } else {
        &[10, 100, 1000, 5000]
    };
    for &n in sizes {
        let yaml = programs_yaml(n);
        let row = measure(&format!("{n}"), &yaml, n, n, quick, clk);
        row.print();
    }
    if !only.is_empty() {
        return;
    }
    // One program whose tree has 1000 processes: the cost of finding the tree.
    let tree = "status_interval: 0\nprocesses:\n  - name: tree\n    command: [sh, -c, 'for i in $(seq 999); do sleep 100000 & done; wait']\n";
    let row = measure("1 (1000 tree)", tree, 1, 1000, quick, clk);
    row.print();
    println!();
    println!();
}

/// (name, is_counter, extra label values): the per-program families procwatch writes, 29
/// samples a program (all groups on), for the encoders compared side by side.
type Family = (&'static str, bool, &'static [(&'static str, &'static str)]);
const FAMILIES: [Family; 24] = [
    ("procwatch_process_up", false, &[]),
    (
        "procwatch_process_cpu_seconds_total",
        true,
        &[("mode", "user"), ("mode", "system")],
    ),
    ("procwatch_process_resident_memory_bytes", false, &[]),
    ("procwatch_process_virtual_memory_bytes", false, &[]),
    ("procwatch_process_threads", false, &[]),
    ("procwatch_process_open_fds", false, &[]),
    ("procwatch_process_tree_processes", false, &[]),
    ("procwatch_process_max_fds", false, &[]),
    ("procwatch_process_pid", false, &[]),
    ("procwatch_process_start_time_seconds", false, &[]),
    ("procwatch_process_uptime_seconds", false, &[]),
    ("procwatch_process_restarts_total", true, &[]),
    (
        "procwatch_process_exits_total",
        true,
        &[("reason", "success"), ("reason", "failure"), ("reason", "signal")],
    ),
    ("procwatch_process_last_exit_code", false, &[]),
    ("procwatch_process_read_bytes_total", true, &[]),
    ("procwatch_process_write_bytes_total", true, &[]),
    ("procwatch_process_major_page_faults_total", true, &[]),
    ("procwatch_process_minor_page_faults_total", true, &[]),
    (
        "procwatch_process_context_switches_total",
        true,
        &[("type", "voluntary"), ("type", "involuntary")],
    ),
    ("procwatch_process_swap_bytes", false, &[]),
    ("procwatch_file_watch_up", false, &[]),
    ("procwatch_file_watch_errors_total", true, &[]),
    ("procwatch_file_watch_overflows_total", true, &[]),
    ("procwatch_config_last_reload_successful", false, &[]),
];
const HELP: &str = "help text of about this length for the family.";

/// Each family's samples: (program index, extra label) with a value.
fn each_sample(
    n: usize,
    extra: &'static [(&'static str, &'static str)],
    mut f: impl FnMut(usize, Option<(&str, &str)>),
) {
    for i in 0..n {
        if extra.is_empty() {
            f(i, None);
        }
        for &e in extra {
            f(i, Some(e));
        }
    }
}

/// What encoding would cost through the `prometheus` crate: one `MetricFamily` per metric, a
/// `Metric` with owned label pairs per sample, then its `TextEncoder`. Returns the bytes.
fn prometheus_crate_encode(n: usize, names: &[String]) -> usize {
    use prometheus::Encoder;
    use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
    let label = |k: &str, v: &str| {
        let mut l = LabelPair::default();
        l.set_name(k.to_owned());
        l.set_value(v.to_owned());
        l
    };
    let mut out = Vec::with_capacity(2 << 20);
    let mut mfs = Vec::new();
    for (name, counter, extra) in FAMILIES {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_owned());
        mf.set_help(HELP.to_owned());
        mf.set_field_type(if counter {
            MetricType::COUNTER
        } else {
            MetricType::GAUGE
        });
        each_sample(n, extra, |i, e| {
            let mut labels = vec![label("name", &names[i])];
            if let Some((k, v)) = e {
                labels.push(label(k, v));
            }
            let mut m = Metric::from_label(labels);
            if counter {
                let mut c = Counter::default();
                c.set_value(i as f64 * 1.5);
                m.set_counter(c);
            } else {
                let mut g = Gauge::default();
                g.set_value(i as f64 * 1.5);
                m.set_gauge(g);
            }
            mf.mut_metric().push(m);
        });
        mfs.push(mf);
    }
    prometheus::TextEncoder::new().encode(&mfs, &mut out).unwrap();
    out.len()
}

/// procwatch's encoder before prometheus-client: `# HELP`/`# TYPE` and samples written by hand
/// into a reused String.
fn hand_encode(n: usize, names: &[String], out: &mut String) -> usize {
    use std::fmt::Write as _;
    out.clear();
    for (name, counter, extra) in FAMILIES {
        let _ = writeln!(
            out,
            "# HELP {name} {HELP}\n# TYPE {name} {}",
            if counter { "counter" } else { "gauge" }
        );
        each_sample(n, extra, |i, e| {
            out.push_str(name);
            out.push_str("{name=\"");
            for c in names[i].chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
            if let Some((k, v)) = e {
                let _ = write!(out, ",{k}=\"{v}\"");
            }
            out.push_str("} ");
            let value = i as f64 * 1.5;
            if value.fract() == 0.0 && value.abs() < 1e15 {
                let _ = write!(out, "{}", value as i64);
            } else {
                let _ = write!(out, "{value}");
            }
            out.push('\n');
        });
    }
    out.len()
}

/// The same page through prometheus-client, as procwatch writes it now: a `Collector` whose
/// `DescriptorEncoder` writes straight into the buffer; `openmetrics` picks the encoder.
fn client_encode(n: usize, names: &[String], out: &mut String, openmetrics: bool) -> usize {
    use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
    use prometheus_client::metrics::MetricType;
    #[derive(Debug)]
    struct Page(usize, std::sync::Arc<Vec<String>>);
    impl prometheus_client::collector::Collector for Page {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
            for (name, counter, extra) in FAMILIES {
                let (name, ty) = if counter {
                    (name.strip_suffix("_total").unwrap(), MetricType::Counter)
                } else {
                    (name, MetricType::Gauge)
                };
                let mut m = enc.encode_descriptor(name, HELP, None, ty)?;
                let mut r = Ok(());
                each_sample(self.0, extra, |i, e| {
                    let value = i as f64 * 1.5;
                    let labels: &[(&str, &str)] = &[("name", &self.1[i]), e.unwrap_or(("", ""))];
                    let labels = if e.is_some() { labels } else { &labels[..1] };
                    r = r.and_then(|()| {
                        let mut s = m.encode_family(&labels)?;
                        if counter {
                            s.encode_counter::<NoLabelSet, _, u64>(&value, None)
                        } else {
                            s.encode_gauge(&value)
                        }
                    });
                });
                r?;
            }
            Ok(())
        }
    }
    out.clear();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Page(n, std::sync::Arc::new(names.to_vec()))));
    if openmetrics {
        prometheus_client::encoding::text::encode(out, &registry).unwrap();
    } else {
        prometheus_client::encoding::prometheus_text::encode(out, &registry).unwrap();
    }
    out.len()
}

/// CPU per call of `f`, after one warm-up call.
fn cpu_per(rounds: u32, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut bytes = f();
    let t0 = process_cpu();
    for _ in 0..rounds {
        bytes = f();
    }
    ((process_cpu() - t0) / rounds, bytes)
}

fn encoders(n: usize, quick: bool) {
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let rounds = if quick { 5 } else { 20 };
    let mut buf = String::new();
    let (hand, hb) = cpu_per(rounds, || hand_encode(n, &names, &mut buf));
    let (client, cb) = cpu_per(rounds, || client_encode(n, &names, &mut buf, false));
    let (om, ob) = cpu_per(rounds, || client_encode(n, &names, &mut buf, true));
    let (krate, kb) = cpu_per(rounds, || prometheus_crate_encode(n, &names));
    let (gz, gzb) = cpu_per(rounds, || procwatch::metrics::gzip(buf.as_bytes()).len());
    println!(
        "encoding {n} programs' page ({} samples): hand-written {:.3} ms ({hb} B), prometheus-client text {:.3} ms ({cb} B), \
         OpenMetrics {:.3} ms ({ob} B), prometheus crate {:.3} ms ({kb} B); gzip of the OpenMetrics page {:.3} ms ({gzb} B)",
        n * 29,
        ms(hand),
        ms(client),
        ms(om),
        ms(krate),
        ms(gz)
    );
}

struct Row {
    label: String,
    start: Duration,
    scrape_cpu: Duration,
    floor: Duration,
    procs: usize,
    p50: Duration,
    p99: Duration,
    idle_pct: f64,
    rss: u64,
    /// The floor with open/read/close per file instead of kept fds.
    orc_floor: Duration,
}

impl Row {
    fn print(&self) {
        println!(
            "{:>13} {:>8.2} {:>8.3} ms {:>7.3} ms {:>7.2} µs {:>6.2} {:>8.2} ms {:>8.2} ms {:>10.3}% {:>5.1} MiB {:>9.3} ms",
            self.label,
            self.start.as_secs_f64(),
            ms(self.scrape_cpu),
            ms(self.floor),
            self.scrape_cpu.as_secs_f64() * 1e6 / self.procs as f64,
            self.scrape_cpu.as_secs_f64() / self.floor.as_secs_f64(),
            ms(self.p50),
            ms(self.p99),
            self.idle_pct,
            self.rss as f64 / (1024.0 * 1024.0),
            ms(self.orc_floor),
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn programs_yaml(n: usize) -> String {
    let mut y = String::from("status_interval: 0\nshutdown_timeout: 60s\nprocesses:\n");
    for i in 0..n {
        y.push_str(&format!("  - name: p{i}\n    command: [sleep, '100000']\n"));
    }
    y
}

/// Starts procwatch, waits for `up` programs, and measures scrapes, the floor, idle and RSS.
fn measure(label: &str, yaml: &str, up: usize, procs: usize, quick: bool, clk: f64) -> Row {
    let pw = Pw::start(yaml, &[]);
    let t0 = Instant::now();
    let want = procs;
    let body = wait(Duration::from_secs(600), || {
        let body = pw.get("/metrics");
        let running = sum(&body, "procwatch_process_up{");
        let tree = sum(&body, "procwatch_process_tree_processes{");
        (running as usize == up && tree as usize == want).then_some(body)
    });
    let start = t0.elapsed();
    let mains: Vec<i32> = samples(&body, "procwatch_process_pid{").map(|v| v as i32).collect();
    let pids = descendants(&mains);
    assert_eq!(pids.len(), procs, "{label}: the bench sees the tree procwatch reports");
    // What procwatch reads besides each process's files: in cgroup mode, each program's
    // cgroup files instead of the children files.
    let reads = Reads::of(&body, &mains);

    let rounds = match procs {
        0..=100 => 400,
        101..=1000 => 100,
        _ => 30,
    } / if quick { 4 } else { 1 };
    // Warm up both, then measure.
    for _ in 0..3 {
        pw.get("/metrics");
    }
    let mut peer = None;
    if procs == 1000 && label == "1000" {
        parsers(&pids, &mains, quick);
        peer = process_exporter(&pw, &pids, rounds.min(20), clk);
    }
    // What procwatch keeps open of these files now: past its budget it opens the rest.
    let pw_kept = kept_by(pw.supervisor);
    let mut kept = KeptFloor::open(&pids, &mains, &reads, None);
    let kept_files = (
        kept.files.len() + kept.dirs.len(),
        kept.unkept.len() + kept.unkept_dirs.len() + kept.unkept_cgroup.len(),
    );
    // Scrapes and floor passes take turns, so that both meet the same load on a shared machine.
    let (scrape_cpu, floor, mut lat) = scrapes_beside(&pw, &mut kept, rounds, clk);
    drop(kept);
    lat.sort();
    // Where procwatch's other fds (two pipes a program for its output) leave it fewer files
    // to keep than the floor's own budget does, the floor again with procwatch's budget.
    let same_budget = (pw_kept < kept_files.0).then(|| {
        let mut kept = KeptFloor::open(&pids, &mains, &reads, Some(pw_kept));
        let (scrape_cpu, floor, _) = scrapes_beside(&pw, &mut kept, rounds, clk);
        (scrape_cpu, floor)
    });
    let (orc_floor, _) = cpu_per(rounds as u32, || floor_pass(&pids, &mains, &reads) as usize);
    if let Some(pe_cpu) = peer {
        // What 50x less than process-exporter would take, against procwatch's own reads.
        let mut stat_only = KeptFloor::open(&pids, &[], &Reads::stat_only(), None);
        let (stat_floor, _) = cpu_per(rounds as u32, || stat_only.pass() as usize);
        drop(stat_only);
        println!(
            "50x less than process-exporter is {:.3} ms per scrape; the floor (procwatch's reads, kept fds, nothing parsed) is {:.3} ms, \
             {:.1}x less than process-exporter; stat and the fd count alone (CPU, memory, threads, fds; no faults of reaped children, no I/O, \
             no context switches) {:.3} ms, {:.1}x less",
            ms(pe_cpu) / 50.0,
            ms(floor),
            pe_cpu.as_secs_f64() / floor.as_secs_f64(),
            ms(stat_floor),
            pe_cpu.as_secs_f64() / stat_floor.as_secs_f64(),
        );
    }

    let idle_for = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    let i0 = pw.cpu(clk);
    std::thread::sleep(idle_for);
    let idle_pct = (pw.cpu(clk) - i0).as_secs_f64() / idle_for.as_secs_f64() * 100.0;
    let rss = pw.rss();
    // How many fds procwatch holds against its limit: past the budget (the soft limit less
    // 1024 and what else it holds), files are opened, read and closed at each scrape.
    let fds = std::fs::metadata(format!("/proc/{}/fd", pw.supervisor)).map_or(0, |m| m.len());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pw.supervisor)).unwrap_or_default();
    let nofile = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?");
    println!(
        "{label}: procwatch holds {fds} fds (soft limit {nofile}) and keeps {pw_kept} of these files and fd directories open; \
         the floor keeps {} and opens {} at each pass (past its own limit less 1024)",
        kept_files.0, kept_files.1
    );
    if let Some((scrape_cpu, same)) = same_budget {
        println!(
            "{label}: beside the floor keeping only as many as procwatch ({pw_kept}): procwatch {:.3} ms, floor {:.3} ms, ratio {:.2}",
            ms(scrape_cpu),
            ms(same),
            scrape_cpu.as_secs_f64() / same.as_secs_f64()
        );
    }
    let row = Row {
        label: label.to_owned(),
        start,
        scrape_cpu,
        floor,
        procs,
        p50: lat[lat.len() / 2],
        p99: lat[(lat.len() * 99 / 100).min(lat.len() - 1)],
        idle_pct,
        rss,
        orc_floor,
    };
    pw.stop();
    row
}

/// `rounds` scrapes of procwatch, each followed by one pass of `floor`: procwatch's CPU per
/// scrape (from its own stat; it does nothing between scrapes), the floor's per pass, and each
/// scrape's latency.
fn scrapes_beside(pw: &Pw, floor: &mut KeptFloor, rounds: usize, clk: f64) -> (Duration, Duration, Vec<Duration>) {
    floor.pass();
    let mut lat = Vec::with_capacity(rounds);
    let mut floor_cpu = Duration::ZERO;
    let cpu0 = pw.cpu(clk);
    for _ in 0..rounds {
        let t = Instant::now();
        let b = pw.get("/metrics");
        lat.push(t.elapsed());
        assert!(b.len() > 100);
        let f0 = process_cpu();
        floor.pass();
        floor_cpu += process_cpu() - f0;
    }
    let scrape_cpu = (pw.cpu(clk) - cpu0) / rounds as u32;
    (scrape_cpu, floor_cpu / rounds as u32, lat)
}

/// The files procwatch reads per process with every group on: stat, status, io, the fd
/// directory's size, for main processes limits, and in proc mode the main thread's children.
/// Where the kernel answers taskstats, context switches come from there and status is read
/// only while a swap area is in use ([`STAT_IO`]).
const FILES: [&str; 3] = ["stat", "status", "io"];
const STAT_IO: [&str; 2] = ["stat", "io"];

/// Which per-process files procwatch reads with every group on here, and whether it asks
/// taskstats for each process's context switches (as procwatch decides: see `procfs::Want`).
fn process_reads() -> (&'static [&'static str], bool) {
    let taskstats = procwatch::procfs::taskstats::Taskstats::open().is_ok();
    let swap = procwatch::procfs::swap_in_use(&mut Vec::new());
    match (taskstats, swap) {
        (true, false) => (&STAT_IO, true),
        (true, true) => (&FILES, true),
        (false, _) => (&FILES, false),
    }
}

/// What procwatch reads beyond each process's own files, by tracking mode.
struct Reads {
    /// Each process's files: those of [`process_reads`], or `stat` alone.
    files: &'static [&'static str],
    /// Whether each process's context switches are asked of taskstats, and each main
    /// process's limit through prlimit(2) (every group on), or neither (`stat` alone).
    all: bool,
    taskstats: bool,
    /// Proc mode: `task/PID/children` of each process (the tree walk).
    children: bool,
    /// cgroup mode: the files of each program's cgroup that exist (cgroup.procs, cpu.stat,
    /// the pressure files; the memory files and io.stat where those controllers are on).
    cgroup_files: Vec<PathBuf>,
}

impl Reads {
    fn of(body: &str, mains: &[i32]) -> Reads {
        let (files, taskstats) = process_reads();
        if !body.contains("procwatch_tracking_info{mode=\"cgroup\"}") {
            return Reads {
                files,
                all: true,
                taskstats,
                children: true,
                cgroup_files: Vec::new(),
            };
        }
        let mount = procwatch::cgroup::locate()
            .expect("cgroup mode: cgroup2 is mounted")
            .mount;
        let mut cgroup_files = Vec::new();
        for &pid in mains {
            let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            let rel = procwatch::cgroup::parse_own_cgroup(&text).unwrap();
            let dir = mount.join(rel.trim_start_matches('/'));
            for f in [
                "cgroup.procs",
                "cpu.stat",
                "cpu.pressure",
                "memory.pressure",
                "io.pressure",
                "memory.current",
                "memory.peak",
                "memory.max",
                "memory.events",
                "io.stat",
            ] {
                let path = dir.join(f);
                if path.exists() {
                    cgroup_files.push(path);
                }
            }
        }
        Reads {
            files,
            all: true,
            taskstats,
            children: false,
            cgroup_files,
        }
    }

    /// `stat` of each process (with the fd count): the least a per-process exporter reads.
    fn stat_only() -> Reads {
        Reads {
            files: &["stat"],
            all: false,
            taskstats: false,
            children: false,
            cgroup_files: Vec::new(),
        }
    }

    /// Every file to read: each process's, the cgroups'.
    fn paths(&self, pids: &[i32]) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for &pid in pids {
            for f in self.files {
                out.push(PathBuf::from(format!("/proc/{pid}/{f}")));
            }
            if self.children {
                out.push(PathBuf::from(format!("/proc/{pid}/task/{pid}/children")));
            }
        }
        out.extend(self.cgroup_files.iter().cloned());
        out
    }

    /// Each main process's open-files limit, as procwatch asks it (prlimit(2)), when
    /// `self.files` is procwatch's whole set.
    fn limits(&self, mains: &[i32]) -> u64 {
        if !self.all {
            return 0;
        }
        Reads::limits_of(mains)
    }

    fn limits_of(mains: &[i32]) -> u64 {
        let mut acc = 0;
        for &pid in mains {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reads only; `lim` is a valid out-pointer.
            if unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) } == 0 {
                acc += lim.rlim_cur & 1;
            }
        }
        acc
    }
}

/// The floor: the same reads as procwatch, done the same way (fds kept open, `pread` at offset
/// 0, `fstat` of the fd directory, prlimit(2) of each main process), with nothing parsed,
/// encoded or served.
struct KeptFloor {
    files: Vec<std::fs::File>,
    dirs: Vec<std::fs::File>,
    /// Main processes whose limit is asked.
    limited: Vec<i32>,
    /// Where procwatch asks taskstats for context switches: the socket, and every process.
    taskstats: Option<(procwatch::procfs::taskstats::Taskstats, Vec<i32>)>,
    /// What did not fit in this process's open-files limit: opened, read and closed at each
    /// pass, as procwatch does past its fd budget.
    unkept: Vec<PathBuf>,
    unkept_dirs: Vec<PathBuf>,
    /// Each cgroup's directory, which procwatch holds for spawning: a cgroup file past the
    /// budget is opened relative to it, as procwatch does.
    cgroup_dirs: Vec<std::fs::File>,
    /// (index in `cgroup_dirs`, file name) of the cgroup files past the budget.
    unkept_cgroup: Vec<(usize, std::ffi::CString)>,
}

impl KeptFloor {
    /// `budget`: keep at most this many files and fd directories (procwatch's), instead of
    /// what this process's own limit allows.
    fn open(pids: &[i32], mains: &[i32], reads: &Reads, budget: Option<usize>) -> KeptFloor {
        let limited = if reads.all { mains.to_vec() } else { Vec::new() };
        let taskstats = reads
            .taskstats
            .then(|| (procwatch::procfs::taskstats::Taskstats::open().unwrap(), pids.to_vec()));
        // The cgroups' directories first (procwatch holds them whatever its budget), then
        // keeps what the limit (less 1024, as procwatch leaves) allows.
        let mut cgroup_dirs = Vec::new();
        let mut dir_of = std::collections::HashMap::new();
        for p in &reads.cgroup_files {
            let dir = p.parent().unwrap().to_path_buf();
            if !dir_of.contains_key(&dir) {
                dir_of.insert(dir.clone(), cgroup_dirs.len());
                let d = std::fs::File::open(&dir);
                cgroup_dirs.push(
                    d.unwrap_or_else(|e| panic!("{}: {e} (a program's cgroup went away mid-run)", dir.display())),
                );
            }
        }
        let (soft, _) = procwatch::procfs::nofile_limit();
        let mut room = (soft.saturating_sub(1024) as usize).saturating_sub(cgroup_dirs.len());
        if let Some(budget) = budget {
            room = room.min(budget);
        }
        let mut take = |p: PathBuf, kept: &mut Vec<std::fs::File>, unkept: &mut Vec<PathBuf>| {
            if room == 0 {
                unkept.push(p);
            } else if let Ok(f) = std::fs::File::open(&p) {
                room -= 1;
                kept.push(f);
            }
        };
        let (mut files, mut dirs, mut unkept, mut unkept_dirs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in reads.paths(pids) {
            take(p, &mut files, &mut unkept);
        }
        for pid in pids {
            take(PathBuf::from(format!("/proc/{pid}/fd")), &mut dirs, &mut unkept_dirs);
        }
        let mut unkept_cgroup = Vec::new();
        unkept.retain(|p| match p.parent().and_then(|d| dir_of.get(d)) {
            Some(&i) => {
                let name = p.file_name().unwrap().as_encoded_bytes().to_vec();
                unkept_cgroup.push((i, std::ffi::CString::new(name).unwrap()));
                false
            }
            None => true,
        });
        KeptFloor {
            taskstats,
            cgroup_dirs,
            unkept_cgroup,
            files,
            dirs,
            limited,
            unkept,
            unkept_dirs,
        }
    }

    fn pass(&mut self) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 4096];
        let mut acc = 0u64;
        if let Some((ts, pids)) = &mut self.taskstats {
            for &pid in pids.iter() {
                acc += ts.switches(pid).map_or(0, |s| s.voluntary & 1);
            }
        }
        for f in &self.files {
            acc += f.read_at(&mut buf, 0).unwrap_or(0) as u64;
        }
        for d in &self.dirs {
            acc += d.metadata().map_or(0, |m| m.len());
        }
        // One read at offset 0, as procwatch reads a file it does not keep.
        for p in &self.unkept {
            if let Ok(f) = std::fs::File::open(p) {
                acc += f.read_at(&mut buf, 0).unwrap_or(0) as u64;
            }
        }
        for p in &self.unkept_dirs {
            acc += std::fs::metadata(p).map_or(0, |m| m.len());
        }
        for (i, name) in &self.unkept_cgroup {
            use std::os::fd::{AsRawFd, FromRawFd};
            let dir = self.cgroup_dirs[*i].as_raw_fd();
            // SAFETY: a valid directory fd and C string; the fd returned is owned below.
            let fd = unsafe { libc::openat(dir, name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd >= 0 {
                // SAFETY: just opened, owned by nobody else.
                let f = unsafe { std::fs::File::from_raw_fd(fd) };
                acc += f.read_at(&mut buf, 0).unwrap_or(0) as u64;
            }
        }
        acc + Reads::limits_of(&self.limited)
    }
}

/// How many /proc files and directories and cgroup stats files `pid` (procwatch) holds open:
/// the files a scrape reads that it keeps between scrapes.
fn kept_by(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| {
            let cgroup_file = target.starts_with("/sys/fs/cgroup")
                && target.file_name().is_some_and(|n| n.as_encoded_bytes().contains(&b'.'));
            target.starts_with("/proc/") || cgroup_file
        })
        .count()
}

/// The floor as it would be without kept fds: each file opened, read and closed.
fn floor_pass(pids: &[i32], mains: &[i32], reads: &Reads) -> u64 {
    let mut buf = Vec::with_capacity(4096);
    let mut acc = 0u64;
    for path in reads.paths(pids) {
        buf.clear();
        if let Ok(mut f) = std::fs::File::open(path) {
            acc += f.read_to_end(&mut buf).unwrap_or(0) as u64;
        }
    }
    for &pid in pids {
        acc += std::fs::metadata(format!("/proc/{pid}/fd")).map_or(0, |m| m.len());
    }
    if reads.taskstats
        && let Ok(mut ts) = procwatch::procfs::taskstats::Taskstats::open()
    {
        for &pid in pids {
            acc += ts.switches(pid).map_or(0, |s| s.voluntary & 1);
        }
    }
    acc + reads.limits(mains)
}

/// The `procfs` crate's parsers against procwatch's own (hand-written) ones, on the same bytes
/// read from the same 1000 processes. procwatch parses all four by hand (see the README for
/// why); `limits` is read only where prlimit(2) is refused.
fn parsers(pids: &[i32], mains: &[i32], quick: bool) {
    use procfs_core::process::{Io, Limits, Stat, Status};
    use procfs_core::{FromBufRead, FromRead};
    use procwatch::procfs::{parse_io, parse_max_fds, parse_stat, parse_status};
    let read = |pids: &[i32], f: &str| -> Vec<Vec<u8>> {
        pids.iter()
            .filter_map(|pid| std::fs::read(format!("/proc/{pid}/{f}")).ok())
            .collect()
    };
    let (stats, statuses, ios, limits) = (
        read(pids, "stat"),
        read(pids, "status"),
        read(pids, "io"),
        read(mains, "limits"),
    );
    let rounds = if quick { 5 } else { 20 };
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    let time = |files: &[Vec<u8>], f: &dyn Fn(&[u8]) -> bool| {
        per(cpu_per(rounds, || files.iter().filter(|b| f(b)).count()).0, files.len())
    };
    let rows = [
        (
            "stat",
            time(&stats, &|b| Stat::from_read(b).is_ok()),
            time(&stats, &|b| parse_stat(b).is_some()),
        ),
        (
            "status",
            time(&statuses, &|b| Status::from_read(b).is_ok()),
            time(&statuses, &|b| parse_status(b).is_some()),
        ),
        (
            "io",
            time(&ios, &|b| Io::from_buf_read(b).is_ok()),
            time(&ios, &|b| parse_io(b).is_some()),
        ),
        (
            "limits",
            time(&limits, &|b| Limits::from_read(b).is_ok()),
            time(&limits, &|b| parse_max_fds(b).is_some()),
        ),
    ];
    let text: Vec<String> = rows
        .iter()
        .map(|(f, krate, hand)| format!("{f} {krate:.2} vs {hand:.2} µs"))
        .collect();
    println!(
        "parsing per file, procfs crate vs procwatch's (by hand): {}",
        text.join(", ")
    );
}

/// The Go process-exporter (Debian's prometheus-process-exporter) with its default flags,
/// tracking the same processes (`-procnames sleep`), scraped `rounds` times beside procwatch.
fn process_exporter(pw: &Pw, pids: &[i32], rounds: usize, clk: f64) -> Option<Duration> {
    let bin = "/usr/bin/prometheus-process-exporter";
    if !Path::new(bin).exists() {
        println!(
            "!!! process-exporter: SKIPPED, {bin} is not installed (apt-get install prometheus-process-exporter): no side-by-side figure"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args([
            "-procnames",
            "sleep",
            "-web.listen-address",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let supervisor = child.id();
    let pe = Pw {
        child,
        supervisor,
        addr: format!("127.0.0.1:{port}"),
        _dir: tempfile::tempdir().unwrap(),
    };
    let procs = "namedprocess_namegroup_num_procs{groupname=\"sleep\"}";
    let body = wait(Duration::from_secs(60), || {
        std::net::TcpStream::connect(&pe.addr).ok()?;
        let b = pe.get("/metrics");
        (sum(&b, procs) >= pids.len() as f64).then_some(b)
    });
    let tracked = sum(&body, procs);
    for _ in 0..3 {
        pe.get("/metrics");
        pw.get("/metrics");
    }
    let (p0, w0) = (pe.cpu(clk), pw.cpu(clk));
    for _ in 0..rounds {
        pe.get("/metrics");
    }
    let pe_cpu = (pe.cpu(clk) - p0) / rounds as u32;
    for _ in 0..rounds {
        pw.get("/metrics");
    }
    let pw_cpu = (pw.cpu(clk) - w0) / rounds as u32;
    println!(
        "process-exporter (default flags, -procnames sleep, tracking {tracked} of the {} processes): {:.3} ms of CPU per scrape, \
         procwatch {:.3} ms: {:.1}x less; process-exporter RSS {:.1} MiB",
        pids.len(),
        ms(pe_cpu),
        ms(pw_cpu),
        pe_cpu.as_secs_f64() / pw_cpu.as_secs_f64(),
        pe.rss() as f64 / (1024.0 * 1024.0)
    );
    pe.stop();
    Some(pe_cpu)
}

/// Every process in the trees under `roots`, roots included.
fn descendants(roots: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack: Vec<i32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        out.push(pid);
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            stack.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// Starting N programs (`sleep`): from launching procwatch to every program exec'd (each is
/// a child of one of procwatch's spawner threads; a PID is returned once its child has
/// exec'd), and to every one reported up on `/metrics`. The floors: this bench spawning the
/// same N processes itself with `std::process::Command` (posix_spawn), one after another from
/// one thread, and from as many threads as procwatch has spawner threads (one per core, up to
/// four), N/threads each.
fn start_all(quick: bool, only: &[usize], mode: &str) {
    let sizes: &[usize] = if !only.is_empty() {
        only
    } else if quick {
        &[1000]
    } else {
        &[1000, 5000]
    };
    for &n in sizes {
        let mut floor = Vec::with_capacity(n);
        let t = Instant::now();
        for _ in 0..n {
            floor.push(sleeper());
        }
        let floor_s = t.elapsed().as_secs_f64();
        for c in &mut floor {
            let _ = c.kill();
            let _ = c.wait();
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
        let t = Instant::now();
        let mut floor: Vec<Child> = std::thread::scope(|s| {
            let spawners: Vec<_> = (0..threads)
                .map(|i| {
                    s.spawn(move || {
                        (0..n / threads + usize::from(i < n % threads))
                            .map(|_| sleeper())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            spawners.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let floor_par_s = t.elapsed().as_secs_f64();
        assert_eq!(floor.len(), n);
        for c in &mut floor {
            let _ = c.kill();
            let _ = c.wait();
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let t0 = Instant::now();
        let launched = unix_now();
        let pw = Pw::start(&format!("{mode}{}", programs_yaml(n)), &[]);
        let mut kids = Vec::new();
        wait(Duration::from_secs(600), || {
            kids.clear();
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", pw.supervisor)) else {
                return None;
            };
            for task in tasks.flatten() {
                if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                    kids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
                }
            }
            (kids.len() >= n).then_some(())
        });
        let execd = t0.elapsed().as_secs_f64();
        // The scrape that sees all up, how long it took, and when procwatch itself had
        // published each run (its start time, taken once the program has exec'd): what of
        // "exec'd -> up" is procwatch's publication and what is the scrape's own latency.
        let (body, scrape) = wait(Duration::from_secs(600), || {
            let t = Instant::now();
            let body = pw.get("/metrics");
            (sum(&body, "procwatch_process_up{") as usize == n).then(|| (body, t.elapsed().as_secs_f64()))
        });
        let up = t0.elapsed().as_secs_f64();
        let starts: Vec<f64> = samples(&body, "procwatch_process_start_time_seconds{").collect();
        let first = starts.iter().copied().fold(f64::INFINITY, f64::min) - launched;
        let last = starts.iter().copied().fold(0.0, f64::max) - launched;
        // Every program stops at once: SIGTERM to procwatch's exit.
        let t = Instant::now();
        pw.stop();
        let stopped = t.elapsed().as_secs_f64();
        println!(
            "start {n} programs (sleep){}: all exec'd {execd:.2} s, all up on /metrics {up:.2} s (from launching procwatch); \
             procwatch published the first run at {first:.2} s and the last at {last:.2} s, and the scrape that saw them all took {scrape:.2} s; \
             floor (this bench spawning {n} itself) {floor_s:.2} s from 1 thread, {floor_par_s:.2} s from {threads}; \
             then all stopped (SIGTERM to procwatch's exit) in {stopped:.2} s; load average {}",
            if mode.is_empty() { "" } else { ", proc mode" },
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
    }
}

/// One `sleep` of the start floor, spawned as `std::process::Command` does (posix_spawn).
fn sleeper() -> Child {
    Command::new("sleep")
        .arg("100000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

const STAMP_RUN: Duration = Duration::from_millis(110);

fn restart_latency(quick: bool, mode: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stamps");
    let me = std::env::current_exe().unwrap();
    let yaml = format!(
        "{mode}status_interval: 0\nprocesses:\n  - name: blink\n    command: [{}, --stamp, {}]\n    restart: always\n    backoff: {{initial: 0s, max: 0s}}\n",
        me.display(),
        file.display()
    );
    let runs = if quick { 100 } else { 400 };
    let pw = Pw::start(&yaml, &[]);
    wait(Duration::from_secs(300), || {
        let n = std::fs::read_to_string(&file).map(|t| t.lines().count()).unwrap_or(0);
        (n >= 2 * runs).then_some(())
    });
    pw.stop();
    let gaps = restart_gaps(&file);
    // The floor: this bench as the supervisor, running the same program in a loop (fork,
    // exec, waitpid; nothing else), in the same run: what this host gives to any exit ->
    // exec -> start. (std's Command, which uses posix_spawn here, is slower: 5.8 ms median.)
    let floor_file = dir.path().join("floor-stamps");
    let argv_c: Vec<std::ffi::CString> = [me.as_os_str(), "--stamp".as_ref(), floor_file.as_os_str()]
        .iter()
        .map(|a| std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(*a)).unwrap())
        .collect();
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    for _ in 0..runs {
        // SAFETY: the bench is single-threaded here; the child only execs (or exits).
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::execv(argv[0], argv.as_ptr());
                libc::_exit(127);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
    let floor = restart_gaps(&floor_file);
    let p99 = |g: &[f64]| g[(g.len() * 99 / 100).min(g.len() - 1)];
    println!(
        "restart latency{} (exit -> next run's first instruction, backoff 0s, runs of {} ms): median {:.2} ms, p99 {:.2} ms over {} restarts; \
         floor (this bench running the same program in a loop: fork, exec, waitpid) median {:.2} ms, p99 {:.2} ms; load average {}",
        if mode.is_empty() { "" } else { ", proc mode" },
        STAMP_RUN.as_millis(),
        gaps[gaps.len() / 2],
        p99(&gaps),
        gaps.len(),
        floor[floor.len() / 2],
        p99(&floor),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}

/// From each run's last instant ("e") to the next run's first ("s") in a stamps file, in ms,
/// sorted.
fn restart_gaps(file: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(file).unwrap();
    let stamps: Vec<(char, u128)> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.chars().next()?, v.parse().ok()?))
        })
        .collect();
    let mut gaps: Vec<f64> = stamps
        .windows(2)
        .filter(|w| w[0].0 == 'e' && w[1].0 == 's')
        .map(|w| (w[1].1.saturating_sub(w[0].1)) as f64 / 1e6)
        .collect();
    gaps.sort_by(f64::total_cmp);
    gaps
}

/// `ctl restart` of one program among 1000. Each program is this bench binary in `--hold`
/// mode: it stamps its first instant and the instant SIGTERM reaches it. For each restart by
/// hand (an API request on the control socket) that gives: the request to the old run seeing
/// its stop signal (the command's own path: socket, HTTP, the program's channel, the runner,
/// signal delivery), that signal to the new run's first instruction (a stop and a start, to
/// compare with the restart latency), and the whole. Every other program must keep its PID.
fn control_restart(quick: bool) {
    const N: usize = 1000;
    let rounds = if quick { 20 } else { 100 };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("procwatch.sock");
    let stamps = dir.path().join("stamps");
    let me = std::env::current_exe().unwrap();
    let mut yaml = String::from("status_interval: 0\nshutdown_timeout: 60s\nprocesses:\n");
    for i in 0..N {
        yaml.push_str(&format!(
            "  - name: p{i}\n    command: [{}, --hold, {}, p{i}]\n    backoff: {{initial: 0s, max: 0s}}\n",
            me.display(),
            stamps.display()
        ));
    }
    let pw = Pw::start(&yaml, &["--control.socket", sock.to_str().unwrap()]);
    let pids = |pw: &Pw| -> Vec<i32> {
        let body = pw.get("/metrics");
        samples(&body, "procwatch_process_pid{").map(|v| v as i32).collect()
    };
    let before = wait(Duration::from_secs(300), || Some(pids(&pw)).filter(|p| p.len() == N));
    let read = || -> Vec<(String, char, u128)> {
        std::fs::read_to_string(&stamps)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                Some((f.next()?.to_owned(), f.next()?.chars().next()?, f.next()?.parse().ok()?))
            })
            .collect()
    };
    wait(Duration::from_secs(300), || (read().len() >= N).then_some(()));
    let post = |name: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        write!(
            s,
            "POST /api/v1/programs/{name}/restart HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    };
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let (mut to_signal, mut stop_start, mut total, mut answer) = (vec![], vec![], vec![], vec![]);
    let mut touched = Vec::new();
    for i in 0..rounds {
        // Spread over the list: the first, the last and between.
        let k = i * (N - 1) / (rounds - 1).max(1);
        let name = format!("p{k}");
        touched.push(k);
        let seen = read().len();
        let t0 = now();
        let t = Instant::now();
        post(&name);
        answer.push(t.elapsed().as_secs_f64() * 1e3);
        let new = wait(Duration::from_secs(30), || {
            let r = read();
            let mine: Vec<_> = r[seen..].iter().filter(|(n, _, _)| *n == name).cloned().collect();
            (mine.len() >= 2).then_some(mine)
        });
        let term = new.iter().find(|(_, k, _)| *k == 't').unwrap().2;
        let start = new.iter().find(|(_, k, _)| *k == 's').unwrap().2;
        let ms = |a: u128, b: u128| b.saturating_sub(a) as f64 / 1e6;
        to_signal.push(ms(t0, term));
        stop_start.push(ms(term, start));
        total.push(ms(t0, start));
    }
    // The same restart by policy, among the same 1000: SIGUSR1 makes the program exit 1 (after
    // stamping that instant), and on-failure restarts it at once (backoff 0s).
    let mut policy = vec![];
    for i in 0..rounds {
        let k = (i * (N - 1) / (rounds - 1).max(1) + 1).min(N - 1);
        if touched.contains(&k) {
            continue;
        }
        touched.push(k);
        let name = format!("p{k}");
        let seen = read().len();
        // SAFETY: plain syscall to a program of this procwatch.
        unsafe { libc::kill(before[k], libc::SIGUSR1) };
        let new = wait(Duration::from_secs(30), || {
            let r = read();
            let mine: Vec<_> = r[seen..].iter().filter(|(n, _, _)| *n == name).cloned().collect();
            (mine.len() >= 2).then_some(mine)
        });
        let exit = new.iter().find(|(_, k, _)| *k == 'u').unwrap().2;
        let start = new.iter().find(|(_, k, _)| *k == 's').unwrap().2;
        policy.push(start.saturating_sub(exit) as f64 / 1e6);
    }
    let after = pids(&pw);
    pw.stop();
    assert_eq!(after.len(), N);
    let mut kept = 0;
    for (k, (b, a)) in before.iter().zip(&after).enumerate() {
        if touched.contains(&k) {
            assert_ne!(b, a, "p{k} was restarted");
        } else {
            assert_eq!(b, a, "p{k} was never named, yet its PID changed");
            kept += 1;
        }
    }
    let pct = |v: &mut Vec<f64>, p: usize| {
        v.sort_by(f64::total_cmp);
        v[(v.len() * p / 100).min(v.len() - 1)]
    };
    println!(
        "ctl restart, 1 of {N} programs, {rounds} times (API on the control socket): request -> old run gets SIGTERM median {:.2} ms, p99 {:.2} ms; \
         SIGTERM -> new run's first instruction median {:.2} ms, p99 {:.2} ms; request -> new run median {:.2} ms, p99 {:.2} ms; \
         answer (new PID) median {:.2} ms; the other {kept} programs kept their PIDs. \
         A policy restart among the same {N} (exit -> new run's first instruction): median {:.2} ms, p99 {:.2} ms",
        pct(&mut to_signal, 50),
        pct(&mut to_signal, 99),
        pct(&mut stop_start, 50),
        pct(&mut stop_start, 99),
        pct(&mut total, 50),
        pct(&mut total, 99),
        pct(&mut answer, 50),
        pct(&mut policy, 50),
        pct(&mut policy, 99),
    );
    let t = Instant::now();
    let out = Command::new(BIN).args(["--version"]).output().unwrap();
    assert!(out.status.success());
    println!(
        "  (`procwatch ctl` adds its own start: the binary runs `--version` in {:.2} ms here)",
        t.elapsed().as_secs_f64() * 1e3
    );
}

/// Run as a program by the ctl-restart bench: stamp the start, wait for SIGTERM (stamp `t`,
/// exit 0) or SIGUSR1 (stamp `u`, exit 1).
fn hold(file: &str, name: &str) {
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let stamp = |kind: char, t: u128| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap();
        // One short write with O_APPEND: lines of concurrent programs never interleave.
        let _ = f.write_all(format!("{name} {kind} {t}\n").as_bytes());
    };
    let start = now();
    // SAFETY: plain libc calls on a local signal set; SIGTERM is blocked before it is awaited.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        stamp('s', start);
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        if sig == libc::SIGUSR1 {
            stamp('u', now());
            std::process::exit(1);
        }
    }
    stamp('t', now());
}

/// Run as a program by the restart-latency test: note the start and the end, and exit. It
/// stays up for `STAMP_RUN`, longer than the backoff floor: a program that exits at once is
/// restarted at once only 5 times in a row, then no faster than every 100 ms.
fn stamp(file: &str) {
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let start = now();
    std::thread::sleep(STAMP_RUN);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    let _ = writeln!(f, "s {start}");
    let _ = writeln!(f, "e {}", now());
}

fn file_events(quick: bool, clk: f64) {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let d = dir.path();
    std::fs::File::create(d.join("sentinel0")).unwrap();
    let yaml = format!("status_interval: 0\nwatches:\n  - name: w\n    path: {}\n", d.display());
    let pw = Pw::start(&yaml, &[]);
    wait(Duration::from_secs(30), || {
        (sum(&pw.get("/metrics"), "procwatch_file_watch_up{") == 1.0).then_some(())
    });
    let fs_kind = if shm.is_dir() { "tmpfs" } else { "disk" };

    // Flat: one directory, creates then removes.
    let n = if quick { 20_000 } else { 100_000 };
    let cpu0 = pw.cpu(clk);
    let t0 = Instant::now();
    for i in 0..n {
        std::fs::File::create(d.join(format!("f{i}"))).unwrap();
    }
    for i in 0..n {
        std::fs::remove_file(d.join(format!("f{i}"))).unwrap();
    }
    let made = t0.elapsed();
    let (counts, overflows, cpu) = settle(&pw, d, clk, cpu0, 1, |c| c[0] >= n && c[2] >= n);
    println!(
        "file events, flat: {n} creates + {n} removes on {fs_kind} in {:.2} s ({:.0} events/s): counted {} + {} ({}), {overflows} overflows; procwatch CPU {:.3} µs/event",
        made.as_secs_f64(),
        (2 * n) as f64 / made.as_secs_f64(),
        counts[0],
        counts[2],
        if counts[0] == n && counts[2] == n {
            "exact"
        } else {
            "NOT EXACT"
        },
        cpu.as_secs_f64() * 1e6 / (2 * n) as f64,
    );

    // Nested: a source tree packed by tar(1), extracted into the watch and removed with rm -rf:
    // every directory is watched and listed as it appears, and that is part of the cost.
    let scratch = tempfile::tempdir().unwrap();
    let (pkgs, files) = if quick { (300, 12) } else { (1500, 20) };
    let (tar, entries) = source_tarball(scratch.path(), pkgs, 3, files);
    let before = settle(&pw, d, clk, Duration::ZERO, 2, |_| true).0;
    let cpu0 = pw.cpu(clk);
    let t0 = Instant::now();
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(d)
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new("rm").arg("-rf").arg(d.join("project")).status().unwrap();
    assert!(ok.success());
    let made = t0.elapsed();
    let (after, overflows, cpu) = settle(&pw, d, clk, cpu0, 3, |c| {
        c[0] >= before[0] + entries && c[2] >= before[2] + entries
    });
    let counted: usize = (0..5).map(|k| after[k] - before[k]).sum::<usize>() - 1; // not the sentinel
    let (creates, removes) = (after[0] - before[0], after[2] - before[2]);
    println!(
        "file events, nested: tar -x then rm -rf of a source tree ({entries} files and directories, {pkgs} packages 4 deep) on {fs_kind} in {:.2} s: counted {creates} creates + {removes} removes ({}), {counted} events of every kind, {overflows} overflows; procwatch CPU {:.3} µs per counted event ({:.3} µs per create or remove)",
        made.as_secs_f64(),
        if creates == entries && removes == entries {
            "exact"
        } else {
            "NOT EXACT"
        },
        cpu.as_secs_f64() * 1e6 / counted as f64,
        cpu.as_secs_f64() * 1e6 / (creates + removes) as f64,
    );
    pw.stop();
}

/// Waits until the counts pass `done`, then for a rename of the sentinel (`sentinel{k-1}` to
/// `sentinel{k}`; a rename, since tar sets modes and times: a sentinel made while the queue
/// was full would be lost with the rest, so it comes once the burst is counted). Returns the
/// counts by kind, the overflows and procwatch's CPU since `cpu0`.
fn settle(
    pw: &Pw,
    dir: &Path,
    clk: f64,
    cpu0: Duration,
    k: usize,
    done: impl Fn(&[usize; 5]) -> bool,
) -> ([usize; 5], f64, Duration) {
    let kinds = ["create", "modify", "remove", "rename", "other"];
    let counts = |b: &str| {
        kinds.map(|kind| {
            sum(
                b,
                &format!("procwatch_file_events_total{{watch=\"w\",kind=\"{kind}\"}}"),
            ) as usize
        })
    };
    wait(Duration::from_secs(300), || {
        done(&counts(&pw.get("/metrics"))).then_some(())
    });
    std::fs::rename(dir.join(format!("sentinel{}", k - 1)), dir.join(format!("sentinel{k}"))).unwrap();
    let body = wait(Duration::from_secs(60), || {
        let b = pw.get("/metrics");
        (counts(&b)[3] >= k).then_some(b)
    });
    let cpu = pw.cpu(clk).saturating_sub(cpu0);
    (counts(&body), sum(&body, "procwatch_file_watch_overflows_total{"), cpu)
}

/// A source tree of `pkgs` packages nested `depth` deep with `files` files each, packed with
/// tar(1) in `scratch`. Returns the archive and how many files and directories it holds.
fn source_tarball(scratch: &Path, pkgs: usize, depth: usize, files: usize) -> (PathBuf, usize) {
    let src = scratch.join("project");
    for i in 0..pkgs {
        let mut p = src.clone();
        for level in 0..depth {
            p = p.join(format!("m{}_{level}", i % (level + 3)));
        }
        p = p.join(format!("pkg{i}"));
        std::fs::create_dir_all(&p).unwrap();
        for j in 0..files {
            std::fs::write(p.join(format!("f{j}.rs")), format!("// file {j}\nfn f{j}() {{}}\n")).unwrap();
        }
    }
    let mut entries = 1;
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            entries += 1;
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    let tar = scratch.join("project.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(scratch)
        .arg("project")
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::remove_dir_all(&src).unwrap();
    (tar, entries)
}

// ---- a small harness around the real binary ----

struct Pw {
    child: Child,
    /// The supervisor: procwatch's work (CPU, memory, the listener) is there, not in the
    /// guardian that `child` is.
    supervisor: u32,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Pw {
    fn start(yaml: &str, extra: &[&str]) -> Pw {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("procwatch.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = dir.path().join("stderr.log");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(["--web.listen-address", "127.0.0.1:0", "--log.level", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut pw = Pw {
            child,
            supervisor: 0,
            addr: String::new(),
            _dir: dir,
        };
        // --log.level warn hides the address line: find the port from /proc instead, in the
        // supervisor: the guardian's (procwatch's PID's) only child, which serves.
        let guardian = pw.child.id();
        let pid = wait(Duration::from_secs(30), || {
            let mut children = Vec::new();
            procwatch::procfs::Reader::default().children(guardian as i32, 1, &mut children);
            children.first().map(|&c| c as u32)
        });
        pw.supervisor = pid;
        pw.addr = wait(Duration::from_secs(30), || {
            listening_port(pid).map(|p| format!("127.0.0.1:{p}"))
        });
        pw
    }

    fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }

    fn cpu(&self, clk: f64) -> Duration {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.supervisor)).unwrap();
        let rest = &text[text.rfind(')').unwrap() + 2..];
        let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
        Duration::from_secs_f64((f[11] + f[12]) / clk)
    }

    fn rss(&self) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.supervisor)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    fn stop(self) {
        drop(self);
    }
}

/// A part that panics still stops its procwatch, and with it every program it started.
impl Drop for Pw {
    fn drop(&mut self) {
        // SAFETY: plain syscall to our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The loopback port a process listens on, from /proc/net/tcp and its fds.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().into_owned();
            s.strip_prefix("socket:[").map(|r| r.trim_end_matches(']').to_owned())
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // st 0A = LISTEN
        if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
            let port = f[1].rsplit(':').next()?;
            return u16::from_str_radix(port, 16).ok();
        }
    }
    None
}

fn samples<'a>(body: &'a str, prefix: &'a str) -> impl Iterator<Item = f64> + 'a {
    body.lines()
        .filter(move |l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

fn sum(body: &str, prefix: &str) -> f64 {
    samples(body, prefix).sum()
}

fn wait<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn process_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The 1-, 5- and 15-minute load averages, to print beside a figure.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}
