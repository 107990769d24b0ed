//! The relay: for each datagram, check the sender may send it, look the destination up,
//! and forward; what cannot be delivered is answered with an ICMP error ([`crate::icmp`]). The lookup table is rebuilt whenever connections, roles or routes
//! change and swapped in whole; the per-packet path only reads it (one `RwLock` read,
//! hash lookups, no allocation — the packet's `Bytes` is forwarded without copying).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use ipnet::Ipv4Net;
use meshgate_proto::Id;
use meshgate_proto::datagram::{MAX_PACKET, ipv4_src_dst};

use crate::election::ConnId;
use crate::icmp::{self, Limiter, Unreachable};
use crate::lpm::Lpm;
use crate::metrics::{DropReason, Metrics};

/// Where a destination leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Conn(ConnId),
    Node(Id),
}

/// A sender's rights.
#[derive(Debug, Clone)]
pub struct Sender {
    /// Its Mesh IP.
    pub mesh_ip: Ipv4Addr,
    /// For a node replica: its node, and whether it may send: it is the active one, or
    /// the one handing over, until it is fenced.
    pub node: Option<(Id, bool)>,
}

/// How the relay answers what it cannot deliver; shared by every table.
#[derive(Clone)]
pub struct Errors {
    /// The mesh range: an unknown destination inside it is an absent host.
    pub mesh: Ipv4Net,
    /// One limit for all ICMP errors, across table rebuilds.
    pub limiter: Arc<Limiter>,
}

/// A snapshot of everything the relay needs.
#[derive(Default)]
pub struct Table {
    dst: Lpm<Target>,
    node_routes: HashMap<Id, Lpm<()>>,
    active: HashMap<Id, ConnId>,
    senders: HashMap<ConnId, Sender>,
    conns: HashMap<ConnId, quinn::Connection>,
    errors: Option<Errors>,
}

impl Table {
    /// Build from connected participants, routes and actives.
    pub fn build(
        participants: impl IntoIterator<Item = (ConnId, Sender, quinn::Connection)>,
        routes: impl IntoIterator<Item = (Ipv4Net, Id)>,
        active: HashMap<Id, ConnId>,
        errors: Errors,
    ) -> Self {
        let mut t = Table {
            active,
            errors: Some(errors),
            ..Table::default()
        };
        for (net, node) in routes {
            t.dst.insert(net, Target::Node(node));
            t.node_routes.entry(node).or_default().insert(net, ());
        }
        for (id, s, conn) in participants {
            t.dst.insert(Ipv4Net::from(s.mesh_ip), Target::Conn(id));
            t.senders.insert(id, s);
            t.conns.insert(id, conn);
        }
        t
    }

    /// Whether the connection is in the table.
    pub fn has_conn(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Relay one datagram received from `from`.
    pub fn forward(&self, from: ConnId, pkt: Bytes, m: &Metrics) {
        if pkt.len() > MAX_PACKET {
            return m.count_drop(DropReason::Oversized);
        }
        let Some((src, dst)) = ipv4_src_dst(&pkt) else {
            return m.count_drop(DropReason::Malformed);
        };
        let Some(sender) = self.senders.get(&from) else {
            return m.count_drop(DropReason::NotActive);
        };
        match sender.node {
            // Standbys and fenced replicas forward nothing (fencing at the relay).
            Some((_, false)) => return m.count_drop(DropReason::NotActive),
            Some((node, true)) => {
                let own_route = self
                    .node_routes
                    .get(&node)
                    .and_then(|l| l.lookup(src))
                    .is_some();
                if src != sender.mesh_ip && !own_route {
                    return m.count_drop(DropReason::Spoofed);
                }
            }
            None if src != sender.mesh_ip => return m.count_drop(DropReason::Spoofed),
            None => {}
        }
        let to = match self.dst.lookup(dst) {
            Some(Target::Conn(c)) => c,
            Some(Target::Node(n)) => match self.active.get(&n) {
                Some(c) => *c,
                None => {
                    return self.undeliverable(
                        from,
                        &pkt,
                        DropReason::Unreachable,
                        Unreachable::Net,
                        m,
                    );
                }
            },
            None => {
                let why = if self.errors.as_ref().is_some_and(|e| e.mesh.contains(&dst)) {
                    Unreachable::Host
                } else {
                    Unreachable::Net
                };
                return self.undeliverable(from, &pkt, DropReason::NoRoute, why, m);
            }
        };
        let Some(conn) = self.conns.get(&to) else {
            return self.undeliverable(from, &pkt, DropReason::Unreachable, Unreachable::Host, m);
        };
        let len = pkt.len() as u64;
        // A clone of a received datagram's `Bytes` is a reference count, not a copy; it
        // keeps the packet for a frag-needed answer if it does not fit.
        match conn.send_datagram(pkt.clone()) {
            Ok(()) => {
                m.packets.fetch_add(1, Relaxed);
                m.bytes.fetch_add(len, Relaxed);
            }
            Err(quinn::SendDatagramError::TooLarge) if icmp::dont_fragment(&pkt) => {
                let mtu = conn.max_datagram_size().unwrap_or(0).min(MAX_PACKET) as u16;
                self.undeliverable(
                    from,
                    &pkt,
                    DropReason::SendFailed,
                    Unreachable::FragNeeded(mtu),
                    m,
                );
            }
            Err(_) => m.count_drop(DropReason::SendFailed),
        }
    }

    /// Counts the drop and, within the rate limit, tells the sender with an ICMP error.
    fn undeliverable(
        &self,
        from: ConnId,
        pkt: &[u8],
        reason: DropReason,
        why: Unreachable,
        m: &Metrics,
    ) {
        m.count_drop(reason);
        let (Some(errors), Some(conn)) = (&self.errors, self.conns.get(&from)) else {
            return;
        };
        let Some(answer) = icmp::unreachable(errors.mesh.network(), pkt, why) else {
            return;
        };
        if errors.limiter.allow() && conn.send_datagram(Bytes::from(answer)).is_ok() {
            m.icmp_errors.fetch_add(1, Relaxed);
        }
    }
}
