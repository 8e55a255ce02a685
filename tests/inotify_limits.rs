//! The inotify limits, which are global sysctls: so these tests have a binary of their own
//! (cargo runs test binaries one after another), take turns (a lock), and put the old limit
//! back however they end.
//!
//! Running out of inotify watches (fs.inotify.max_user_watches) is an error on that watch,
//! logged with the sysctl to raise, never a crash; procwatch runs as `nobody` there, whose
//! watch count starts at 0. A kernel queue overflow (fs.inotify.max_queued_events, lowered for
//! the moment procwatch makes its inotify instance) is counted, and the counts are exact again.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use util::{Procwatch, config_dir, marker};

const LIMIT: &str = "/proc/sys/fs/inotify/max_user_watches";
const QUEUE: &str = "/proc/sys/fs/inotify/max_queued_events";

/// One test at a time changes a limit.
static SYSCTL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Puts a sysctl back as it was.
struct Restore(&'static str, String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

#[test]
fn running_out_of_inotify_watches_is_an_error_on_that_watch() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: changing fs.inotify.max_user_watches needs root");
        return;
    }
    let _turn = SYSCTL.lock().unwrap_or_else(|e| e.into_inner());
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
    let _restore = Restore(LIMIT, old);
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
    // The error is counted in the middle of the walk, `up` stored after it: wait for both.
    let s = pw.wait_scrape(Duration::from_secs(30), "the watch's error and the watch up", |s| {
        s.get("procwatch_file_watch_errors_total", &[("watch", "tree")])
            .unwrap_or(0.0)
            >= 1.0
            && s.get("procwatch_file_watch_up", &[("watch", "tree")]) == Some(1.0)
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

fn events(s: &util::Scrape, kind: &str) -> u64 {
    s.get("procwatch_file_events_total", &[("watch", "w"), ("kind", kind)])
        .unwrap_or(-1.0) as u64
}

/// Counts settle on `want` (names found by a re-listing are counted once the queue is read to
/// its end, a moment after the events before them).
fn assert_settles(pw: &Procwatch, want: [u64; 4]) {
    let get = |s: &util::Scrape| ["create", "remove", "rename", "other"].map(|k| events(s, k));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = pw.scrape();
        if get(&s) == want || std::time::Instant::now() > deadline {
            assert_eq!(get(&s), want, "[create, remove, rename, other]\n{}", pw.stderr());
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn after_a_forced_queue_overflow_creates_and_removes_are_exact() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: changing fs.inotify.max_queued_events needs root");
        return;
    }
    let _turn = SYSCTL.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(old) = std::fs::read_to_string(QUEUE) else {
        eprintln!("skipped: {QUEUE} is not readable");
        return;
    };
    let shm = std::path::Path::new("/dev/shm");
    let data = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let d = data.path();
    std::fs::File::create(d.join("sentinel0")).unwrap();
    // The queue's size is fixed when an instance is made: lowered only until procwatch has
    // made its own, so that other programs are not affected longer than that.
    if std::fs::write(QUEUE, "64").is_err() {
        eprintln!("skipped: {QUEUE} is not writable here");
        return;
    }
    let restore = Restore(QUEUE, old);
    let pw = Procwatch::start(&format!("watches:\n  - name: w\n    path: {}\n", d.display()), &[]);
    pw.wait_scrape(Duration::from_secs(30), "the watch to be up", |s| {
        s.get("procwatch_file_watch_up", &[("watch", "w")]) == Some(1.0)
    });
    drop(restore);

    // Directories, each watched before it is filled: the fill (far more than 64 events, and
    // a new directory with files in each) is made while procwatch is stopped, so that none of
    // it is read before the queue overflows. (Filled while procwatch runs, the overflow this
    // test needs was a race: a watch thread that kept pace with the burst saw none.)
    let mut made = 0;
    for i in 0..20 {
        let dir = d.join(format!("d{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(dir.join("deep")).unwrap();
        made += 2;
    }
    pw.wait_scrape(Duration::from_secs(30), "the directories", |s| {
        events(s, "create") >= made
    });
    let sup = pw.supervisor_pid();
    // SAFETY: plain syscall to procwatch's supervisor, continued below.
    unsafe { libc::kill(sup, libc::SIGSTOP) };
    for i in 0..20 {
        let dir = d.join(format!("d{i}"));
        for j in 0..100 {
            std::fs::write(dir.join(format!("f{j}")), b"x").unwrap();
            made += 1;
        }
        for j in 0..20 {
            std::fs::File::create(dir.join(format!("deep/g{j}"))).unwrap();
            made += 1;
        }
        std::fs::create_dir(dir.join("late")).unwrap();
        made += 1;
        for j in 0..5 {
            std::fs::File::create(dir.join(format!("late/h{j}"))).unwrap();
            made += 1;
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(sup, libc::SIGCONT) };
    let s = pw.wait_scrape(Duration::from_secs(30), "the creates", |s| events(s, "create") >= made);
    let overflows = s
        .get("procwatch_file_watch_overflows_total", &[("watch", "w")])
        .unwrap();
    assert!(overflows >= 1.0, "the burst overflowed a 64-event queue");
    assert!(pw.stderr().contains("inotify queue overflowed"), "the loss is logged");
    // The queue is empty again: a rename is seen, and nothing more is counted.
    std::fs::rename(d.join("sentinel0"), d.join("sentinel1")).unwrap();
    pw.wait_scrape(Duration::from_secs(30), "the sentinel", |s| events(s, "rename") >= 1);
    assert_settles(&pw, [made, 0, 1, 0]);

    for i in 0..20 {
        std::fs::remove_dir_all(d.join(format!("d{i}"))).unwrap();
    }
    pw.wait_scrape(Duration::from_secs(30), "the removes", |s| events(s, "remove") >= made);
    std::fs::rename(d.join("sentinel1"), d.join("sentinel2")).unwrap();
    pw.wait_scrape(Duration::from_secs(30), "the sentinel", |s| events(s, "rename") >= 2);
    assert_settles(&pw, [made, made, 2, 0]);
    let s = pw.scrape();
    eprintln!(
        "{made} creates and removes counted exactly through {} overflows",
        s.get("procwatch_file_watch_overflows_total", &[("watch", "w")])
            .unwrap()
    );
}
