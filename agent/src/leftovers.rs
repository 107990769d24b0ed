//! `meshgate-agent cleanup`: removes what an agent that could not clean up after itself
//! (killed, crashed) left in this network namespace — its rules, the routes in its two
//! tables, its addresses (a VIP not yet lapsed, the Mesh IP) and the nftables MSS table.
//! The systemd unit runs it as `ExecStopPost`, so a crash costs nothing until the restart.
//!
//! Left alone: the XDP program (its link belonged to the dead process and went with it),
//! the TUN (it went with its file descriptor) and the sysctls (forwarding on, redirects
//! off, loose `rp_filter` on the TUN), whose previous values only the dead process knew.

use anyhow::Context;
use tracing::info;

use crate::{
    mss,
    netlink::{Netlink, Routing, RoutingConfig},
};

/// Removes the leftovers (nothing to do is success).
pub async fn remove() -> anyhow::Result<()> {
    let nl = Netlink::connect().context("failed to open netlink")?;
    let report = Routing::new(nl, RoutingConfig::default())
        .cleanup()
        .await
        .context("failed to remove the agent's routes, rules and addresses")?;
    mss::remove();
    info!(?report, "removed what a previous agent left");
    Ok(())
}
