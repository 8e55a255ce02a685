//! procwatch as PID 1 (as in a container): it reaps every orphan, and SIGTERM (docker stop)
//! stops it gracefully even though PID 1 ignores signals it has no handler for. Uses a PID
//! namespace from `unshare`; where that is not allowed, the test says so and passes.

mod util;

use std::process::{Command, Stdio};
use std::time::Duration;

use util::{Scrape, http, logged_addr, wait_for};

const T: Duration = Duration::from_secs(30);

/// State letters of the children of `pid` (as seen from outside the namespace), through
/// procwatch's own /proc reader.
fn child_states(pid: i32) -> Vec<char> {
    let mut reader = procwatch::procfs::Reader::default();
    let mut all = Vec::new();
    // Orphans are re-parented to the namespace's PID 1, on whichever thread.
    let threads = reader.stat(pid).map_or(1, |st| st.num_threads);
    reader.children(pid, threads.max(2), &mut all);
    all.sort();
    all.dedup();
    all.iter()
        .filter_map(|&c| reader.stat(c).map(|st| char::from(st.state)))
        .collect()
}

fn first_child(pid: i32) -> Option<i32> {
    let mut children = Vec::new();
    procwatch::procfs::Reader::default().children(pid, 1, &mut children);
    children.first().copied()
}

#[test]
fn as_pid_1_it_reaps_orphans_and_stops_on_sigterm() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot make a PID namespace here (unshare --pid needs CAP_SYS_ADMIN)");
        return;
    }
    let (dir, config) = util::config_dir(
        "processes:\n  - name: parent\n    command: [sh, -c, 'for i in 1 2 3 4 5; do (sleep 0.1 &); done; sleep 600']\n",
    );
    let log = dir.path().join("stderr.log");
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", util::BIN, "--config"])
        .arg(&config)
        .args(["--web.listen-address", "127.0.0.1:0"])
        // The control socket's default path: this test's own directory, not /run.
        .env("RUNTIME_DIRECTORY", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = wait_for(T, "the address", || logged_addr(&std::fs::read_to_string(&log).ok()?));
    // procwatch is unshare's only child, and PID 1 inside.
    let outer = unshare.id() as i32;
    let pw: i32 = wait_for(T, "procwatch's outer PID", || first_child(outer));
    let status = procfs_core::FromRead::from_file(format!("/proc/{pw}/status"));
    let status: procfs_core::process::Status = status.unwrap();
    let nspid = status.nspid.unwrap();
    assert_eq!(nspid.last(), Some(&1), "{nspid:?}");

    let s = wait_for(T, "parent up", || {
        http(&addr, "GET", "/metrics", "")
            .ok()
            .map(|r| Scrape::parse(r.2))
            .filter(|s| s.prog("procwatch_process_up", "parent") == Some(1.0))
    });
    assert!(s.prog("procwatch_process_pid", "parent").is_some());
    // PID 1 is procwatch's guardian; the supervisor is its only child, and the child
    // subreaper nearest to the programs. The five orphaned sleeps end within 0.1 s; none may
    // stay a zombie. What is left is the program's shell.
    let supervisor: i32 = wait_for(T, "the supervisor", || first_child(pw));
    wait_for(T, "the orphans to be reaped", || {
        let states = child_states(supervisor);
        (states.len() == 1 && !states.contains(&'Z') && child_states(pw).len() == 1).then_some(())
    });

    // SAFETY: plain syscall to procwatch, from outside its namespace.
    unsafe { libc::kill(pw, libc::SIGTERM) };
    let code = wait_for(T, "procwatch to exit", || unshare.try_wait().ok().flatten());
    assert!(
        code.success(),
        "{code:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
