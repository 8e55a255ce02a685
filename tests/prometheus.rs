//! The Prometheus and Grafana kit against the real tools: promtool on the rules, their tests,
//! the scrape configs and a live scrape; a real Prometheus scraping procwatch, asked every
//! query of every dashboard panel; the systemd unit through systemd-analyze.
//!
//! Without `prometheus`/`promtool` on PATH these tests say why and pass, unless
//! PROCWATCH_REQUIRE_PROMETHEUS is set (as .ci/run does), in which case they fail.

mod util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use util::{Procwatch, http, wait_for};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn repo(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A Prometheus tool's path, or `None` (with the reason printed) where it may be skipped.
fn tool(name: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        if std::env::var_os("PROCWATCH_REQUIRE_PROMETHEUS").is_some() {
            panic!("{name} is not on PATH and PROCWATCH_REQUIRE_PROMETHEUS is set (apt-get install prometheus)");
        }
        eprintln!("skipped: {name} is not on PATH (Debian: apt-get install prometheus)");
    }
    found
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo("dashboards/procwatch.json")).unwrap()).unwrap()
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// (panel title, expr) for every query of every panel.
fn panel_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
fn rules_rule_tests_and_scrape_configs_pass_promtool() {
    let Some(promtool) = tool("promtool") else { return };
    let dir = repo("deploy/prometheus");
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&dir),
    );
    let rules = std::fs::read_to_string(dir.join("alerts.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    assert!(out.contains(&format!("SUCCESS: {rules} rules found")), "{out}");
    run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(&dir),
    );
    run_ok(
        Command::new(&promtool)
            .args(["check", "config", "prometheus.yml"])
            .current_dir(&dir),
    );
    run_ok(
        Command::new(&promtool)
            .args(["check", "config", "compose.yml"])
            .current_dir(&dir),
    );
}

#[test]
fn every_alert_has_a_summary_and_description_and_a_test() {
    let rules = yaml(&repo("deploy/prometheus/alerts.yml"));
    let tests = std::fs::read_to_string(repo("deploy/prometheus/alerts_test.yml")).unwrap();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        let ann = &rule["annotations"];
        assert!(ann["summary"].as_str().is_some_and(|s| !s.is_empty()), "{name}");
        let desc = ann["description"].as_str().unwrap();
        if rule["expr"].as_str().unwrap().starts_with("procwatch_process") || desc.contains("Program") {
            assert!(desc.contains("{{ $labels.name }}"), "{name} names the program: {desc}");
        }
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has a promtool test"
        );
    }
}

#[test]
fn the_prometheus_rule_carries_the_same_rules() {
    let alerts = yaml(&repo("deploy/prometheus/alerts.yml"));
    let k8s = yaml(&repo("deploy/kubernetes/prometheusrule.yaml"));
    assert_eq!(k8s["kind"], "PrometheusRule");
    assert_eq!(k8s["spec"]["groups"], alerts["groups"]);
}

