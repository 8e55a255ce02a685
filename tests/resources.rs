//! `resources:` (cgroup memory, cpu and pids limits) and OOM kills, on this host's real
//! cgroups: refused with file:line:col and key where a limit cannot be kept (proc mode, or a
//! controller missing from procwatch's subtree), at start (nothing starts, nothing is left)
//! and on reload (refused whole); written to the program's cgroup before it starts and an
//! OOM kill told apart where the controllers exist. On a hybrid host (memory, cpu and pids in
//! cgroup v1) the live limit and OOM tests say why they are skipped.

mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use util::{Procwatch, marker, pids_with, procs_with, run_to_end, wait_for};

const T: Duration = Duration::from_secs(30);

fn args(config: &str) -> [&str; 6] {
    [
        "--config",
        config,
        "--web.listen-address",
        "127.0.0.1:0",
        "--control.socket",
        "none",
    ]
}

/// The `programs in PATH` of the tracking line.
fn programs_dir(log: &str) -> Option<PathBuf> {
    let rest = log.split("cgroup mode: programs in ").nth(1)?;
    Some(PathBuf::from(rest.split([',', ' ', '"']).next()?))
}

fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("procwatch.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Runs procwatch on `config` (with `--check-config` first in `extra`, or not) to its end:
/// refused with exit 1 and `want` (the file:line:col and key) in the message; the stderr.
fn refused(config: &Path, extra: &[&str], marker: &str, want: &str) -> String {
    let mut a: Vec<&str> = extra.to_vec();
    a.extend(args(config.to_str().unwrap()));
    let (code, stdout, stderr) = run_to_end(&a, config.parent().unwrap(), marker);
    assert_eq!(code, 1, "{a:?}:\n{stdout}{stderr}");
    assert!(stderr.contains(want), "{a:?}: {want}\n{stderr}");
    stderr
}

/// In proc mode there is no cgroup to limit: the key is refused at start with its place,
/// nothing starts; `--check-config` says the same.
#[test]
fn resources_in_proc_mode_are_refused_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "cgroup: off\nprocesses:\n  - name: first\n    command: [touch, started-first]\n  - name: web\n    command: [touch, started-web]\n    resources: {cpu: 0.5}\n",
    );
    let m = marker("res-proc");
    let want = format!(
        "{}:7:22: processes[1].resources.cpu: resources need cgroup mode",
        config.display()
    );
    let stderr = refused(&config, &[], &m, &want);
    assert!(stderr.contains("cgroup: off in the config"), "{stderr}");
    for f in ["started-first", "started-web"] {
        assert!(!dir.path().join(f).exists(), "{f}: nothing starts");
    }
    assert!(pids_with(&m).is_empty());

    refused(&config, &["--check-config"], &m, &want);
}

