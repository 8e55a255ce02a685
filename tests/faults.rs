//! What programs and hosts throw at the supervisor: fork storms, floods of output, paths it
//! may not read. procwatch keeps going, and leaves nothing behind.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use util::{Procwatch, config_dir, marker, procs_with, rss_kib};

const T: Duration = Duration::from_secs(30);

#[test]
fn a_program_that_forks_200_children_is_stopped_completely() {
    let m = marker("fork200");
    let mut pw = Procwatch::start_marked(
        "processes:\n  - name: forker\n    command: [sh, -c, 'for i in $(seq 200); do sleep 600 & done; wait']\n",
        &[],
        &m,
    );
    pw.wait_scrape(T, "201 processes in the tree", |s| {
        s.prog("procwatch_process_tree_processes", "forker") == Some(201.0)
    });
    assert!(pw.stop().success(), "{}", pw.stderr());
    let left = procs_with(&m);
    assert!(left.is_empty(), "{} left, e.g. {:?}", left.len(), left.first());
}

#[test]
fn a_300_mb_flood_passes_through_procwatch_counted_without_growing_it() {
    let m = marker("flood");
    // 15 million lines of 21 bytes (315 MB), every one read, framed, prefixed and counted by
    // procwatch on its way to procwatch's stdout (here /dev/null, which takes all at once).
    let (dir, config) = config_dir(
        "status_interval: 0\nprocesses:\n  - name: flood\n    command: [sh, -c, 'sleep 1; yes procwatch-flood-line | head -n 15000000']\n    restart: never\n",
    );
    let config_arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_with(dir, config.clone(), &["--config", &config_arg], &m, |cmd| {
        cmd.stdout(Stdio::null());
    });
    pw.wait_scrape(T, "flood up", |s| s.prog("procwatch_process_up", "flood") == Some(1.0));
    let before = rss_kib(pw.supervisor_pid());
    let lines = |s: &util::Scrape| {
        s.get(
            "procwatch_process_log_lines_total",
            &[("name", "flood"), ("stream", "stdout")],
        )
    };
    let mut peak = before;
    let s = util::wait_for(Duration::from_secs(300), "every line counted", || {
        peak = peak.max(rss_kib(pw.supervisor_pid()));
        Some(pw.scrape()).filter(|s| lines(s) == Some(15_000_000.0))
    });
    assert_eq!(
        s.get(
            "procwatch_process_log_bytes_total",
            &[("name", "flood"), ("stream", "stdout")]
        ),
        Some(15_000_000.0 * 21.0)
    );
    let after = rss_kib(pw.supervisor_pid()).max(peak);
    assert!(after < before + 16 * 1024, "RSS went from {before} kB to {after} kB");
}

#[test]
fn a_watch_path_procwatch_may_not_read_is_an_error_on_that_watch_only() {
    let m = marker("noperm");
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = data.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let open = data.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let yaml = format!(
        "watches:\n  - name: locked\n    path: {}\n  - name: open\n    path: {}\nprocesses:\n  - name: p\n    command: [sleep, '600']\n",
        locked.display(),
        open.display()
    );
    let (dir, config) = config_dir(&yaml);
    // Root reads everything: run procwatch as nobody so that the permission bites.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let config_arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_with(dir, config.clone(), &["--config", &config_arg], &m, |cmd| {
        if root {
            cmd.uid(65534).gid(65534);
        }
    });
    // /-/ready answers before the first spawn ends, and the watches come up one by one: wait
    // for all three states asserted.
    let s = pw.wait_scrape(T, "the locked watch's error, the open watch and p up", |s| {
        s.get("procwatch_file_watch_errors_total", &[("watch", "locked")])
            .unwrap_or(0.0)
            >= 1.0
            && s.get("procwatch_file_watch_up", &[("watch", "open")]) == Some(1.0)
            && s.prog("procwatch_process_up", "p") == Some(1.0)
    });
    assert_eq!(s.get("procwatch_file_watch_up", &[("watch", "locked")]), Some(0.0));
    assert!(pw.stderr().contains("cannot watch"), "{}", pw.stderr());
    // Still serving, still counting elsewhere.
    std::fs::File::create(open.join("f")).unwrap();
    pw.wait_scrape(T, "the open watch to count", |s| {
        s.get("procwatch_file_events_total", &[("watch", "open"), ("kind", "create")]) == Some(1.0)
    });
}
