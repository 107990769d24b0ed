//! The node replica's LAN side: its settings checked against the kernel, and the XDP
//! program attached in a mode whose hairpin delivers.

use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use aya::programs::XdpMode as AyaXdpMode;
use ipnet::{IpNet, Ipv4Net};
use meshgate_common::Role as XdpRole;
use meshgate_proto::datagram;
use tracing::{info, warn};

use crate::{
    config::{RunArgs, XdpMode},
    dataplane::Dataplane,
    garp,
    link_watch::LinkWatch,
    netlink::{self, NativeTx, Netlink},
    tun::Tun,
};

/// The node replica's LAN side.
pub(super) struct Lan {
    pub(super) iface: String,
    pub(super) ip: Ipv4Addr,
    pub(super) mac: [u8; 6],
    pub(super) vip: Option<Ipv4Net>,
    pub(super) watch: LinkWatch,
}

/// Validates the node's LAN settings against the kernel and reads its address and MAC.
pub(super) async fn lan_side(nl: &Netlink, args: &RunArgs, proto: u8) -> anyhow::Result<Lan> {
    let Some(iface) = args.lan_iface.clone() else {
        bail!("a node replica needs --lan-iface: the interface facing the advertised subnet")
    };
    let index = nl.link_index(&iface).await.map_err(|e| match e {
        netlink::Error::NoSuchInterface(_) => {
            anyhow::anyhow!("--lan-iface {iface}: no such interface")
        }
        other => anyhow::Error::new(other).context(format!("failed to look up {iface}")),
    })?;
    let ip = nl
        .addresses()
        .await
        .context("failed to read addresses")?
        .into_iter()
        .filter(|a| a.index == index && a.proto != proto)
        .find_map(|a| match a.net {
            IpNet::V4(n) if Some(n.addr()) != args.gateway_ip.map(|v| v.addr()) => Some(n.addr()),
            _ => None,
        })
        .with_context(|| {
            format!("--lan-iface {iface} has no IPv4 address of its own: give it one")
        })?;
    if let Some(vip) = args.gateway_ip {
        nl.check_vip(&iface, vip, proto)
            .await
            .map_err(|e| anyhow::anyhow!("--gateway-ip {vip}: {e}"))?;
    }
    let mac = garp::interface_mac(&iface)
        .with_context(|| format!("failed to read the MAC of {iface}"))?;
    let watch = LinkWatch::new(&iface)
        .await
        .with_context(|| format!("failed to watch the link of {iface}"))?;
    Ok(Lan {
        iface,
        ip,
        mac,
        vip: args.gateway_ip,
        watch,
    })
}

/// Loads XDP on the LAN interface per `--xdp-mode`; returns the handle, the mode in
/// effect and, when there is something to say about it, why. The program starts fenced.
///
/// `auto` takes native mode only where its `XDP_TX` delivers: on a veth whose peer runs
/// no native XDP program, the standby hairpin would drop every frame silently, so it
/// takes skb mode there (see [`NativeTx`]).
pub(super) fn load_xdp(
    mode: XdpMode,
    lan: &Lan,
    tun: &Tun,
    native_tx: &NativeTx,
) -> anyhow::Result<(Option<Dataplane>, XdpMode, Option<String>)> {
    if mode == XdpMode::Off {
        info!("XDP off: the kernel's routing tables alone carry the traffic");
        return Ok((None, XdpMode::Off, None));
    }
    let mut dp = Dataplane::load().context("failed to load the XDP program")?;
    dp.set_role(XdpRole::Fenced, 0)
        .context("failed to fence XDP before attaching")?;
    dp.set_own_mac(lan.mac)
        .context("failed to write the own MAC to XDP")?;
    dp.set_tunnel(tun.index(), datagram::SAFE_TUN_MTU as u32)
        .context("failed to write the tunnel to XDP")?;
    // Packets reach the TUN through the kernel (the default tunnel mode), which clamps
    // the MSS correctly for every checksum state; see `crate::mss`.
    dp.set_mss_clamp(false)
        .context("failed to configure the XDP MSS clamp")?;
    let tx_drops = native_tx_problem(&lan.iface, native_tx);
    let mut note = None;
    let used = match mode {
        XdpMode::Native => {
            dp.attach(&lan.iface, AyaXdpMode::Driver)
                .with_context(|| format!("failed to attach XDP to {} in native mode", lan.iface))?;
            if let Some(problem) = tx_drops {
                warn!(iface = %lan.iface, "--xdp-mode native: {problem}; use auto or skb");
                note = Some(format!("native as asked, but {problem}"));
            }
            XdpMode::Native
        }
        XdpMode::Skb => {
            dp.attach(&lan.iface, AyaXdpMode::Skb)
                .with_context(|| format!("failed to attach XDP to {} in skb mode", lan.iface))?;
            XdpMode::Skb
        }
        XdpMode::Auto | XdpMode::Off => {
            if let Some(problem) = tx_drops {
                dp.attach(&lan.iface, AyaXdpMode::Skb).with_context(|| {
                    format!("failed to attach XDP to {} in skb mode", lan.iface)
                })?;
                let why = format!("auto chose skb: {problem}");
                warn!(iface = %lan.iface, "{why}");
                note = Some(why);
                XdpMode::Skb
            } else {
                match dp
                    .attach_auto(&lan.iface)
                    .with_context(|| format!("failed to attach XDP to {}", lan.iface))?
                {
                    AyaXdpMode::Skb => {
                        note = Some("auto chose skb: the driver has no native XDP".into());
                        XdpMode::Skb
                    }
                    _ => XdpMode::Native,
                }
            }
        }
    };
    info!(iface = %lan.iface, mode = ?used, "XDP attached");
    Ok((Some(dp), used, note))
}

/// Why native `XDP_TX` would lose frames on `iface`, if it would.
fn native_tx_problem(iface: &str, native_tx: &NativeTx) -> Option<String> {
    match native_tx {
        NativeTx::Delivers | NativeTx::VethPeerHasXdp => None,
        NativeTx::VethPeerWithoutXdp { .. } => Some(format!(
            "{iface} is a veth whose peer runs no native XDP program, where native XDP_TX \
             (the standby hairpin) drops frames silently"
        )),
        NativeTx::VethPeerUnknown => Some(format!(
            "{iface} is a veth whose peer cannot be inspected, and native XDP_TX (the \
             standby hairpin) drops frames silently unless the peer runs native XDP"
        )),
    }
}
