//! What the runtime does with the sessions of every coordinator connection: the first
//! one configures the TUN and starts the pump; each one adds a receiving pump and a
//! candidate for the primary; their statuses go to the failover core (which merges
//! leases, see [`crate::failover::Failover::lease_after`]); member lists grow or shrink
//! the roster; and only when the last session is gone is the agent disconnected.

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use ipnet::Ipv4Net;
use meshgate_proto::{CoordMsg, Id, Role, client::Control, client::Status};
use tracing::info;

use super::{
    Agent, Links,
    links::{LinkEvent, Up},
    lock,
    plumbing::Plumbing,
    pump,
    roles::{Said, merge},
    uplink::LinkId,
};
use crate::{
    failover::{Event, Mode},
    status::{ConnState, CoordinatorConn},
};

/// One live session.
pub struct Conn {
    /// Its place in the roster.
    key: String,
    /// The QUIC connection.
    conn: quinn::Connection,
    /// Where its requests go.
    pub control: Control,
    /// The node's or device's id (to tell its own routes from others').
    own_id: Id,
    /// What `status` shows of it.
    view: CoordinatorConn,
    /// What it last said about this replica's role.
    said: Option<Said>,
    _inbound: pump::Pump,
}

impl Agent {
    /// Handles one connection task's event.
    pub(super) async fn on_link(
        &mut self,
        links: &mut Links,
        plumbing: &mut Plumbing,
        id: LinkId,
        event: LinkEvent,
    ) -> anyhow::Result<()> {
        match event {
            LinkEvent::Up(up) => self.up(links, plumbing, id, *up).await?,
            LinkEvent::Status(s) => self.feed_status(plumbing, id, &s).await?,
            LinkEvent::Msg(CoordMsg::HandoverDone { epoch }) => {
                info!(target: crate::logship::FLIP_TARGET, epoch, "handover done")
            }
            LinkEvent::Msg(CoordMsg::Filter(f)) => self.policy.receive(*f),
            LinkEvent::Msg(CoordMsg::Members(m)) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.view.colo_name = Some(m.you_reached.clone());
                    if c.view.cut_off != m.cut_off {
                        c.view.cut_off = m.cut_off;
                        if m.cut_off {
                            tracing::warn!(coordinator = %m.you_reached, "coordinator is cut off from the cluster; sending through another");
                        } else {
                            info!(coordinator = %m.you_reached, "coordinator is back in the cluster");
                        }
                    }
                }
                self.selector.set_cut_off(id, m.cut_off);
                self.pick();
                // A cut-off member knows only itself: its list says nothing of the others.
                if !m.cut_off && self.members.as_ref() != Some(&m.members) {
                    info!(coordinator = %m.you_reached, members = ?m.members.iter().map(|m| &m.name).collect::<Vec<_>>(), "coordinator members");
                    self.members = Some(m.members);
                    for gone in links.set_targets(&self.targets()) {
                        self.lost(plumbing, gone, "no longer a member").await?;
                    }
                }
                self.publish();
            }
            LinkEvent::Msg(_) => {}
            LinkEvent::Down(why) => {
                if self.conns.is_empty() {
                    self.set_connection(ConnState::Disconnected, Some(why));
                } else {
                    self.lost(plumbing, id, &why).await?;
                }
            }
            LinkEvent::Refused(code, reason, delay) => {
                self.lost(plumbing, id, &reason).await?;
                self.refused(code, &reason, delay);
            }
        }
        Ok(())
    }

    async fn up(
        &mut self,
        links: &Links,
        plumbing: &mut Plumbing,
        id: LinkId,
        up: Up,
    ) -> anyhow::Result<()> {
        let w = &up.welcome;
        info!(
            coordinator = %up.addr, name = %w.name, mesh_ip = %w.mesh_ip, role = ?w.role, epoch = w.epoch,
            "registered with the coordinator"
        );
        self.heartbeat = std::time::Duration::from_millis(w.timings.heartbeat_ms.into());
        if self.conns.is_empty() {
            let mtu = plumbing
                .configure_tun(w.mesh_ip, w.mesh_cidr, up.conn.max_datagram_size())
                .await?;
            let mut r = lock(&self.report);
            r.name = Some(w.name.clone());
            r.mesh_ip = Some(w.mesh_ip.to_string());
            r.tun_mtu = mtu;
        }
        if self.outbound.is_none() {
            self.gate = (self.mode == Mode::Node).then(|| pump::Gate {
                lease: Arc::new(plumbing.lease_source()),
                own: w.mesh_ip,
            });
            self.outbound = Some(pump::outbound(
                plumbing.tun(),
                self.uplink.clone(),
                self.counters.clone(),
                self.gate.clone(),
            ));
        }
        let inbound = pump::inbound(
            plumbing.tun(),
            up.conn.clone(),
            self.counters.clone(),
            self.gate.clone(),
        );
        let key = links.key_of(id).unwrap_or(&up.addr).to_owned();
        let opened_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        self.conns.insert(
            id,
            Conn {
                key,
                conn: up.conn,
                control: up.control,
                own_id: w.id,
                view: CoordinatorConn {
                    colo_name: None,
                    addr: up.addr,
                    opened_at,
                    primary: false,
                    rtt_ms: None,
                    cut_off: false,
                },
                said: None,
                _inbound: inbound,
            },
        );
        lock(&self.report).connection.sessions += 1;
        self.set_connection(ConnState::Connected, None);
        self.selector.add(id, self.rank(id), Instant::now());
        self.pick();
        self.feed_status(plumbing, id, &up.status).await
    }

    /// A session ended (or its coordinator left the roster). The agent is disconnected
    /// only when no session is left: until then the lease is renewed by the others.
    pub(super) async fn lost(
        &mut self,
        plumbing: &mut Plumbing,
        id: LinkId,
        why: &str,
    ) -> anyhow::Result<()> {
        if self.conns.remove(&id).is_none() {
            return Ok(());
        }
        self.selector.remove(id);
        self.pick();
        if self.conns.is_empty() {
            tracing::warn!(reason = %why, "no coordinator connection left");
            self.set_connection(ConnState::Disconnected, Some(why.to_owned()));
            self.feed(plumbing, Event::Disconnected).await?;
        }
        Ok(())
    }

    /// Drops every session and registers anew on every connection.
    pub(super) async fn reconnect_all(
        &mut self,
        links: &mut Links,
        plumbing: &mut Plumbing,
    ) -> anyhow::Result<()> {
        for id in links.restart_all(&self.targets()) {
            self.lost(plumbing, id, "registering again").await?;
        }
        Ok(())
    }

    /// The connection's place in the roster (lower is preferred for sending).
    fn rank(&self, id: LinkId) -> usize {
        let key = self.conns.get(&id).map(|c| c.key.as_str());
        self.targets()
            .iter()
            .position(|t| Some(t.key.as_str()) == key)
            .unwrap_or(usize::MAX)
    }

    /// Samples every connection's liveness and moves outbound traffic if the primary
    /// stopped answering.
    pub(super) fn pick(&mut self) {
        let now = Instant::now();
        for (id, c) in &self.conns {
            self.selector
                .observe(*id, c.conn.stats().udp_rx.datagrams, now);
        }
        let before = self.selector.primary();
        let primary = self.selector.choose(now);
        let ids: Vec<LinkId> = self.conns.keys().copied().collect();
        if primary != before || self.uplink.ids() != ids {
            if let Some(c) = primary
                .filter(|p| Some(*p) != before)
                .and_then(|p| self.conns.get(&p))
            {
                info!(coordinator = %c.view.addr, colo = ?c.view.colo_name, "sending through this coordinator");
            }
            let all = self.conns.iter().map(|(id, c)| (*id, c.conn.clone()));
            self.uplink.set(all.collect(), primary);
            for (id, c) in self.conns.iter_mut() {
                c.view.primary = Some(*id) == primary;
            }
            self.publish();
        }
    }

    /// Keeps the tunnel MTU at what the smallest live path carries in one datagram: any
    /// connection may become the one outbound traffic takes.
    pub(super) fn follow_path_mtu(&mut self, plumbing: &mut Plumbing) -> anyhow::Result<()> {
        let Some(now) = self
            .conns
            .values()
            .map(|c| super::plumbing::tunnel_mtu(c.conn.max_datagram_size()))
            .min()
        else {
            return Ok(());
        };
        let was = lock(&self.report).tun_mtu;
        if now != was {
            info!(
                from = was,
                to = now,
                "the paths' datagram size changed: new tunnel MTU"
            );
            plumbing.set_tunnel_mtu(now)?;
            lock(&self.report).tun_mtu = now;
        }
        Ok(())
    }

    /// Puts the connections into the status report.
    fn publish(&self) {
        let mut r = lock(&self.report);
        r.connection.conns = self.conns.values().map(|c| c.view.clone()).collect();
        if let Some(p) = self.conns.values().find(|c| c.view.primary) {
            r.connection.coordinator = Some(p.view.addr.clone());
        }
    }

    /// Feeds one session's status (role, epoch, lease, active peer, routes) to the core.
    pub(super) async fn feed_status(
        &mut self,
        plumbing: &mut Plumbing,
        id: LinkId,
        s: &Status,
    ) -> anyhow::Result<()> {
        let Some(own_id) = self.conns.get(&id).map(|c| c.own_id) else {
            return Ok(());
        };
        // Each session has its own copy of the route table; a lagging one must not undo
        // a newer one, but the table of a session that is gone is replaced by any.
        let takes_routes = match self.routes_from {
            None => true,
            Some((from, version)) => {
                from == id || s.routes.version > version || !self.conns.contains_key(&from)
            }
        };
        if takes_routes {
            self.routes_from = Some((id, s.routes.version));
            let (own, routes): (Vec<_>, Vec<_>) = s
                .routes
                .entries
                .iter()
                .partition(|e| e.node == Some(own_id));
            let own: Vec<Ipv4Net> = own.iter().map(|e| e.network).collect();
            if own != self.local_prefixes {
                plumbing.set_local_prefixes(&own)?;
                self.local_prefixes = own;
            }
            let routes = routes.iter().map(|e| e.network).collect();
            self.feed(plumbing, Event::Routes(routes)).await?;
        }
        // Every session speaks for the same record: the core takes their merged view
        // (see [`super::roles`]), so a member that cannot grant yet does not demote.
        let said = Said {
            role: s.role,
            epoch: s.epoch,
            active: s.active,
            lease_deadline: s.lease_deadline,
        };
        if let Some(c) = self.conns.get_mut(&id) {
            c.said = Some(said);
        }
        let Some(m) = merge(self.conns.values().filter_map(|c| c.said.as_ref())) else {
            return Ok(());
        };
        // A lease is in place before XDP may turn active; one ends only after the steps
        // away from active are applied, so the pump's gate and `status` never see an
        // active data plane without a lease. A status of an older epoch changes neither.
        let stale = m.epoch < self.core.epoch();
        let lease = self
            .core
            .lease_after(m.role, m.epoch, m.lease_deadline)
            .filter(|_| m.role == Role::Active && !stale);
        if lease.is_some() {
            plumbing.set_lease_deadline(lease);
        }
        let event = Event::Status {
            role: m.role,
            epoch: m.epoch,
            active: m.active,
            lease_deadline: m.lease_deadline,
        };
        self.feed(plumbing, event).await?;
        if lease.is_none() && !stale {
            plumbing.set_lease_deadline(None);
        }
        Ok(())
    }
}
