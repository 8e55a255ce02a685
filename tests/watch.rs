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
    // `up` turns 0 the moment the root's removal is read, but the removal of `a`, read just
    // before it, is published only at the end of that read: wait for both.
    let s = pw.wait_scrape(T, "the watch to go down and a's removal", |s| {
        up(s, "w") == Some(0.0) && events(s, "w", "remove") >= 1.0
    });
    assert_eq!(events(&s, "w", "remove"), 1.0, "the file in it was removed once");
    fs::create_dir(&dir).unwrap();
    pw.wait_scrape(T, "the watch to come back", |s| up(s, "w") == Some(1.0));
    File::create(dir.join("b")).unwrap();
    chmod(&dir.join("b"), 0o600);
    let s = pw.wait_scrape(T, "the sentinel", |s| events(s, "w", "other") >= 1.0);
    assert_eq!(counts(&s, "w"), [1, 0, 1, 0, 1]);
}

/// A fast directory for bursts: tmpfs where there is one.
fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn other_sentinel(pw: &Procwatch, file: &Path, n: f64) -> Scrape {
    chmod(file, 0o600 + n as u32 % 2 * 0o40);
    pw.wait_scrape(T, "the sentinel", |s| events(s, "w", "other") >= n)
}

/// Once a sentinel is counted, what came before it is counted too, but for names found by
/// listing a new directory, which are counted when the read of the queue ends, a moment later:
/// the counts must settle on `want` (and a wrong count shows itself when they do not).
fn assert_settles(pw: &Procwatch, watch: &str, want: [u64; 5]) -> Scrape {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = pw.scrape();
        if counts(&s, watch) == want || std::time::Instant::now() > deadline {
            assert_eq!(counts(&s, watch), want, "[create, modify, remove, rename, other]");
            return s;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_burst_is_counted_exactly_whatever_the_queue_did() {
    // Creates, then removes: whether or not the kernel queue overflowed, what the re-listing
    // finds makes the counts exact again (tests/inotify_limits.rs forces the overflow). A
    // sentinel made while the queue is full would be lost with the rest, so each comes once
    // the burst is counted, and shows that nothing more is.
    let data = fast_tempdir();
    let d = data.path();
    File::create(d.join("sentinel")).unwrap();
    let pw = Procwatch::start(&config(d, ""), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    const N: usize = 100_000;
    let burst = Duration::from_secs(120);
    for i in 0..N {
        File::create(d.join(format!("f{i}"))).unwrap();
    }
    pw.wait_scrape(burst, "the creates", |s| events(s, "w", "create") >= N as f64);
    other_sentinel(&pw, &d.join("sentinel"), 1.0);
    assert_settles(&pw, "w", [N as u64, 0, 0, 0, 1]);
    for i in 0..N {
        fs::remove_file(d.join(format!("f{i}"))).unwrap();
    }
    pw.wait_scrape(burst, "the removes", |s| events(s, "w", "remove") >= N as f64);
    other_sentinel(&pw, &d.join("sentinel"), 2.0);
    let s = assert_settles(&pw, "w", [N as u64, 0, N as u64, 0, 2]);
    let overflows = s
        .get("procwatch_file_watch_overflows_total", &[("watch", "w")])
        .unwrap();
    eprintln!("{N} creates and {N} removes counted exactly, {overflows} overflows");
}

#[test]
fn renames_count_when_either_name_is_wanted() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    for name in ["a.tmp", "b.csv", "c.tmp", "d.txt", "e.csv"] {
        File::create(d.join(name)).unwrap();
    }
    fs::create_dir(d.join("sub")).unwrap();
    let pw = Procwatch::start(&config(d, "    include: ['*.csv']\n    exclude: ['*.tmp']\n"), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    fs::rename(d.join("a.tmp"), d.join("a.csv")).unwrap(); // into the globs: 1
    fs::rename(d.join("b.csv"), d.join("b.tmp")).unwrap(); // out of them: 1
    fs::rename(d.join("c.tmp"), d.join("c.txt")).unwrap(); // neither: 0
    fs::rename(d.join("d.txt"), d.join("d.csv")).unwrap(); // into them: 1
    fs::rename(d.join("e.csv"), d.join("sub/e.csv")).unwrap(); // across directories: 1
    other_sentinel(&pw, &d.join("a.csv"), 1.0);
    assert_settles(&pw, "w", [0, 0, 0, 4, 1]);
}

#[test]
fn concurrent_renames_are_paired_by_cookie() {
    // Two threads rename across directories at once, so that one rename's IN_MOVED_FROM and
    // IN_MOVED_TO often have the other's between them in the queue.
    let data = fast_tempdir();
    let d = data.path().to_path_buf();
    const N: usize = 3000;
    for t in 0..2 {
        for sub in ["from", "to"] {
            fs::create_dir_all(d.join(format!("{sub}{t}"))).unwrap();
        }
        for i in 0..N {
            File::create(d.join(format!("from{t}/f{i}"))).unwrap();
        }
    }
    File::create(d.join("sentinel")).unwrap();
    let pw = Procwatch::start(&config(&d, ""), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    std::thread::scope(|scope| {
        for t in 0..2 {
            let d = &d;
            scope.spawn(move || {
                for i in 0..N {
                    fs::rename(d.join(format!("from{t}/f{i}")), d.join(format!("to{t}/f{i}"))).unwrap();
                }
            });
        }
    });
    let s = other_sentinel(&pw, &d.join("sentinel"), 1.0);
    assert_eq!(counts(&s, "w"), [0, 0, 0, 2 * N as u64, 1]);
}

#[test]
fn a_thousand_watches_share_one_inotify_instance() {
    // Past fs.inotify.max_user_instances (128 by default): one instance serves them all.
    let data = tempfile::tempdir().unwrap();
    const N: usize = 1000;
    let mut yaml = String::from("watches:\n");
    for i in 0..N {
        let dir = data.path().join(format!("d{i}"));
        fs::create_dir(&dir).unwrap();
        yaml += &format!("  - name: w{i}\n    path: {}\n", dir.display());
    }
    let pw = Procwatch::start(&yaml, &[]);
    let all_up = |s: &Scrape| (0..N).all(|i| up(s, &format!("w{i}")) == Some(1.0));
    pw.wait_scrape(T, "every watch to be up", all_up);
    for i in [0, N / 2, N - 1] {
        File::create(data.path().join(format!("d{i}/f"))).unwrap();
    }
    // Each watch's counts are published on their own: wait for all three, then check them
    // all (a scrape may come between two watches' publishing).
    let s = pw.wait_scrape(T, "the creates", |s| {
        [0, N / 2, N - 1]
            .iter()
            .all(|i| events(s, &format!("w{i}"), "create") >= 1.0)
    });
    for i in 0..N {
        let want = if [0, N / 2, N - 1].contains(&i) { 1.0 } else { 0.0 };
        assert_eq!(events(&s, &format!("w{i}"), "create"), want, "w{i}");
        assert_eq!(
            s.get("procwatch_file_watch_errors_total", &[("watch", &format!("w{i}"))]),
            Some(0.0)
        );
    }
    let inotify_fds = fs::read_dir(format!("/proc/{}/fd", pw.supervisor_pid()))
        .unwrap()
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("inotify")))
        .count();
    assert_eq!(inotify_fds, 1, "one inotify instance for {N} watches");
    assert!(!pw.stderr().contains("cannot watch"), "{}", pw.stderr());
}

#[test]
fn modify_is_one_per_write_session_whatever_the_kernel_folds() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    for i in 0..5 {
        File::create(d.join(format!("f{i}"))).unwrap();
    }
    File::create(d.join("log")).unwrap();
    File::create(d.join("sentinel")).unwrap();
    let pw = Procwatch::start(&config(d, ""), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));

    // Opened, written (many times, back to back) and closed, three times per file: 15.
    for _ in 0..3 {
        for i in 0..5 {
            let mut f = OpenOptions::new().append(true).open(d.join(format!("f{i}"))).unwrap();
            for _ in 0..50 {
                f.write_all(b"x").unwrap();
            }
        }
    }
    // Created and closed without a write: a create, not a modify.
    File::create(d.join("empty")).unwrap();
    // Opened for writing and closed without a write: nothing.
    drop(OpenOptions::new().append(true).open(d.join("f0")).unwrap());
    // A directory made and filled at once, before its watch can exist: each file written
    // there is one modify all the same.
    fs::create_dir(d.join("new")).unwrap();
    for i in 0..20 {
        fs::write(d.join(format!("new/n{i}")), b"data").unwrap();
    }
    // A file kept open: one modify per burst of writes (a burst ends after 1 s of quiet).
    let mut log = OpenOptions::new().append(true).open(d.join("log")).unwrap();
    for _ in 0..100 {
        log.write_all(b"line\n").unwrap();
    }
    let want_modify = 15.0 + 20.0 + 1.0;
    pw.wait_scrape(T, "the modifies", |s| events(s, "w", "modify") >= want_modify);
    for _ in 0..100 {
        log.write_all(b"line\n").unwrap();
    }
    pw.wait_scrape(T, "the second burst", |s| events(s, "w", "modify") >= want_modify + 1.0);
    drop(log); // the burst was counted already: closing adds nothing
    let s = other_sentinel(&pw, &d.join("sentinel"), 1.0);
    //                        create     modify                remove rename other
    assert_eq!(counts(&s, "w"), [1 + 1 + 20, want_modify as u64 + 1, 0, 0, 1]);
}

