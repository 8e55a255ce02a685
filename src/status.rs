//! The periodic human-readable status report, and the row formatting the landing page shares.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Collector, Gathered, ProgramReport};
use crate::supervisor::{Action, ProgramState};

/// One program's status as plain data: what `GET /api/v1/programs` serves and `ctl status`
/// reads back, and what every table (report, landing page, ctl) is formatted from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramInfo {
    pub name: String,
    /// `starting`, `running`, `stopping`, `backoff`, `stopped` or `stopped-by-hand`.
    pub state: String,
    /// Its readiness (while running, where it has no readiness probe).
    pub ready: bool,
    pub pid: Option<i32>,
    /// Unix time the current run started.
    pub started_at: Option<f64>,
    pub uptime_seconds: f64,
    /// Unix time of the next start, while backing off.
    pub backoff_until: Option<f64>,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    /// RSS of the live tree.
    pub memory_bytes: Option<u64>,
    pub restarts: u64,
    pub last_exit: Option<ExitInfo>,
    /// Actions by hand so far, by action (`start`, `stop`, `restart`, `signal`).
    pub control_actions: BTreeMap<String, u64>,
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, 128+N for signal N.
    pub code: i32,
    /// `success`, `failure` or `signal`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchInfo {
    pub name: String,
    pub path: String,
    pub up: bool,
    /// Events seen, by kind.
    pub events: BTreeMap<String, u64>,
    pub overflows: u64,
    pub errors: u64,
}

/// Everything `ctl status -o json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub programs: Vec<ProgramInfo>,
    pub watches: Vec<WatchInfo>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl ProgramInfo {
    pub fn new(r: &ProgramReport, now: SystemTime) -> ProgramInfo {
        let state = &r.status.state;
        ProgramInfo {
            name: r.program.name.clone(),
            state: state.label().to_owned(),
            ready: r.status.ready,
            pid: state.run().map(|(pid, _)| pid),
            started_at: state.run().map(|(_, since)| unix(since)),
            uptime_seconds: r.uptime(now).as_secs_f64(),
            backoff_until: match *state {
                ProgramState::BackingOff { until } => Some(unix(until)),
                _ => None,
            },
            cpu_user_seconds: r.cpu_user_seconds,
            cpu_system_seconds: r.cpu_system_seconds,
            memory_bytes: r.usage.map(|u| u.rss_bytes),
            restarts: r.status.restarts,
            last_exit: r.status.last_exit.map(|e| ExitInfo {
                code: e.code,
                reason: e.reason.as_str().to_owned(),
            }),
            control_actions: Action::LABELS
                .iter()
                .zip(r.status.control_actions)
                .map(|(a, n)| ((*a).to_owned(), n))
                .collect(),
            command: r.status.config.command.clone(),
        }
    }
}

impl StatusInfo {
    pub fn new(g: &Gathered) -> StatusInfo {
        StatusInfo {
            programs: g.programs.iter().map(|r| ProgramInfo::new(r, g.at)).collect(),
            watches: g
                .watches
                .iter()
                .map(|w| WatchInfo {
                    name: w.name.clone(),
                    path: w.path.display().to_string(),
                    up: w.up,
                    events: w.events().map(|(k, n)| (k.to_owned(), n)).collect(),
                    overflows: w.overflows,
                    errors: w.errors,
                })
                .collect(),
        }
    }
}

/// One program, formatted for people.
pub struct ProgramRow {
    pub name: String,
    pub state: String,
    pub ready: &'static str,
    pub pid: String,
    pub uptime: String,
    pub cpu: String,
    pub memory: String,
    pub restarts: u64,
    pub last_exit: String,
    pub command: String,
}

