//! Real inotify under the real binary: exact counts by kind, recursion, paths that come and
//! go, and a burst that either counts exactly or says it lost events.
//!
//! Each test ends its burst of activity with a sentinel event of a kind it has not used since
//! and waits for it: events are counted in order, so once the sentinel is counted every event
//! before it has been counted too, and the exact figures can be asserted, not approached.

mod util;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use util::{Procwatch, Scrape};

const T: Duration = Duration::from_secs(30);

fn events(s: &Scrape, watch: &str, kind: &str) -> f64 {
    s.get("procwatch_file_events_total", &[("watch", watch), ("kind", kind)])
        .unwrap_or(-1.0)
}

fn counts(s: &Scrape, watch: &str) -> [u64; 5] {
    ["create", "modify", "remove", "rename", "other"].map(|k| events(s, watch, k) as u64)
}

fn up(s: &Scrape, watch: &str) -> Option<f64> {
    s.get("procwatch_file_watch_up", &[("watch", watch)])
}

fn config(path: &Path, extra: &str) -> String {
    format!("watches:\n  - name: w\n    path: {}\n{extra}", path.display())
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn exact_counts_by_kind_with_recursion_and_excludes() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let pw = Procwatch::start(&config(d, "    exclude: ['*.tmp']\n"), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));

    for i in 0..10 {
        File::create(d.join(format!("f{i}"))).unwrap();
    }
    for i in 0..3 {
        File::create(d.join(format!("x{i}.tmp"))).unwrap(); // excluded
    }
    for i in 0..5 {
        OpenOptions::new()
            .append(true)
            .open(d.join(format!("f{i}")))
            .unwrap()
            .write_all(b"x")
            .unwrap();
    }
    for i in 0..3 {
        fs::rename(d.join(format!("f{i}")), d.join(format!("g{i}"))).unwrap();
    }
    for i in 3..7 {
        fs::remove_file(d.join(format!("f{i}"))).unwrap();
    }
    fs::remove_file(d.join("x0.tmp")).unwrap(); // excluded
    // A directory made after start, filled at once, with a directory inside it: nothing in
    // it may be lost to the time it takes to start watching it.
    fs::create_dir(d.join("sub")).unwrap();
    for i in 0..20 {
        File::create(d.join(format!("sub/s{i}"))).unwrap();
    }
    fs::create_dir(d.join("sub/deep")).unwrap();
    for i in 0..5 {
        File::create(d.join(format!("sub/deep/e{i}"))).unwrap();
    }
    // Sentinel: the only metadata change so far.
    chmod(&d.join("f7"), 0o600);
    let s = pw.wait_scrape(T, "the sentinel", |s| events(s, "w", "other") >= 1.0);
    //            create        modify remove rename other
    let want = [10 + 1 + 20 + 1 + 5, 5, 4, 3, 1];
    assert_eq!(counts(&s, "w"), want, "[create, modify, remove, rename, other]");

    // Inside the new directories, now watched: a removal and a rename across them.
    fs::remove_file(d.join("sub/deep/e0")).unwrap();
    fs::rename(d.join("sub/deep/e1"), d.join("sub/e1")).unwrap();
    chmod(&d.join("f8"), 0o600);
    let s = pw.wait_scrape(T, "the second sentinel", |s| events(s, "w", "other") >= 2.0);
    assert_eq!(counts(&s, "w"), [want[0], 5, 5, 4, 2]);

    // Removing the subtree: every file and directory is one removal.
    fs::remove_dir_all(d.join("sub")).unwrap();
    chmod(&d.join("f9"), 0o600);
    let s = pw.wait_scrape(T, "the third sentinel", |s| events(s, "w", "other") >= 3.0);
    // sub has s0..s19, e1 and deep; deep has e2..e4; and sub itself.
    assert_eq!(counts(&s, "w"), [want[0], 5, 5 + 20 + 1 + 1 + 3 + 1, 4, 3]);
}

