//! The Prometheus collector: gathers the published snapshots and /proc at scrape time, and
//! encodes them through prometheus-client (a `Collector` writing with its `DescriptorEncoder`
//! straight into the page), in the text format 0.0.4 or OpenMetrics 1.0 from the same code.
//! Every metric name and help text lives here.
//!
//! # Adding a family
//!
//! 1. Gather its data in [`Collector::gather`] into [`ProgramReport`] (or [`Gathered`]), and
//!    only when its group is on (`self.groups.on(Group::X)`): a group turned off costs nothing.
//! 2. Write it in the section function of its group (`fn io`, `fn programs`, ...; a new group
//!    gets a new function and a row in [`SECTIONS`] and a [`Group`] variant):
//!    `out.per_program(NAME, HELP, Kind::Gauge, &g.programs, |r| r.x.map(Num::from))` for one
//!    sample per program, or `let mut f = out.family(NAME, HELP, kind);` then
//!    `f.sample(&[("name", r.name()), ("mode", "user")], v)?` per sample.
//! 3. Names are written in full (`_total` on counters); a family that
//!    gets no sample is left out of the page, so "no data on this host" is `None`, never 0.
//! 4. DESIGN.md, the README, the dashboard, alert rules and tests/prometheus.rs follow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{
    CounterValueEncoder, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, GaugeValueEncoder, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::encoding::{prometheus_text, text as openmetrics_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cgroup;
use crate::config::OutputConfig;
use crate::config::ProbeRole;
use crate::on_change::{TriggerCount, TriggerView};
use crate::output::{Stream, StreamCounts};
use crate::procfs::{self, Counters, SelfUsage, TreeUsage};
use crate::supervisor::{Action, ExitReason, ProbeSample, Program, ProgramState, ProgramStatus, SupervisorView};
use crate::watch::{WatchReport, WatchView};

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
/// The Content-Type of OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Content-Type of the same text for a client that asked for OpenMetrics 0.0.1.
pub const OPENMETRICS_0_0_1_CONTENT_TYPE: &str = "application/openmetrics-text; version=0.0.1; charset=utf-8";

/// The state of the last config (re)load; written by `app`, read at scrape time.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    ok: AtomicBool,
    /// f64 bits of the Unix time of the last success.
    success_at: AtomicU64,
}

impl ReloadStatus {
    pub fn record(&self, ok: bool) {
        self.ok.store(ok, Ordering::Relaxed);
        if ok {
            self.success_at
                .store(unix_secs(SystemTime::now()).to_bits(), Ordering::Relaxed);
        }
    }

    pub fn last(&self) -> (bool, f64) {
        (
            self.ok.load(Ordering::Relaxed),
            f64::from_bits(self.success_at.load(Ordering::Relaxed)),
        )
    }
}

/// One program as seen at one scrape.
pub struct ProgramReport {
    pub program: Arc<Program>,
    pub status: Arc<ProgramStatus>,
    /// The live process tree; `None` while the program is down.
    pub usage: Option<TreeUsage>,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    /// Faults, I/O and context switches: the live tree (whose figures include the children
    /// each process waited for) plus the processes procwatch reaped itself (wait4 rusage),
    /// never below a value reported before.
    pub counters: Counters,
    /// The main process's soft RLIMIT_NOFILE; `None` while down.
    pub max_fds: Option<u64>,
    /// Liveness and readiness (in [`ProbeRole::ALL`] order), where configured; group `probes`.
    pub probes: [Option<ProbeSample>; 2],
    /// Group `cgroup`: the memory controller's figures (cgroup mode with the controller).
    pub memory: Option<cgroup::Memory>,
    /// Group `pressure`: PSI of the program's cgroup, per [`PRESSURE_RESOURCES`].
    pub pressure: [Option<cgroup::Pressure>; 3],
    /// Captured output (group `logs`); `None` when the group is off.
    pub logs: Option<LogsReport>,
}

/// A program's captured output at one scrape.
#[derive(Debug, Clone, Copy)]
pub struct LogsReport {
    /// By stream, in the order of [`Stream::ALL`].
    pub streams: [StreamCounts; 2],
    pub last_output: Option<SystemTime>,
}

/// The highest values reported for one program.
#[derive(Debug, Clone, Default)]
struct HighWater {
    /// The program they were reported for. A program removed and added again by reloads
    /// between two scrapes is a new program (a new cgroup, nothing reaped yet): its counters
    /// start again from 0, a reset Prometheus sees, rather than staying hidden under the old
    /// program's values until they pass them.
    program: std::sync::Weak<Program>,
    cpu_user: f64,
    cpu_system: f64,
    counters: Counters,
}

/// The resources PSI is read for, in the order of [`ProgramReport::pressure`].
pub use cgroup::PRESSURE_RESOURCES;

/// What a scrape read from one program's cgroup.
#[derive(Debug, Default)]
struct CgroupReport {
    cpu: Option<cgroup::CpuStat>,
    memory: Option<cgroup::Memory>,
    pressure: [Option<cgroup::Pressure>; 3],
    io: Option<cgroup::IoStat>,
}

impl ProgramReport {
    /// The program's name: the `name` label.
    pub fn name(&self) -> &str {
        &self.program.name
    }

    pub fn uptime(&self, now: SystemTime) -> Duration {
        self.status
            .state
            .run()
            .and_then(|(_, since)| now.duration_since(since).ok())
            .unwrap_or_default()
    }
}

/// Everything one scrape reports.
pub struct Gathered {
    pub programs: Vec<ProgramReport>,
    pub watches: Vec<WatchReport>,
    /// `on_change` actions taken, per (watch, program).
    pub triggers: Arc<Vec<Arc<TriggerCount>>>,
    pub own: Option<SelfUsage>,
    pub reload: (bool, f64),
    pub at: SystemTime,
    /// `cgroup` or `proc`: `procwatch_tracking_info`.
    pub tracking: &'static str,
}

pub struct Collector {
    supervisor: SupervisorView,
    watches: WatchView,
    triggers: TriggerView,
    reload: Arc<ReloadStatus>,
    /// Highest counters reported per program: a counter must never go down, even when a
    /// process is between "left the live tree" and "reaped" during a scrape. Held only for
    /// the update.
    reported: Mutex<HashMap<String, HighWater>>,
    groups: Groups,
    /// Keeps every process's /proc files open between scrapes; one pass at a time.
    scratch: Mutex<Scratch>,
}