#[test]
fn the_dashboard_is_portable_and_complete() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |n: &str| {
        vars.iter()
            .find(|v| v["name"] == n)
            .unwrap_or_else(|| panic!("variable {n}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    for (n, metric) in [
        ("job", "procwatch_build_info"),
        ("instance", "procwatch_build_info"),
        ("name", "procwatch_process_up"),
    ] {
        let def = var(n)["definition"].as_str().unwrap();
        assert!(def.starts_with(&format!("label_values({metric}")), "{n}: {def}");
    }
    assert_eq!(var("name")["multi"], true);
    let text = serde_json::to_string(&d).unwrap();
    assert!(!text.contains("\"uid\":\"prometheus\""), "no fixed datasource uid");
    for p in panels(&d) {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert!(p["fieldConfig"]["defaults"]["unit"].is_string(), "{title} has a unit");
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            if expr.contains("rate(") {
                assert!(expr.contains("[$__rate_interval]"), "{title}: {expr}");
            }
            assert!(
                expr.contains("job=~\"$job\"") && expr.contains("instance=~\"$instance\""),
                "{title}: {expr}"
            );
        }
    }
    let exprs: String = panel_queries(&d).into_iter().map(|(_, e)| e).collect();
    for metric in [
        "procwatch_process_up",
        "procwatch_process_cpu_seconds_total",
        "procwatch_process_resident_memory_bytes",
        "procwatch_process_uptime_seconds",
        "procwatch_process_restarts_total",
        "procwatch_process_control_actions_total",
        "procwatch_process_exits_total",
        "procwatch_process_threads",
        "procwatch_process_open_fds",
        "procwatch_process_max_fds",
        "procwatch_process_read_bytes_total",
        "procwatch_process_write_bytes_total",
        "procwatch_process_major_page_faults_total",
        "procwatch_process_minor_page_faults_total",
        "procwatch_process_context_switches_total",
        "procwatch_process_swap_bytes",
        "procwatch_file_events_total",
        "procwatch_file_watch_overflows_total",
        "procwatch_file_watch_errors_total",
        "procwatch_config_last_reload_successful",
        "procwatch_process_ready",
        "procwatch_probe_success",
        "procwatch_probe_failures_total",
        "procwatch_probe_duration_seconds",
        "procwatch_process_oom_kills_total",
        "procwatch_process_memory_bytes",
        "procwatch_process_memory_peak_bytes",
        "procwatch_process_memory_max_bytes",
        "procwatch_process_pressure_waiting_seconds_total",
        "procwatch_process_pressure_stalled_seconds_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(exprs.contains(metric), "no panel shows {metric}");
    }
}

/// The unit's `KEY=value` lines (comments left out).
fn unit_keys(unit: &str) -> Vec<(&str, &str)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .collect()
}

/// cgroup mode under systemd: the unit delegates its cgroup and keeps none of the hardening
/// that would put procwatch in proc mode (ProtectControlGroups: cgroupfs read-only) or make
/// every spawn take the slow placement (RestrictNamespaces: clone3 fails with ENOSYS).
#[test]
fn the_systemd_unit_delegates_its_cgroup() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/procwatch.service")).unwrap();
    let keys = unit_keys(&unit);
    assert!(keys.contains(&("Delegate", "yes")), "no Delegate=yes:\n{unit}");
    for blocked in ["ProtectControlGroups", "RestrictNamespaces"] {
        assert!(
            keys.iter().all(|(k, _)| *k != blocked),
            "{blocked} blocks cgroup mode:\n{unit}"
        );
    }
    assert!(
        unit.contains("#DelegateSubgroup=supervisor"),
        "the unit says how systemd 254+ puts procwatch in its leaf"
    );
}