impl ProgramRow {
    pub fn new(p: &ProgramInfo) -> ProgramRow {
        let dash = || "-".to_owned();
        ProgramRow {
            name: p.name.clone(),
            state: p.state.clone(),
            ready: if p.ready { "yes" } else { "no" },
            pid: p.pid.map_or_else(dash, |pid| pid.to_string()),
            uptime: if p.pid.is_some() {
                human_duration(Duration::from_secs_f64(p.uptime_seconds.max(0.0)))
            } else {
                dash()
            },
            cpu: format!("{:.2}s", p.cpu_user_seconds + p.cpu_system_seconds),
            memory: p.memory_bytes.map_or_else(dash, human_bytes),
            restarts: p.restarts,
            last_exit: p
                .last_exit
                .as_ref()
                .map_or_else(dash, |e| format!("{} ({})", e.code, e.reason)),
            command: p.command.join(" "),
        }
    }
}

/// `3d4h`, `2h05m`, `4m03s`, `12s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins:02}m")
    } else if mins > 0 {
        format!("{mins}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The report text: a table of programs, then one of watches.
pub fn render(g: &Gathered) -> String {
    render_info(&StatusInfo::new(g))
}

/// The same table from plain data (what `ctl status` prints).
pub fn render_info(info: &StatusInfo) -> String {
    let rows: Vec<ProgramRow> = info.programs.iter().map(ProgramRow::new).collect();
    let up = info.programs.iter().filter(|p| p.pid.is_some()).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "procwatch status: {} programs ({up} running), {} watches",
        rows.len(),
        info.watches.len()
    );
    if !rows.is_empty() {
        let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
        let sw = rows.iter().map(|r| r.state.len()).max().unwrap_or(5).max(8);
        let ew = rows.iter().map(|r| r.last_exit.len()).max().unwrap_or(9).max(9);
        let _ = writeln!(
            out,
            "  {:<w$}  {:<sw$}  {:<5}  {:>7}  {:>8}  {:>9}  {:>10}  {:>8}  {:<ew$}  COMMAND",
            "NAME", "STATE", "READY", "PID", "UPTIME", "CPU", "MEMORY", "RESTARTS", "LAST EXIT"
        );
        for r in &rows {
            let mut cmd = r.command.clone();
            if cmd.len() > 48 {
                let cut = (0..=45).rev().find(|&i| cmd.is_char_boundary(i)).unwrap_or(0);
                cmd.truncate(cut);
                cmd.push_str("...");
            }
            let _ = writeln!(
                out,
                "  {:<w$}  {:<sw$}  {:<5}  {:>7}  {:>8}  {:>9}  {:>10}  {:>8}  {:<ew$}  {cmd}",
                r.name, r.state, r.ready, r.pid, r.uptime, r.cpu, r.memory, r.restarts, r.last_exit
            );
        }
    }
    if !info.watches.is_empty() {
        let w = info.watches.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        let _ = write!(out, "  {:<w$}  {:<5}", "WATCH", "STATE");
        for kind in crate::watch::KINDS {
            let _ = write!(out, "  {:>8}", kind.to_ascii_uppercase());
        }
        let _ = writeln!(out, "  {:>9}  PATH", "OVERFLOWS");
        for r in &info.watches {
            let _ = write!(out, "  {:<w$}  {:<5}", r.name, if r.up { "up" } else { "down" });
            for kind in crate::watch::KINDS {
                let _ = write!(out, "  {:>8}", r.events.get(kind).copied().unwrap_or(0));
            }
            let _ = writeln!(out, "  {:>9}  {}", r.overflows, r.path);
        }
    }
    out
}

/// Prints the report to procwatch's stdout (without waiting on it) every `interval` until `shutdown`.
pub async fn report_every(interval: Duration, collector: Arc<Collector>, shutdown: CancellationToken) {
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; report after one interval
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let c = Arc::clone(&collector);
        let Ok(text) = tokio::task::spawn_blocking(move || render(&c.gather())).await else {
            continue;
        };
        // Never waits: with nobody reading procwatch's stdout, the report is dropped and counted.
        crate::output::stdout().try_push(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humane_units() {
        assert_eq!(human_duration(Duration::from_secs(12)), "12s");
        assert_eq!(human_duration(Duration::from_secs(243)), "4m03s");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2h05m");
        assert_eq!(human_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d4h");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 100_000), "3.1 MiB");
    }
}
