//! Who and how a program runs (user, group, umask, limits, env files, instances), included
//! files, paths relative to the config file, and config input that must be refused: each
//! checked on the real binary and the real /proc.

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use util::{Procwatch, Scrape, http, marker, pids_with, run_to_end, wait_for};

const T: Duration = Duration::from_secs(30);

fn pid_of(s: &Scrape, program: &str) -> Option<i32> {
    s.prog("procwatch_process_pid", program).map(|p| p as i32)
}

fn wait_pid(pw: &Procwatch, program: &str) -> i32 {
    let s = pw.wait_scrape(T, &format!("{program} to run"), |s| pid_of(s, program).is_some());
    pid_of(&s, program).unwrap()
}

fn environ(pid: i32) -> std::collections::HashMap<String, String> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.environ())
        .expect("environ")
        .into_iter()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .collect()
}

/// Whether `pid` has ended (a zombie counts as ended).
fn gone(pid: i32) -> bool {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_or(true, |st| st.state == 'Z')
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: changing a program's user needs root; this test runs as uid != 0");
    }
    root
}

/// Runs `--check-config` on `dir/procwatch.yaml`: (exit code, stdout, stderr).
fn check(dir: &Path, m: &str) -> (i32, String, String) {
    let config = dir.join("procwatch.yaml");
    run_to_end(&["--check-config", "--config", config.to_str().unwrap()], dir, m)
}

