//! What native XDP on an interface can count on. On a veth, a frame sent back out with
//! `XDP_TX` (the standby hairpin) lands on the *peer's* XDP ring, which the kernel drains
//! only when the peer runs a native XDP program itself; otherwise the frame vanishes
//! without an error. Real NICs transmit `XDP_TX` frames themselves and have no such
//! limit, and generic (skb) XDP has none either.

use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
};

use super::{Error, Netlink};

/// Whether `XDP_TX` in native mode delivers on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeTx {
    /// Not a veth: the driver transmits `XDP_TX` frames itself.
    Delivers,
    /// A veth whose peer runs a native XDP program: its ring is drained.
    VethPeerHasXdp,
    /// A veth whose peer runs no native XDP program: `XDP_TX` frames are lost.
    VethPeerWithoutXdp {
        /// The peer's ifindex (in `netns_id`'s namespace when set).
        peer: u32,
        /// The peer's namespace id as this namespace knows it, if not this one.
        netns_id: Option<i32>,
    },
    /// A veth whose peer could not be inspected (another namespace without an id here).
    VethPeerUnknown,
}

impl Netlink {
    /// Inspects `iface` (and, for a veth, its peer) for [`NativeTx`].
    pub async fn native_tx(&self, iface: &str) -> Result<NativeTx, Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(iface.to_owned()));
        let link = self.get_link(msg, iface).await?;
        let is_veth = link.attributes.iter().any(|a| {
            matches!(a, LinkAttribute::LinkInfo(infos)
                if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
        });
        if !is_veth {
            return Ok(NativeTx::Delivers);
        }
        let peer = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(index) if *index != 0 => Some(*index),
            _ => None,
        });
        let netns_id = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkNetNsId(id) => Some(*id),
            _ => None,
        });
        let Some(peer) = peer else {
            return Ok(NativeTx::VethPeerUnknown);
        };
        let mut msg = LinkMessage::default();
        msg.header.index = peer;
        if let Some(id) = netns_id {
            // IFLA_TARGET_NETNSID: look the peer up in its own namespace.
            msg.attributes.push(LinkAttribute::IfNetnsId(id));
        }
        let peer_link = match self.get_link(msg, "the veth peer").await {
            Ok(l) => l,
            // A peer in a namespace this one cannot see into.
            Err(Error::Kernel { .. } | Error::NoSuchInterface(_)) => {
                return Ok(NativeTx::VethPeerUnknown);
            }
            Err(e) => return Err(e),
        };
        if has_native_xdp(&peer_link) {
            Ok(NativeTx::VethPeerHasXdp)
        } else {
            Ok(NativeTx::VethPeerWithoutXdp { peer, netns_id })
        }
    }

    async fn get_link(&self, msg: LinkMessage, what: &str) -> Result<LinkMessage, Error> {
        let replies = self
            .request_one(RouteNetlinkMessage::GetLink(msg), "look up link")
            .await
            .map_err(|e| match e {
                Error::Kernel { source, .. } if source.raw_os_error() == Some(libc::ENODEV) => {
                    Error::NoSuchInterface(what.to_owned())
                }
                other => other,
            })?;
        replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .ok_or_else(|| Error::NoSuchInterface(what.to_owned()))
    }
}

/// A native (driver) XDP program on the link, alone or among others.
fn has_native_xdp(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().any(|x| match x {
            LinkXdp::Attached(XdpAttached::Driver) => true,
            LinkXdp::DrvProgId(id) => *id != 0,
            _ => false,
        }),
        _ => false,
    })
}