/// What one scrape hands to the next: the reader with its kept /proc files, and buffers, so
/// that reading allocates nothing once they have grown.
struct Scratch {
    reader: procfs::Reader,
    /// What cgroup files are read into.
    buf: Vec<u8>,
    members: Vec<i32>,
    children: Vec<i32>,
}

impl Scratch {
    fn new(groups: Groups) -> Scratch {
        Scratch {
            reader: procfs::Reader::keeping(want(groups)),
            buf: Vec::new(),
            members: Vec::new(),
            children: Vec::new(),
        }
    }
}

/// The per-process files the groups in `groups` need beyond stat.
fn want(groups: Groups) -> procfs::Want {
    procfs::Want {
        ctxswitch: groups.on(Group::Ctxswitch),
        swap: groups.on(Group::Memory) && procfs::sys().has_swap,
        io: groups.on(Group::Io) && procfs::sys().has_io,
    }
}

impl Collector {
    /// The configured program of that name, as published now.
    pub fn program(&self, name: &str) -> Option<Arc<Program>> {
        self.supervisor.programs().iter().find(|p| p.name == name).cloned()
    }

    pub fn new(supervisor: SupervisorView, watches: WatchView, reload: Arc<ReloadStatus>) -> Collector {
        // Kept /proc files take fds: up to 5 per process (see the README).
        let (before, after) = procfs::raise_nofile_limit();
        if after > before {
            tracing::debug!(before, after, "raised the soft limit on open files");
        }
        keep_pages_out_of_the_arenas();
        Collector {
            supervisor,
            watches,
            triggers: TriggerView::default(),
            reload,
            reported: Mutex::new(HashMap::new()),
            groups: Groups::all(),
            scratch: Mutex::new(Scratch::new(Groups::all())),
        }
    }

    /// Reports the `on_change` actions of `triggers`.
    pub fn with_triggers(mut self, triggers: TriggerView) -> Collector {
        self.triggers = triggers;
        self
    }

    /// Turns optional groups of families off (`--no-collector.GROUP`): their files are
    /// neither opened nor read.
    pub fn with_groups(mut self, groups: Groups) -> Collector {
        self.groups = groups;
        self.scratch = Mutex::new(Scratch::new(groups));
        self
    }

    /// fds held open for programs' /proc files.
    pub fn kept_fds(&self) -> usize {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner()).reader.kept_fds()
    }

    pub fn groups(&self) -> Groups {
        self.groups
    }

    /// The tracking mode in force and why, in one line (the landing page shows it).
    pub fn tracking(&self) -> &str {
        self.supervisor.tracking()
    }

    /// Reads the snapshots and /proc. Blocking: call it off the async threads.
    pub fn gather(&self) -> Gathered {
        let programs = self.supervisor.programs();
        let statuses: Vec<Arc<ProgramStatus>> = programs.iter().map(|p| p.status()).collect();
        // Reaped CPU is read before the live trees: a process that moves from one to the other
        // in between is missed once (and the high-water mark hides the dip), never counted twice.
        let reaped: Vec<(Duration, Duration)> = programs.iter().map(|p| p.reaped_cpu()).collect();
        let reaped_usage: Vec<Counters> = programs.iter().map(|p| p.reaped_usage()).collect();

        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let Scratch {
            reader,
            buf,
            members,
            children,
        } = &mut *scratch;
        reader.begin_pass();
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let run_index: HashMap<i32, usize> = statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.state.run().map(|(pid, _)| (pid, i)))
            .collect();
        let mut usages: Vec<Option<TreeUsage>> = vec![None; programs.len()];
        let mut max_fds: Vec<Option<u64>> = vec![None; programs.len()];
        // cgroup mode: a program's processes are exactly its cgroup's members, and its CPU is
        // the cgroup's cpu.stat (dead and orphaned processes included); so is its I/O where
        // the io controller gives io.stat. The cgroup's files are kept open like /proc's.
        let mut cgroups: Vec<CgroupReport> = Vec::new();
        let io_on = self.groups.on(Group::Io);
        // Each program's cgroup, looked up once: each lookup is the pass's first touch of the
        // program, a cache miss once there are many.
        let program_cgroups: Vec<Option<&cgroup::ProgramCgroup>> = programs.iter().map(|p| p.cgroup()).collect();
        for (i, cg) in program_cgroups.iter().enumerate() {
            let Some(cg) = cg else { continue };
            if cgroups.is_empty() {
                cgroups.resize_with(programs.len(), CgroupReport::default);
            }
            let report = &mut cgroups[i];
            // Asked before the members' stat files are read: the main process's stat read
            // below (a child of procwatch, so its PID cannot have been reused before procwatch
            // reaps it) proves that the limit was its own.
            let main = statuses[i].state.run().map(|(pid, _)| pid);
            let limit = main.and_then(|pid| reader.max_fds(pid));
            report.cpu = cg.cpu(buf);
            if self.groups.on(Group::Cgroup) {
                report.memory = cg.memory(buf);
            }
            if self.groups.on(Group::Pressure) {
                report.pressure = cg.pressure(buf);
            }
            if io_on {
                report.io = cg.io(buf);
            }
            cg.members(buf, members);
            if !members.is_empty() {
                let usage = usages[i].get_or_insert_default();
                for &pid in members.iter() {
                    let st = reader.add_member(pid, usage, report.io.is_none());
                    if st.is_some_and(|st| Some(st.pid) == main && st.ppid == me) {
                        max_fds[i] = limit;
                    }
                }
            }
        }
        let mut walk = procfs::TreeWalk::default();
        for (i, status) in statuses.iter().enumerate() {
            if program_cgroups[i].is_some() {
                continue;
            }
            let Some((pid, _)) = status.state.run() else { continue };
            // The main process is procwatch's child until reaped; anything else is a reused PID.
            // Its limit is asked first, so that this check covers it too.
            let limit = reader.max_fds(pid);
            match reader.stat(pid) {
                Some(st) if st.ppid == me => {
                    max_fds[i] = limit;
                    let usage = usages[i].get_or_insert_default();
                    reader.tree_from(st, usage, &mut walk);
                }
                _ => {}
            }
        }
        // Orphans re-parented to procwatch still belong to the run whose session they are in.
        // Only proc mode looks for them: in cgroup mode an orphan stays in its program's cgroup.
        children.clear();
        if program_cgroups.iter().any(Option::is_none) {
            procfs::own_children(reader, children);
        }
        for &pid in children.iter() {
            if run_index.contains_key(&pid) || walk.seen(pid) {
                continue;
            }
            let Some(st) = reader.stat(pid) else { continue };
            let owner = run_index.get(&st.pgrp).or_else(|| run_index.get(&st.session));
            if let Some(&i) = owner
                && program_cgroups[i].is_none()
            {
                let usage = usages[i].get_or_insert_default();
                reader.tree_from(st, usage, &mut walk);
            }
        }

        let clk = procfs::sys().clk_tck as f64;
        let own = procfs::self_usage(reader);
        reader.end_pass();
        drop(scratch);
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let mut reports = Vec::with_capacity(programs.len());
        for (i, (program, status)) in programs.iter().zip(statuses).enumerate() {
            let usage = usages[i];
            let (ru, rs) = reaped[i];
            let live = usage.unwrap_or_default();
            let cgroup = cgroups.get_mut(i).map(std::mem::take).unwrap_or_default();
            let cgroup_cpu = cgroup
                .cpu
                .map(|c| (c.user_usec as f64 / 1e6, c.system_usec as f64 / 1e6));
            let (user, system) = cgroup_cpu.unwrap_or_else(|| {
                (
                    ru.as_secs_f64() + live.user_ticks as f64 / clk,
                    rs.as_secs_f64() + live.system_ticks as f64 / clk,
                )
            });
            let high = match reported.get_mut(&program.name) {
                Some(high) if std::ptr::eq(high.program.as_ptr(), Arc::as_ptr(program)) => high,
                _ => {
                    let fresh = HighWater {
                        program: Arc::downgrade(program),
                        ..HighWater::default()
                    };
                    reported.insert(program.name.clone(), fresh);
                    reported.get_mut(&program.name).expect("inserted above")
                }
            };
            high.cpu_user = high.cpu_user.max(user);
            high.cpu_system = high.cpu_system.max(system);
            let mut counters = live.counters.plus(reaped_usage[i]);
            if let Some(io) = cgroup.io {
                // io.stat counts every process that ever ran in the cgroup: nothing to add.
                counters.read_bytes = io.read_bytes;
                counters.write_bytes = io.write_bytes;
            }
            high.counters = high.counters.max(counters);
            let probes = if self.groups.on(Group::Probes) {
                // As `Program::probe`, on the status this scrape already holds.
                ProbeRole::ALL.map(|role| {
                    status.config.probe(role)?;
                    Some(program.probe_stats(role).sample())
                })
            } else {
                [None; 2]
            };
            // `inherit` output is not captured: unknown, not 0.
            let captured = status.config.output != OutputConfig::Inherit;
            let logs = (captured && self.groups.on(Group::Logs)).then(|| {
                let o = program.output();
                LogsReport {
                    streams: Stream::ALL.map(|s| o.counts(s)),
                    last_output: o.last_output(),
                }
            });
            reports.push(ProgramReport {
                program: Arc::clone(program),
                status,
                usage,
                cpu_user_seconds: high.cpu_user,
                cpu_system_seconds: high.cpu_system,
                counters: high.counters,
                max_fds: max_fds[i],
                probes,
                memory: cgroup.memory,
                pressure: cgroup.pressure,
                logs,
            });
        }
        if reported.len() > reports.len() {
            reported.retain(|name, _| programs.iter().any(|p| &p.name == name));
        }
        drop(reported);

        Gathered {
            programs: reports,
            watches: self.watches.reports(),
            triggers: self.triggers.counts(),
            own,
            reload: self.reload.last(),
            at: SystemTime::now(),
            tracking: self.supervisor.tracking_mode(),
        }
    }

    /// Encodes `g` into `out` (cleared first) in `format`. The families are written at scrape
    /// time by [`Exposition`], a prometheus-client `Collector`, straight into `out`.
    pub fn encode(&self, g: Gathered, format: Format, out: &mut String) {
        encode_page(g, self.groups, format, out);
    }
}