#[test]
fn a_git_dir_glob_excludes_the_dir_itself() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    File::create(d.join("sentinel")).unwrap();
    let pw = Procwatch::start(&config(d, "    exclude: ['.git/**']\n"), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    fs::create_dir(d.join(".git")).unwrap();
    fs::write(d.join(".git/HEAD"), b"ref").unwrap();
    fs::create_dir(d.join(".git/objects")).unwrap();
    fs::remove_dir_all(d.join(".git")).unwrap();
    File::create(d.join("a")).unwrap();
    let s = other_sentinel(&pw, &d.join("sentinel"), 1.0);
    assert_eq!(counts(&s, "w"), [1, 0, 0, 0, 1]);
}

#[test]
fn files_made_as_a_removed_root_comes_back_are_counted() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("d");
    fs::create_dir(&dir).unwrap();
    let pw = Procwatch::start(&config(&dir, ""), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    fs::remove_dir(&dir).unwrap();
    pw.wait_scrape(T, "the watch to go down", |s| up(s, "w") == Some(0.0));
    // Back, and filled at once: before procwatch can see it is back.
    fs::create_dir(&dir).unwrap();
    fs::create_dir(dir.join("sub")).unwrap();
    for i in 0..10 {
        fs::write(dir.join(format!("sub/f{i}")), b"x").unwrap();
    }
    pw.wait_scrape(T, "the watch to come back", |s| up(s, "w") == Some(1.0));
    File::create(dir.join("sentinel")).unwrap();
    let s = other_sentinel(&pw, &dir.join("sentinel"), 1.0);
    pw.wait_scrape(T, "the writes", |s| events(s, "w", "modify") >= 10.0);
    assert_eq!(counts(&s, "w")[0], 1 + 10 + 1, "sub, its files, the sentinel");
}

