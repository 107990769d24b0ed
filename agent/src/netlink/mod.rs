//! The agent's kernel routing state, driven over rtnetlink.
//!
//! Everything the agent installs is tagged so that a later run (or `cleanup`) can find it
//! without remembering anything: routes and rules carry [`RoutingConfig::protocol`] as
//! their `proto`, routes live only in the two dedicated tables, and addresses carry the
//! same value as `IFA_PROTO` (Linux ≥ 5.18). Sync is reconciliation (CONVENTIONS 7):
//! desired state is computed, the kernel's state is dumped, and only the difference is
//! applied; "already exists" and "not found" are not errors.
//!
//! - [`routes`]: the ACTIVE and STANDBY tables;
//! - [`rules`]: the policy rules, among them the selector that a flip swaps;
//! - [`addr`]: owned addresses (the VIP, the TUN's Mesh IP);
//! - [`link`]: whether native XDP's `XDP_TX` delivers on an interface (veth peers);
//! - [`routing`]: [`Routing`], the handle the agent runtime calls.

pub mod addr;
pub mod link;
pub mod routes;
pub mod routing;
pub mod rules;

use std::io;

use futures_util::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};

pub use link::NativeTx;
pub use routing::{DesiredRouting, ReconcileReport, Routing, StandbyPath, Table};

/// Default id of the ACTIVE table (mesh prefixes `dev <tun>`).
pub const DEFAULT_ACTIVE_TABLE: u32 = 7301;
/// Default id of the STANDBY table (mesh prefixes `via <active's LAN IPv4>`).
pub const DEFAULT_STANDBY_TABLE: u32 = 7302;
/// Default priority of the rule that sends traffic to the coordinator through `main`, so
/// an advertised subnet that contains the coordinator cannot route the tunnel into itself.
pub const DEFAULT_BYPASS_PRIORITY: u32 = 7300;
/// Default priority of the rule that sends traffic sourced from our own Mesh IP to the
/// ACTIVE table (a standby's own traffic uses its own tunnel).
pub const DEFAULT_OWN_SOURCE_PRIORITY: u32 = 7305;
/// Default priority of the selector rule (`lookup ACTIVE` or `lookup STANDBY`).
pub const DEFAULT_SELECT_PRIORITY: u32 = 7310;
/// Default `proto` of our routes and rules and `IFA_PROTO` of our addresses: 109 ('m') is
/// unassigned in iproute2's `rt_protos` and used by no common routing daemon.
pub const DEFAULT_PROTOCOL: u8 = 109;

/// Table ids, rule priorities and the ownership tag. All priorities must be below 32766
/// (`main`) so the rules are consulted before it; the bypass rule must come first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    /// The ACTIVE table: every mesh prefix `dev <tun>`.
    pub active_table: u32,
    /// The STANDBY table: every mesh prefix `via <active's LAN IPv4> dev <lan>`.
    pub standby_table: u32,
    /// `to <coordinator> lookup main`.
    pub bypass_priority: u32,
    /// `from <mesh ip> lookup ACTIVE`.
    pub own_source_priority: u32,
    /// `lookup ACTIVE|STANDBY`, the rule a flip swaps.
    pub select_priority: u32,
    /// The `proto` tag that marks routes, rules and addresses as ours.
    pub protocol: u8,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            active_table: DEFAULT_ACTIVE_TABLE,
            standby_table: DEFAULT_STANDBY_TABLE,
            bypass_priority: DEFAULT_BYPASS_PRIORITY,
            own_source_priority: DEFAULT_OWN_SOURCE_PRIORITY,
            select_priority: DEFAULT_SELECT_PRIORITY,
            protocol: DEFAULT_PROTOCOL,
        }
    }
}

/// What can go wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netlink socket could not be opened.
    #[error("failed to open a netlink socket: {0}")]
    Connect(#[source] io::Error),
    /// The netlink connection is gone (its task ended), so the request was never sent.
    #[error("failed to {op}: the netlink connection is closed")]
    Closed {
        /// What we were doing.
        op: String,
    },
    /// The kernel refused a request.
    #[error("failed to {op}: {source}")]
    Kernel {
        /// What we were doing, with the object (e.g. `add route 10.0.0.0/8 table 7301`).
        op: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// No interface of that name exists (in this network namespace).
    #[error("no network interface named {0:?}")]
    NoSuchInterface(String),
    /// A VIP must lie inside a subnet already configured on its interface, or hosts on the
    /// LAN could not reach it and gratuitous ARP would announce an address nobody routes.
    #[error(
        "the gateway IP {vip} is outside every IPv4 subnet configured on {iface} ({configured}); \
         choose an address inside the interface's subnet"
    )]
    VipOutsideSubnet {
        /// The refused VIP.
        vip: ipnet::Ipv4Net,
        /// The interface.
        iface: String,
        /// The subnets found on it, for the message.
        configured: String,
    },
    /// `flip` was called before the first `reconcile`, so there is no rule to swap.
    #[error("cannot flip before the routing state was reconciled once")]
    NotReconciled,
}

/// An rtnetlink connection: a handle plus the task that drives its socket. The socket
/// belongs to the network namespace of the thread that called [`Netlink::connect`].
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens the socket and spawns its driver on the current tokio runtime. The driver
    /// ends by itself when the last clone of this handle is dropped.
    pub fn connect() -> Result<Self, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The ifindex of `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32, Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let reply = self
            .request_one(RouteNetlinkMessage::GetLink(msg), "look up link")
            .await;
        match reply {
            Ok(msgs) => msgs
                .into_iter()
                .find_map(|m| match m {
                    RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                    _ => None,
                })
                .ok_or_else(|| Error::NoSuchInterface(name.to_owned())),
            Err(Error::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
                Err(Error::NoSuchInterface(name.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a request that expects an acknowledgement.
    pub(crate) async fn ack(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        self.request(msg, NLM_F_REQUEST | NLM_F_ACK | flags, op)
            .await
            .map(drop)
    }

    /// Gets one object (a request without the dump flag).
    pub(crate) async fn request_one(
        &self,
        msg: RouteNetlinkMessage,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.request(msg, NLM_F_REQUEST, || op.to_owned()).await
    }

    /// Dumps every object of a kind (the kernel filters little; callers filter).
    pub(crate) async fn dump(
        &self,
        msg: RouteNetlinkMessage,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.request(msg, NLM_F_REQUEST | NLM_F_DUMP, || op.to_owned())
            .await
    }

    async fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let Ok(replies) = handle.request(req) else {
            return Err(Error::Closed { op: op() });
        };
        collect(replies, op).await
    }
}

async fn collect(
    replies: impl futures_util::Stream<Item = NetlinkMessage<RouteNetlinkMessage>>,
    op: impl FnOnce() -> String,
) -> Result<Vec<RouteNetlinkMessage>, Error> {
    let mut replies = std::pin::pin!(replies);
    let mut out = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Err(Error::Kernel {
                        op: op(),
                        source: io::Error::from_raw_os_error(-code.get()),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Whether an error is the kernel's "already exists".
pub(crate) fn is_exists(e: &Error) -> bool {
    errno(e) == Some(libc::EEXIST)
}

/// Whether an error is one of the kernel's several ways of saying "not found" (routes
/// answer ESRCH, rules and addresses ENOENT or EADDRNOTAVAIL, links ENODEV).
pub(crate) fn is_not_found(e: &Error) -> bool {
    matches!(
        errno(e),
        Some(libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL | libc::ENODEV)
    )
}

fn errno(e: &Error) -> Option<i32> {
    match e {
        Error::Kernel { source, .. } => source.raw_os_error(),
        _ => None,
    }
}