/// The unit's socket families include netlink: without it taskstats (context switches of
/// every thread, exited ones included) is refused and procwatch reads task/TID/status.
#[test]
fn the_systemd_unit_lets_procwatch_ask_taskstats() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/procwatch.service")).unwrap();
    let keys = unit_keys(&unit);
    let families: Vec<&str> = keys
        .iter()
        .filter(|(k, _)| *k == "RestrictAddressFamilies")
        .flat_map(|(_, v)| v.split_whitespace())
        .collect();
    assert!(
        families.is_empty() || families.contains(&"AF_NETLINK"),
        "RestrictAddressFamilies={families:?} refuses taskstats' netlink socket"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = which("systemd-analyze") else {
        // .ci/run installs it: there, its absence is a failure.
        if std::env::var_os("PROCWATCH_REQUIRE_SYSTEMD").is_some() {
            panic!("systemd-analyze is not on PATH and PROCWATCH_REQUIRE_SYSTEMD is set (apt-get install systemd)");
        }
        eprintln!("skipped: systemd-analyze is not on PATH (Debian: apt-get install systemd)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The unit as shipped, pointing at the binary under test instead of /usr/local/bin.
    let unit = std::fs::read_to_string(repo("deploy/systemd/procwatch.service"))
        .unwrap()
        .replace("/usr/local/bin/procwatch", util::BIN);
    let path = dir.path().join("procwatch.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(&analyze).arg("verify").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    // DelegateSubgroup= (systemd 254+) is shipped commented out: the unit must verify clean
    // on Debian 12's systemd 252 too. Where systemd knows it, it verifies clean uncommented.
    let version = Command::new(&analyze).arg("--version").output().unwrap();
    let version: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("systemd-analyze --version: systemd N (...)");
    let with_subgroup = std::fs::read_to_string(&path)
        .unwrap()
        .replace("#DelegateSubgroup=", "DelegateSubgroup=");
    std::fs::write(&path, with_subgroup).unwrap();
    let out = Command::new(&analyze).arg("verify").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    if version >= 254 {
        assert!(text.trim().is_empty(), "systemd {version}, DelegateSubgroup=:\n{text}");
    } else {
        eprintln!("systemd {version} predates DelegateSubgroup= (254): the unit keeps it commented out");
        assert!(text.contains("DelegateSubgroup"), "systemd {version}:\n{text}");
    }
}

/// A real Prometheus on a free loopback port, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &Path, target: &str) -> Prometheus {
        Self::start_with(bin, &format!("static_configs: [{{targets: ['{target}']}}]"))
    }

    /// `targets`: the target part of the `procwatch` job's scrape config.
    fn start_with(bin: &Path, targets: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{}]\nscrape_configs:\n  - job_name: procwatch\n    {targets}\n",
                repo("deploy/prometheus/alerts.yml").display()
            ),
        )
        .unwrap();
        let addr = util::free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, _dir: dir }
    }

    /// The result vector of an instant query, or None if Prometheus does not answer yet.
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let (status, _, body) = http(
            &self.addr,
            "GET",
            &format!("/api/v1/query?query={}", urlencode(promql)),
            "",
        )
        .ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Families that exist only in cgroup mode with the memory controller: a hybrid host like this
/// one keeps that controller in cgroup v1, and then they are absent, never 0.
const MEMORY_CONTROLLER_FAMILIES: [&str; 4] = [
    "procwatch_process_memory_bytes",
    "procwatch_process_memory_peak_bytes",
    "procwatch_process_memory_max_bytes",
    "procwatch_process_oom_kills_total",
];

/// Families that exist only in cgroup mode (PSI of the programs' cgroups).
const CGROUP_MODE_FAMILIES: [&str; 2] = [
    "procwatch_process_pressure_waiting_seconds_total",
    "procwatch_process_pressure_stalled_seconds_total",
];

/// The family of those lists which `expr` asks for and the procwatch that gave `scrape` does
/// not have: such a panel cannot have data from it.
fn absent_family(expr: &str, scrape: &str) -> Option<&'static str> {
    MEMORY_CONTROLLER_FAMILIES
        .into_iter()
        .chain(CGROUP_MODE_FAMILIES)
        .find(|f| expr.contains(f) && !scrape.lines().any(|l| l.starts_with(&format!("{f}{{"))))
}

/// Asks Prometheus `q` for panel `title` until it has data; where `expr` needs a family the
/// scraped procwatch cannot have, says so loudly and only checks that the query evaluates.
fn panel_has_data(prom: &Prometheus, title: &str, expr: &str, q: &str, scrape: &str) -> Vec<Value> {
    if let Some(family) = absent_family(expr, scrape) {
        // `ip netns exec` mounts a fresh /sys without the cgroup file systems: proc mode.
        let why = if scrape.contains("procwatch_tracking_info{mode=\"proc\"}") {
            "this procwatch runs in proc mode"
        } else if CGROUP_MODE_FAMILIES.contains(&family) {
            "no PSI in this kernel"
        } else {
            "no memory controller in procwatch's cgroups; a hybrid host keeps it in cgroup v1"
        };
        eprintln!(
            "NOT CHECKED FOR DATA: panel {title:?} needs {family}, which cannot exist here ({why}): checked only that {q} evaluates"
        );
        assert!(prom.query(q).is_some(), "panel {title:?}: {q} does not evaluate");
        return Vec::new();
    }
    wait_for(
        Duration::from_secs(60),
        &format!("panel {title:?} to have data: {q}"),
        || prom.query(q).filter(|r| !r.is_empty()),
    )
}