/// Makes glibc serve allocations of 512 KiB and more (the page: 2.5 MB at 1000 programs, 12.5
/// MB at 5000) from mmap, returned to the kernel when freed. Left to its default, glibc raises
/// that threshold to the size of the first such block freed, so each page comes from the heap
/// arena of the thread that encoded it and stays there: scrapes on several blocking threads
/// kept a page-sized hole in each thread's arena (RSS 23.1 MiB after sequential scrapes at 1000
/// programs and 31.6 MiB after four concurrent scrapers, against 20.4 and 20.8 MiB with this),
/// for faulting each page in afresh (see [`page_buffer`]).
fn keep_pages_out_of_the_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// A buffer for one scrape's page, `capacity` bytes (the last page's size and a little),
/// faulted in with one `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+) instead of one page fault
/// per 4 KiB as the encoder first writes there: a page above the mmap threshold is fresh memory
/// at each scrape, and its faults cost about 1.2 ms at 1000 programs (2.5 MB) here against 0.5
/// ms for the one call. Older kernels refuse the advice, and the page is faulted in as written.
pub fn page_buffer(capacity: usize) -> String {
    let page = String::with_capacity(capacity);
    if capacity >= MMAP_THRESHOLD {
        let size = procfs::sys().page_size as usize;
        let at = page.as_ptr() as usize;
        let (start, end) = (at.next_multiple_of(size), (at + page.capacity()) / size * size);
        if end > start {
            // SAFETY: advice on whole pages inside the string's own allocation; populating
            // for write faults them in and leaves their content as it is.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE) };
        }
    }
    page
}

/// Allocations from this size up come from mmap (see [`keep_pages_out_of_the_arenas`]).
const MMAP_THRESHOLD: usize = 512 * 1024;

/// An exposition format `/metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text, ending in `# EOF`.
    OpenMetrics,
    /// The same text, answered as OpenMetrics 0.0.1 to a client that asked for that version
    /// (the two versions write these families alike).
    OpenMetrics0_0_1,
}

