//! Watches one interface's link state over an RTNLGRP_LINK subscription, so the agent can
//! ask the coordinator to hand over when its LAN link goes down.
//!
//! "Up" means administratively up *and* carrier (IFF_UP and IFF_LOWER_UP) with an
//! operstate of up or unknown (drivers without operstate support report unknown). The
//! interface is matched by name, so a deleted link reports down and a re-created one up.

use futures_util::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage, State},
};
use rtnetlink::MulticastGroup;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::info;

use crate::netlink::{Error, Netlink};

/// The state of a link, as far as forwarding is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Up with carrier.
    Up,
    /// Down, without carrier, or gone.
    Down,
}

/// A subscription to one interface's state changes. Dropping it stops the watch.
pub struct LinkWatch {
    iface: String,
    current: LinkState,
    rx: mpsc::UnboundedReceiver<LinkState>,
    task: JoinHandle<()>,
}

impl LinkWatch {
    /// Subscribes, then reads the current state (in that order, so no change between the
    /// two is lost). Fails if the interface does not exist.
    pub async fn new(iface: &str) -> Result<Self, Error> {
        let (conn, _handle, mut messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(Error::Connect)?;
        tokio::spawn(conn);
        let nl = Netlink::connect()?;
        let index = nl.link_index(iface).await?;
        let current = nl
            .link(index)
            .await?
            .map_or(LinkState::Down, |l| state_of(&l));
        let (tx, rx) = mpsc::unbounded_channel();
        let name = iface.to_owned();
        let mut last = current;
        let task = tokio::spawn(async move {
            while let Some((msg, _)) = messages.next().await {
                let (link, deleted) = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, false),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, true),
                    _ => continue,
                };
                if name_of(&link) != Some(name.as_str()) {
                    continue;
                }
                let state = if deleted {
                    LinkState::Down
                } else {
                    state_of(&link)
                };
                if state != last {
                    last = state;
                    info!(iface = %name, ?state, "link state changed");
                    if tx.send(state).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Self {
            iface: iface.to_owned(),
            current,
            rx,
            task,
        })
    }

    /// The interface watched.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The last state seen (by [`LinkWatch::new`] or [`LinkWatch::changed`]).
    pub fn current(&self) -> LinkState {
        self.current
    }

    /// Waits for the next change; `None` if the subscription ended.
    pub async fn changed(&mut self) -> Option<LinkState> {
        let state = self.rx.recv().await?;
        self.current = state;
        Some(state)
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// The link message of `index`, if it exists.
    pub async fn link(&self, index: u32) -> Result<Option<LinkMessage>, Error> {
        let mut req = LinkMessage::default();
        req.header.index = index;
        let msgs = self
            .request_one(RouteNetlinkMessage::GetLink(req), "get link")
            .await?;
        Ok(msgs.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        }))
    }
}

fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn state_of(link: &LinkMessage) -> LinkState {
    let flags = link.header.flags;
    let oper = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::OperState(s) => Some(*s),
        _ => None,
    });
    let carrier = flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp);
    let oper_ok = matches!(oper, None | Some(State::Up | State::Unknown));
    if carrier && oper_ok {
        LinkState::Up
    } else {
        LinkState::Down
    }
}
