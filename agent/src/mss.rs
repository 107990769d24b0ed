//! TCP MSS clamping in the kernel's forward path (nftables), for SYNs entering or leaving
//! the TUN, so TCP between the LAN and the mesh never sends segments the tunnel cannot
//! carry.
//!
//! Why here and not at XDP: an incremental checksum update at XDP is only right when the
//! TCP checksum field holds the full checksum. Packets that a local stack or a VM/container
//! sent over veth are `CHECKSUM_PARTIAL`: the field holds only the pseudo-header sum, and
//! the update corrupts them (measured: TCP through the gateway failed until TX checksum
//! offload was turned off on the sender). The kernel's clamp handles every checksum state.
//! The XDP clamp stays for the redirect tunnel mode, which bypasses this path.

use std::{io::Write, process::Command, process::Stdio};

use anyhow::{Context, bail};
use tracing::{info, warn};

/// The nftables table the agent owns.
const TABLE: &str = "meshgate";
/// IPv4 + TCP header bytes without options.
const TCP_IPV4_OVERHEAD: u32 = 40;

/// Installs (or replaces) the clamp for `tun` at its `mtu`, atomically. Without the `nft`
/// program it warns and leaves path MTU discovery to do the job.
pub fn apply(tun: &str, mtu: u32) -> anyhow::Result<()> {
    let mss = mtu.saturating_sub(TCP_IPV4_OVERHEAD);
    let rule = |dir: &str| {
        format!(
            "{dir} \"{tun}\" tcp flags syn / syn,rst tcp option maxseg size > {mss} tcp option maxseg size set {mss}"
        )
    };
    // `add` then `delete` makes the replacement one transaction whether or not the table
    // exists (a previous run may have left it).
    let script = format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  chain mss_clamp {{\n    type filter hook forward priority mangle; policy accept;\n    {}\n    {}\n  }}\n}}\n",
        rule("iifname"),
        rule("oifname")
    );
    match nft(&script) {
        Ok(()) => {
            info!(tun, mss, "TCP MSS clamp installed");
            Ok(())
        }
        Err(e) if is_missing(&e) => {
            warn!(
                "`nft` not found: no TCP MSS clamp; install nftables (path MTU discovery still works)"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Removes the clamp (nothing to do if it is not there).
pub fn remove() {
    if let Err(e) = nft(&format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\n"
    )) && !is_missing(&e)
    {
        warn!(error = %e, "failed to remove the TCP MSS clamp");
    }
}

fn is_missing(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

fn nft(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())
        .context("failed to write to nft")?;
    let out = child.wait_with_output().context("failed to wait for nft")?;
    if !out.status.success() {
        bail!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