impl Format {
    /// The format an `Accept` header asks for: the acceptable media range with the highest `q`
    /// (the first among equals), as client_golang negotiates; `application/openmetrics-text`
    /// is answered in the version asked for, 1.0.0 or 0.0.1, and 1.0.0 where no version is
    /// named (as client_python does; client_golang answers 0.0.1 there); anything else, an
    /// OpenMetrics version procwatch does not write included, gets the text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let mut best = (0.0_f64, Format::Text);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let (mut q, mut version) = (1.0, None);
            for param in parts {
                match param.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("q", v)) => q = v.parse().unwrap_or(0.0),
                    Some(("version", v)) => version = Some(v),
                    _ => {}
                }
            }
            let format = match (media.to_ascii_lowercase().as_str(), version) {
                ("application/openmetrics-text", None | Some("1.0.0")) => Format::OpenMetrics,
                ("application/openmetrics-text", Some("0.0.1")) => Format::OpenMetrics0_0_1,
                _ => Format::Text,
            };
            if q > best.0 {
                best = (q, format);
            }
        }
        best.1
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::OpenMetrics0_0_1 => OPENMETRICS_0_0_1_CONTENT_TYPE,
        }
    }
}

/// Whether to answer an `Accept-Encoding` header with gzip: the client allows it (`gzip` or
/// `*` with a `q` above 0) and does not prefer `identity` to it by a higher `q`. An unlisted
/// `identity` is the fallback (RFC 9110, 12.5.3), not a preference; `*` also stands for it.
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let (mut gzip, mut identity, mut star) = (None, None, None);
    for coding in accept_encoding.unwrap_or("").split(',') {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let q: f64 = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .unwrap_or(0.0)
            });
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "identity" => identity = Some(q),
            "*" => star = Some(q),
            _ => {}
        }
    }
    let gzip = gzip.or(star).unwrap_or(0.0);
    gzip > 0.0 && gzip >= identity.or(star).unwrap_or(0.0)
}

/// gzip at the fastest level: a page of metrics shrinks about 15-fold even so, and the CPU a
/// scrape costs stays small (the figures are in the benchmark).
pub fn gzip(page: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(page.len() / 8 + 64), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(page);
    enc.finish().unwrap_or_default()
}

/// The optional groups of metric families (`--no-collector.GROUP`). A group turned off is
/// neither read at scrape time nor encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Io,
    Faults,
    Ctxswitch,
    Memory,
    Cgroup,
    Pressure,
    Logs,
    Probes,
}

impl Group {
    pub const ALL: [Group; 8] = [
        Group::Io,
        Group::Faults,
        Group::Ctxswitch,
        Group::Memory,
        Group::Cgroup,
        Group::Pressure,
        Group::Logs,
        Group::Probes,
    ];

    /// The name in `--no-collector.NAME`.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Io => "io",
            Group::Faults => "faults",
            Group::Ctxswitch => "ctxswitch",
            Group::Memory => "memory",
            Group::Cgroup => "cgroup",
            Group::Pressure => "pressure",
            Group::Logs => "logs",
            Group::Probes => "probes",
        }
    }
}

/// Which optional groups are on; all by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Groups(u16);

impl Default for Groups {
    fn default() -> Groups {
        Groups::all()
    }
}

impl Groups {
    pub fn all() -> Groups {
        Groups((1 << Group::ALL.len()) - 1)
    }

    pub fn without(self, group: Group) -> Groups {
        Groups(self.0 & !(1 << group as u16))
    }

    pub fn on(self, group: Group) -> bool {
        self.0 & (1 << group as u16) != 0
    }
}

/// Encodes one scrape's page into `out` (cleared first).
fn encode_page(g: Gathered, groups: Groups, format: Format, out: &mut String) {
    out.clear();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition { g, groups }));
    let written = match format {
        Format::Text => prometheus_text::encode(out, &registry),
        Format::OpenMetrics | Format::OpenMetrics0_0_1 => openmetrics_text::encode(out, &registry),
    };
    // Writing into a String cannot fail, and no family returns an error of its own.
    debug_assert!(written.is_ok(), "encoding into a String failed");
}

/// One scrape's data, written by prometheus-client's encoders at scrape time.
struct Exposition {
    g: Gathered,
    groups: Groups,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition").finish_non_exhaustive()
    }
}

/// Writes one part of the page: the families of one group, or of a core part.
type Section = fn(&mut Out<'_, '_>, &Page<'_>) -> std::fmt::Result;

/// The page, in order: `(group, section)`; a section whose group is off is skipped. See the
/// top of this file for how to add a family.
const SECTIONS: &[(Option<Group>, Section)] = &[
    (None, programs),
    (Some(Group::Io), io),
    (Some(Group::Faults), faults),
    (Some(Group::Ctxswitch), ctxswitch),
    (Some(Group::Memory), memory),
    (Some(Group::Probes), probes),
    (Some(Group::Logs), logs),
    (None, watches),
    (Some(Group::Cgroup), cgroup_families),
    (Some(Group::Pressure), pressure),
    (None, config_and_build),
    (None, own_process),
];

impl prometheus_client::collector::Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let names: String = self.g.programs.iter().map(|r| r.name()).collect();
        let page = Page::new(&self.g, &names);
        let mut out = Out { enc: &mut enc };
        for (group, section) in SECTIONS {
            if group.is_none_or(|g| self.groups.on(g)) {
                section(&mut out, &page)?;
            }
        }
        Ok(())
    }
}

/// What the sections write from: the scrape's [`Gathered`] (through `Deref`), with each
/// program as a [`ProgramRow`].
struct Page<'g> {
    g: &'g Gathered,
    /// In the order of `g.programs`.
    programs: Vec<ProgramRow<'g>>,
}

impl<'g> Page<'g> {
    /// `names`: every program's name, one after the other (see [`ProgramRow`]).
    fn new(g: &'g Gathered, names: &'g str) -> Page<'g> {
        let mut at = 0;
        let programs = g
            .programs
            .iter()
            .map(|r| {
                let status = &r.status;
                let end = at + r.name().len();
                let name = &names[at..end];
                at = end;
                ProgramRow {
                    r,
                    name,
                    up: matches!(status.state, ProgramState::Running { .. }),
                    run: status.state.run(),
                    ready: status.ready,
                    restarts: status.restarts,
                    exits: status.exits,
                    control_actions: status.control_actions,
                    last_exit_code: status.last_exit.map(|exit| exit.code),
                }
            })
            .collect();
        Page { g, programs }
    }
}

impl std::ops::Deref for Page<'_> {
    type Target = Gathered;

    fn deref(&self) -> &Gathered {
        self.g
    }
}

