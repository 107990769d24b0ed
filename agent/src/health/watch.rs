//! The thin tokio layer over [`Health`]: every interval, all targets are checked at once,
//! the round goes to the decision, and a change of verdict comes out of a channel.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use super::{Health, Report, Target, Thresholds, probe};

/// How often and how patiently to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Time between rounds.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
}

/// A running watch; dropping it stops the checks.
pub struct HealthWatch {
    rx: mpsc::UnboundedReceiver<bool>,
    report: Arc<Mutex<Report>>,
    task: JoinHandle<()>,
}

impl HealthWatch {
    /// Starts checking `targets` (none: the watch never reports and `status` says `off`).
    pub fn start(targets: Vec<Target>, thresholds: Thresholds, schedule: Schedule) -> Self {
        let mut health = Health::new(targets, thresholds);
        let report = Arc::new(Mutex::new(health.report()));
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = report.clone();
        let task = tokio::spawn(async move {
            if health.targets().is_empty() {
                return;
            }
            let mut tick = tokio::time::interval(schedule.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let checks = health
                    .targets()
                    .iter()
                    .map(|t| probe::check(*t, schedule.timeout));
                let results = futures_util::future::join_all(checks).await;
                let changed = health.round(results);
                *lock(&shared) = health.report();
                if let Some(healthy) = changed {
                    if healthy {
                        info!("health targets answer again");
                    } else {
                        warn!(targets = ?health.report().targets, "no health target answers: this replica cannot serve its subnet");
                    }
                    if tx.send(healthy).is_err() {
                        return;
                    }
                }
            }
        });
        Self { rx, report, task }
    }

    /// The next change of verdict (`true`: healthy again); never resolves without one.
    pub async fn changed(&mut self) -> bool {
        match self.rx.recv().await {
            Some(healthy) => healthy,
            None => std::future::pending().await,
        }
    }

    /// A reader of the current report, for `status`.
    pub fn report_source(&self) -> impl Fn() -> Report + Send + Sync + 'static {
        let report = self.report.clone();
        move || lock(&report).clone()
    }
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
