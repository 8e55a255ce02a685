//! A small harness that drives the real procwatch binary: start it on 127.0.0.1 with a free
//! port, scrape it, send it signals, poll conditions with one deadline, and clean up.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_procwatch");

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The environment variable that marks every process a test's procwatch started: programs
/// inherit procwatch's environment, and their descendants inherit theirs, setsid or not.
pub const MARKER_VAR: &str = "PWTEST_MARKER";

/// A unique token for this test, to find the processes it started.
pub fn marker(test: &str) -> String {
    format!("pwtest-{test}-{}", std::process::id())
}

/// PIDs of live processes (zombies excluded) whose environment carries `marker`, with their
/// command lines.
pub fn procs_with(marker: &str) -> Vec<(i32, String)> {
    let needle = format!("{MARKER_VAR}={marker}");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        // A zombie has an empty cmdline: it is not running.
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmd.is_empty() {
            continue;
        }
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        out.push((pid, cmd.trim_end().to_owned()));
    }
    out
}

pub fn pids_with(marker: &str) -> Vec<i32> {
    procs_with(marker).into_iter().map(|(pid, _)| pid).collect()
}

/// Parsed samples of one scrape: `name{labels}` -> value, labels sorted as written.
pub struct Scrape {
    pub text: String,
    pub samples: HashMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        let mut samples = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ') {
                samples.insert(k.to_owned(), v.parse().unwrap_or(f64::NAN));
            }
        }
        Scrape { text, samples }
    }

    /// `get("procwatch_process_up", &[("name", "web")])`
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        self.samples.get(&key).copied()
    }

    pub fn prog(&self, name: &str, program: &str) -> Option<f64> {
        self.get(name, &[("name", program)])
    }

    pub fn cpu(&self, program: &str) -> f64 {
        self.get(
            "procwatch_process_cpu_seconds_total",
            &[("name", program), ("mode", "user")],
        )
        .unwrap_or(0.0)
            + self
                .get(
                    "procwatch_process_cpu_seconds_total",
                    &[("name", program), ("mode", "system")],
                )
                .unwrap_or(0.0)
    }
}