#[test]
fn a_program_runs_as_nobody_with_its_groups_limits_and_umask() {
    if !is_root() {
        return;
    }
    let m = marker("nobody");
    let yaml = "processes:\n  - name: a\n    command: [sleep, '600']\n    user: nobody\n    umask: \"0027\"\n    limits: {nofile: 1000, core: 0, nproc: {soft: 100, hard: 200}, cpu: 1h}\n";
    let pw = Procwatch::start_marked(yaml, &[], &m);
    let pid = wait_pid(&pw, "a");
    let proc = procfs::process::Process::new(pid).unwrap();
    let status = proc.status().unwrap();
    let nobody = |flag: &str| {
        let out = std::process::Command::new("id")
            .args([flag, "nobody"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let uid: u32 = nobody("-u").parse().unwrap();
    let gid: u32 = nobody("-g").parse().unwrap();
    let mut groups: Vec<u32> = nobody("-G").split_whitespace().map(|g| g.parse().unwrap()).collect();
    assert_eq!([status.ruid, status.euid, status.suid, status.fuid], [uid; 4]);
    assert_eq!([status.rgid, status.egid, status.sgid, status.fgid], [gid; 4]);
    let mut got: Vec<u32> = status.groups.to_vec();
    got.sort();
    groups.sort();
    assert_eq!(got, groups, "supplementary groups of nobody");
    assert_eq!(status.umask, Some(0o027));
    let limits = proc.limits().unwrap();
    let v = |l: &procfs::process::LimitValue| format!("{l:?}");
    let pair = |l: &procfs::process::Limit| (v(&l.soft_limit), v(&l.hard_limit));
    assert_eq!(
        pair(&limits.max_open_files),
        ("Value(1000)".into(), "Value(1000)".into())
    );
    assert_eq!(pair(&limits.max_processes), ("Value(100)".into(), "Value(200)".into()));
    assert_eq!(pair(&limits.max_core_file_size), ("Value(0)".into(), "Value(0)".into()));
    assert_eq!(pair(&limits.max_cpu_time), ("Value(3600)".into(), "Value(3600)".into()));
    let env = environ(pid);
    assert_eq!(env["USER"], "nobody");
    assert_eq!(env["LOGNAME"], "nobody");
    assert_eq!(env["HOME"], "/nonexistent");
    // procwatch itself is still root, and the program still dies with it.
    assert_eq!(
        procfs::process::Process::new(pw.pid()).unwrap().status().unwrap().euid,
        0
    );
    drop(pw);
    wait_for(T, "the program to stop with procwatch", || {
        pids_with(&m).is_empty().then_some(())
    });
}

#[test]
fn env_files_env_and_instances_reach_the_program_as_written() {
    let m = marker("envfile");
    let (dir, config) = util::config_dir("");
    std::fs::write(
        dir.path().join("app.env"),
        "# a comment\n; another\nexport A=\"two words # not a comment\"\nB='$HOME stays'\n C = plain  \nOVERRIDDEN=from file\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        "processes:\n  - name: web\n    command: [sleep, '600']\n    instances: 3\n    env_file: [app.env, -missing.env]\n    env: {OVERRIDDEN: from env, V: 3.10, E: 1e3}\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_in(dir, config, &["--config", &config_arg], &m);
    let pids: Vec<i32> = (0..3).map(|i| wait_pid(&pw, &format!("web-{i}"))).collect();
    for (i, &pid) in pids.iter().enumerate() {
        let env = environ(pid);
        assert_eq!(env["PROCWATCH_INSTANCE"], i.to_string());
        assert_eq!(env["A"], "two words # not a comment");
        assert_eq!(env["B"], "$HOME stays");
        assert_eq!(env["C"], "plain");
        assert_eq!(env["OVERRIDDEN"], "from env");
        assert_eq!((env["V"].as_str(), env["E"].as_str()), ("3.10", "1e3"));
    }

    // Down to two: web-2 stops, the others keep their PIDs.
    pw.write_config(
        "processes:\n  - name: web\n    command: [sleep, '600']\n    instances: 2\n    env_file: [app.env, -missing.env]\n    env: {OVERRIDDEN: from env, V: 3.10, E: 1e3}\n",
    );
    pw.signal(libc::SIGHUP);
    let s = pw.wait_scrape(T, "web-2 to go", |s| s.prog("procwatch_process_up", "web-2").is_none());
    assert_eq!(pid_of(&s, "web-0"), Some(pids[0]));
    assert_eq!(pid_of(&s, "web-1"), Some(pids[1]));
    wait_for(T, "web-2's process to end", || gone(pids[2]).then_some(()));

    // A changed env file is a changed program: every instance restarts with it.
    std::fs::write(pw.path("app.env"), "A=changed\n").unwrap();
    pw.signal(libc::SIGHUP);
    let s = pw.wait_scrape(T, "the restart", |s| {
        pid_of(s, "web-0").is_some_and(|p| p != pids[0]) && pid_of(s, "web-1").is_some_and(|p| p != pids[1])
    });
    assert_eq!(environ(pid_of(&s, "web-0").unwrap())["A"], "changed");
}

#[test]
fn included_files_and_relative_paths() {
    let m = marker("include");
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    std::fs::create_dir_all(etc.join("work")).unwrap();
    std::fs::create_dir_all(etc.join("conf.d").join("inc-work")).unwrap();
    std::fs::write(etc.join("vars.env"), "FROM_FILE=yes\n").unwrap();
    std::fs::write(
        etc.join("procwatch.yaml"),
        "include: [conf.d/*.yaml, nothing/*.yaml]\nprocesses:\n  - name: main\n    command: [sleep, '600']\n    cwd: work\n    env_file: [vars.env]\nwatches:\n  - name: data\n    path: data\n",
    )
    .unwrap();
    // Relative to the included file's own directory.
    std::fs::write(
        etc.join("conf.d").join("b.yaml"),
        "processes:\n  - name: inc\n    command: [sleep, '600']\n    cwd: inc-work\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("conf.d").join("a.yaml"),
        "watches:\n  - name: inc-data\n    path: inc-data\n",
    )
    .unwrap();
    std::fs::write(etc.join("conf.d").join("skipped.yml"), "garbage: [").unwrap();

    // procwatch runs from elsewhere: paths must not depend on its own directory.
    let config = etc.join("procwatch.yaml");
    let (code, out, err) = run_to_end(
        &["--check-config", "--config", config.to_str().unwrap()],
        root.path(),
        &m,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("included {}", etc.join("conf.d/a.yaml").display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("watch data: {}", etc.join("data").display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("watch inc-data: {}", etc.join("conf.d/inc-data").display())),
        "{out}"
    );
    assert!(err.contains("include matches no file"), "a warning: {err}");

    let pw = Procwatch::start_with(
        tempfile::tempdir().unwrap(),
        config.clone(),
        &["--config", config.to_str().unwrap()],
        &m,
        |_| {},
    );
    let main = wait_pid(&pw, "main");
    let inc = wait_pid(&pw, "inc");
    let cwd = |pid: i32| procfs::process::Process::new(pid).unwrap().cwd().unwrap();
    assert_eq!(cwd(main), etc.join("work"));
    assert_eq!(cwd(inc), etc.join("conf.d").join("inc-work"));
    assert_eq!(environ(main)["FROM_FILE"], "yes");

    // An error inside an included file names that file; a reload refuses it whole.
    std::fs::write(
        etc.join("conf.d").join("b.yaml"),
        "processes:\n  - name: inc\n    command: [sleep, '600']\n    stop_signal: NOPE\n",
    )
    .unwrap();
    let (code, _, err) = run_to_end(
        &["--check-config", "--config", config.to_str().unwrap()],
        root.path(),
        &m,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{}:4:18: processes[0].stop_signal",
            etc.join("conf.d/b.yaml").display()
        )),
        "{err}"
    );
    pw.signal(libc::SIGHUP);
    let s = pw.wait_scrape(T, "the refusal", |s| {
        s.get("procwatch_config_last_reload_successful", &[]) == Some(0.0)
    });
    assert_eq!((pid_of(&s, "main"), pid_of(&s, "inc")), (Some(main), Some(inc)));
}

/// Files to write besides the config, the config, and what stderr must name.
type BadCase = (Vec<(&'static str, &'static str)>, String, Vec<&'static str>);

/// Each bad input of issue #12.
#[test]
fn each_bad_identity_env_or_include_input_is_a_clear_error() {
    let m = marker("bad12");
    let ok = "processes:\n  - name: ok\n    command: [sleep, '600']\n";
    let cases: Vec<BadCase> = vec![
        (
            vec![],
            format!("{ok}    user: no-such-user-pw\n"),
            vec!["procwatch.yaml:4:11:", "processes[0].user", "no such user"],
        ),
        (
            vec![],
            format!("{ok}    group: no-such-group-pw\n"),
            vec!["procwatch.yaml:4:12:", "processes[0].group", "no such group"],
        ),
        (
            vec![],
            format!("{ok}    limits: {{fds: 10}}\n"),
            vec!["procwatch.yaml:4:19:", "processes[0].limits.fds", "unknown limit"],
        ),
        (
            vec![],
            format!("{ok}    limits: {{nofile: {{soft: 10, hard: 5}}}}\n"),
            vec!["procwatch.yaml:4:22:", "soft must not be above hard"],
        ),
        (
            vec![("bad.env", "A=1\n# fine\nthis is not an assignment\n")],
            format!("{ok}    env_file: [bad.env]\n"),
            vec!["bad.env:3:1:", "processes[0].env_file[0]", "expected KEY=VALUE"],
        ),
        (
            vec![("bad.env", "A=\"never closed\n")],
            format!("{ok}    env_file: [bad.env]\n"),
            vec!["bad.env:1:3:", "double quote not closed"],
        ),
        (
            vec![],
            format!("{ok}    env_file: [missing.env]\n"),
            vec!["procwatch.yaml:4:16:", "missing.env", "No such file"],
        ),
        (
            vec![],
            format!("include: ['*.yaml']\n{ok}"),
            vec!["procwatch.yaml:1:11:", "include[0]", "includes the file it is in"],
        ),
        (
            vec![(
                "more.yaml",
                "processes:\n  - name: x\n    command: [true]\n  - name: ok\n    command: [true]\n",
            )],
            format!("include: [more.yaml]\n{ok}"),
            vec![
                "more.yaml:4:11:",
                "processes[1].name",
                "duplicate name \"ok\" (first defined in",
            ],
        ),
        (
            vec![("more.yaml", "listen_address: \":1\"\nprocesses: []\n")],
            format!("include: [more.yaml]\n{ok}"),
            vec!["more.yaml:1:1:", "unknown field `listen_address`"],
        ),
        (
            vec![("more.yaml", "")],
            format!("include: [more.yaml]\n{ok}"),
            vec!["more.yaml:1:1:", "no `processes:` or `watches:`"],
        ),
        (
            vec![],
            format!("{ok}    instances: 0\n"),
            vec!["procwatch.yaml:4:16:", "processes[0].instances"],
        ),
        (
            vec![],
            format!("{ok}    umask: 0999\n"),
            vec!["procwatch.yaml:4:12:", "processes[0].umask", "octal"],
        ),
    ];
    for (i, (files, yaml, wants)) in cases.into_iter().enumerate() {
        let (dir, config) = util::config_dir(&yaml);
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let args = [
            "--config",
            config.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ];
        let (code, _, stderr) = run_to_end(&args, dir.path(), &m);
        assert_eq!(code, 1, "case {i}: {stderr}");
        for w in wants {
            assert!(stderr.contains(w), "case {i}: {w:?} not in {stderr:?}\n{yaml}");
        }
        let (code, _, stderr2) = check(dir.path(), &m);
        assert_eq!((code, &stderr2), (1, &stderr), "case {i}: --check-config says the same");
    }
    assert!(pids_with(&m).is_empty(), "a bad config started {:?}", pids_with(&m));
}

#[test]
fn a_config_with_nothing_in_it_is_refused_at_start_and_on_reload() {
    let m = marker("emptycfg");
    for text in ["", "---\n", "# just a comment\n", "status_interval: 10s\n"] {
        let (dir, _) = util::config_dir(text);
        let (code, _, err) = check(dir.path(), &m);
        assert_eq!(code, 1, "{text:?}: {err}");
        assert!(
            err.contains("procwatch.yaml:1:1: (document): no `processes:` or `watches:`"),
            "{err}"
        );
    }
    let (dir, _) = util::config_dir("processes: []\n");
    assert_eq!(check(dir.path(), &m).0, 0, "an explicit empty list is fine");

    let mut pw = Procwatch::start_marked("processes:\n  - name: a\n    command: [sleep, '600']\n", &[], &m);
    let pid = wait_pid(&pw, "a");
    for text in ["", "---\n", "status_interval: 1s\n"] {
        pw.write_config(text);
        pw.signal(libc::SIGHUP);
        let s = pw.wait_scrape(T, "the refusal", |s| {
            s.get("procwatch_config_last_reload_successful", &[]) == Some(0.0)
        });
        assert_eq!(pid_of(&s, "a"), Some(pid), "{text:?} stopped nothing");
        pw.write_config("processes:\n  - name: a\n    command: [sleep, '600']\n");
        pw.signal(libc::SIGHUP);
        pw.wait_scrape(T, "a good reload", |s| {
            s.get("procwatch_config_last_reload_successful", &[]) == Some(1.0)
        });
    }
    assert!(!gone(pid));
    assert!(pw.stop().success());
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: plain syscall with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Runs procwatch with `args` and stdin from a pipe that stays open; fails the test (instead of
/// hanging) if it has not exited within 10 s. (exit code, stderr)
fn run_within_10s(args: &[&str], dir: &Path, m: &str) -> (i32, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(util::BIN)
        .args(args)
        .env(util::MARKER_VAR, m)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("procwatch {args:?} still running after 10 s: it blocked");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn fifos_pipes_and_devices_are_refused_without_blocking() {
    let m = marker("fifo");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.yaml");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    for (path, what) in [
        (fifo, "FIFO"),
        ("/dev/stdin", "FIFO"),
        ("/dev/zero", "device"),
        ("/tmp", "directory"),
    ] {
        let (code, err) = run_within_10s(&["--check-config", "--config", path], dir.path(), &m);
        assert_eq!(code, 1, "{path}: {err}");
        assert!(err.contains(&format!("not a regular file (a {what})")), "{path}: {err}");
        let (code, err) = run_within_10s(&["--check-config", "--web.config.file", path], dir.path(), &m);
        assert_eq!(code, 1, "web config {path}: {err}");
        assert!(
            err.contains(&format!("not a regular file (a {what})")),
            "web config {path}: {err}"
        );
    }
    // The web config's certificate files too.
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!("tls_server_config:\n  cert_file: {fifo}\n  key_file: {fifo}\n"),
    )
    .unwrap();
    let (code, err) = run_within_10s(
        &["--check-config", "--web.config.file", web.to_str().unwrap()],
        dir.path(),
        &m,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("tls_server_config.cert_file") && err.contains("not a regular file (a FIFO)"),
        "{err}"
    );

    // While running: the config, then the web config, replaced by a FIFO.
    let (dir, config) = util::config_dir("processes:\n  - name: a\n    command: [sleep, '600']\n");
    std::fs::write(dir.path().join("web.yml"), "").unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let web = dir.path().join("web.yml").to_str().unwrap().to_owned();
    let mut pw = Procwatch::start_in(
        dir,
        config.clone(),
        &[
            "--config",
            &config_arg,
            "--web.enable-lifecycle",
            "--web.config.file",
            &web,
        ],
        &m,
    );
    let pid = wait_pid(&pw, "a");
    std::fs::remove_file(&config).unwrap();
    mkfifo(&config);
    let (status, _, body) = http(&pw.addr, "POST", "/-/reload", "").unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("not a regular file"), "{body}");
    std::fs::remove_file(&web).unwrap();
    mkfifo(Path::new(&web));
    let (status, _, _) = http(&pw.addr, "GET", "/metrics", "").unwrap();
    assert_eq!(status, 200, "the last good web config stays");
    assert_eq!(pid_of(&pw.scrape(), "a"), Some(pid));
    let started = Instant::now();
    assert!(pw.stop().success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "SIGTERM took {:?}",
        started.elapsed()
    );
}

#[test]
fn aliases_argv_and_values_are_bounded_and_kept_as_written() {
    let m = marker("bad10");
    let big = "x".repeat(1 << 20);
    let mut bomb = format!("processes:\n  - name: a\n    command: [&big {big}");
    for _ in 0..60 {
        bomb.push_str(", *big");
    }
    bomb.push_str("]\n");
    let ok = "processes:\n  - name: ok\n    command: [sleep, '600']\n";
    let long_arg = "y".repeat(200_000);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (bomb, vec!["procwatch.yaml:3:", "expands to more than"]),
        (
            format!("{ok}  - name: b\n    command: [echo, {long_arg}]\n"),
            vec!["procwatch.yaml:5:14:", "processes[1].command", "exec's limit"],
        ),
        (
            format!("{ok}    env: {{\"\": x}}\n"),
            vec!["procwatch.yaml:4:15:", "cannot be empty"],
        ),
        (
            format!("{ok}    env: {{\"A=B\": x}}\n"),
            vec!["procwatch.yaml:4:18:", "processes[0].env.A=B", "'='"],
        ),
        (
            format!("{ok}    env: {{\"A\\0B\": x}}\n"),
            vec!["procwatch.yaml:4:19:", "NUL"],
        ),
        (
            format!("listen_address: \"not an address\"\n{ok}"),
            vec!["procwatch.yaml:1:17:", "listen_address", "HOST:PORT"],
        ),
        (
            format!("{ok}    stop_signal: STOP\n"),
            vec![
                "procwatch.yaml:4:18:",
                "processes[0].stop_signal",
                "cannot be a stop signal",
            ],
        ),
        (
            format!("{ok}    stop_signal: KILL\n"),
            vec!["procwatch.yaml:4:18:", "cannot be a stop signal"],
        ),
        (
            format!("{ok}    stop_signal: CONT\n"),
            vec!["procwatch.yaml:4:18:", "cannot be a stop signal"],
        ),
    ];
    for (i, (yaml, wants)) in cases.into_iter().enumerate() {
        let (dir, _) = util::config_dir(&yaml);
        let started = Instant::now();
        let (code, _, stderr) = check(dir.path(), &m);
        assert_eq!(code, 1, "case {i}: {}", &stderr[..stderr.len().min(2000)]);
        assert!(
            stderr.len() < 4096,
            "case {i}: the error is short: {} bytes",
            stderr.len()
        );
        for w in wants {
            assert!(stderr.contains(w), "case {i}: {w:?} not in {stderr:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "case {i} took {:?}",
            started.elapsed()
        );
    }
    assert!(pids_with(&m).is_empty());
}

#[test]
fn check_config_prints_user_limits_and_instances() {
    let m = marker("plan");
    let (dir, _) = util::config_dir(
        "processes:\n  - name: web\n    command: [sleep, '600']\n    user: root\n    umask: \"0027\"\n    limits: {nofile: 1024, stack: {soft: 8MiB, hard: unlimited}}\n    instances: 2\n",
    );
    let (code, out, err) = check(dir.path(), &m);
    if !is_root() {
        return;
    }
    assert_eq!(code, 0, "{err}");
    for want in [
        "program web-0 (instance 0):",
        "program web-1 (instance 1):",
        "runs as: user root (0), group 0, groups [0], umask 0027, limits nofile=1024 stack=8388608/unlimited",
        "env: HOME LOGNAME PROCWATCH_INSTANCE USER",
    ] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }
}

#[test]
fn changing_user_without_root_is_a_config_error() {
    if !is_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let m = marker("notroot");
    let (dir, config) = util::config_dir("processes:\n  - name: a\n    command: [sleep, '600']\n    user: root\n");
    // Readable by nobody, who runs this procwatch.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = util::run_to_end_as_nobody(
        &["--check-config", "--config", config.to_str().unwrap()],
        dir.path(),
        &m,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("procwatch.yaml:4:11: processes[0].user: running as user \"root\" needs root"),
        "{err}"
    );
}
