//! The periodic human-readable status report, and the row formatting the landing page shares.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::metrics::{Collector, Gathered, ProgramReport};

/// One program, formatted for people.
pub struct ProgramRow {
    pub name: String,
    pub state: &'static str,
    pub pid: String,
    pub uptime: String,
    pub cpu: String,
    pub memory: String,
    pub restarts: u64,
    pub command: String,
}

impl ProgramRow {
    pub fn new(r: &ProgramReport, now: SystemTime) -> ProgramRow {
        let pid = r
            .status
            .state
            .run()
            .map_or_else(|| "-".to_owned(), |(pid, _)| pid.to_string());
        let up = r.status.state.run().is_some();
        ProgramRow {
            name: r.program.name.clone(),
            state: r.status.state.label(),
            pid,
            uptime: if up {
                human_duration(r.uptime(now))
            } else {
                "-".to_owned()
            },
            cpu: format!("{:.2}s", r.cpu_user_seconds + r.cpu_system_seconds),
            memory: r.usage.map_or_else(|| "-".to_owned(), |u| human_bytes(u.rss_bytes)),
            restarts: r.status.restarts,
            command: r.status.config.command.join(" "),
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
    let rows: Vec<ProgramRow> = g.programs.iter().map(|r| ProgramRow::new(r, g.at)).collect();
    let up = g.programs.iter().filter(|r| r.status.state.run().is_some()).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "procwatch status: {} programs ({up} running), {} watches",
        rows.len(),
        g.watches.len()
    );
    if !rows.is_empty() {
        let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
        let _ = writeln!(
            out,
            "  {:<w$}  {:<8}  {:>7}  {:>8}  {:>9}  {:>10}  {:>8}  COMMAND",
            "NAME", "STATE", "PID", "UPTIME", "CPU", "MEMORY", "RESTARTS"
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
                "  {:<w$}  {:<8}  {:>7}  {:>8}  {:>9}  {:>10}  {:>8}  {cmd}",
                r.name, r.state, r.pid, r.uptime, r.cpu, r.memory, r.restarts
            );
        }
    }
    if !g.watches.is_empty() {
        let w = g.watches.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        let _ = write!(out, "  {:<w$}  {:<5}", "WATCH", "STATE");
        for kind in crate::watch::KINDS {
            let _ = write!(out, "  {:>8}", kind.to_ascii_uppercase());
        }
        let _ = writeln!(out, "  {:>9}  PATH", "OVERFLOWS");
        for r in &g.watches {
            let _ = write!(out, "  {:<w$}  {:<5}", r.name, if r.up { "up" } else { "down" });
            for (_, n) in r.events() {
                let _ = write!(out, "  {n:>8}");
            }
            let _ = writeln!(out, "  {:>9}  {}", r.overflows, r.path.display());
        }
    }
    out
}

/// Prints the report to stdout every `interval` until `shutdown`.
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
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
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
