//! What `status` answers: the report the runtime keeps, plus live lease, RTT and counters.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use meshgate_proto::Role;

use super::{Agent, lock, plumbing::Plumbing};
use crate::{failover::Mode, status::StatusReport};

/// The closure `status` calls.
pub(super) fn source(
    agent: &Agent,
    plumbing: &Plumbing,
) -> Arc<dyn Fn() -> StatusReport + Send + Sync> {
    let (report, counters, conn) = (
        agent.report.clone(),
        agent.counters.clone(),
        agent.conn.clone(),
    );
    let xdp = plumbing.counter_source();
    let lease = plumbing.lease_source();
    let mode = agent.mode;
    let health = agent.health.report_source();
    let filter = agent.policy.status();
    Arc::new(move || {
        let mut r = lock(&report).clone();
        r.health = health();
        let now = Instant::now();
        let deadline = lease();
        if r.forwarding == Role::Active && mode == Mode::Node && deadline.is_none_or(|d| now >= d) {
            // The lease ran out and the core has not fenced yet (this process was frozen
            // until a moment ago): XDP already drops, and nothing forwards.
            r.forwarding = Role::Fenced;
        }
        r.lease_remaining_ms = deadline
            .filter(|_| r.forwarding == Role::Active && mode == Mode::Node)
            .map(|d| d.saturating_duration_since(now).as_millis() as u64);
        r.connection.rtt_ms = lock(&conn).as_ref().map(|c| c.rtt().as_secs_f64() * 1000.0);
        r.counters.tun_to_mesh = counters.tun_to_mesh.load(Ordering::Relaxed);
        r.counters.mesh_to_tun = counters.mesh_to_tun.load(Ordering::Relaxed);
        r.counters.dropped = counters.dropped();
        r.filter = filter();
        if let Some((verdicts, routes)) = xdp() {
            r.counters.xdp_verdicts = verdicts;
            r.counters.xdp_routes = routes;
        }
        r
    })
}