/// One program as the sections read it: its report, with its name and the figures of its
/// status copied side by side. The page is written family by family, each family a pass over
/// every program; read through the program's and its status's own allocations, each sample
/// cost a cache miss or two once the programs outgrew the CPU's caches (at 5000 programs, this
/// part of the encode took 2.7 times as long a program as at 1000). Copied here, with the
/// names in one string, every pass reads memory in order.
struct ProgramRow<'g> {
    r: &'g ProgramReport,
    name: &'g str,
    up: bool,
    /// The current run: (main PID, started at).
    run: Option<(i32, SystemTime)>,
    ready: bool,
    restarts: u64,
    exits: [u64; 4],
    control_actions: [u64; 4],
    last_exit_code: Option<i32>,
}

impl ProgramRow<'_> {
    /// The program's name: the `name` label.
    fn name(&self) -> &str {
        self.name
    }
}

impl std::ops::Deref for ProgramRow<'_> {
    type Target = ProgramReport;

    fn deref(&self) -> &ProgramReport {
        self.r
    }
}

/// The core per-program families.
fn programs(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    let progs = &g.programs;
    out.per_program(
        "procwatch_process_up",
        "1 while the program runs, 0 while it is down or backing off.",
        Kind::Gauge,
        progs,
        |r| Some(r.up.into()),
    )?;
    out.per_program(
        "procwatch_process_ready",
        "1 while the program runs and its readiness probe passes (while it runs, where it has no readiness probe).",
        Kind::Gauge,
        progs,
        |r| Some(r.ready.into()),
    )?;
    let mut f = out.family(
        "procwatch_process_cpu_seconds_total",
        "CPU time of the program and all its descendants, over every run since procwatch started, including processes that have exited.",
        Kind::Counter,
    );
    for r in progs {
        f.sample(&[("name", r.name()), ("mode", "user")], r.cpu_user_seconds)?;
        f.sample(&[("name", r.name()), ("mode", "system")], r.cpu_system_seconds)?;
    }
    let tree: [Row<TreeUsage>; 5] = [
        (
            "procwatch_process_resident_memory_bytes",
            "Resident memory summed over the live process tree.",
            Kind::Gauge,
            |u| u.rss_bytes.into(),
        ),
        (
            "procwatch_process_virtual_memory_bytes",
            "Virtual memory summed over the live process tree.",
            Kind::Gauge,
            |u| u.vsize_bytes.into(),
        ),
        (
            "procwatch_process_threads",
            "Threads in the live process tree.",
            Kind::Gauge,
            |u| u.threads.into(),
        ),
        (
            "procwatch_process_open_fds",
            "Open file descriptors in the live process tree.",
            Kind::Gauge,
            |u| u.open_fds.into(),
        ),
        (
            "procwatch_process_tree_processes",
            "Processes in the live tree: the program and its descendants.",
            Kind::Gauge,
            |u| u.processes.into(),
        ),
    ];
    // 0 while the program is down.
    for (name, help, kind, field) in tree {
        out.per_program(name, help, kind, progs, |r| {
            Some(r.usage.as_ref().map_or(Num::U(0), field))
        })?;
    }
    out.per_program(
        "procwatch_process_max_fds",
        "The main process's soft limit on open files (RLIMIT_NOFILE); absent while down.",
        Kind::Gauge,
        progs,
        |r| r.max_fds.map(Num::from),
    )?;
    out.per_program(
        "procwatch_process_pid",
        "PID of the program's main process; absent while it is down.",
        Kind::Gauge,
        progs,
        |r| r.run.map(|(pid, _)| pid.into()),
    )?;
    out.per_program(
        "procwatch_process_start_time_seconds",
        "Unix time the current run started; absent while down.",
        Kind::Gauge,
        progs,
        |r| r.run.map(|(_, since)| unix_secs(since).into()),
    )?;
    out.per_program(
        "procwatch_process_uptime_seconds",
        "Seconds since the current run started; 0 while down.",
        Kind::Gauge,
        progs,
        |r| {
            let since = r.run.map(|(_, since)| since);
            let uptime = since.and_then(|since| g.at.duration_since(since).ok());
            Some(uptime.unwrap_or_default().as_secs_f64().into())
        },
    )?;
    out.per_program(
        "procwatch_process_restarts_total",
        "Restarts made by the restart policy (or a failing liveness probe); not by hand.",
        Kind::Counter,
        progs,
        |r| Some(r.restarts.into()),
    )?;
    let mut f = out.family(
        "procwatch_process_exits_total",
        "Runs that ended, by reason: success (exit 0), failure (non-zero exit or could not start), signal, oom (the OOM killer's victim; with the memory controller).",
        Kind::Counter,
    );
    for r in progs {
        for reason in ExitReason::ALL {
            // An OOM kill can only be told apart where the memory controller counts them.
            if reason == ExitReason::Oom && r.memory.is_none() && r.exits[reason.index()] == 0 {
                continue;
            }
            f.sample(
                &[("name", r.name()), ("reason", reason.as_str())],
                r.exits[reason.index()],
            )?;
        }
    }
    let mut f = out.family(
        "procwatch_process_control_actions_total",
        "Actions taken on the program by hand (procwatch ctl, the API), by action.",
        Kind::Counter,
    );
    for r in progs {
        for (i, action) in Action::LABELS.iter().enumerate() {
            f.sample(&[("name", r.name()), ("action", action)], r.control_actions[i])?;
        }
    }
    out.per_program(
        "procwatch_process_last_exit_code",
        "Exit code of the last run (128+N for signal N); absent before the first exit.",
        Kind::Gauge,
        progs,
        |r| r.last_exit_code.map(Num::from),
    )
}

/// Group `io`: storage I/O, where this kernel accounts it per process.
fn io(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    if !procfs::sys().has_io {
        return Ok(());
    }
    out.per_program(
        "procwatch_process_read_bytes_total",
        "Bytes the program's processes, dead ones included, caused to be read from storage.",
        Kind::Counter,
        &g.programs,
        |r| Some(r.counters.read_bytes.into()),
    )?;
    out.per_program(
        "procwatch_process_write_bytes_total",
        "Bytes the program's processes, dead ones included, caused to be written to storage.",
        Kind::Counter,
        &g.programs,
        |r| Some(r.counters.write_bytes.into()),
    )
}

