//! What the LAN and the kernel show of the HA node, read with `ip -j`: whom the LAN host's
//! ARP entry for the VIP names, which replica has the VIP on its interface, and where a
//! standby's routing table points. Failover scenarios check these after a flip, because
//! an agent's own `status` could be wrong about them.

use anyhow::Context;

use crate::ha::{Ha, VIP};

/// The routing table a standby sends mesh-bound traffic through (via the active).
pub const STANDBY_TABLE: u32 = 7302;

/// The VIP without its prefix length.
pub fn vip_addr() -> &'static str {
    VIP.split('/').next().unwrap_or(VIP)
}

impl Ha {
    /// Replica `i`'s LAN MAC (`eth1`), as `ip` prints it.
    pub fn lan_mac(&self, i: usize) -> anyhow::Result<String> {
        let links = json(&self.replicas[i].ns.ip("-j link show dev eth1")?)?;
        links[0]["address"]
            .as_str()
            .map(str::to_owned)
            .context("eth1 has no address")
    }

    /// The MAC the LAN host's neighbour entry for the VIP names (`None`: no entry).
    pub fn host_vip_mac(&self) -> anyhow::Result<Option<String>> {
        let entries = json(
            &self
                .host
                .ip(&format!("-j neigh show {} dev eth0", vip_addr()))?,
        )?;
        Ok(entries
            .as_array()
            .and_then(|a| a.first())
            .and_then(|e| e["lladdr"].as_str())
            .map(str::to_owned))
    }

    /// Whether replica `i` has the VIP on its LAN interface (the kernel's view).
    pub fn has_vip(&self, i: usize) -> anyhow::Result<bool> {
        let links = json(&self.replicas[i].ns.ip("-j addr show dev eth1")?)?;
        Ok(links[0]["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["local"] == vip_addr()))
    }

    /// Replica `i`'s standby table, as `ip route show table 7302` prints it.
    pub fn standby_table(&self, i: usize) -> anyhow::Result<String> {
        self.replicas[i]
            .ns
            .ip(&format!("route show table {STANDBY_TABLE}"))
    }
}

fn json(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("`ip -j` printed no JSON: {text}"))
}
