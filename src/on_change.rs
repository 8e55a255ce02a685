//! `on_change`: turns a watch's changes into one action on a program per burst.
//!
//! It knows neither the watcher's insides nor the supervisor: it waits on a watch's change
//! receiver ([`crate::watch::WatchView::changes`]), and hands each action to a function `app`
//! gives it (which sends it through the supervisor's command channel, and only while the
//! program runs). Only counted events are changes, so opens and reads never trigger.
//!
//! A burst is changes with less than `debounce` between them; its action comes `debounce`
//! after the last one. Changes made while the action is carried out (a restarted program that
//! writes into the watched tree as it starts) are part of it, not a new burst.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::{OnChange, OnChangeAction, ProgramConfig};
use crate::watch::WatchView;

/// Carries out an action on the named program; true if it was taken (counted).
pub type Act = Arc<dyn Fn(String, OnChangeAction) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The actions taken for one (watch, program) pair.
#[derive(Debug)]
pub struct TriggerCount {
    pub watch: String,
    pub name: String,
    count: AtomicU64,
}

impl TriggerCount {
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// A read-only view for the collector.
#[derive(Clone, Default)]
pub struct TriggerView(Arc<ArcSwap<Vec<Arc<TriggerCount>>>>);

impl TriggerView {
    pub fn counts(&self) -> Arc<Vec<Arc<TriggerCount>>> {
        self.0.load_full()
    }
}

/// The running `on_change` tasks, one per program that has one.
#[derive(Default)]
pub struct Triggers {
    view: TriggerView,
    tasks: Vec<(CancellationToken, JoinHandle<()>)>,
}

impl Triggers {
    pub fn view(&self) -> TriggerView {
        self.view.clone()
    }

    /// Starts the tasks `programs` ask for, in place of the ones before (a burst in progress
    /// when a reload comes is dropped). Counts go on for pairs that stay.
    pub async fn apply(
        &mut self,
        programs: &[ProgramConfig],
        watches: &WatchView,
        act: &Act,
        shutdown: &CancellationToken,
    ) {
        self.stop().await;
        let old = self.view.counts();
        let mut counts = Vec::new();
        for p in programs {
            let Some(on_change) = &p.on_change else {
                continue;
            };
            let count = old
                .iter()
                .find(|c| c.watch == on_change.watch && c.name == p.name)
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(TriggerCount {
                        watch: on_change.watch.clone(),
                        name: p.name.clone(),
                        count: AtomicU64::new(0),
                    })
                });
            counts.push(Arc::clone(&count));
            let Some(changes) = watches.changes(&on_change.watch) else {
                continue;
            };
            let stop = shutdown.child_token();
            let task = tokio::spawn(run(changes, on_change.clone(), count, Arc::clone(act), stop.clone()));
            self.tasks.push((stop, task));
        }
        self.view.0.store(Arc::new(counts));
    }

    pub async fn stop(&mut self) {
        for (stop, _) in &self.tasks {
            stop.cancel();
        }
        for (_, task) in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

async fn run(
    mut changes: watch::Receiver<u64>,
    on_change: OnChange,
    count: Arc<TriggerCount>,
    act: Act,
    stop: CancellationToken,
) {
    // What was counted before this task began is not a change to act on.
    changes.borrow_and_update();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
        // A burst began: wait for `debounce` of quiet.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(on_change.debounce) => break,
                r = changes.changed() => if r.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
        let taken = tokio::select! {
            taken = act(count.name.clone(), on_change.action) => taken,
            _ = stop.cancelled() => return,
        };
        if taken {
            count.count.fetch_add(1, Ordering::Relaxed);
            info!(watch = %count.watch, name = %count.name, action = ?on_change.action, "on_change: acted on a burst of changes");
        } else {
            debug!(watch = %count.watch, name = %count.name, "on_change: a burst of changes, but the program is not running");
        }
        changes.borrow_and_update();
    }
}
