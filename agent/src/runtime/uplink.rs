//! Which coordinator connection carries this agent's outbound datagrams. The agent is
//! connected to every coordinator it knows and receives from all of them; it sends on
//! one, the *primary*, so a flow is not spread over paths that reorder it, and keeps the
//! others warm (registered, heartbeating) to move to at once.
//!
//! A connection is *answering* while QUIC packets keep arriving on it: heartbeats go out
//! every `heartbeat_ms` on every connection and each is acknowledged, so a live
//! coordinator is heard from at least that often, whatever this replica's role. One that
//! has been silent for [`dead_after`] (three heartbeats) is dead for sending: traffic
//! moves to the best answering connection long before a 250 ms lease could run out, and
//! a connection that QUIC reports closed is left at the first failed send. The primary
//! stays while it answers (no flapping back), and the connections' order (the roster's:
//! token order) breaks ties.
//!
//! A coordinator that says it is *cut off* from the cluster's store (it cannot grant
//! leases, and its view of which replica is active may be stale) is sent through only
//! when no other answers: relaying through it could hand a subnet's traffic to a replica
//! that was fenced since, or drop the new active's.
//!
//! [`Selector`] is the decision, pure and with an injected clock; [`Uplink`] is the
//! handle the pump sends through.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;

/// Identifies one connection (a reconnect to the same coordinator is a new one).
pub type LinkId = u64;

/// How long a connection may stay silent before it is not sent on.
pub fn dead_after(heartbeat: Duration) -> Duration {
    heartbeat * 3
}

#[derive(Debug, Clone)]
struct Candidate {
    id: LinkId,
    rank: usize,
    rx: u64,
    heard: Instant,
    cut_off: bool,
}

/// The choice of the primary connection. See the module docs.
#[derive(Debug, Clone)]
pub struct Selector {
    dead_after: Duration,
    links: Vec<Candidate>,
    primary: Option<LinkId>,
}

impl Selector {
    /// No connection yet.
    pub fn new(dead_after: Duration) -> Self {
        Self {
            dead_after,
            links: Vec::new(),
            primary: None,
        }
    }

    /// A connection registered at `now`; `rank` is its place in the roster (lower is
    /// preferred).
    pub fn add(&mut self, id: LinkId, rank: usize, now: Instant) {
        self.links.retain(|l| l.id != id);
        self.links.push(Candidate {
            id,
            rank,
            rx: 0,
            heard: now,
            cut_off: false,
        });
    }

    /// The connection ended.
    pub fn remove(&mut self, id: LinkId) {
        self.links.retain(|l| l.id != id);
        if self.primary == Some(id) {
            self.primary = None;
        }
    }

    /// A sample of how many packets have arrived on the connection so far.
    pub fn observe(&mut self, id: LinkId, rx_packets: u64, now: Instant) {
        if let Some(l) = self.links.iter_mut().find(|l| l.id == id)
            && rx_packets != l.rx
        {
            l.rx = rx_packets;
            l.heard = now;
        }
    }

    /// What the coordinator of the connection said last about being cut off.
    pub fn set_cut_off(&mut self, id: LinkId, cut_off: bool) {
        if let Some(l) = self.links.iter_mut().find(|l| l.id == id) {
            l.cut_off = cut_off;
        }
    }

    fn serving(&self, id: LinkId, now: Instant) -> bool {
        self.answering(id, now) && self.links.iter().any(|l| l.id == id && !l.cut_off)
    }

    /// Whether the connection was heard from recently enough to send on.
    pub fn answering(&self, id: LinkId, now: Instant) -> bool {
        self.links
            .iter()
            .any(|l| l.id == id && now.saturating_duration_since(l.heard) < self.dead_after)
    }

    /// The primary at `now`: the current one while it answers and is not cut off, else
    /// the best-ranked such one; failing that the same among the answering ones (a
    /// cut-off coordinator still relays); else (nobody answers) the one heard from last —
    /// sending there costs nothing more than not sending.
    pub fn choose(&mut self, now: Instant) -> Option<LinkId> {
        let any_serving = self.links.iter().any(|l| self.serving(l.id, now));
        let usable = |s: &Self, id: LinkId| {
            if any_serving {
                s.serving(id, now)
            } else {
                s.answering(id, now)
            }
        };
        if let Some(p) = self.primary.filter(|p| usable(self, *p)) {
            return Some(p);
        }
        let best = self
            .links
            .iter()
            .filter(|l| usable(self, l.id))
            .min_by_key(|l| (l.rank, l.id))
            .or_else(|| self.links.iter().max_by_key(|l| (l.heard, l.id)))
            .map(|l| l.id);
        self.primary = best;
        best
    }

    /// The primary chosen last.
    pub fn primary(&self) -> Option<LinkId> {
        self.primary
    }
}

/// Why a datagram was not sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection is up.
    NoConnection,
    /// The packet does not fit a datagram on the primary's path.
    TooLarge,
    /// Sending failed (e.g. datagrams are not supported or the buffer is full).
    Failed,
}

#[derive(Default)]
struct Conns {
    primary: Option<(LinkId, quinn::Connection)>,
    /// Every live connection, in roster order: where a failed send moves at once.
    all: Vec<(LinkId, quinn::Connection)>,
}

/// The handle the pump sends through; the runtime sets its primary.
#[derive(Clone, Default)]
pub struct Uplink {
    conns: Arc<RwLock<Conns>>,
}

