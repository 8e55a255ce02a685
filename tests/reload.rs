//! Live reload through SIGHUP and POST /-/reload: the difference is applied, nothing else.

mod util;

use std::time::Duration;

use util::{Procwatch, Scrape, http, marker, procs_with};

const T: Duration = Duration::from_secs(30);

fn pid(s: &Scrape, name: &str) -> Option<i32> {
    s.prog("procwatch_process_pid", name).map(|p| p as i32)
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
        .unwrap_or_default()
}

fn program(name: &str, command: &str) -> String {
    format!("  - name: {name}\n    command: {command}\n")
}

fn reload_gauge(s: &Scrape) -> Option<f64> {
    s.get("procwatch_config_last_reload_successful", &[])
}

#[test]
fn sighup_applies_the_difference_by_name() {
    let m = marker("hup");
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    for d in [&a, &b, &c] {
        std::fs::create_dir(d).unwrap();
    }
    let watch = |name: &str, path: &std::path::Path| format!("  - name: {name}\n    path: {}\n", path.display());
    let before = format!(
        "processes:\n{}{}{}{}watches:\n{}{}",
        program("kept", "[sleep, '600']"),
        program("changed", "[sleep, '601']"),
        program("removed", "[sleep, '602']"),
        program("backingoff", "[sh, -c, 'exit 1']\n    backoff: {initial: 1m, max: 1m}"),
        watch("wkept", &a),
        watch("wremoved", &b),
    );
    let pw = Procwatch::start_marked(&before, &[], &m);
    let s0 = pw.wait_scrape(T, "everything up", |s| {
        ["kept", "changed", "removed"]
            .iter()
            .all(|n| s.prog("procwatch_process_up", n) == Some(1.0))
            && s.get(
                "procwatch_process_exits_total",
                &[("name", "backingoff"), ("reason", "failure")],
            ) == Some(1.0)
            && s.get("procwatch_file_watch_up", &[("watch", "wkept")]) == Some(1.0)
    });
    std::fs::File::create(a.join("one")).unwrap();
    pw.wait_scrape(T, "the first event", |s| {
        s.get("procwatch_file_events_total", &[("watch", "wkept"), ("kind", "create")]) == Some(1.0)
    });
    let (kept, changed) = (pid(&s0, "kept").unwrap(), pid(&s0, "changed").unwrap());

    let after = format!(
        "processes:\n{}{}{}{}watches:\n{}{}",
        program("kept", "[sleep, '600']"),
        program("changed", "[sleep, '611']"),
        program("added", "[sleep, '603']"),
        program("backingoff", "[sh, -c, 'exit 2']\n    backoff: {initial: 1m, max: 1m}"),
        watch("wkept", &a),
        watch("wadded", &c),
    );
    pw.write_config(&after);
    pw.signal(libc::SIGHUP);
    let s = pw.wait_scrape(T, "the reload", |s| {
        s.prog("procwatch_process_up", "added") == Some(1.0)
            && s.prog("procwatch_process_up", "changed") == Some(1.0)
            && s.get("procwatch_file_watch_up", &[("watch", "wadded")]) == Some(1.0)
            && s.get("procwatch_process_last_exit_code", &[("name", "backingoff")]) == Some(2.0)
    });
    assert_eq!(pid(&s, "kept"), Some(kept), "an unchanged program keeps its process");
    let new_changed = pid(&s, "changed").unwrap();
    assert_ne!(new_changed, changed);
    assert_eq!(
        cmdline(new_changed),
        "sleep 611",
        "the changed program runs its new command"
    );
    assert!(
        !s.text.contains("name=\"removed\""),
        "a removed program's series are gone"
    );
    assert!(
        !s.text.contains("watch=\"wremoved\""),
        "a removed watch's series are gone"
    );
    // The changed program's counters go on: its stop by the reload is one exit.
    assert_eq!(
        s.get(
            "procwatch_process_exits_total",
            &[("name", "changed"), ("reason", "signal")]
        ),
        Some(1.0)
    );
    // The unchanged watch kept counting through the reload.
    std::fs::File::create(a.join("two")).unwrap();
    pw.wait_scrape(T, "the second event", |s| {
        s.get("procwatch_file_events_total", &[("watch", "wkept"), ("kind", "create")]) == Some(2.0)
    });
    assert_eq!(reload_gauge(&s), Some(1.0));
    // The removed program is stopped, and nothing else of the old set runs.
    let procs: Vec<String> = procs_with(&m).into_iter().map(|(_, c)| c).collect();
    assert!(!procs.iter().any(|c| c == "sleep 602" || c == "sleep 601"), "{procs:?}");
    let line = util::wait_for(T, "the reload's log line", || {
        pw.stderr()
            .lines()
            .find(|l| l.contains("config reloaded"))
            .map(str::to_owned)
    });
    for part in [
        "programs_started=added ",
        "programs_stopped=removed ",
        "programs_restarted=backingoff,changed ",
        "programs_unchanged=kept ",
        "watches_started=wadded ",
        "watches_stopped=wremoved ",
        "watches_unchanged=wkept",
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
}

#[test]
fn a_broken_config_is_refused_whole() {
    let yaml = format!("processes:\n{}", program("keep", "[sleep, '600']"));
    let pw = Procwatch::start(&yaml, &["--web.enable-lifecycle"]);
    let s0 = pw.wait_scrape(T, "keep up", |s| s.prog("procwatch_process_up", "keep") == Some(1.0));
    let ts0 = s0
        .get("procwatch_config_last_reload_success_timestamp_seconds", &[])
        .unwrap();
    assert!(ts0 > 1e9);

    // A valid program first, then a typo: nothing of it may be applied.
    pw.write_config(&format!(
        "processes:\n{}{}    stop_signal: TREM\n",
        program("new", "[sleep, '601']"),
        program("keep", "[sleep, '600']")
    ));
    pw.signal(libc::SIGHUP);
    let s = pw.wait_scrape(T, "the refusal", |s| reload_gauge(s) == Some(0.0));
    assert_eq!(pid(&s, "keep"), pid(&s0, "keep"));
    assert!(!s.text.contains("name=\"new\""));
    let log = pw.stderr();
    assert!(log.contains("procwatch.yaml:6:18: processes[1].stop_signal"), "{log}");

    // Over HTTP: 500 with the message.
    let (status, _, body) = http(&pw.addr, "POST", "/-/reload", "").unwrap();
    assert_eq!(status, 500);
    assert!(body.contains("stop_signal") && body.contains("TREM"), "{body}");

    // A later good reload: gauge back to 1, timestamp moves, the new program starts.
    pw.write_config(&format!(
        "processes:\n{}{}",
        program("new", "[sleep, '601']"),
        program("keep", "[sleep, '600']")
    ));
    let (status, _, body) = http(&pw.addr, "POST", "/-/reload", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let s = pw.wait_scrape(T, "new up", |s| s.prog("procwatch_process_up", "new") == Some(1.0));
    assert_eq!(reload_gauge(&s), Some(1.0));
    assert!(
        s.get("procwatch_config_last_reload_success_timestamp_seconds", &[])
            .unwrap()
            > ts0
    );
    assert_eq!(pid(&s, "keep"), pid(&s0, "keep"));
}

#[test]
fn reload_over_http_needs_the_lifecycle_flag() {
    let pw = Procwatch::start("processes: []\n", &[]);
    pw.write_config(&format!("processes:\n{}", program("late", "[sleep, '600']")));
    assert_eq!(http(&pw.addr, "POST", "/-/reload", "").unwrap().0, 403);
    assert_eq!(http(&pw.addr, "GET", "/-/reload", "").unwrap().0, 405);
    assert!(!pw.scrape().text.contains("name=\"late\""), "nothing was reloaded");
}

#[test]
fn two_sighups_in_quick_succession_end_in_the_last_config() {
    let m = marker("hup2");
    let pw = Procwatch::start_marked(&format!("processes:\n{}", program("a", "[sleep, '600']")), &[], &m);
    pw.wait_scrape(T, "a up", |s| s.prog("procwatch_process_up", "a") == Some(1.0));
    pw.write_config(&format!("processes:\n{}", program("b", "[sleep, '601']")));
    pw.signal(libc::SIGHUP);
    pw.write_config(&format!("processes:\n{}", program("c", "[sleep, '602']")));
    pw.signal(libc::SIGHUP);
    let s = pw.wait_scrape(T, "c up and the rest gone", |s| {
        s.prog("procwatch_process_up", "c") == Some(1.0)
            && !s.text.contains("name=\"a\"")
            && !s.text.contains("name=\"b\"")
    });
    assert_eq!(reload_gauge(&s), Some(1.0));
    util::wait_for(T, "only c's process left", || {
        let procs: Vec<String> = procs_with(&m)
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| c.starts_with("sleep"))
            .collect();
        (procs == ["sleep 602"]).then_some(())
    });
}

#[test]
fn listen_address_is_not_changed_live_and_status_interval_is() {
    // No --web.listen-address: the config's listen_address is what procwatch listens on.
    let old = util::free_port();
    let (dir, config) = util::config_dir(&format!(
        "listen_address: 127.0.0.1:{old}\nstatus_interval: 0\nprocesses: []\n"
    ));
    let arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_unflagged(dir, config, &["--config", &arg], &util::marker("listen-reload"));
    assert_eq!(pw.addr, format!("127.0.0.1:{old}"));
    // Picked while procwatch holds `old`, so another port: two picks in a row, both before
    // the start, could be the same one.
    let new = util::free_port();
    assert_ne!(old, new);
    pw.write_config(&format!(
        "listen_address: 127.0.0.1:{new}\nstatus_interval: 100ms\nprocesses: []\n"
    ));
    pw.signal(libc::SIGHUP);
    util::wait_for(T, "the reload", || {
        pw.stderr().contains("config reloaded").then_some(())
    });
    assert!(pw.stderr().contains("listen_address changed"), "{}", pw.stderr());
    // Still served where it was; the new address waits for a restart.
    assert_eq!(http(&pw.addr, "GET", "/-/healthy", "").unwrap().0, 200);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", new)).is_err(),
        "the new listen_address was bound on reload"
    );
    util::wait_for(T, "status reports at the new interval", || {
        (pw.stdout().matches("procwatch status:").count() >= 2).then_some(())
    });
}