/// Group `faults`: page faults.
fn faults(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    out.per_program(
        "procwatch_process_major_page_faults_total",
        "Major page faults (that needed I/O) of the program's processes, dead ones included.",
        Kind::Counter,
        &g.programs,
        |r| Some(r.counters.major_faults.into()),
    )?;
    out.per_program(
        "procwatch_process_minor_page_faults_total",
        "Minor page faults (no I/O) of the program's processes, dead ones included.",
        Kind::Counter,
        &g.programs,
        |r| Some(r.counters.minor_faults.into()),
    )
}

/// Group `ctxswitch`: context switches.
fn ctxswitch(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    let mut f = out.family(
        "procwatch_process_context_switches_total",
        "Context switches of the program's processes, by type: voluntary (waited) or involuntary (preempted).",
        Kind::Counter,
    );
    for r in &g.programs {
        let c = &r.counters;
        f.sample(&[("name", r.name()), ("type", "voluntary")], c.voluntary_ctxt_switches)?;
        f.sample(
            &[("name", r.name()), ("type", "involuntary")],
            c.nonvoluntary_ctxt_switches,
        )?;
    }
    Ok(())
}

/// Group `memory`: per-process memory beyond RSS.
fn memory(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    if !procfs::sys().has_swap {
        return Ok(());
    }
    out.per_program(
        "procwatch_process_swap_bytes",
        "Swapped-out memory summed over the live process tree.",
        Kind::Gauge,
        &g.programs,
        |r| Some(r.usage.map_or(0, |u| u.swap_bytes).into()),
    )
}

/// Group `probes`: one series per configured probe (`probe` is `liveness` or `readiness`).
fn probes(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    // (name, help, kind, value); `None` leaves the probe out (the last result and its duration
    // exist only after the first check, the failure count from the start).
    type ProbeRow = (&'static str, &'static str, Kind, fn(&ProbeSample) -> Option<Num>);
    let rows: [ProbeRow; 3] = [
        (
            "procwatch_probe_success",
            "1 if the last check of the probe passed, 0 if it failed; absent before the first check.",
            Kind::Gauge,
            |p| p.success.map(Num::from),
        ),
        (
            "procwatch_probe_failures_total",
            "Checks of the probe that failed (an error, a timeout, an unexpected status or exit code).",
            Kind::Counter,
            |p| Some(p.failures.into()),
        ),
        (
            "procwatch_probe_duration_seconds",
            "How long the last check of the probe took; absent before the first check.",
            Kind::Gauge,
            |p| p.success.map(|_| p.duration.as_secs_f64().into()),
        ),
    ];
    for (name, help, kind, value) in rows {
        let mut f = out.family(name, help, kind);
        for r in &g.programs {
            for (role, probe) in ProbeRole::ALL.iter().zip(&r.probes) {
                if let Some(v) = probe.as_ref().and_then(value) {
                    f.sample(&[("name", r.name()), ("probe", role.as_str())], v)?;
                }
            }
        }
    }
    Ok(())
}

/// Group `logs`: captured output (see `output.rs`).
fn logs(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    let per_stream: [Row<StreamCounts>; 3] = [
        (
            "procwatch_process_log_lines_total",
            "Lines the program wrote, by stream, over every run. A line longer than 16 KiB counts once: it is passed on cut to its first 16 KiB (see procwatch_process_log_truncated_lines_total).",
            Kind::Counter,
            |c| c.lines.into(),
        ),
        (
            "procwatch_process_log_bytes_total",
            "Bytes the program wrote, by stream, over every run, newlines and the dropped rest of cut lines included.",
            Kind::Counter,
            |c| c.bytes.into(),
        ),
        (
            "procwatch_process_log_truncated_lines_total",
            "Lines longer than 16 KiB, by stream: passed on as their first 16 KiB, the rest dropped.",
            Kind::Counter,
            |c| c.truncated.into(),
        ),
    ];
    for (name, help, kind, value) in per_stream {
        let mut f = out.family(name, help, kind);
        for r in &g.programs {
            let Some(logs) = &r.logs else { continue };
            for (stream, counts) in Stream::ALL.iter().zip(&logs.streams) {
                f.sample(&[("name", r.name()), ("stream", stream.as_str())], value(counts))?;
            }
        }
    }
    out.per_program(
        "procwatch_process_last_output_timestamp_seconds",
        "Unix time the program last wrote a line, on either stream; absent before its first line.",
        Kind::Gauge,
        &g.programs,
        |r| r.logs?.last_output.map(|t| unix_secs(t).into()),
    )
}

fn watches(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    let watches = &g.watches;
    let mut f = out.family(
        "procwatch_file_events_total",
        "File-system events seen, by kind; one rename is one event.",
        Kind::Counter,
    );
    for w in watches {
        for (kind, n) in w.events() {
            f.sample(&[("watch", &w.name), ("kind", kind)], n)?;
        }
    }
    let per_watch: [Row<WatchReport>; 3] = [
        (
            "procwatch_file_watch_up",
            "1 while the watch is established.",
            Kind::Gauge,
            |w| w.up.into(),
        ),
        (
            "procwatch_file_watch_overflows_total",
            "Kernel event queue overflows: events were lost.",
            Kind::Counter,
            |w| w.overflows.into(),
        ),
        (
            "procwatch_file_watch_errors_total",
            "Errors from the watcher, and blind spots it found (a mount made inside the watch, a path too long for inotify).",
            Kind::Counter,
            |w| w.errors.into(),
        ),
    ];
    for (name, help, kind, value) in per_watch {
        let mut f = out.family(name, help, kind);
        for w in watches {
            f.sample(&[("watch", &w.name)], value(w))?;
        }
    }
    let mut f = out.family(
        "procwatch_file_watch_triggers_total",
        "on_change actions (restart or signal) a watch's changes took on a program.",
        Kind::Counter,
    );
    for t in g.triggers.iter() {
        f.sample(&[("watch", &t.watch), ("name", &t.name)], t.get())?;
    }
    Ok(())
}

