//! procwatch: supervise programs, watch directories, export it all to Prometheus.
//!
//! Data flows one way: config -> supervisor and watcher (the writers) -> published snapshots ->
//! the metrics collector at scrape time -> HTTP. `app` is the only module that knows them all.

pub mod app;
pub mod cgroup;
pub mod config;
pub mod ctl;
pub mod http;
pub mod metrics;
pub mod on_change;
pub mod output;
pub mod procfs;
pub mod status;
pub mod supervisor;
pub mod watch;