/// cgroup mode without the controller in procwatch's subtree (this host: hybrid, memory in
/// cgroup v1): refused at start with file:line:col and key; nothing starts, and the cgroups
/// procwatch had made are gone when it exits.
#[test]
fn resources_without_the_controller_are_refused_at_start() {
    let Some(controllers) = util::cgroup_controllers_here() else {
        eprintln!("SKIPPED: no usable cgroup v2 here; the proc-mode refusal is tested instead");
        return;
    };
    if controllers.contains("memory") {
        eprintln!(
            "SKIPPED: the memory controller is available to procwatch here, so a memory limit is kept, not refused (see resources_are_written_before_the_program_starts)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "processes:\n  - name: web\n    command: [touch, started]\n    resources:\n      memory: 64MiB\n",
    );
    let m = marker("res-cgroup");
    let want = format!(
        "{}:5:15: processes[0].resources.memory: the memory controller is not available",
        config.display()
    );
    let stderr = refused(&config, &[], &m, &want);
    assert!(stderr.contains("tracking: cgroup mode"), "{stderr}");
    assert!(!dir.path().join("started").exists(), "nothing starts");
    let programs = programs_dir(&stderr).expect("the tracking line names the programs' cgroup");
    assert!(
        !programs.exists() && !programs.parent().unwrap().exists(),
        "{} is left behind",
        programs.display()
    );

    // --check-config too, where procwatch's own cgroup lacks it.
    let loc = procwatch::cgroup::locate().unwrap();
    let own: String = std::fs::read_to_string(loc.own.join("cgroup.controllers")).unwrap_or_default();
    if !own.split_whitespace().any(|c| c == "memory") {
        refused(&config, &["--check-config"], &m, &want);
    }
}

/// A reload that asks for a limit that cannot be kept is refused whole: nothing stops, starts
/// or restarts, the gauge drops to 0 and the log names the key and its place.
#[test]
fn a_reload_with_resources_that_cannot_be_kept_is_refused_whole() {
    let m = marker("res-reload");
    let pw = Procwatch::start_marked(
        "cgroup: off\nprocesses:\n  - name: keep\n    command: [sleep, '600']\n",
        &[],
        &m,
    );
    let s = pw.wait_scrape(T, "keep up", |s| s.prog("procwatch_process_up", "keep") == Some(1.0));
    let pid = s.prog("procwatch_process_pid", "keep").unwrap();
    pw.write_config(
        "cgroup: off\nprocesses:\n  - name: keep\n    command: [sleep, '601']\n  - name: added\n    command: [sleep, '600']\n    resources: {pids: 64}\n",
    );
    pw.signal(libc::SIGHUP);
    let s = pw.wait_scrape(T, "the reload refused", |s| {
        s.get("procwatch_config_last_reload_successful", &[]) == Some(0.0)
    });
    assert_eq!(
        s.prog("procwatch_process_pid", "keep"),
        Some(pid),
        "keep was not restarted"
    );
    assert_eq!(s.prog("procwatch_process_up", "added"), None, "added was not started");
    let log = pw.stderr();
    assert!(
        log.contains(":7:23: processes[1].resources.pids: resources need cgroup mode"),
        "{log}"
    );
    let programs: Vec<String> = procs_with(&m)
        .into_iter()
        .map(|(_, cmd)| cmd)
        .filter(|cmd| cmd.starts_with("sleep"))
        .collect();
    assert_eq!(programs, ["sleep 600"], "only keep runs, unchanged");
}

/// The program's own cgroup; `pid` is one of its processes.
fn cgroup_of(pid: i32) -> PathBuf {
    let loc = procwatch::cgroup::locate().unwrap();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = procwatch::cgroup::parse_own_cgroup(&text).unwrap();
    loc.mount.join(rel.trim_start_matches('/'))
}

/// Where the controllers exist, the limits are in the program's cgroup before it runs, and a
/// reload that removes them puts `max` back.
#[test]
fn resources_are_written_before_the_program_starts() {
    let have = util::cgroup_controllers_here().unwrap_or_default();
    let missing: Vec<&str> = ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| !have.contains(*c))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED: the live limit test needs the {} controller(s) in procwatch's cgroups, which this host does not offer (a hybrid host keeps them in cgroup v1); the values written are unit-tested (cgroup::tests)",
            missing.join(", ")
        );
        return;
    }
    let yaml = "processes:\n  - name: web\n    command: [sh, -c, 'exec sleep 600']\n    resources: {memory: 64MiB, cpu: 0.5, pids: 100}\n";
    let m = marker("res-live");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), yaml);
    let (code, stdout, stderr) = run_to_end(
        &["--check-config", "--config", config.to_str().unwrap()],
        dir.path(),
        &m,
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("    resources: memory.max 67108864, cpu.max 50000 100000, pids.max 100"),
        "{stdout}"
    );
    let pw = Procwatch::start_marked(yaml, &[], &m);
    let s = pw.wait_scrape(T, "web up", |s| s.prog("procwatch_process_up", "web") == Some(1.0));
    let pid = s.prog("procwatch_process_pid", "web").unwrap() as i32;
    let cg = cgroup_of(pid);
    let read = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap().trim().to_owned();
    assert_eq!(read("memory.max"), (64u64 << 20).to_string());
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("pids.max"), "100");
    let s = pw.wait_scrape(T, "memory_max", |s| {
        s.prog("procwatch_process_memory_max_bytes", "web").is_some()
    });
    assert_eq!(
        s.prog("procwatch_process_memory_max_bytes", "web"),
        Some((64u64 << 20) as f64)
    );
    pw.write_config("processes:\n  - name: web\n    command: [sh, -c, 'exec sleep 600']\n");
    pw.signal(libc::SIGHUP);
    wait_for(T, "limits back to max", || {
        (std::fs::read_to_string(cg.join("memory.max")).ok()?.trim() == "max").then_some(())
    });
    assert_eq!(read("pids.max"), "max");
    assert_eq!(read("cpu.max"), "max 100000");
}