/// Group `cgroup`: the memory controller's files of each program's cgroup. Absent where the
/// controller is not enabled for procwatch's cgroups (proc mode; cgroup v1 hybrid hosts).
fn cgroup_families(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    let progs = &g.programs;
    let rows: [Row<cgroup::Memory>; 2] = [
        (
            "procwatch_process_memory_bytes",
            "Memory charged to the program's cgroup (memory.current): page cache and kernel memory included.",
            Kind::Gauge,
            |m| m.current_bytes.into(),
        ),
        (
            "procwatch_process_oom_kills_total",
            "Processes of the program killed by the OOM killer (oom_kill of memory.events).",
            Kind::Counter,
            |m| m.oom_kills.into(),
        ),
    ];
    for (name, help, kind, field) in rows {
        out.per_program(name, help, kind, progs, |r| r.memory.as_ref().map(field))?;
    }
    out.per_program(
        "procwatch_process_memory_peak_bytes",
        "Highest memory.current of the program's cgroup (memory.peak).",
        Kind::Gauge,
        progs,
        |r| r.memory.and_then(|m| m.peak_bytes).map(Num::from),
    )?;
    out.per_program(
        "procwatch_process_memory_max_bytes",
        "The program's memory limit (memory.max); absent without a limit.",
        Kind::Gauge,
        progs,
        |r| r.memory.and_then(|m| m.max_bytes).map(Num::from),
    )
}

/// Group `pressure`: PSI `some` and `full` totals of each program's cgroup.
fn pressure(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    let mut f = out.family(
        "procwatch_process_pressure_waiting_seconds_total",
        "Time some of the program's processes were stalled waiting for the resource (PSI some).",
        Kind::Counter,
    );
    for r in &g.programs {
        for (p, resource) in r.pressure.iter().zip(PRESSURE_RESOURCES) {
            if let Some(p) = p {
                f.sample(&[("name", r.name()), ("resource", resource)], p.some_usec as f64 / 1e6)?;
            }
        }
    }
    let mut f = out.family(
        "procwatch_process_pressure_stalled_seconds_total",
        "Time all of the program's non-idle processes were stalled on the resource at once (PSI full).",
        Kind::Counter,
    );
    for r in &g.programs {
        for (p, resource) in r.pressure.iter().zip(PRESSURE_RESOURCES) {
            if let Some(full) = p.and_then(|p| p.full_usec) {
                f.sample(&[("name", r.name()), ("resource", resource)], full as f64 / 1e6)?;
            }
        }
    }
    Ok(())
}

fn config_and_build(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    let (ok, at) = g.reload;
    out.family(
        "procwatch_config_last_reload_successful",
        "1 if the last config (re)load succeeded.",
        Kind::Gauge,
    )
    .sample(&[], ok)?;
    out.family(
        "procwatch_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful config (re)load.",
        Kind::Gauge,
    )
    .sample(&[], at)?;
    out.family(
        "procwatch_build_info",
        "procwatch's version and git revision; always 1.",
        Kind::Gauge,
    )
    .sample(
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", env!("PROCWATCH_REVISION")),
        ],
        1u64,
    )?;
    out.family(
        "procwatch_tracking_info",
        "How programs' processes are tracked: cgroup (one cgroup v2 per program) or proc (the /proc tree walk); always 1.",
        Kind::Gauge,
    )
    .sample(&[("mode", g.tracking)], 1u64)
}

/// procwatch's own `process_*` families, as every Prometheus client library exports them.
fn own_process(out: &mut Out<'_, '_>, g: &Page<'_>) -> std::fmt::Result {
    let Some(own) = &g.own else { return Ok(()) };
    let rows: [(&'static str, &'static str, Kind, Num); 7] = [
        (
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
            own.cpu_seconds.into(),
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Kind::Gauge,
            own.rss_bytes.into(),
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Kind::Gauge,
            own.vsize_bytes.into(),
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            Kind::Gauge,
            own.open_fds.into(),
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors.",
            Kind::Gauge,
            own.max_fds.into(),
        ),
        (
            "process_threads",
            "Number of OS threads in the process.",
            Kind::Gauge,
            own.threads.into(),
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Kind::Gauge,
            own.start_time_secs.into(),
        ),
    ];
    for (name, help, kind, value) in rows {
        out.family(name, help, kind).sample(&[], value)?;
    }
    Ok(())
}

pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A family with one sample per item (program, watch): name, help, type, value.
pub(crate) type Row<T> = (&'static str, &'static str, Kind, fn(&T) -> Num);

/// The type of a family. Counter names end in `_total` as they appear on the page; the encoder
/// is handed the name without it (it adds the suffix itself). `_info` families are gauges
/// (always 1), in OpenMetrics too, as client_golang writes them: the contract types them so,
/// and promtool reads them as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

/// A sample value, written as an integer where it is one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl From<u64> for Num {
    fn from(v: u64) -> Num {
        Num::U(v)
    }
}

impl From<i32> for Num {
    fn from(v: i32) -> Num {
        Num::I(v.into())
    }
}

impl From<f64> for Num {
    fn from(v: f64) -> Num {
        Num::F(v)
    }
}

impl From<bool> for Num {
    fn from(v: bool) -> Num {
        Num::U(v.into())
    }
}

impl EncodeGaugeValue for Num {
    fn encode(&self, e: &mut GaugeValueEncoder<'_>) -> std::fmt::Result {
        match *self {
            Num::U(v) => EncodeGaugeValue::encode(&v, e),
            Num::I(v) => EncodeGaugeValue::encode(&v, e),
            Num::F(v) => EncodeGaugeValue::encode(&v, e),
        }
    }
}

impl EncodeCounterValue for Num {
    fn encode(&self, e: &mut CounterValueEncoder<'_>) -> std::fmt::Result {
        match *self {
            Num::U(v) => EncodeCounterValue::encode(&v, e),
            Num::I(v) => EncodeCounterValue::encode(&v.max(0).unsigned_abs(), e),
            Num::F(v) => EncodeCounterValue::encode(&v, e),
        }
    }
}

/// Where the sections write: prometheus-client's descriptor encoder for this scrape.
pub(crate) struct Out<'e, 'a> {
    enc: &'e mut DescriptorEncoder<'a>,
}

