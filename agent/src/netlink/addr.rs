//! Addresses the agent owns: the VIP on the LAN interface and the Mesh IP on the TUN.
//! Each is tagged with our `proto` as `IFA_PROTO` (Linux ≥ 5.18), so a run after a crash
//! finds a VIP the previous run left and `cleanup` removes it without remembering it.
//!
//! The VIP also carries a short kernel lifetime (`valid_lft`), which the live agent
//! renews (see `crate::vip`): an agent killed with SIGKILL cannot remove it, so the
//! kernel does, and two hosts never keep answering ARP for the gateway.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressProtocol, CacheInfo},
};
use tracing::{debug, info};

use super::{Error, Netlink, is_exists, is_not_found};

/// An address as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The interface's index.
    pub index: u32,
    /// Address and prefix length.
    pub net: IpNet,
    /// Its `IFA_PROTO`, 0 when unset.
    pub proto: u8,
}

impl Netlink {
    /// Every address in this namespace (both families).
    pub async fn addresses(&self) -> Result<Vec<Address>, Error> {
        let msgs = self
            .dump(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                "dump addresses",
            )
            .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse(&a),
                _ => None,
            })
            .collect())
    }

    /// Adds `net` to the interface `index`, tagged `proto`; already present is success.
    pub async fn add_address(&self, index: u32, net: IpNet, proto: u8) -> Result<(), Error> {
        let res = self
            .ack(
                RouteNetlinkMessage::NewAddress(message(index, net, proto)),
                NLM_F_CREATE | NLM_F_EXCL,
                || format!("add address {net} to ifindex {index}"),
            )
            .await;
        match res {
            Ok(()) => {
                info!(%net, index, "address added");
                Ok(())
            }
            Err(e) if is_exists(&e) => {
                debug!(%net, index, "address already present");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Removes `net` from the interface `index`; already absent is success.
    pub async fn remove_address(&self, index: u32, net: IpNet) -> Result<(), Error> {
        let res = self
            .ack(
                RouteNetlinkMessage::DelAddress(message(index, net, 0)),
                0,
                || format!("remove address {net} from ifindex {index}"),
            )
            .await;
        match res {
            Ok(()) => {
                info!(%net, index, "address removed");
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                debug!(%net, index, "address already absent");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Adds `net` to the interface `index`, tagged `proto`, or renews it if present, so
    /// that the kernel removes it `lifetime_s` seconds after the last call (both the
    /// valid and the preferred lifetime: a deprecated VIP would still answer ARP).
    pub async fn put_address_with_lifetime(
        &self,
        index: u32,
        net: IpNet,
        proto: u8,
        lifetime_s: u32,
    ) -> Result<(), Error> {
        let mut msg = message(index, net, proto);
        let mut lifetime = CacheInfo::default();
        lifetime.ifa_valid = lifetime_s;
        lifetime.ifa_preferred = lifetime_s;
        msg.attributes.push(AddressAttribute::CacheInfo(lifetime));
        self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("put address {net} on ifindex {index} for {lifetime_s} s"),
        )
        .await
    }

    /// Adds the VIP to `iface`, or renews it, for `lifetime_s` seconds (idempotent).
    /// Check it with [`Netlink::check_vip`] first.
    pub async fn add_vip(
        &self,
        iface: &str,
        vip: Ipv4Net,
        proto: u8,
        lifetime_s: u32,
    ) -> Result<(), Error> {
        let index = self.link_index(iface).await?;
        self.put_address_with_lifetime(index, vip.into(), proto, lifetime_s)
            .await
    }

    /// Removes the VIP from `iface` (idempotent).
    pub async fn remove_vip(&self, iface: &str, vip: Ipv4Net) -> Result<(), Error> {
        let index = self.link_index(iface).await?;
        self.remove_address(index, vip.into()).await
    }

    /// Refuses a VIP whose address is outside every IPv4 subnet configured on `iface`
    /// (addresses of our own, such as a VIP a previous run left, do not count).
    pub async fn check_vip(&self, iface: &str, vip: Ipv4Net, proto: u8) -> Result<(), Error> {
        let index = self.link_index(iface).await?;
        let subnets: Vec<Ipv4Net> = self
            .addresses()
            .await?
            .into_iter()
            .filter(|a| a.index == index && a.proto != proto)
            .filter_map(|a| match a.net {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            })
            .collect();
        if subnets.iter().any(|n| n.contains(&vip.addr())) {
            return Ok(());
        }
        Err(Error::VipOutsideSubnet {
            vip,
            iface: iface.to_owned(),
            configured: if subnets.is_empty() {
                "none".to_owned()
            } else {
                subnets
                    .iter()
                    .map(|n| n.trunc().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
    }
}

fn message(index: u32, net: IpNet, proto: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links
    // and equals IFA_LOCAL otherwise, as `ip addr add` sends it.
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    if proto != 0 {
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(proto)));
    }
    msg
}

fn parse(msg: &AddressMessage) -> Option<Address> {
    let mut local: Option<IpAddr> = None;
    let mut address = None;
    let mut proto = 0;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Protocol(p) => proto = u8::from(*p),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    Some(Address {
        index: msg.header.index,
        net: IpNet::new(ip, msg.header.prefix_len).ok()?,
        proto,
    })
}