#[test]
fn non_recursive_watch_sees_a_new_directory_but_not_its_files() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let pw = Procwatch::start(&config(d, "    recursive: false\n"), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    fs::create_dir(d.join("sub")).unwrap();
    for i in 0..5 {
        File::create(d.join(format!("sub/f{i}"))).unwrap();
    }
    File::create(d.join("top")).unwrap();
    chmod(&d.join("top"), 0o600);
    let s = pw.wait_scrape(T, "the sentinel", |s| events(s, "w", "other") >= 1.0);
    assert_eq!(counts(&s, "w"), [2, 0, 0, 0, 1]);
}

#[test]
fn include_globs_count_only_matching_paths() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let pw = Procwatch::start(&config(d, "    include: ['*.csv']\n"), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    fs::create_dir(d.join("in")).unwrap();
    for name in ["a.csv", "b.txt", "in/c.csv", "in/d.json"] {
        File::create(d.join(name)).unwrap();
    }
    chmod(&d.join("b.txt"), 0o600); // not counted
    chmod(&d.join("a.csv"), 0o600);
    let s = pw.wait_scrape(T, "the sentinel", |s| events(s, "w", "other") >= 1.0);
    assert_eq!(counts(&s, "w"), [2, 0, 0, 0, 1]);
}

#[test]
fn a_path_that_appears_later_is_picked_up() {
    let data = tempfile::tempdir().unwrap();
    let later = data.path().join("later");
    let pw = Procwatch::start(&config(&later, ""), &[]);
    let s = pw.scrape();
    assert_eq!(up(&s, "w"), Some(0.0));
    fs::create_dir(&later).unwrap();
    pw.wait_scrape(T, "the watch to come up", |s| up(s, "w") == Some(1.0));
    File::create(later.join("a")).unwrap();
    chmod(&later.join("a"), 0o600);
    let s = pw.wait_scrape(T, "the sentinel", |s| events(s, "w", "other") >= 1.0);
    assert_eq!(counts(&s, "w"), [1, 0, 0, 0, 1]);
    assert_eq!(pw.stderr().matches("watch path not there").count(), 1, "logged once");
}

#[test]
fn a_watched_directory_removed_and_made_again_is_watched_again() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("d");
    fs::create_dir(&dir).unwrap();
    File::create(dir.join("a")).unwrap();
    let pw = Procwatch::start(&config(&dir, ""), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    fs::remove_dir_all(&dir).unwrap();
    let s = pw.wait_scrape(T, "the watch to go down", |s| up(s, "w") == Some(0.0));
    assert_eq!(events(&s, "w", "remove"), 1.0, "the file in it was removed");
    fs::create_dir(&dir).unwrap();
    pw.wait_scrape(T, "the watch to come back", |s| up(s, "w") == Some(1.0));
    File::create(dir.join("b")).unwrap();
    chmod(&dir.join("b"), 0o600);
    let s = pw.wait_scrape(T, "the sentinel", |s| events(s, "w", "other") >= 1.0);
    assert_eq!(counts(&s, "w"), [1, 0, 1, 0, 1]);
}

#[test]
fn a_burst_is_counted_exactly_or_its_loss_is_counted() {
    // tmpfs where there is one: the burst is then as fast as the kernel can make it.
    let shm = Path::new("/dev/shm");
    let data = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let d = data.path();
    File::create(d.join("sentinel")).unwrap();
    let pw = Procwatch::start(&config(d, ""), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    const N: usize = 100_000;
    for i in 0..N {
        File::create(d.join(format!("f{i}"))).unwrap();
    }
    for i in 0..N {
        fs::remove_file(d.join(format!("f{i}"))).unwrap();
    }
    chmod(&d.join("sentinel"), 0o600);
    let s = pw.wait_scrape(Duration::from_secs(60), "the sentinel", |s| {
        events(s, "w", "other") >= 1.0
    });
    let overflows = s
        .get("procwatch_file_watch_overflows_total", &[("watch", "w")])
        .unwrap();
    let [create, modify, remove, rename, other] = counts(&s, "w");
    assert_eq!((modify, rename, other), (0, 0, 1));
    if overflows == 0.0 {
        assert_eq!((create, remove), (N as u64, N as u64), "no overflow, so no loss");
    } else {
        assert!(create + remove < 2 * N as u64, "an overflow lost events");
        assert!(pw.stderr().contains("overflowed"), "the loss is logged");
    }
    eprintln!("burst of {N} creates + {N} removes: counted {create} + {remove}, {overflows} overflows");
}
