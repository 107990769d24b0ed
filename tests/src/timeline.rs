//! A failover trial as data for the report's timeline plot: every probe's send time and
//! arrival (or loss), both directions, and the failover's steps, in milliseconds from
//! the injected fault. `cargo xtask bench` draws it (`failover-timeline.svg`).

use std::time::Instant;

use serde_json::json;

use crate::{failover::FailoverRun, probe::FlowReport};

/// Probes sent this long before the fault are left out.
const BEFORE_MS: f64 = 200.0;
/// … and this long after it.
const AFTER_MS: f64 = 600.0;

/// The trial as JSON: `{"fault", "inbound": [[sent, arrived|null]…], "outbound": […],
/// "steps": [[at, name]…]}`.
pub fn failover(run: &FailoverRun) -> serde_json::Value {
    let mut steps = vec![json!([0.0, "fault injected"])];
    for (event, label) in [
        ("lease_expired", "lease expired"),
        ("promoted", "standby promoted"),
    ] {
        if let Some(at) = run.event_ms(event) {
            steps.push(json!([at, label]));
        }
    }
    for (name, at, _) in run.flip_steps() {
        steps.push(json!([at, name]));
    }
    json!({
        "fault": run.fault.describe(),
        "inbound": probes(&run.inbound, run.injected),
        "outbound": probes(&run.outbound, run.injected),
        "steps": steps,
    })
}

/// `[sent ms, arrived ms or null]` per probe sent within the window.
fn probes(flow: &FlowReport, injected: Instant) -> Vec<serde_json::Value> {
    let ms = |t: Instant| {
        if t >= injected {
            (t - injected).as_secs_f64() * 1e3
        } else {
            -(injected - t).as_secs_f64() * 1e3
        }
    };
    let mut arrived = vec![None; flow.sent_at.len()];
    for (seq, at) in &flow.arrivals {
        if let Some(slot) = usize::try_from(*seq).ok().and_then(|i| arrived.get_mut(i)) {
            slot.get_or_insert(ms(*at));
        }
    }
    flow.sent_at
        .iter()
        .zip(arrived)
        .map(|(sent, arrived)| (ms(*sent), arrived))
        .filter(|(sent, _)| (-BEFORE_MS..=AFTER_MS).contains(sent))
        .map(|(sent, arrived)| json!([sent, arrived]))
        .collect()
}
