//! The `status` report for a person at a terminal: the same facts as `--json`, in the
//! same words, one line per topic.

use std::{collections::BTreeMap, fmt::Write as _};

use meshgate_proto::Role;
use serde::Serialize;

use super::StatusReport;

/// A value's name in the JSON report (an enum's lowercase name), so the human form
/// uses the same words as `--json`.
fn json_name(v: impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// The report for a person at a terminal.
pub fn human(r: &StatusReport) -> String {
    let mut out = String::new();
    let name = r.name.as_deref().unwrap_or("(not registered)");
    let _ = writeln!(
        out,
        "meshgate-agent: {} {name}, replica {}",
        json_name(r.kind),
        r.replica_id
    );
    let lease = r
        .lease_remaining_ms
        .map(|ms| format!(", lease {ms} ms left"))
        .unwrap_or_default();
    let forwarding = if Some(r.forwarding) == r.role {
        String::new()
    } else {
        format!(" — data plane {}", r.forwarding)
    };
    let _ = writeln!(
        out,
        "  role         {} (epoch {}{lease}){forwarding}",
        r.role.map_or("unknown", Role::name),
        r.epoch
    );
    if let Some(peer) = &r.active_peer {
        let _ = writeln!(out, "  active peer  {peer}");
    }
    let _ = writeln!(
        out,
        "  mesh ip      {}",
        r.mesh_ip.as_deref().unwrap_or("-")
    );
    let c = &r.connection;
    let rtt = c
        .rtt_ms
        .map(|ms| format!(", rtt {ms:.1} ms"))
        .unwrap_or_default();
    let coordinator = c.coordinator.as_deref().unwrap_or("-");
    let _ = writeln!(
        out,
        "  coordinator  {coordinator} {}{rtt}",
        json_name(c.state)
    );
    for conn in &c.conns {
        let name = conn.colo_name.as_deref().unwrap_or("?");
        let primary = match (conn.primary, conn.cut_off) {
            (true, false) => ", primary",
            (true, true) => ", primary, cut off from the cluster",
            (false, true) => ", cut off from the cluster",
            (false, false) => "",
        };
        let rtt = conn
            .rtt_ms
            .map(|ms| format!(", rtt {ms:.1} ms"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    conn       {name} at {} since {}{primary}{rtt}",
            conn.addr, conn.opened_at
        );
    }
    if let Some(err) = &c.last_error {
        let _ = writeln!(out, "  last error   {err}");
    }
    if let Some(lan) = &r.lan_iface {
        let vip = r.gateway_ip.as_deref().unwrap_or("-");
        let held = if r.holds_vip { "held" } else { "not held" };
        let _ = writeln!(
            out,
            "  lan          {lan}, gateway {vip} ({held}), xdp {}",
            json_name(r.xdp_mode)
        );
        if let Some(note) = &r.xdp_note {
            let _ = writeln!(out, "  xdp note     {note}");
        }
    }
    if r.health.state != "off" && !r.health.state.is_empty() {
        let targets = r
            .health
            .targets
            .iter()
            .map(|(t, result)| format!("{t} {result}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(out, "  health       {}: {targets}", r.health.state);
    }
    let _ = writeln!(out, "  tun          {} (mtu {})", r.tun, r.tun_mtu);
    let routes = if r.routes.is_empty() {
        "-".to_owned()
    } else {
        r.routes.join(", ")
    };
    let _ = writeln!(out, "  routes       {routes}");
    if let Some(f) = &r.last_flip {
        let _ = writeln!(
            out,
            "  last flip    to {} in epoch {}, {} µs",
            f.to, f.epoch, f.duration_us
        );
    }
    let k = &r.counters;
    let _ = writeln!(
        out,
        "  tunnel       {} packets to the mesh, {} from it",
        k.tun_to_mesh, k.mesh_to_tun
    );
    let join = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !k.dropped.is_empty() {
        let _ = writeln!(out, "  dropped      {}", join(&k.dropped));
    }
    if !k.xdp_verdicts.is_empty() {
        let _ = writeln!(out, "  xdp          {}", join(&k.xdp_verdicts));
    }
    if !k.xdp_routes.is_empty() {
        let _ = writeln!(out, "  per route    {}", join(&k.xdp_routes));
    }
    if let Some(f) = &r.filter {
        crate::policy::human(&mut out, f);
    }
    out
}

#[cfg(test)]
mod tests {
    use meshgate_proto::Kind;

    use super::*;
    use crate::config::XdpMode;

    #[test]
    fn the_human_form_shows_role_and_a_fenced_data_plane() {
        let r = StatusReport {
            name: Some("web".into()),
            role: Some(Role::Active),
            forwarding: Role::Fenced,
            epoch: 3,
            ..StatusReport::starting(Kind::Node, "r1".into(), XdpMode::Native, "mg0".into())
        };
        let text = human(&r);
        assert!(
            text.contains("role         active (epoch 3) — data plane fenced"),
            "{text}"
        );
    }
}