#[test]
fn a_removed_program_takes_descendants_that_left_its_session_with_it() {
    let m = marker("escaped");
    let pw = Procwatch::start_marked(
        &format!(
            "processes:\n{}{}",
            program("escapes", "[sh, -c, 'setsid sleep 605 & wait']"),
            program("stays", "[sleep, '600']")
        ),
        &[],
        &m,
    );
    util::wait_for(T, "the setsid child", || {
        procs_with(&m).iter().any(|(_, c)| c == "sleep 605").then_some(())
    });
    pw.write_config(&format!("processes:\n{}", program("stays", "[sleep, '600']")));
    pw.signal(libc::SIGHUP);
    // Gone with its program, not only when procwatch itself stops.
    util::wait_for(T, "the setsid child to be stopped with its program", || {
        (!procs_with(&m).iter().any(|(_, c)| c == "sleep 605")).then_some(())
    });
    assert_eq!(pw.scrape().prog("procwatch_process_up", "stays"), Some(1.0));
}

/// A program removed and added again by two reloads between scrapes is a new program: its
/// counters start again (a reset Prometheus sees), rather than staying at the old program's
/// values until the new one's pass them.
#[test]
fn a_program_removed_and_added_between_scrapes_starts_its_counters_again() {
    let m = marker("readd");
    let with = "status_interval: 0\nprocesses:\n  - name: keep\n    command: [sleep, '600']\n  - name: burner\n    command: [sh, -c, 'while :; do :; done']\n";
    let without = "status_interval: 0\nprocesses:\n  - name: keep\n    command: [sleep, '600']\n";
    let cpu = |s: &Scrape| {
        ["user", "system"]
            .iter()
            .filter_map(|mode| {
                s.get(
                    "procwatch_process_cpu_seconds_total",
                    &[("name", "burner"), ("mode", mode)],
                )
            })
            .sum::<f64>()
    };
    let pw = Procwatch::start_marked(with, &[], &m);
    let old = cpu(&pw.wait_scrape(T, "burner to burn 0.5 s", |s| cpu(s) >= 0.5));
    let reloads = |pw: &Procwatch| pw.stderr().matches("config reloaded").count();
    for (i, yaml) in [without, with].into_iter().enumerate() {
        pw.write_config(yaml);
        pw.signal(libc::SIGHUP);
        util::wait_for(T, "the reload", || (reloads(&pw) > i).then_some(()));
    }
    let s = pw.scrape();
    assert!(
        cpu(&s) < old,
        "the new burner's CPU starts from 0, not from the old one's {old}: {}",
        cpu(&s)
    );
    let new = cpu(&s);
    pw.wait_scrape(T, "the new burner's CPU to rise", |s| cpu(s) > new);
}