impl<'a> Out<'_, 'a> {
    /// Starts a family; its `# HELP`/`# TYPE` lines are written with its first sample, so a
    /// family that gets no sample is left out of the page.
    pub(crate) fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) -> Family<'_, 'a> {
        debug_assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        Family {
            name,
            help,
            kind,
            enc: Some(&mut *self.enc),
            metric: None,
        }
    }

    /// A family with one sample per program, labelled `name`; `None` leaves the program out.
    fn per_program(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        programs: &[ProgramRow<'_>],
        value: impl Fn(&ProgramRow<'_>) -> Option<Num>,
    ) -> std::fmt::Result {
        let mut f = self.family(name, help, kind);
        for r in programs {
            if let Some(v) = value(r) {
                f.sample(&[("name", r.name())], v)?;
            }
        }
        Ok(())
    }
}

/// One family being written; see [`Out::family`].
pub(crate) struct Family<'f, 'a> {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// Until the descriptor is written.
    enc: Option<&'f mut DescriptorEncoder<'a>>,
    metric: Option<MetricEncoder<'f>>,
}

impl Family<'_, '_> {
    pub(crate) fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Num>) -> std::fmt::Result {
        if self.metric.is_none() {
            let enc = self.enc.take().expect("the descriptor is written once");
            let (name, ty) = match self.kind {
                Kind::Counter => (
                    self.name.strip_suffix("_total").unwrap_or(self.name),
                    MetricType::Counter,
                ),
                Kind::Gauge => (self.name, MetricType::Gauge),
            };
            self.metric = Some(enc.encode_descriptor(name, self.help, None, ty)?);
        }
        let metric = self.metric.as_mut().expect("written above");
        match self.kind {
            Kind::Counter => {
                let v: Num = value.into();
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)
            }
            Kind::Gauge => metric.encode_family(&labels)?.encode_gauge(&value.into()),
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn page(format: Format, groups: Groups) -> String {
        let g = Gathered {
            programs: Vec::new(),
            watches: vec![WatchReport {
                name: "x\"y\\z\n".into(),
                path: PathBuf::from("/tmp"),
                up: true,
                events: [1, 2, 3, 4, 5],
                overflows: 0,
                errors: 7,
            }],
            triggers: Default::default(),
            own: None,
            reload: (true, 1.5),
            at: SystemTime::now(),
            tracking: "proc",
        };
        let mut out = String::from("old page");
        encode_page(g, groups, format, &mut out);
        out
    }

    #[test]
    fn text_format_names_values_and_escapes() {
        let s = page(Format::Text, Groups::all());
        assert!(!s.contains("old page"), "{s}");
        assert!(
            s.contains(
                "# HELP procwatch_file_events_total File-system events seen, by kind; one rename is one event.\n\
                 # TYPE procwatch_file_events_total counter\n\
                 procwatch_file_events_total{watch=\"x\\\"y\\\\z\\n\",kind=\"create\"} 1\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("procwatch_file_watch_up{watch=\"x\\\"y\\\\z\\n\"} 1\n"),
            "{s}"
        );
        assert!(s.contains("procwatch_config_last_reload_successful 1\n"), "{s}");
        assert!(
            s.contains("procwatch_config_last_reload_success_timestamp_seconds 1.5\n"),
            "{s}"
        );
        assert!(
            s.contains("# TYPE procwatch_build_info gauge\nprocwatch_build_info{version=\""),
            "{s}"
        );
        assert!(!s.contains("# EOF"), "{s}");
        // Families with no sample are left out, descriptor and all.
        assert!(!s.contains("procwatch_process_up"), "{s}");
    }

    #[test]
    fn openmetrics_from_the_same_code() {
        let s = page(Format::OpenMetrics, Groups::all());
        assert!(s.ends_with("# EOF\n"), "{s}");
        assert!(s.contains("# TYPE procwatch_file_events counter\n"), "{s}");
        assert!(s.contains("procwatch_file_watch_errors_total{watch="), "{s}");
        assert!(
            s.contains("# TYPE procwatch_build_info gauge\nprocwatch_build_info{version=\""),
            "{s}"
        );
    }

    #[test]
    fn accept_negotiation() {
        use Format::*;
        let prometheus3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
            application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
            text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let protobuf_first = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
            encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        for (accept, want) in [
            (None, Text),
            (Some(""), Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some("Application/OpenMetrics-Text; version=1.0.0"), OpenMetrics),
            (Some("application/openmetrics-text; version=0.0.1"), OpenMetrics0_0_1),
            (
                Some(
                    "application/openmetrics-text;version=0.0.1;q=0.9,application/openmetrics-text;version=1.0.0;q=0.8",
                ),
                OpenMetrics0_0_1,
            ),
            (Some("application/openmetrics-text;version=2.0.0"), Text),
            (Some("text/plain;q=0.5,application/openmetrics-text;q=0.9"), OpenMetrics),
            (Some("application/openmetrics-text;q=0.2,text/plain;q=0.5"), Text),
            (Some(prometheus3), OpenMetrics),
            (Some(protobuf_first), Text),
        ] {
            assert_eq!(Format::from_accept(accept), want, "{accept:?}");
        }
        assert_eq!(
            OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(
            OpenMetrics0_0_1.content_type(),
            "application/openmetrics-text; version=0.0.1; charset=utf-8"
        );
        assert_eq!(Text.content_type(), "text/plain; version=0.0.4; charset=utf-8");
    }

    #[test]
    fn gzip_negotiation_and_round_trip() {
        for (header, want) in [
            (None, false),
            (Some("identity"), false),
            (Some("gzip"), true),
            (Some("deflate, GZIP;q=0.5"), true),
            (Some("gzip;q=0"), false),
            (Some("*"), true),
            (Some("*;q=0"), false),
            (Some("gzip;q=0, *"), false),
            // identity preferred by q: as asked, though gzip is allowed.
            (Some("identity;q=1, *;q=0.5"), false),
            (Some("gzip;q=0.4, identity;q=0.5"), false),
            // A tie, or identity only as the fallback: the smaller page.
            (Some("gzip, identity"), true),
            (Some("*;q=0.5"), true),
            (Some("identity;q=0, gzip;q=0.1"), true),
            // Parameter names are case-insensitive; a q outside 0..1 is invalid, so refused.
            (Some("gzip;Q=0"), false),
            (Some("gzip;q=1.0001"), false),
        ] {
            assert_eq!(accepts_gzip(header), want, "{header:?}");
        }
        let page = page(Format::Text, Groups::all());
        let packed = gzip(page.as_bytes());
        assert!(packed.len() < page.len(), "{} >= {}", packed.len(), page.len());
        let mut back = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&packed[..]), &mut back).unwrap();
        assert_eq!(back, page);
    }

    #[test]
    fn groups_turn_off_one_by_one() {
        let mut groups = Groups::all();
        for g in Group::ALL {
            assert!(groups.on(g));
            groups = groups.without(g);
            assert!(!groups.on(g), "{}", g.as_str());
        }
        assert_eq!(groups, Groups(0));
    }
}
