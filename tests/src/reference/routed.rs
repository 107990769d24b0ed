//! A device, a gateway and a LAN host in the shape of [`crate::ha`] (device and gateway on
//! a transport bridge, gateway and host on a LAN bridge, the same addresses), without a
//! coordinator: the references for throughput. [`Routed::plain`] forwards in the kernel
//! with no tunnel (the ceiling); [`Routed::wireguard`] puts a point-to-point userspace
//! WireGuard tunnel between the device and the gateway.

use std::path::Path;

use super::wg::{End, Tunnel, Userspace};
use crate::{
    Lan, Netns,
    ha::{HOST_IP, LAN_CIDR},
};

const DEVICE_WAN_IP: &str = "10.99.0.10";
const GATEWAY_WAN_IP: &str = "10.99.0.11";
const GATEWAY_LAN_IP: &str = "192.168.50.11";
/// Tunnel addresses (inside the mesh range, as a meshgate device's would be).
const DEVICE_TUNNEL_IP: &str = "100.96.0.10";
const GATEWAY_TUNNEL_IP: &str = "100.96.0.11";

/// The topology. Field order is drop order: the tunnel's processes go first.
pub struct Routed {
    /// The WireGuard tunnel, if any.
    pub tunnel: Option<Tunnel>,
    /// The device (iperf3 client).
    pub device: Netns,
    /// The gateway (router, tunnel end).
    pub gateway: Netns,
    /// The LAN host (iperf3 server).
    pub host: Netns,
    /// Where the host reaches the device.
    pub device_ip: String,
    wan: Lan,
    lan: Lan,
}

impl Routed {
    fn build() -> anyhow::Result<Self> {
        let (wan, lan) = (Lan::new("rwan")?, Lan::new("rlan")?);
        let device = Netns::new("rdevice")?;
        let gateway = Netns::new("rgateway")?;
        let host = Netns::new("rhost")?;
        wan.attach(&device, "eth0")?;
        wan.attach(&gateway, "eth0")?;
        lan.attach(&gateway, "eth1")?;
        lan.attach(&host, "eth0")?;
        device.ip(&format!("addr add {DEVICE_WAN_IP}/24 dev eth0"))?;
        gateway.ip(&format!("addr add {GATEWAY_WAN_IP}/24 dev eth0"))?;
        gateway.ip(&format!("addr add {GATEWAY_LAN_IP}/24 dev eth1"))?;
        gateway.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        host.ip(&format!("addr add {HOST_IP}/24 dev eth0"))?;
        Ok(Self {
            tunnel: None,
            device,
            gateway,
            host,
            device_ip: DEVICE_WAN_IP.to_owned(),
            wan,
            lan,
        })
    }

    /// Plain IPv4 forwarding through the gateway, no tunnel.
    pub fn plain() -> anyhow::Result<Self> {
        let r = Self::build()?;
        r.device
            .ip(&format!("route add {LAN_CIDR} via {GATEWAY_WAN_IP}"))?;
        r.host
            .ip(&format!("route add 10.99.0.0/24 via {GATEWAY_LAN_IP}"))?;
        Ok(r)
    }

    /// A `kind` WireGuard tunnel from the device to the gateway, which routes the LAN.
    pub fn wireguard(kind: Userspace, dir: &Path) -> anyhow::Result<Self> {
        let mut r = Self::build()?;
        let device_prefixes = format!("{DEVICE_TUNNEL_IP}/32");
        let gateway_prefixes = format!("{GATEWAY_TUNNEL_IP}/32,{LAN_CIDR}");
        let tunnel = Tunnel::new(
            kind,
            dir,
            &End {
                ns: &r.device,
                underlay_ip: DEVICE_WAN_IP,
                tunnel_ip: DEVICE_TUNNEL_IP,
                prefixes: &device_prefixes,
            },
            &End {
                ns: &r.gateway,
                underlay_ip: GATEWAY_WAN_IP,
                tunnel_ip: GATEWAY_TUNNEL_IP,
                prefixes: &gateway_prefixes,
            },
        )?;
        r.device
            .ip(&format!("route add {LAN_CIDR} dev {}", tunnel.names.0))?;
        r.host
            .ip(&format!("route add 100.96.0.0/12 via {GATEWAY_LAN_IP}"))?;
        r.tunnel = Some(tunnel);
        r.device_ip = DEVICE_TUNNEL_IP.to_owned();
        Ok(r)
    }

    /// The bridges (kept for their lifetime; exposed to capture traffic).
    pub fn bridges(&self) -> (&Lan, &Lan) {
        (&self.wan, &self.lan)
    }
}
