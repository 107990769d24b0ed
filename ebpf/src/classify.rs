//! The gateway's decision for a mesh-bound packet, from the configuration and the parsed
//! network layer alone. Read-only: rewrites happen in `verdict`.
//!
//! Order matters for what is counted: the replica's own state (fenced, stale) first —
//! a deposed replica forwards nothing whatever the packet — then the packet's source,
//! then the role's forwarding path.

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use meshgate_common::{Config, Role, TunnelMode, Verdict};

use crate::parse::L3;

/// What to do with a mesh-bound packet.
#[derive(Clone, Copy)]
pub enum Decision {
    /// Pass or drop as the verdict says, without touching the packet.
    Verdict(Verdict),
    /// Standby: bounce to the active replica.
    Hairpin,
    /// Active: toward the tunnel through the kernel's policy route (`XDP_PASS`).
    TunnelKernel,
    /// Active: strip Ethernet and redirect into the TUN device.
    TunnelRedirect,
}

const ZERO_MAC: [u8; 6] = [0; 6];

#[inline(always)]
pub fn decide(cfg: &Config, l3: &L3, spoofed: bool) -> Decision {
    let role = cfg.role();
    if role == Role::Fenced {
        return Decision::Verdict(Verdict::DropFenced);
    }
    if cfg.epoch < cfg.newest_epoch {
        return Decision::Verdict(Verdict::DropStaleEpoch);
    }
    // Lease self-fencing: the deadline is enforced here so forwarding stops on time
    // even if the agent is stuck and never writes `Fenced`.
    // SAFETY: a helper without arguments or preconditions.
    if cfg.lease_deadline_ns != 0 && unsafe { bpf_ktime_get_boot_ns() } >= cfg.lease_deadline_ns {
        return Decision::Verdict(Verdict::DropStaleEpoch);
    }
    if spoofed {
        return Decision::Verdict(Verdict::DropSpoofed);
    }
    if role == Role::Standby {
        if cfg.active_mac == ZERO_MAC {
            return Decision::Verdict(Verdict::DropNoPath);
        }
        // The hairpin is a routing hop: it decrements TTL, which also ends any
        // standby ↔ standby ping-pong while two replicas disagree about the active.
        if l3.ttl <= 1 {
            return Decision::Verdict(Verdict::PassTtlExpired);
        }
        return Decision::Hairpin;
    }
    // Active. Too big for the tunnel: the kernel fragments it or, with DF (always for
    // IPv6), answers ICMP frag-needed / packet-too-big. TCP is kept small by MSS
    // clamping, so this is mostly UDP and ICMP.
    if cfg.tunnel_mtu != 0 && l3.ip_len > cfg.tunnel_mtu {
        return Decision::Verdict(Verdict::PassTooBig);
    }
    match cfg.tunnel_mode() {
        TunnelMode::KernelRoute => Decision::TunnelKernel,
        TunnelMode::Redirect => {
            if cfg.tunnel_ifindex == 0 {
                return Decision::Verdict(Verdict::DropNoPath);
            }
            if l3.ttl <= 1 {
                return Decision::Verdict(Verdict::PassTtlExpired);
            }
            Decision::TunnelRedirect
        }
    }
}