/// Fills in the dashboard's template variables the way Grafana would with "All" selected.
fn fill(expr: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", "5s")
        .replace("$__range", "1m")
        .replace("$job", "procwatch")
        .replace("$instance", instance)
        .replace("$name", ".*")
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    // The memory panels need a program with a memory limit, where the controller is there (a
    // limit is refused where it is not).
    let memory = util::cgroup_controllers_here().is_some_and(|c| c.contains("memory"));
    let memory_limit = if memory {
        "    resources: {memory: 256MiB}\n"
    } else {
        ""
    };
    let watched = tempfile::tempdir().unwrap();
    let yaml = format!(
        "processes:\n\
         \x20 - name: busy\n    command: [sh, -c, 'while :; do :; done']\n\
         \x20 - name: crashing\n    command: [sh, -c, 'sleep 0.2; exit 1']\n    backoff: {{initial: 100ms, max: 500ms}}\n\
         \x20 - name: talker\n    command: [sh, -c, 'while :; do echo hello; echo oops >&2; sleep 0.2; done']\n\
         \x20 - name: writer\n    command: [sh, -c, 'while :; do touch a; echo x >> a; mv a b; chmod 600 b; rm b; sleep 0.1; done']\n    cwd: {dir}\n\
         \x20 - name: reloaded\n    command: [sh, -c, 'trap : HUP; while :; do sleep 0.05; done']\n    on_change: {{watch: data, action: signal, debounce: 50ms}}\n\
         \x20 - name: probed\n    command: [sleep, '600']\n    liveness: {{exec: ['true'], period: 1s}}\n    readiness: {{tcp: '127.0.0.1:1', period: 1s, timeout: 200ms}}\n{limit}\
         watches:\n  - name: data\n    path: {dir}\n",
        dir = watched.path().display(),
        limit = memory_limit,
    );
    let pw = Procwatch::start(&yaml, &[]);

    // promtool's lint on a live scrape, with every series present.
    let scrape = pw.wait_scrape(Duration::from_secs(30), "exits and file events", |s| {
        s.get(
            "procwatch_process_exits_total",
            &[("name", "crashing"), ("reason", "failure")],
        )
        .unwrap_or(0.0)
            >= 1.0
            && s.text.contains("procwatch_process_last_exit_code{")
    });
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(scrape.text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let prom = Prometheus::start(&prometheus, &pw.addr);
    wait_for(Duration::from_secs(60), "Prometheus to scrape procwatch", || {
        prom.query("up{job=\"procwatch\"} == 1").filter(|r| !r.is_empty())
    });
    let d = dashboard();
    let queries = panel_queries(&d);
    assert!(queries.len() >= 21, "{} queries", queries.len());
    let scrape = pw.wait_scrape(Duration::from_secs(30), "the probes' first checks", |s| {
        s.get(
            "procwatch_probe_duration_seconds",
            &[("name", "probed"), ("probe", "readiness")],
        )
        .is_some()
    });
    // Where this procwatch is in cgroup mode with PSI (this host: yes), the pressure panels
    // must have data.
    let psi = procwatch::cgroup::locate().is_ok_and(|l| l.mount.join("cpu.pressure").exists());
    if psi && scrape.text.contains("procwatch_tracking_info{mode=\"cgroup\"}") {
        for f in CGROUP_MODE_FAMILIES {
            assert!(
                absent_family(f, &scrape.text).is_none(),
                "cgroup mode with PSI, and no {f}:\n{}",
                scrape.text
            );
        }
    }
    if memory {
        for f in MEMORY_CONTROLLER_FAMILIES {
            assert!(
                absent_family(f, &scrape.text).is_none(),
                "the memory controller is here, {f} is not:\n{}",
                scrape.text
            );
        }
    }
    for (title, expr) in queries {
        let q = fill(&expr, &pw.addr);
        panel_has_data(&prom, &title, &expr, &q, &scrape.text);
    }
    // The template variables' own queries: label_values(metric, label) has values.
    for v in d["templating"]["list"].as_array().unwrap() {
        let Some(def) = v["definition"].as_str() else { continue };
        let inner = def.trim_start_matches("label_values(").trim_end_matches(')');
        let (metric, label) = inner.rsplit_once(',').unwrap();
        let q = format!("group by ({}) ({})", label.trim(), fill(metric.trim(), &pw.addr));
        let r = prom.query(&q).unwrap_or_default();
        assert!(!r.is_empty(), "variable {} has no values: {q}", v["name"]);
    }
    // The busy program's CPU as Prometheus computes it from procwatch's counter.
    let r = prom
        .query("sum(rate(procwatch_process_cpu_seconds_total{name=\"busy\"}[5s]))")
        .unwrap();
    let rate: f64 = r[0]["value"][1].as_str().unwrap().parse().unwrap();
    // A single-threaded loop: some of a core (the machine is shared with other tests), and
    // about one at most. Prometheus stamps a sample when its scrape starts, procwatch reads
    // the counter later: under load that delay varies by a few hundred ms over the window,
    // which moves the rate by 5% or more. A counter that double-counted would read 2, one
    // that reset far more or less.
    assert!((0.05..=1.25).contains(&rate), "busy's CPU rate: {rate}");
}

/// Three hosts made by the test: a network namespace each, joined to this one by a veth pair
/// with private addresses that exist only for the test. Removed on drop (which takes the veth
/// pairs with them), after the processes in them are stopped.
struct Hosts {
    names: Vec<String>,
    procwatches: Vec<Child>,
}

impl Hosts {
    fn make(n: usize) -> Result<Hosts, String> {
        let tag = std::process::id() % 100_000;
        let mut hosts = Hosts {
            names: Vec::new(),
            procwatches: Vec::new(),
        };
        for i in 0..n {
            let ns = format!("pwtest-{tag}-{i}");
            let (outer, inner) = (format!("pw{tag}h{i}"), format!("pw{tag}n{i}"));
            let ip = |args: &[&str]| -> Result<(), String> {
                let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
                }
            };
            ip(&["netns", "add", &ns])?;
            hosts.names.push(ns.clone());
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["addr", "add", &format!("10.213.{i}.1/30"), "dev", &outer])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("10.213.{i}.2/30"), "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// Starts procwatch in host `i` on `10.213.i.2:9407`; returns that address.
    fn start_procwatch(&mut self, i: usize, config: &Path, log: &Path) -> String {
        let addr = format!("10.213.{i}.2:9407");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.names[i], util::BIN, "--config"])
            .arg(config)
            .args(["--web.listen-address", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        self.procwatches.push(child);
        addr
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.procwatches {
            // SAFETY: plain syscall to our own child (`ip netns exec` execs procwatch).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.procwatches {
            let _ = c.wait();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn three_hosts_one_prometheus_and_the_instance_variable_selects_each() {
    let Some(prometheus) = tool("prometheus") else { return };
    if which("ip").is_none() {
        assert!(
            std::env::var_os("PROCWATCH_REQUIRE_PROMETHEUS").is_none(),
            "ip (iproute2) is not on PATH and PROCWATCH_REQUIRE_PROMETHEUS is set"
        );
        eprintln!("skipped: ip (iproute2) is not on PATH");
        return;
    }
    let mut hosts = match Hosts::make(3) {
        Ok(h) => h,
        Err(e) if std::env::var_os("PROCWATCH_REQUIRE_PROMETHEUS").is_none() => {
            eprintln!("skipped: cannot make network namespaces here (needs root): {e}");
            return;
        }
        Err(e) => panic!("cannot make network namespaces: {e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let config = dir.path().join(format!("host{i}.yaml"));
        std::fs::write(
            &config,
            format!(
                "status_interval: 0\nprocesses:\n  - name: app\n    command: [sh, -c, 'while :; do head -c 1000000 /dev/zero > /dev/null; echo tick; sleep 0.05; done']\n  - name: only-on-host{i}\n    command: [sleep, '600']\n    liveness: {{exec: ['true'], period: 1s}}\n    readiness: {{tcp: '127.0.0.1:1', period: 1s, timeout: 200ms}}\n  - name: reloaded\n    command: [sh, -c, 'trap : HUP; while :; do touch {dir}/touched{i}; sleep 0.1; done']\n    on_change: {{watch: here, action: signal, debounce: 50ms}}\nwatches:\n  - name: here\n    path: {dir}\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("host{i}.log"));
        let addr = hosts.start_procwatch(i, &config, &log);
        wait_for(Duration::from_secs(30), &format!("procwatch in host {i}"), || {
            http(&addr, "GET", "/-/ready", "").ok().filter(|r| r.0 == 200)
        });
        addrs.push(addr);
    }
    // One Prometheus in this namespace, its targets from a file_sd file.
    let targets = dir.path().join("targets.json");
    std::fs::write(
        &targets,
        serde_json::json!([{"targets": addrs, "labels": {"env": "test"}}]).to_string(),
    )
    .unwrap();
    let prom = Prometheus::start_with(
        &prometheus,
        &format!(
            "file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]",
            targets.display()
        ),
    );
    wait_for(Duration::from_secs(60), "Prometheus to scrape all three", || {
        prom.query("up{job=\"procwatch\"} == 1").filter(|r| r.len() == 3)
    });

    let d = dashboard();
    // The instance variable offers every host.
    let var = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "instance")
        .unwrap();
    let def = var["definition"].as_str().unwrap();
    let (metric, label) = def
        .trim_start_matches("label_values(")
        .trim_end_matches(')')
        .rsplit_once(',')
        .unwrap();
    let q = format!("group by ({}) ({})", label.trim(), fill(metric.trim(), ".*"));
    let offered = wait_for(Duration::from_secs(60), "the instance variable's values", || {
        let r = prom.query(&q)?;
        let mut v: Vec<String> = r
            .iter()
            .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_owned))
            .collect();
        v.sort();
        (v.len() == 3).then_some(v)
    });
    let mut want = addrs.clone();
    want.sort();
    assert_eq!(offered, want);

    // Selecting each host, every panel shows that host's data and only that host's.
    for (i, addr) in addrs.iter().enumerate() {
        let scrape = wait_for(Duration::from_secs(30), &format!("host {i}'s probes"), || {
            let (_, _, text) = http(addr, "GET", "/metrics", "").ok()?;
            text.contains("procwatch_probe_duration_seconds{").then_some(text)
        });
        for (title, expr) in panel_queries(&d) {
            let q = fill(&expr, addr);
            let r = panel_has_data(&prom, &format!("{title} (host {i})"), &expr, &q, &scrape);
            for series in &r {
                let inst = series["metric"]["instance"].as_str();
                assert!(
                    inst.is_none() || inst == Some(addr.as_str()),
                    "panel {title:?} for {addr} shows {inst:?}: {q}"
                );
            }
        }
        let only = prom
            .query(&fill(
                "procwatch_process_up{job=~\"$job\",instance=~\"$instance\"}",
                addr,
            ))
            .unwrap();
        let names: Vec<&str> = only.iter().filter_map(|s| s["metric"]["name"].as_str()).collect();
        assert!(names.contains(&format!("only-on-host{i}").as_str()), "{names:?}");
        assert_eq!(names.len(), 3, "{names:?}");
    }
    drop(prom);
    let names = hosts.names.clone();
    drop(hosts);
    let left = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    for ns in names {
        assert!(!left.contains(&ns), "{ns} was not removed:\n{left}");
    }
}
