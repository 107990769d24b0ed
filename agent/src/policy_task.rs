//! The tokio side of policy enforcement: one task per agent (it outlives sessions, so a
//! reconnect keeps the filter in force) that assembles filter chunks, replaces the
//! nftables table when a new filter is complete, and reads its counters every few
//! seconds. `nft` runs on the blocking pool, so a large ruleset never stalls the agent's
//! failover loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgate_proto::{Filter, FilterCounters};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::policy::{self, Assembly, FilterStatus, Totals};

/// How often the table's counters are read.
const READ_EVERY: Duration = Duration::from_secs(2);
/// Most policies one counter report names (a report must fit one control frame).
const MAX_REPORTED: usize = 4096;

#[derive(Default)]
struct Shared {
    status: Option<FilterStatus>,
    report: Option<FilterCounters>,
}

/// Handle to the enforcement task.
pub struct Enforcer {
    tx: mpsc::UnboundedSender<Filter>,
    shared: Arc<Mutex<Shared>>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // Plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn nft(args: &'static [&'static str], script: Option<String>) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || policy::nft(args, script.as_deref()))
        .await
        .map_err(|e| anyhow::anyhow!("nft task failed: {e}"))?
}

impl Enforcer {
    /// Starts the task for the TUN device `tun`. A table a previous run left (after a
    /// crash) stays in force until the first filter of this run replaces it.
    pub fn start(tun: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        tokio::spawn(run(tun, rx, shared.clone()));
        Self { tx, shared }
    }

    /// A filter chunk from the coordinator.
    pub fn receive(&self, f: Filter) {
        let _ = self.tx.send(f);
    }

    /// The counters to report, once a filter is in force.
    pub fn report(&self) -> Option<FilterCounters> {
        lock(&self.shared).report.clone()
    }

    /// What `status` shows.
    pub fn status(&self) -> Arc<dyn Fn() -> Option<FilterStatus> + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || lock(&shared).status.clone())
    }

    /// Removes the table (the agent is leaving; its TUN goes with it).
    pub fn remove() {
        if let Err(e) = policy::nft(&["-f", "-"], Some(&policy::render_remove())) {
            warn!(error = %e, "failed to remove the policy filter table");
        }
    }
}

async fn read(totals: &mut Totals) -> anyhow::Result<()> {
    let out = nft(&["-j", "list", "table", "ip", policy::TABLE], None).await?;
    totals.set_current(policy::parse_counters(&out)?);
    Ok(())
}

async fn run(tun: String, mut rx: mpsc::UnboundedReceiver<Filter>, shared: Arc<Mutex<Shared>>) {
    let mut assembly = Assembly::default();
    let mut totals = Totals::default();
    let mut applied: Option<u64> = None;
    let mut installed = false;
    // Random start: conntrack entries outlive an agent restart, and a mark from a
    // previous run must not pass for the current generation.
    let mut generation: u32 = rand::random();
    let mut pending: Option<Filter> = None;
    let mut tick = tokio::time::interval(READ_EVERY);
    loop {
        tokio::select! {
            f = rx.recv() => {
                let Some(f) = f else { return };
                if let Some(whole) = assembly.add(f)
                    && applied != Some(whole.digest)
                {
                    pending = Some(whole);
                }
            }
            _ = tick.tick() => {}
        }
        if let Some(f) = pending.take() {
            if installed {
                let _ = read(&mut totals).await;
            }
            generation = generation.wrapping_add(1).max(1);
            let script = policy::render(&tun, &f, generation);
            let enforce = script.is_some();
            let started = std::time::Instant::now();
            let result = nft(
                &["-f", "-"],
                Some(script.unwrap_or_else(policy::render_remove)),
            )
            .await;
            match result {
                Ok(_) => {
                    totals.fold(f.default_allow);
                    installed = enforce;
                    applied = Some(f.digest);
                    info!(digest = %format!("{:016x}", f.digest), rules = f.rules.len(), default_allow = f.default_allow, took_ms = started.elapsed().as_millis() as u64, "policy filter applied");
                    lock(&shared).status = Some(FilterStatus::of(
                        &f,
                        if enforce { "enforcing" } else { "none" },
                    ));
                }
                Err(e) => {
                    warn!(error = %e, "failed to apply the policy filter; retrying");
                    let mut st = FilterStatus::of(&f, &format!("error: {e}"));
                    st.rules.clear();
                    lock(&shared).status = Some(st);
                    pending = Some(f);
                    continue;
                }
            }
        }
        if installed && let Err(e) = read(&mut totals).await {
            warn!(error = %e, "failed to read the policy filter's counters");
        }
        if applied.is_some() {
            let mut report = totals.report();
            report.policies.retain(|(_, n)| *n > 0);
            report.policies.sort_by_key(|p| std::cmp::Reverse(p.1));
            report.policies.truncate(MAX_REPORTED);
            let mut st = lock(&shared);
            if let Some(s) = st.status.as_mut() {
                s.matches = totals.all().into_iter().collect();
            }
            st.report = Some(report);
        }
    }
}
