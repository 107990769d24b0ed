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

/// How often the table's counters are read (about 0.1 s of CPU for 1,000 policies).
const READ_EVERY: Duration = Duration::from_secs(5);
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
    let out = nft(
        &["-j", "list", "counters", "table", "ip", policy::TABLE],
        None,
    )
    .await?;
    totals.observe(policy::parse_counters(&out)?);
    Ok(())
}

/// The sets of a table a previous run left (none if it cannot be read: the first filter
/// then leaves them unused, and the table's removal takes them).
async fn read_sets() -> Vec<String> {
    let out = nft(&["-j", "list", "sets", "table", "ip", policy::TABLE], None).await;
    out.and_then(|o| policy::parse_sets(&o)).unwrap_or_default()
}

async fn run(tun: String, mut rx: mpsc::UnboundedReceiver<Filter>, shared: Arc<Mutex<Shared>>) {
    let mut assembly = Assembly::default();
    let mut totals = Totals::default();
    let mut applied: Option<u64> = None;
    // A table left by a previous run: learn its counters, so the first filter of this
    // run deletes the ones it does not use.
    let mut installed = read(&mut totals).await.is_ok();
    // Its sets too, so the first filter deletes the ones it does not use.
    let mut sets = if installed {
        read_sets().await
    } else {
        Vec::new()
    };
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
            generation = generation.wrapping_add(1).max(1);
            let rendered = policy::render(&tun, &f, generation, &totals.names(), &sets);
            let enforce = rendered.is_some();
            if installed && !enforce {
                // The table and its counters go: keep what they counted.
                let _ = read(&mut totals).await;
            }
            let started = std::time::Instant::now();
            let result = nft(
                &["-f", "-"],
                Some(
                    rendered
                        .as_ref()
                        .map_or_else(policy::render_remove, |r| r.script.clone()),
                ),
            )
            .await;
            match result {
                Ok(_) => {
                    if !enforce {
                        totals.observe(Default::default());
                    }
                    installed = enforce;
                    sets = rendered.map(|r| r.sets).unwrap_or_default();
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
                s.matches = totals
                    .all()
                    .into_iter()
                    .map(|(k, v)| {
                        match k
                            .strip_prefix("p_")
                            .and_then(|h| h.parse::<meshgate_proto::Id>().ok())
                        {
                            Some(id) => (id.to_string(), v),
                            None => (k, v),
                        }
                    })
                    .collect();
            }
            st.report = Some(report);
        }
    }
}
