//! Everything the agent changes in the kernel, behind one owner: the TUN device, the two
//! prepared routing tables and their selector rule, the VIP, the sysctls and the XDP
//! program. It applies the failover core's steps in the order given, times each one,
//! and removes everything on [`Plumbing::cleanup`].

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use ipnet::{IpNet, Ipv4Net};
use meshgate_common::Verdict;
use meshgate_proto::{LanInfo, Token, datagram};
use tracing::{info, warn};

use crate::{
    config::{RunArgs, XdpMode},
    dataplane::Dataplane,
    failover::{Action, Mode, Table},
    garp,
    link_watch::LinkState,
    mss,
    netlink::{DesiredRouting, Netlink, Routing, RoutingConfig, StandbyPath},
    status::{Flip, Step},
    sysctl::Sysctls,
    tun::Tun,
    vip::VipKeeper,
};

use super::lan::{Lan, lan_side, load_xdp};

/// Reads the XDP counters for `status`: per verdict and per route.
pub type CounterSource =
    Arc<dyn Fn() -> Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)> + Send + Sync>;

/// The agent's kernel state. See the module docs.
pub struct Plumbing {
    mode: Mode,
    nl: Netlink,
    routing: Routing,
    desired: DesiredRouting,
    tun: Arc<Tun>,
    lan: Option<Lan>,
    dataplane: Option<Arc<Mutex<Dataplane>>>,
    xdp_mode: XdpMode,
    xdp_note: Option<String>,
    route_ids: Arc<Mutex<BTreeMap<IpNet, u32>>>,
    sysctls: Sysctls,
    vip_held: bool,
    vip_keeper: VipKeeper,
    lease: Arc<Mutex<Option<Instant>>>,
}

impl Plumbing {
    /// Checks the settings against the kernel, creates the TUN, takes over (and corrects)
    /// whatever a previous run left, and loads XDP on a node's LAN interface. Nothing
    /// forwards yet: the selector points at the standby table and XDP is fenced.
    pub async fn setup(args: &RunArgs, mode: Mode, token: &Token) -> anyhow::Result<Self> {
        let nl = Netlink::connect().context("failed to open netlink")?;
        let config = RoutingConfig::default();
        let lan = match mode {
            Mode::Node => Some(lan_side(&nl, args, config.protocol).await?),
            Mode::Device => {
                if args.lan_iface.is_some() || args.gateway_ip.is_some() {
                    warn!("this is a device token: --lan-iface and --gateway-ip are ignored");
                }
                None
            }
        };
        let tun = Tun::create(&args.tun, datagram::SAFE_TUN_MTU as u32).with_context(|| {
            format!(
                "failed to create the TUN device {} (is /dev/net/tun there?)",
                args.tun
            )
        })?;
        let mut sysctls = Sysctls::new();
        sysctls
            .enable_forwarding()
            .context("failed to enable IPv4 forwarding")?;
        sysctls
            .loose_rp_filter(tun.name())
            .context("failed to set rp_filter on the TUN")?;
        if let Some(lan) = &lan {
            sysctls
                .disable_redirects(&lan.iface)
                .context("failed to disable ICMP redirects on the LAN")?;
        }
        let desired = DesiredRouting {
            prefixes: Vec::new(),
            tun: tun.name().to_owned(),
            standby: if mode == Mode::Node {
                StandbyPath::Unreachable
            } else {
                StandbyPath::Empty
            },
            mesh_ip: None,
            coordinator: coordinator_ip(token),
            selected: if mode == Mode::Node {
                Table::Standby
            } else {
                Table::Active
            },
        };
        let mut routing = Routing::new(nl.clone(), config);
        let report = routing
            .reconcile(&desired)
            .await
            .context("failed to set up the routing tables")?;
        info!(
            ?report,
            "routing tables reconciled with what a previous run left"
        );
        let (dataplane, xdp_mode, xdp_note) = match &lan {
            Some(lan) => {
                let native_tx = nl
                    .native_tx(&lan.iface)
                    .await
                    .with_context(|| format!("failed to inspect {}", lan.iface))?;
                load_xdp(args.xdp_mode, lan, &tun, &native_tx)?
            }
            None => (None, XdpMode::Off, None),
        };
        Ok(Self {
            mode,
            vip_keeper: VipKeeper::new(nl.clone()),
            nl,
            routing,
            desired,
            tun: Arc::new(tun),
            lan,
            dataplane: dataplane.map(|d| Arc::new(Mutex::new(d))),
            xdp_mode,
            xdp_note,
            route_ids: Arc::default(),
            sysctls,
            vip_held: false,
            lease: Arc::default(),
        })
    }

