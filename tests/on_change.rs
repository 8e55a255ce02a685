//! `on_change` under the real binary: a burst of changes is one restart or one signal, after
//! `debounce` of quiet; opens and reads never act; a program stopped by hand is left alone;
//! the action is counted in procwatch_file_watch_triggers_total and is not a policy restart.

mod util;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use util::{Procwatch, Scrape, http, marker};

const T: Duration = Duration::from_secs(30);

/// A program that logs each start and each SIGHUP to `log`, one line each.
fn program(name: &str, log: &Path, on_change: &str) -> String {
    format!(
        "  - name: {name}\n    command: [sh, -c, 'echo start >> {log}; trap \"echo hup >> {log}\" HUP; while :; do sleep 0.05; done']\n    on_change: {on_change}\n",
        log = log.display()
    )
}

fn lines(log: &Path, what: &str) -> usize {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == what)
        .count()
}

fn triggers(s: &Scrape, watch: &str, name: &str) -> Option<f64> {
    s.get(
        "procwatch_file_watch_triggers_total",
        &[("watch", watch), ("name", name)],
    )
}

#[test]
fn a_burst_of_writes_is_one_restart_and_one_signal() {
    let watched = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (r_log, s_log) = (logs.path().join("r"), logs.path().join("s"));
    for i in 0..10 {
        fs::write(watched.path().join(format!("f{i}")), b"old").unwrap();
    }
    let yaml = format!(
        "processes:\n{}{}watches:\n  - name: src\n    path: {}\n",
        program("r", &r_log, "{watch: src, action: restart, debounce: 1s}"),
        program("s", &s_log, "{watch: src, action: signal, signal: HUP, debounce: 1s}"),
        watched.path().display()
    );
    let pw = Procwatch::start_marked(&yaml, &["--web.enable-lifecycle"], &marker("on-change"));
    pw.wait_scrape(T, "both programs up and the watch", |s| {
        s.prog("procwatch_process_up", "r") == Some(1.0)
            && s.prog("procwatch_process_up", "s") == Some(1.0)
            && s.get("procwatch_file_watch_up", &[("watch", "src")]) == Some(1.0)
    });
    util::wait_for(T, "both programs to log their start", || {
        (lines(&r_log, "start") == 1 && lines(&s_log, "start") == 1).then_some(())
    });
    let pid = pw.scrape().prog("procwatch_process_pid", "r").unwrap();

    // 100 writes, each its own open-write-close, back to back: one burst. The debounce is long
    // beside the loop (a few ms) so that a loaded test machine pausing the loop cannot split it.
    let burst = std::time::Instant::now();
    for i in 0..100 {
        fs::write(watched.path().join(format!("f{}", i % 10)), format!("new {i}")).unwrap();
    }
    assert!(
        burst.elapsed() < Duration::from_secs(1),
        "the 100 writes took {:?}, longer than the debounce: the test machine is too loaded",
        burst.elapsed()
    );
    let s = pw.wait_scrape(T, "one action each", |s| {
        triggers(s, "src", "r") == Some(1.0) && triggers(s, "src", "s") == Some(1.0)
    });
    assert_eq!(
        s.get("procwatch_file_events_total", &[("watch", "src"), ("kind", "modify")]),
        Some(100.0)
    );
    util::wait_for(T, "the restart and the signal to land", || {
        (lines(&r_log, "start") == 2 && lines(&s_log, "hup") == 1).then_some(())
    });
    let s = pw.wait_scrape(T, "r running again", |s| {
        s.prog("procwatch_process_up", "r") == Some(1.0)
    });
    assert_ne!(s.prog("procwatch_process_pid", "r"), Some(pid), "r was restarted");
    assert_eq!(
        s.prog("procwatch_process_restarts_total", "r"),
        Some(0.0),
        "not a policy restart"
    );
    for action in ["restart", "signal"] {
        for name in ["r", "s"] {
            let hand = s.get(
                "procwatch_process_control_actions_total",
                &[("name", name), ("action", action)],
            );
            assert_eq!(hand, Some(0.0), "{name} {action}: not an action by hand");
        }
    }

    // Opens and reads are no change: in a burst's time and more, nothing acts.
    for i in 0..100 {
        let mut text = String::new();
        File::open(watched.path().join(format!("f{}", i % 10)))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(2500)); // 2.5 debounces: time for a wrong action
    let s = pw.scrape();
    assert_eq!(
        (triggers(&s, "src", "r"), triggers(&s, "src", "s")),
        (Some(1.0), Some(1.0))
    );
    assert_eq!((lines(&r_log, "start"), lines(&s_log, "hup")), (2, 1));

    // A program stopped by hand stays stopped: on_change does not start it.
    let (status, _, body) = http(&pw.addr, "POST", "/api/v1/programs/r/stop", "").unwrap();
    assert_eq!(status, 200, "{body}");
    File::create(watched.path().join("late"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    pw.wait_scrape(T, "s to act on the late write", |s| {
        triggers(s, "src", "s") == Some(2.0)
    });
    let s = pw.scrape();
    assert_eq!(triggers(&s, "src", "r"), Some(1.0), "r is stopped by hand: no action");
    assert_eq!(s.prog("procwatch_process_up", "r"), Some(0.0));
    assert_eq!(lines(&r_log, "start"), 2);
}