/// Unmounts what a test mounted, however it ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_mount_made_inside_a_watch_is_said_and_watched() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let (tree, src) = (d.join("tree"), d.join("src"));
    fs::create_dir_all(tree.join("m")).unwrap();
    fs::create_dir(&src).unwrap();
    let pw = Procwatch::start(&config(&tree, ""), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    let mounted = std::process::Command::new("mount")
        .args(["--bind".as_ref(), src.as_os_str(), tree.join("m").as_os_str()])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot bind-mount here (needs root and mount(8))");
        return;
    }
    let _unmount = Unmount(tree.join("m"));
    pw.wait_scrape(T, "the mount to be counted", |s| {
        s.get("procwatch_file_watch_errors_total", &[("watch", "w")]) == Some(1.0)
    });
    File::create(tree.join("m/through")).unwrap();
    File::create(src.join("beside")).unwrap();
    File::create(tree.join("sentinel")).unwrap();
    let s = other_sentinel(&pw, &tree.join("sentinel"), 1.0);
    assert_eq!(counts(&s, "w"), [3, 0, 0, 0, 1]);
    assert_eq!(
        pw.stderr().matches("mounted inside the watch").count(),
        1,
        "{}",
        pw.stderr()
    );
}

#[test]
fn a_path_too_long_for_inotify_is_one_line_and_counted() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    // Nested directories past PATH_MAX (4096), made one level at a time through descriptors.
    let name = "x".repeat(200);
    let mut fd = File::open(d).unwrap();
    for _ in 0..25 {
        let c = std::ffi::CString::new(name.as_str()).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: valid descriptor and NUL-terminated name.
        assert_eq!(unsafe { libc::mkdirat(fd.as_raw_fd(), c.as_ptr(), 0o755) }, 0);
        // SAFETY: as above; the result is checked.
        let next = unsafe { libc::openat(fd.as_raw_fd(), c.as_ptr(), libc::O_DIRECTORY | libc::O_CLOEXEC) };
        assert!(next >= 0);
        // SAFETY: a fresh descriptor we own.
        fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(next) };
    }
    File::create(d.join("sentinel")).unwrap();
    let pw = Procwatch::start(&config(d, ""), &[]);
    let s = pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    assert!(s.get("procwatch_file_watch_errors_total", &[("watch", "w")]) >= Some(1.0));
    assert_eq!(
        pw.stderr().matches("path too long for inotify").count(),
        1,
        "{}",
        pw.stderr()
    );
    File::create(d.join("a")).unwrap();
    let s = other_sentinel(&pw, &d.join("sentinel"), 1.0);
    assert_eq!(counts(&s, "w"), [1, 0, 0, 0, 1]);
}