    /// The LAN identity a node replica registers with.
    pub fn lan_info(&self) -> Option<LanInfo> {
        self.lan.as_ref().map(|l| LanInfo {
            ip: l.ip,
            mac: l.mac,
        })
    }

    /// The TUN device, shared with the packet pump.
    pub fn tun(&self) -> Arc<Tun> {
        self.tun.clone()
    }

    /// The mesh-bound prefixes installed now.
    pub fn routes(&self) -> Vec<IpNet> {
        self.desired.prefixes.clone()
    }

    /// Whether this replica holds the VIP now.
    pub fn holds_vip(&self) -> bool {
        self.vip_held
    }

    /// The XDP attach mode in effect (never `auto`).
    pub fn xdp_mode(&self) -> XdpMode {
        self.xdp_mode
    }

    /// Why `--xdp-mode auto` chose the mode in effect, or what the mode cannot do.
    pub fn xdp_note(&self) -> Option<String> {
        self.xdp_note.clone()
    }

    /// Gives the TUN the Mesh IP and the largest MTU the QUIC path carries; returns the MTU.
    pub async fn configure_tun(
        &mut self,
        mesh_ip: Ipv4Addr,
        mesh_cidr: Ipv4Net,
        max_datagram: Option<usize>,
    ) -> anyhow::Result<u32> {
        let mtu = tunnel_mtu(max_datagram);
        // The Mesh IP as a /32: the mesh range itself is routed by our tables, so the
        // address must not add a connected route to `main` that bypasses them.
        let address = IpNet::V4(Ipv4Net::new(mesh_ip, 32).expect("32 is a valid prefix length"));
        self.nl
            .add_address(self.tun.index(), address, self.routing.config().protocol)
            .await
            .context("failed to put the Mesh IP on the TUN")?;
        if self.desired.mesh_ip != Some(IpAddr::V4(mesh_ip)) {
            self.desired.mesh_ip = Some(IpAddr::V4(mesh_ip));
            self.routing
                .reconcile(&self.desired)
                .await
                .context("failed to install the own-source rule")?;
        }
        let _ = mesh_cidr;
        self.set_tunnel_mtu(mtu)?;
        Ok(mtu)
    }

    /// Applies a tunnel MTU wherever it shows: the TUN (the kernel answers larger packets
    /// with frag-needed), XDP, and the TCP MSS clamp, so all three always agree.
    pub fn set_tunnel_mtu(&mut self, mtu: u32) -> anyhow::Result<()> {
        self.tun.set_mtu(mtu).context("failed to set the TUN MTU")?;
        if let Some(dp) = &self.dataplane {
            lock(dp)
                .set_tunnel(self.tun.index(), mtu)
                .context("failed to tell XDP the tunnel MTU")?;
        }
        mss::apply(self.tun.name(), mtu).context("failed to install the TCP MSS clamp")
    }

    /// The node's own advertised prefixes, which XDP accepts as sources (anti-spoofing).
    pub fn set_local_prefixes(&mut self, prefixes: &[Ipv4Net]) -> anyhow::Result<()> {
        if let Some(dp) = &self.dataplane {
            let nets: Vec<IpNet> = prefixes.iter().copied().map(IpNet::V4).collect();
            lock(dp)
                .set_local_prefixes(&nets)
                .context("failed to write the local prefixes to XDP")?;
        }
        Ok(())
    }

    /// Keeps the kernel-side lease in step with the agent's (XDP stops forwarding at the
    /// deadline even if this process is frozen).
    pub fn set_lease_deadline(&mut self, deadline: Option<Instant>) {
        *lock(&self.lease) = deadline;
        if let Some(dp) = &self.dataplane {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = lock(dp).set_lease_deadline(remaining) {
                warn!(error = %e, "failed to write the lease deadline to XDP");
            }
        }
    }