/// Where the memory controller exists: a program that outgrows its memory.max is the OOM
/// killer's victim, counted in oom_kills_total and as an exit with reason="oom".
#[test]
fn an_oom_kill_is_counted_and_told_apart() {
    if !util::cgroup_controllers_here().unwrap_or_default().contains("memory") {
        eprintln!(
            "SKIPPED: the live OOM test needs the memory controller in procwatch's cgroups, which this host does not offer (a hybrid host keeps it in cgroup v1); the memory.events parsing and the OOM decision are tested from fixtures (cgroup::tests)"
        );
        return;
    }
    let m = marker("res-oom");
    let pw = Procwatch::start_marked(
        "processes:\n  - name: hog\n    command: [python3, -c, 'b = bytearray(256 << 20); import time; time.sleep(600)']\n    restart: never\n    resources: {memory: 32MiB}\n",
        &[],
        &m,
    );
    let s = pw.wait_scrape(T, "the OOM exit", |s| {
        s.get("procwatch_process_exits_total", &[("name", "hog"), ("reason", "oom")]) == Some(1.0)
    });
    assert!(
        s.prog("procwatch_process_oom_kills_total", "hog")
            .is_some_and(|n| n >= 1.0),
        "{}",
        s.text
    );
    assert_eq!(
        s.get(
            "procwatch_process_exits_total",
            &[("name", "hog"), ("reason", "signal")]
        ),
        Some(0.0)
    );
    assert_eq!(s.prog("procwatch_process_last_exit_code", "hog"), Some(137.0));
}

/// What Docker and Kubernetes give a container that is not privileged: a read-only
/// `/sys/fs/cgroup`. procwatch says so and runs in proc mode (here: a private mount namespace
/// in which the cgroup2 mount is bound read-only).
#[test]
fn a_read_only_cgroupfs_means_proc_mode() {
    let Ok(loc) = procwatch::cgroup::locate() else {
        eprintln!("SKIPPED: no cgroup2 mount here");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: a private mount namespace needs root");
        return;
    }
    let mount = std::ffi::CString::new(loc.mount.as_os_str().as_encoded_bytes()).unwrap();
    // A container may forbid mount namespaces even to root: then there is nothing to show.
    let mut probe = std::process::Command::new("true");
    read_only_cgroupfs(&mut probe, mount.clone());
    if let Err(e) = probe.status() {
        eprintln!("SKIPPED: cannot make a private mount namespace here: {e}");
        return;
    }
    let (dir, config) = util::config_dir("processes:\n  - name: web\n    command: [sleep, '600']\n");
    let pw = Procwatch::start_with(
        dir,
        config.clone(),
        &["--config", config.to_str().unwrap()],
        &marker("res-ro"),
        |cmd| read_only_cgroupfs(cmd, mount),
    );
    let s = pw.wait_scrape(T, "web up", |s| s.prog("procwatch_process_up", "web") == Some(1.0));
    assert_eq!(
        s.get("procwatch_tracking_info", &[("mode", "proc")]),
        Some(1.0),
        "{}",
        s.text
    );
    let log = pw.stderr();
    assert!(log.contains("tracking: proc mode: cannot write"), "{log}");
    assert!(log.contains("Read-only file system"), "{log}");
}

/// Makes `cmd` run in a mount namespace of its own in which the cgroup2 file system at `mount`
/// is bound read-only (what a container that is not privileged gets). The namespace is made
/// private first, so nothing done in it reaches the host's mounts.
fn read_only_cgroupfs(cmd: &mut std::process::Command, mount: std::ffi::CString) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let none = std::ptr::null();
            let ok = |r: i32| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            ok(libc::unshare(libc::CLONE_NEWNS))?;
            ok(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            ))?;
            ok(libc::mount(
                mount.as_ptr(),
                mount.as_ptr(),
                none,
                libc::MS_BIND,
                none.cast(),
            ))?;
            ok(libc::mount(
                none,
                mount.as_ptr(),
                none,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                none.cast(),
            ))
        });
    }
}