/// A source tree of `dirs` directories nested `depth` deep, `files` files each, made in a
/// scratch directory and packed with tar(1). Returns (the archive, files + directories made).
fn source_tarball(scratch: &Path, dirs: usize, depth: usize, files: usize) -> (std::path::PathBuf, u64) {
    let src = scratch.join("project");
    let mut made = 1; // project itself
    for i in 0..dirs {
        let mut p = src.clone();
        for level in 0..depth {
            p = p.join(format!("m{}_{level}", i % (level + 3)));
        }
        p = p.join(format!("pkg{i}"));
        fs::create_dir_all(&p).unwrap();
        for j in 0..files {
            fs::write(p.join(format!("f{j}.rs")), format!("// file {j}\nfn f{j}() {{}}\n")).unwrap();
        }
    }
    // Count what tar will make: every directory and file under project, and project.
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            made += 1;
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    let tar = scratch.join("project.tar");
    let ok = std::process::Command::new("tar")
        .args([
            "-cf".as_ref(),
            tar.as_os_str(),
            "-C".as_ref(),
            scratch.as_os_str(),
            "project".as_ref(),
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    fs::remove_dir_all(&src).unwrap();
    (tar, made)
}

#[test]
fn a_source_tree_extracted_and_removed_is_counted_exactly() {
    let scratch = tempfile::tempdir().unwrap();
    let (tar, made) = source_tarball(scratch.path(), 300, 3, 12);
    assert!(made > 3000, "thousands of entries: {made}");
    let data = fast_tempdir();
    let d = data.path();
    File::create(d.join("sentinel0")).unwrap();
    let pw = Procwatch::start(&config(d, ""), &[]);
    pw.wait_scrape(T, "the watch to be up", |s| up(s, "w") == Some(1.0));
    let run = |cmd: &mut std::process::Command| assert!(cmd.status().unwrap().success());
    run(std::process::Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(d));
    // tar sets times and modes (`other`) and writes (`modify`): the sentinel is a rename.
    fs::rename(d.join("sentinel0"), d.join("sentinel1")).unwrap();
    pw.wait_scrape(T, "the sentinel", |s| events(s, "w", "rename") >= 1.0);
    // A non-empty file that tar closed before its directory was watched was found by listing:
    // its `modify` counts once the quiet period (1 s) has passed. Take the counts after that.
    std::thread::sleep(Duration::from_millis(1300));
    let s = pw.scrape();
    let [_, modify, _, _, other] = counts(&s, "w");
    assert_settles(&pw, "w", [made, modify, 0, 1, other]);
    run(std::process::Command::new("rm").arg("-rf").arg(d.join("project")));
    fs::rename(d.join("sentinel1"), d.join("sentinel2")).unwrap();
    pw.wait_scrape(T, "the sentinel", |s| events(s, "w", "rename") >= 2.0);
    assert_settles(&pw, "w", [made, modify, made, 2, other]);
}