    /// Applies the core's steps in order. Returns the flip, when the steps changed the
    /// role, with each step's duration (also logged).
    pub async fn apply(&mut self, actions: &[Action], epoch: u64) -> anyhow::Result<Option<Flip>> {
        if actions.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let started_unix_us = unix_us(SystemTime::now());
        let mut steps = Vec::with_capacity(actions.len());
        let mut to = None;
        for action in actions {
            let step = Instant::now();
            let name = self.apply_one(action).await?;
            if let Action::SetXdpRole { role, .. } = action {
                to = Some(*role);
            }
            if let Some(name) = name {
                steps.push((name, micros(step.elapsed())));
            }
            if matches!(action, Action::AcquireVip) && self.vip_held {
                let step = Instant::now();
                self.announce_vip();
                steps.push((Step::Garp, micros(step.elapsed())));
            }
        }
        let flipped = actions.iter().any(|a| {
            matches!(
                a,
                Action::SelectTable(_) | Action::AcquireVip | Action::ReleaseVip
            )
        });
        let (Some(to), true) = (to, flipped) else {
            return Ok(None);
        };
        let duration_us = micros(started.elapsed());
        info!(target: crate::logship::FLIP_TARGET, epoch, to = ?to, duration_us, steps = ?steps, "flip applied");
        Ok(Some(Flip {
            to,
            epoch,
            duration_us,
            steps,
            at_unix_ms: unix_us(SystemTime::now()) / 1000,
            started_unix_us,
        }))
    }

    async fn apply_one(&mut self, action: &Action) -> anyhow::Result<Option<Step>> {
        Ok(Some(match action {
            Action::InstallRoutes(routes) => {
                self.desired.prefixes = routes.iter().copied().map(IpNet::V4).collect();
                self.routing
                    .reconcile(&self.desired)
                    .await
                    .context("failed to install the mesh routes")?;
                if let Some(dp) = &self.dataplane {
                    let ids = self.assign_route_ids();
                    lock(dp)
                        .replace_routes(&ids)
                        .context("failed to write the mesh routes to XDP")?;
                }
                Step::Routes
            }
            Action::SetActivePeer(peer) => {
                self.desired.standby = match (peer, &self.lan) {
                    (Some(p), Some(lan)) => StandbyPath::Via {
                        gateway: p.ip,
                        iface: lan.iface.clone(),
                    },
                    _ => StandbyPath::Unreachable,
                };
                self.routing
                    .reconcile(&self.desired)
                    .await
                    .context("failed to point the standby table at the active")?;
                if let (Some(dp), Some(p)) = (&self.dataplane, peer) {
                    lock(dp)
                        .set_active_mac(p.mac)
                        .context("failed to write the active's MAC to XDP")?;
                }
                Step::StandbyPeer
            }
            Action::SetHairpin(peer) => {
                let Some(dp) = &self.dataplane else {
                    return Ok(None);
                };
                lock(dp)
                    .set_active_mac(peer.mac)
                    .context("failed to write the active's MAC to XDP")?;
                Step::Hairpin
            }
            Action::SetXdpRole { role, epoch } => {
                let Some(dp) = &self.dataplane else {
                    return Ok(None);
                };
                lock(dp)
                    .set_role(*role, *epoch)
                    .context("failed to set the XDP role")?;
                Step::XdpRole
            }
            Action::SelectTable(table) => {
                self.desired.selected = *table;
                self.routing
                    .flip(*table)
                    .await
                    .context("failed to flip the routing table")?;
                Step::RouteFlip
            }
            Action::AcquireVip => {
                let Some((iface, vip)) = self.vip() else {
                    return Ok(None);
                };
                let index = self.nl.link_index(&iface).await?;
                self.vip_keeper
                    .acquire(index, vip, self.routing.config().protocol)
                    .await
                    .context("failed to add the VIP")?;
                self.vip_held = true;
                Step::VipAcquire
            }
            Action::ReleaseVip => {
                let Some((iface, vip)) = self.vip() else {
                    return Ok(None);
                };
                let index = self.nl.link_index(&iface).await?;
                self.vip_keeper
                    .release(index, vip)
                    .await
                    .context("failed to remove the VIP")?;
                self.vip_held = false;
                Step::VipRelease
            }
            Action::RequestHandover(_) => return Ok(None),
        }))
    }

    /// Announces the VIP by gratuitous ARP: the first frame now (a step of the flip, so
    /// its time is measured), the repeats in the background, spaced over a few hundred ms
    /// that the flip must not wait for.
    fn announce_vip(&self) {
        if let Some((iface, vip)) = self.vip() {
            garp::announce_now_and_later(iface, vip.addr());
        }
    }