/// A minimal HTTP/1.1 client: (status, headers, body).
pub fn http(addr: &str, method: &str, path: &str, extra_headers: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{extra_headers}\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

pub struct Procwatch {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: String,
    exited: Option<ExitStatus>,
}

impl Procwatch {
    /// Starts procwatch with `yaml` as its config and `extra` flags; waits until it serves.
    pub fn start(yaml: &str, extra: &[&str]) -> Procwatch {
        Self::start_marked(yaml, extra, &marker("anon"))
    }

    /// Like `start`, with every process it starts marked with `marker` (see [`procs_with`]).
    pub fn start_marked(yaml: &str, extra: &[&str], marker: &str) -> Procwatch {
        let (dir, config) = config_dir(yaml);
        let config_arg = config.to_str().expect("utf-8 path").to_owned();
        let mut args = vec!["--config", &config_arg];
        args.extend_from_slice(extra);
        Self::start_in(dir, config.clone(), &args, marker)
    }

    /// Starts procwatch with exactly `args` (plus a free loopback port) in `dir`.
    pub fn start_in(dir: tempfile::TempDir, config: PathBuf, args: &[&str], marker: &str) -> Procwatch {
        Self::start_with(dir, config, args, marker, |_| {})
    }

    /// The most general start: `setup` may change the command (its stdout, its user...).
    /// Listens on a free loopback port unless `args` name a `--web.listen-address`.
    pub fn start_with(
        dir: tempfile::TempDir,
        config: PathBuf,
        args: &[&str],
        marker: &str,
        setup: impl FnOnce(&mut Command),
    ) -> Procwatch {
        let flagged = args.contains(&"--web.listen-address");
        Self::launch(dir, config, args, marker, setup, !flagged)
    }

    /// Starts procwatch with exactly `args`, without adding `--web.listen-address`: where it
    /// listens is the config's `listen_address` (or the default).
    pub fn start_unflagged(dir: tempfile::TempDir, config: PathBuf, args: &[&str], marker: &str) -> Procwatch {
        Self::launch(dir, config, args, marker, |_| {}, false)
    }

    fn launch(
        dir: tempfile::TempDir,
        config: PathBuf,
        args: &[&str],
        marker: &str,
        setup: impl FnOnce(&mut Command),
        free_port: bool,
    ) -> Procwatch {
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout log");
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        if free_port {
            cmd.args(["--web.listen-address", "127.0.0.1:0"]);
        }
        cmd.args(["--log.level", "debug"])
            .current_dir(dir.path())
            .env(MARKER_VAR, marker)
            // The control socket's default path: this test's own directory.
            .env("RUNTIME_DIRECTORY", dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        setup(&mut cmd);
        let child = cmd.spawn().expect("start procwatch");
        let mut pw = Procwatch {
            child,
            dir,
            config,
            addr: String::new(),
            exited: None,
        };
        let log = pw.dir.path().join("stderr.log");
        pw.addr = wait_for(Duration::from_secs(20), "procwatch to log its address", || {
            let text = std::fs::read_to_string(&log).ok()?;
            if let Ok(Some(status)) = pw.child.try_wait() {
                panic!("procwatch exited at start-up with {status}:\n{text}");
            }
            logged_addr(&text)
        });
        // The address is logged once the listener is bound; behind TLS, that is as far as a
        // plain client can check.
        if !args.contains(&"--web.config.file") {
            wait_for(Duration::from_secs(20), "procwatch to be ready", || {
                http(&pw.addr, "GET", "/-/ready", "").ok().filter(|r| r.0 == 200)
            });
        }
        pw
    }

    /// Takes over a procwatch started by hand (its own stdout or stderr set up by the test)
    /// that serves on `addr`; waits until it is ready.
    pub fn adopt(child: Child, dir: tempfile::TempDir, config: PathBuf, addr: String) -> Procwatch {
        let pw = Procwatch {
            child,
            dir,
            config,
            addr,
            exited: None,
        };
        wait_for(Duration::from_secs(20), "procwatch to be ready", || {
            http(&pw.addr, "GET", "/-/ready", "").ok().filter(|r| r.0 == 200)
        });
        pw
    }

    /// procwatch's PID: its guardian, which forwards signals to the supervisor (see
    /// supervisor/guardian.rs).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The supervisor process (the guardian's only child): the one that serves, scrapes and
    /// supervises, whose CPU and memory are procwatch's cost.
    pub fn supervisor_pid(&self) -> i32 {
        let g = self.pid();
        wait_for(Duration::from_secs(20), "the supervisor process", || {
            std::fs::read_to_string(format!("/proc/{g}/task/{g}/children"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn scrape(&self) -> Scrape {
        let (status, _, body) = http(&self.addr, "GET", "/metrics", "").expect("scrape");
        assert_eq!(status, 200, "scrape status");
        Scrape::parse(body)
    }

    /// Scrapes until `f` holds on a scrape, and returns that scrape.
    pub fn wait_scrape(&self, timeout: Duration, what: &str, f: impl Fn(&Scrape) -> bool) -> Scrape {
        wait_for(timeout, what, || Some(self.scrape()).filter(|s| f(s)))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall to our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for procwatch to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let child = &mut self.child;
        let status = wait_for(timeout, "procwatch to exit", || child.try_wait().ok().flatten());
        self.exited = Some(status);
        status
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    /// The control socket at its default path (RUNTIME_DIRECTORY is the test's directory).
    pub fn socket(&self) -> PathBuf {
        self.path("procwatch.sock")
    }

    /// `procwatch ctl --socket <this one's socket> ARGS`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let socket = self.socket();
        let mut all = vec!["ctl", "--socket", socket.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        ctl_with(&all, &[])
    }

    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config, yaml).expect("write config");
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// The address procwatch logged it serves on, in logfmt (`addr=...`) or JSON (`"addr":"..."`).
pub fn logged_addr(log: &str) -> Option<String> {
    if let Some(at) = log.find("addr=") {
        return Some(log[at + 5..].split_whitespace().next()?.to_owned());
    }
    let at = log.find("\"addr\":\"")?;
    Some(log[at + 8..].split('"').next()?.to_owned())
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// A temp dir holding `yaml` as procwatch.yaml: (dir, config path).
pub fn config_dir(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("procwatch.yaml");
    std::fs::write(&config, yaml).expect("write config");
    (dir, config)
}

/// utime, stime, cutime and cstime of a process, in clock ticks, through procwatch's own
/// /proc parser.
pub fn cpu_ticks(pid: i32) -> Option<[u64; 4]> {
    let st = procwatch::procfs::Reader::default().stat(pid)?;
    Some([st.utime_ticks, st.stime_ticks, st.cutime_ticks, st.cstime_ticks])
}

/// Resident memory of a process, in KiB, through procwatch's own /proc parser.
pub fn rss_kib(pid: i32) -> u64 {
    procwatch::procfs::Reader::default()
        .stat(pid)
        .map_or(0, |st| st.rss_pages * procwatch::procfs::sys().page_size / 1024)
}

impl Drop for Procwatch {
    fn drop(&mut self) {
        if self.exited.is_none() && self.child.try_wait().ok().flatten().is_none() {
            // Graceful first, so that procwatch takes its programs down with it.
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits up to `timeout` for `child` to exit; kills it (and returns `None`) if it does not.
pub fn wait_for_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A loopback port that was free a moment ago (for tests of the address procwatch chooses).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs procwatch to completion with `args` (for config errors and --check-config).
pub fn run_to_end(args: &[&str], cwd: &Path, marker: &str) -> (i32, String, String) {
    run_command(procwatch_command(args, cwd, marker))
}

/// `run_to_end` as the unprivileged user `nobody` (for what only root may do).
pub fn run_to_end_as_nobody(args: &[&str], cwd: &Path, marker: &str) -> (i32, String, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = procwatch_command(args, cwd, marker);
    cmd.uid(65534).gid(65534);
    run_command(cmd)
}

fn procwatch_command(args: &[&str], cwd: &Path, marker: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env(MARKER_VAR, marker)
        .current_dir(cwd)
        .stdin(Stdio::null());
    cmd
}

fn run_command(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().expect("run procwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `procwatch ARGS` (a `ctl` command) with extra environment: (exit code, stdout, stderr).
pub fn ctl_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run procwatch ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The resource controllers (memory, cpu, pids...) a procwatch started by a test gets for its
/// programs: it shares the test's cgroup, so it works in `<own>/procwatch-<PID>/`, whose
/// controllers are what `<own>` enables for its children. `None` where cgroup v2 cannot be
/// used here at all. (This host's hybrid hierarchy: none; memory, cpu and pids stay in v1.)
pub fn cgroup_controllers_here() -> Option<std::collections::BTreeSet<String>> {
    let loc = procwatch::cgroup::locate().ok()?;
    let text = std::fs::read_to_string(loc.own.join("cgroup.subtree_control")).ok()?;
    Some(text.split_whitespace().map(str::to_owned).collect())
}