impl Uplink {
    /// Sends one packet on the primary connection. If QUIC says that connection is gone,
    /// the next live one takes over before the runtime notices.
    pub fn send_datagram(&self, packet: Bytes) -> Result<(), SendError> {
        let failed = {
            let c = self.conns.read().unwrap_or_else(|e| e.into_inner());
            let Some((id, conn)) = &c.primary else {
                return Err(SendError::NoConnection);
            };
            match conn.send_datagram(packet.clone()) {
                Ok(()) => return Ok(()),
                Err(quinn::SendDatagramError::TooLarge) => return Err(SendError::TooLarge),
                Err(quinn::SendDatagramError::ConnectionLost(_)) => *id,
                Err(_) => return Err(SendError::Failed),
            }
        };
        let mut c = self.conns.write().unwrap_or_else(|e| e.into_inner());
        c.all.retain(|(id, _)| *id != failed);
        if c.primary.as_ref().is_some_and(|(id, _)| *id == failed) {
            c.primary = c.all.first().cloned();
        }
        match &c.primary {
            Some((_, conn)) => conn.send_datagram(packet).map_err(|e| match e {
                quinn::SendDatagramError::TooLarge => SendError::TooLarge,
                _ => SendError::Failed,
            }),
            None => Err(SendError::NoConnection),
        }
    }

    /// The live connections (roster order) and the primary among them.
    pub fn set(&self, all: Vec<(LinkId, quinn::Connection)>, primary: Option<LinkId>) {
        let mut c = self.conns.write().unwrap_or_else(|e| e.into_inner());
        c.primary = primary.and_then(|p| all.iter().find(|(id, _)| *id == p).cloned());
        c.all = all;
    }

    /// The live connections as last set, in roster order.
    pub fn ids(&self) -> Vec<LinkId> {
        let c = self.conns.read().unwrap_or_else(|e| e.into_inner());
        c.all.iter().map(|(id, _)| *id).collect()
    }

    /// Each live connection's remote address and QUIC round-trip time, the primary's
    /// first.
    pub fn rtts(&self) -> Vec<(String, std::time::Duration)> {
        let c = self.conns.read().unwrap_or_else(|e| e.into_inner());
        c.primary
            .iter()
            .chain(c.all.iter())
            .map(|(_, conn)| (conn.remote_address().to_string(), conn.rtt()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(50);

    #[test]
    fn the_first_in_roster_order_carries_traffic_while_it_answers() {
        let t = Instant::now();
        let mut s = Selector::new(dead_after(HB));
        s.add(7, 1, t);
        s.add(3, 0, t);
        assert_eq!(s.choose(t), Some(3));
        for i in 1..10u32 {
            let now = t + HB * i;
            s.observe(3, u64::from(i), now);
            s.observe(7, u64::from(i), now);
            assert_eq!(s.choose(now), Some(3));
        }
    }

    #[test]
    fn a_silent_primary_loses_traffic_within_three_heartbeats_and_it_does_not_flap_back() {
        let t = Instant::now();
        let mut s = Selector::new(dead_after(HB));
        s.add(1, 0, t);
        s.add(2, 1, t);
        s.observe(1, 5, t + HB);
        s.observe(2, 5, t + HB);
        assert_eq!(s.choose(t + HB), Some(1));
        // Link 1 goes silent after t + HB; link 2 keeps answering.
        for i in 2..=4u32 {
            s.observe(2, 5 + u64::from(i), t + HB * i);
        }
        assert_eq!(s.choose(t + HB * 3), Some(1), "two heartbeats of silence");
        assert_eq!(s.choose(t + HB * 4), Some(2), "three: moved");
        // Link 1 answers again: traffic stays where it is.
        s.observe(1, 6, t + HB * 5);
        s.observe(2, 10, t + HB * 5);
        assert_eq!(s.choose(t + HB * 5), Some(2));
    }

    #[test]
    fn a_cut_off_coordinator_carries_traffic_only_when_no_other_answers() {
        let t0 = Instant::now();
        let mut s = Selector::new(dead_after(HB));
        s.add(1, 0, t0);
        s.add(2, 1, t0);
        assert_eq!(s.choose(t0), Some(1));
        s.set_cut_off(1, true);
        assert_eq!(
            s.choose(t0),
            Some(2),
            "moves off the cut-off primary at once"
        );
        // Every coordinator cut off (etcd down for all): they still relay, so keep one.
        s.set_cut_off(2, true);
        assert_eq!(s.choose(t0), Some(2), "no flapping while all are cut off");
        // The first one is back in the cluster: it is preferred again only if the
        // current one stops serving — here it does not serve, so traffic moves.
        s.set_cut_off(1, false);
        assert_eq!(s.choose(t0), Some(1));
        s.set_cut_off(2, false);
        assert_eq!(s.choose(t0), Some(1), "no flapping back once both serve");
    }

    #[test]
    fn when_nobody_answers_the_last_heard_is_used_and_a_removed_one_never() {
        let t = Instant::now();
        let mut s = Selector::new(dead_after(HB));
        assert_eq!(s.choose(t), None);
        s.add(1, 0, t);
        s.add(2, 1, t);
        s.observe(2, 1, t + HB);
        assert_eq!(s.choose(t + HB * 10), Some(2));
        s.remove(2);
        assert_eq!(s.choose(t + HB * 10), Some(1));
        s.remove(1);
        assert_eq!(s.choose(t + HB * 10), None);
        assert_eq!(s.primary(), None);
    }
}