    fn vip(&self) -> Option<(String, Ipv4Net)> {
        let lan = self.lan.as_ref()?;
        Some((lan.iface.clone(), lan.vip?))
    }

    /// Stable route ids: a prefix keeps its id (and its counters) while it stays.
    fn assign_route_ids(&self) -> Vec<(IpNet, u32)> {
        let mut ids = lock(&self.route_ids);
        ids.retain(|net, _| self.desired.prefixes.contains(net));
        for net in &self.desired.prefixes {
            if !ids.contains_key(net) {
                let next = (0..)
                    .find(|id| !ids.values().any(|v| v == id))
                    .expect("ids are finite");
                ids.insert(*net, next);
            }
        }
        ids.iter().map(|(n, i)| (*n, *i)).collect()
    }

    /// The next change of the LAN link (up or down); never resolves without a LAN.
    pub async fn link_event(&mut self) -> bool {
        let Some(lan) = &mut self.lan else {
            return std::future::pending().await;
        };
        match lan.watch.changed().await {
            Some(state) => state == LinkState::Up,
            None => std::future::pending().await,
        }
    }

    /// The XDP counters, named, for `status`.
    pub fn counter_source(&self) -> CounterSource {
        let (dp, ids) = (self.dataplane.clone(), self.route_ids.clone());
        Arc::new(move || {
            let counters = lock(dp.as_ref()?).counters().ok()?;
            let verdicts = Verdict::ALL
                .iter()
                .map(|v| (v.name().to_owned(), counters.verdict(*v).packets))
                .filter(|(_, n)| *n > 0)
                .collect();
            let names: BTreeMap<u32, IpNet> = lock(&ids).iter().map(|(n, i)| (*i, *n)).collect();
            let routes = counters
                .routes
                .iter()
                .filter_map(|(id, c)| Some((names.get(id)?.to_string(), c.packets)))
                .collect();
            Some((verdicts, routes))
        })
    }

    /// Packets XDP has bounced to the active replica so far (0 without XDP).
    pub fn hairpinned(&self) -> u64 {
        self.dataplane
            .as_ref()
            .and_then(|dp| lock(dp).counters().ok())
            .map_or(0, |c| c.verdict(Verdict::Hairpin).packets)
    }

    /// The lease deadline, for `status`.
    pub fn lease_source(&self) -> impl Fn() -> Option<Instant> + Send + Sync + 'static {
        let lease = self.lease.clone();
        move || *lock(&lease)
    }

    /// Removes everything the agent added: XDP, the VIP, rules, routes and addresses,
    /// and the sysctls it changed. The TUN goes when its fd closes. Errors are logged:
    /// cleanup does as much as it can.
    pub async fn cleanup(mut self) {
        if let Some(dp) = self.dataplane.take()
            && let Err(e) = lock(&dp).detach()
        {
            warn!(error = %e, "failed to detach XDP");
        }
        if self.mode == Mode::Node
            && self.vip().is_some()
            && let Err(e) = self.apply_one(&Action::ReleaseVip).await
        {
            warn!(error = %e, "failed to release the VIP");
        }
        mss::remove();
        match self.routing.cleanup().await {
            Ok(report) => info!(?report, "removed the agent's routes, rules and addresses"),
            Err(e) => warn!(error = %e, "failed to remove the agent's routes and rules"),
        }
        if let Err(e) = self.sysctls.restore() {
            warn!(error = %e, "failed to restore sysctls");
        }
    }
}

/// The coordinator's IP from the token, for the rule that keeps it out of the tunnel.
fn coordinator_ip(token: &Token) -> Option<IpAddr> {
    let first = token.addrs.first()?;
    first.parse::<SocketAddr>().ok().map(|s| s.ip())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain handles: a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Microseconds since the Unix epoch.
fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, micros)
}

/// The tunnel MTU for a path whose datagrams carry at most `max_datagram` bytes: a
/// datagram holds exactly one IP packet, so what fits, never more than the relay takes.
pub fn tunnel_mtu(max_datagram: Option<usize>) -> u32 {
    max_datagram.map_or(u32::from(datagram::SAFE_TUN_MTU), |m| {
        m.min(datagram::MAX_PACKET) as u32
    })
}
