//! The standby hairpin on real interfaces: a LAN host sends its ping to the mesh to the
//! *standby's* own address; the standby's XDP bounces it to the active's MAC, and the
//! active forwards it toward the mesh, so the ping is answered. The standby's kernel
//! does not forward (ip_forward=0): only XDP can have moved the packets.
//!
//! ```text
//!  host 192.168.50.10 ──┐                       ┌── mesh 100.96.0.5
//!                       br0 ── active .2 ── "tunnel" veth (stands in for the TUN)
//!  standby .3 (XDP) ────┘
//! ```

use std::time::Duration;

use aya::programs::XdpMode;
use meshgate_agent::dataplane::{Dataplane, IpNet, Probe, Role, Verdict};
use meshgate_tests::{Lan, Netns, require_root, veth, wait_until};

const ACTIVE_MAC: [u8; 6] = [0x02, 0x6d, 0x67, 0, 0, 0x0a];
const PINGS: u64 = 5;
const MESH_ROUTE: u32 = 1;

fn net(s: &str) -> IpNet {
    s.parse().expect("test literal is a valid prefix")
}

fn gateway(ns: &Netns, role: Role, mode: XdpMode) -> anyhow::Result<Dataplane> {
    ns.enter(|| -> anyhow::Result<Dataplane> {
        let mut dp = Dataplane::load()?;
        dp.replace_routes(&[(net("100.96.0.0/12"), MESH_ROUTE)])?;
        dp.set_local_prefixes(&[net("192.168.50.0/24")])?;
        dp.set_tunnel(0, 1280)?;
        dp.set_active_mac(ACTIVE_MAC)?;
        dp.set_role(role, 1)?;
        dp.attach("eth0", mode)?;
        Ok(dp)
    })?
}

/// Non-zero verdict counters, for failure messages.
fn verdicts(dp: &Dataplane) -> String {
    match dp.counters() {
        Ok(c) => Verdict::ALL
            .iter()
            .filter(|v| c.verdict(**v).packets > 0)
            .map(|v| format!("{}={}", v.name(), c.verdict(*v).packets))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => e.to_string(),
    }
}

fn hairpin_reaches_mesh(mode: XdpMode) -> anyhow::Result<()> {
    require_root()?;
    let lan = Lan::new("lan")?;
    let host = Netns::new("host")?;
    let active = Netns::new("active")?;
    let standby = Netns::new("standby")?;
    let mesh = Netns::new("mesh")?;
    lan.attach(&host, "eth0")?; // bridge port p0
    lan.attach(&active, "eth0")?; // p1
    lan.attach(&standby, "eth0")?; // p2
    // Native XDP_TX on a veth puts the frame on the peer's XDP ring, which the kernel
    // only drains promptly when the peer has an XDP program too (veth_xdp_flush skips
    // the NAPI kick otherwise; GRO alone is not enough, measured here). So the
    // bridge-side peer of the standby gets the pass-through probe. Real NICs transmit
    // XDP_TX frames themselves and need nothing of the sort.
    let _peer_probe = match mode {
        XdpMode::Driver => Some(
            lan.netns()
                .enter(|| Probe::attach("p2", XdpMode::Driver).map_err(anyhow::Error::from))??,
        ),
        _ => None,
    };
    let mac = ACTIVE_MAC.map(|b| format!("{b:02x}")).join(":");
    active.ip(&format!("link set eth0 address {mac}"))?;
    host.ip("addr add 192.168.50.10/24 dev eth0")?;
    active.ip("addr add 192.168.50.2/24 dev eth0")?;
    standby.ip("addr add 192.168.50.3/24 dev eth0")?;
    // The host sends mesh traffic to the standby's own address.
    host.ip("route add 100.96.0.0/12 via 192.168.50.3")?;
    // The active's "tunnel": a veth to the mesh namespace.
    veth(&active, "tun0", &mesh, "eth0")?;
    active.ip("addr add 100.96.0.1/12 dev tun0")?;
    mesh.ip("addr add 100.96.0.5/12 dev eth0")?;
    mesh.ip("route add default via 100.96.0.1")?;
    active.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    standby.exec("sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;

    let active_dp = gateway(&active, Role::Active, mode)?;
    let standby_dp = gateway(&standby, Role::Standby, mode)?;

    // The first pings may wait for ARP on the way; wait until one gets through.
    wait_until(
        Duration::from_secs(10),
        "a ping through the hairpin",
        || {
            Ok(host
                .exec("ping", &["-c", "1", "-W", "1", "-q", "100.96.0.5"])
                .is_ok())
        },
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nstandby verdicts: {}\nactive verdicts: {}",
            verdicts(&standby_dp),
            verdicts(&active_dp)
        )
    })?;
    let before_hairpin = standby_dp.counters()?.verdict(Verdict::Hairpin).packets;
    let before_tunnel = active_dp.counters()?.verdict(Verdict::TunnelKernel).packets;
    host.exec(
        "ping",
        &[
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.05",
            "-W",
            "2",
            "-q",
            "100.96.0.5",
        ],
    )?;

    let standby_c = standby_dp.counters()?;
    let active_c = active_dp.counters()?;
    assert_eq!(
        standby_c.verdict(Verdict::Hairpin).packets - before_hairpin,
        PINGS,
        "every echo request was bounced by the standby"
    );
    assert_eq!(
        active_c.verdict(Verdict::TunnelKernel).packets - before_tunnel,
        PINGS,
        "every echo request went toward the mesh on the active"
    );
    assert!(standby_c.routes[&MESH_ROUTE].packets >= PINGS);
    assert_eq!(standby_c.verdict(Verdict::DropSpoofed).packets, 0);
    Ok(())
}

#[test]
#[ignore = "needs root: network namespaces and XDP (run by `cargo xtask test`)"]
fn standby_hairpin_reaches_mesh_in_native_mode() -> anyhow::Result<()> {
    hairpin_reaches_mesh(XdpMode::Driver)
}

#[test]
#[ignore = "needs root: network namespaces and XDP (run by `cargo xtask test`)"]
fn standby_hairpin_reaches_mesh_in_skb_mode() -> anyhow::Result<()> {
    hairpin_reaches_mesh(XdpMode::Skb)
}
