//! Running out of inotify watches (fs.inotify.max_user_watches) is an error on that watch,
//! logged with the sysctl to raise, never a crash. The limit is a global sysctl, so this test
//! has a binary of its own (cargo runs test binaries one after another), runs procwatch as
//! `nobody` (whose watch count starts at 0), and puts the old limit back however it ends.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use util::{Procwatch, config_dir, marker};

const LIMIT: &str = "/proc/sys/fs/inotify/max_user_watches";

struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(LIMIT, &self.0);
    }
}

#[test]
fn running_out_of_inotify_watches_is_an_error_on_that_watch() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: changing fs.inotify.max_user_watches needs root");
        return;
    }
    let Ok(old) = std::fs::read_to_string(LIMIT) else {
        eprintln!("skipped: {LIMIT} is not readable");
        return;
    };
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for i in 0..30 {
        std::fs::create_dir(data.path().join(format!("d{i}"))).unwrap();
    }
    let (dir, config) = config_dir(&format!(
        "watches:\n  - name: tree\n    path: {}\n",
        data.path().display()
    ));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    if std::fs::write(LIMIT, "10").is_err() {
        eprintln!("skipped: {LIMIT} is not writable here");
        return;
    }
    let _restore = Restore(old);
    let config_arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_with(
        dir,
        config.clone(),
        &["--config", &config_arg],
        &marker("limits"),
        |cmd| {
            cmd.uid(65534).gid(65534);
        },
    );
    let s = pw.wait_scrape(Duration::from_secs(30), "the watch's error", |s| {
        s.get("procwatch_file_watch_errors_total", &[("watch", "tree")])
            .unwrap_or(0.0)
            >= 1.0
    });
    // The root and the directories that fit are watched: the watch is up, and it counts.
    assert_eq!(s.get("procwatch_file_watch_up", &[("watch", "tree")]), Some(1.0));
    let log = pw.stderr();
    assert_eq!(
        log.matches("sysctl fs.inotify.max_user_watches").count(),
        1,
        "logged once:\n{log}"
    );
    std::fs::File::create(data.path().join("f")).unwrap();
    pw.wait_scrape(Duration::from_secs(30), "the root still counting", |s| {
        s.get("procwatch_file_events_total", &[("watch", "tree"), ("kind", "create")]) == Some(1.0)
    });
}
