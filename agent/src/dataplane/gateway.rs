//! [`Dataplane`]: the typed handle over the gateway program and its maps. Nothing else
//! in the agent names a map.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray},
    programs::{XdpMode, xdp::XdpLinkId},
};
use ipnet::IpNet;
use meshgate_common::{
    CONFIG_INDEX, Config, Counter, Ipv4Key, Ipv6Key, Role, RouteEntry, TunnelMode, Verdict, map,
    program,
};

mod lpm;

use super::{
    DataplaneError, EBPF_OBJECT, iface,
    program::{attach_xdp, xdp_program},
};

/// IPv4 header + TCP header without options: MSS = MTU − 40 (RFC 9293 §3.7.1).
const TCP_IPV4_OVERHEAD: u32 = 40;
/// IPv6 header + TCP header without options: MSS = MTU − 60.
const TCP_IPV6_OVERHEAD: u32 = 60;

/// Counter totals summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by `Verdict as usize`; see [`Counters::verdict`].
    pub verdicts: [Counter; Verdict::COUNT as usize],
    /// By route id, for the route ids currently installed.
    pub routes: BTreeMap<u32, Counter>,
}

impl Counters {
    /// The totals of one verdict.
    pub fn verdict(&self, verdict: Verdict) -> Counter {
        self.verdicts[verdict as usize]
    }
}

struct Attachment {
    iface: String,
    mode: XdpMode,
    link: XdpLinkId,
}

/// The loaded gateway program and its maps.
///
/// Dropping the handle detaches the program (aya detaches the links it owns) and frees
/// the maps. The configuration starts as `Fenced`, epoch 0, kernel-route mode, no
/// routes: attaching before configuring forwards nothing toward the mesh.
///
/// Each setter writes the whole [`Config`] entry. The kernel copies an array value
/// without a lock, so a packet racing the write may see a mix of old and new fields;
/// that affects at most the packets in flight during the write.
pub struct Dataplane {
    /// The loaded object; `test_run` (a test hook) runs its other programs.
    pub(super) ebpf: Ebpf,
    routes_v4: LpmTrie<MapData, Ipv4Key, RouteEntry>,
    routes_v6: LpmTrie<MapData, Ipv6Key, RouteEntry>,
    local_v4: LpmTrie<MapData, Ipv4Key, u32>,
    local_v6: LpmTrie<MapData, Ipv6Key, u32>,
    config_map: Array<MapData, Config>,
    route_stats: PerCpuArray<MapData, Counter>,
    verdict_stats: PerCpuArray<MapData, Counter>,
    config: Config,
    routes: BTreeMap<IpNet, u32>,
    local: BTreeSet<IpNet>,
    attachment: Option<Attachment>,
    /// Whether XDP clamps the TCP MSS (see [`Dataplane::set_mss_clamp`]).
    clamp_mss: bool,
}

impl Dataplane {
    /// Loads the embedded object, creates its maps and loads `xdp_gateway` into the
    /// kernel. A verifier refusal comes back as [`DataplaneError::Program`] with the
    /// verifier's log in its message.
    pub fn load() -> Result<Self, DataplaneError> {
        Self::load_from(EBPF_OBJECT)
    }

    /// Like [`Dataplane::load`], from another object (tests, development builds).
    pub fn load_from(object: &[u8]) -> Result<Self, DataplaneError> {
        let mut ebpf = Ebpf::load(object)?;
        let name = program::XDP_GATEWAY;
        xdp_program(&mut ebpf, name)?
            .load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let mut dataplane = Self {
            routes_v4: take_map(&mut ebpf, map::ROUTES_V4)?,
            routes_v6: take_map(&mut ebpf, map::ROUTES_V6)?,
            local_v4: take_map(&mut ebpf, map::LOCAL_V4)?,
            local_v6: take_map(&mut ebpf, map::LOCAL_V6)?,
            config_map: take_map(&mut ebpf, map::CONFIG)?,
            route_stats: take_map(&mut ebpf, map::ROUTE_STATS)?,
            verdict_stats: take_map(&mut ebpf, map::VERDICT_STATS)?,
            ebpf,
            config: Config::default(),
            routes: BTreeMap::new(),
            local: BTreeSet::new(),
            attachment: None,
            clamp_mss: true,
        };
        dataplane.write_config()?;
        Ok(dataplane)
    }

    /// Attaches `xdp_gateway` to `iface` (in the calling thread's network namespace) in
    /// `mode`, replacing an earlier attachment of this handle. Unless set before, the
    /// hairpin's source MAC becomes the interface's MAC.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        if self.config.tunnel_mode() == TunnelMode::Redirect && !redirect_capable(mode) {
            return Err(DataplaneError::RedirectNeedsSkb);
        }
        self.detach()?;
        let name = program::XDP_GATEWAY;
        let link = attach_xdp(&mut self.ebpf, name, iface, mode)?;
        self.attachment = Some(Attachment {
            iface: iface.into(),
            mode,
            link,
        });
        if self.config.own_mac == [0; 6] {
            let mac = iface::mac(iface).map_err(|source| DataplaneError::Interface {
                iface: iface.into(),
                source,
            })?;
            self.set_own_mac(mac)?;
        }
        Ok(())
    }

    /// Attaches in native (driver) mode, or in skb (generic) mode where the driver has
    /// no XDP support (or in redirect tunnel mode, which only works in skb mode).
    /// Returns the mode that worked.
    pub fn attach_auto(&mut self, iface: &str) -> Result<XdpMode, DataplaneError> {
        if self.config.tunnel_mode() == TunnelMode::Redirect {
            self.attach(iface, XdpMode::Skb)?;
            return Ok(XdpMode::Skb);
        }
        let native = match self.attach(iface, XdpMode::Driver) {
            Ok(()) => return Ok(XdpMode::Driver),
            Err(DataplaneError::Attach { source, .. }) => source,
            Err(other) => return Err(other),
        };
        match self.attach(iface, XdpMode::Skb) {
            Ok(()) => Ok(XdpMode::Skb),
            Err(DataplaneError::Attach { source: skb, .. }) => Err(DataplaneError::AttachAuto {
                name: program::XDP_GATEWAY,
                iface: iface.into(),
                native: Box::new(native),
                skb: Box::new(skb),
            }),
            Err(other) => Err(other),
        }
    }

    /// Detaches the program if attached. Maps and configuration are kept.
    pub fn detach(&mut self) -> Result<(), DataplaneError> {
        let name = program::XDP_GATEWAY;
        if let Some(attachment) = self.attachment.take() {
            xdp_program(&mut self.ebpf, name)?
                .detach(attachment.link)
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(())
    }

    /// The interface and mode the program is attached with, if any.
    pub fn attached(&self) -> Option<(&str, XdpMode)> {
        self.attachment.as_ref().map(|a| (a.iface.as_str(), a.mode))
    }

    /// The configuration as last written.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets the role granted under `epoch`. Also raises the newest epoch seen, so a
    /// later [`Dataplane::observe_epoch`] with a higher epoch makes this role stale.
    pub fn set_role(&mut self, role: Role, epoch: u64) -> Result<(), DataplaneError> {
        self.config.set_role(role);
        self.config.epoch = epoch;
        self.config.newest_epoch = self.config.newest_epoch.max(epoch);
        self.write_config()
    }

    /// Records that `epoch` exists for this node (e.g. another replica was promoted).
    /// If it is newer than the role's epoch, the dataplane drops mesh-bound traffic
    /// (`drop_stale_epoch`) until [`Dataplane::set_role`] brings a current epoch.
    /// Epochs only grow: a lower value is ignored.
    pub fn observe_epoch(&mut self, epoch: u64) -> Result<(), DataplaneError> {
        self.config.newest_epoch = self.config.newest_epoch.max(epoch);
        self.write_config()
    }

    /// Makes the dataplane stop forwarding `remaining` from now (lease self-fencing,
    /// enforced in the kernel even if the agent hangs); `None` removes the deadline.
    pub fn set_lease_deadline(
        &mut self,
        remaining: Option<Duration>,
    ) -> Result<(), DataplaneError> {
        self.config.lease_deadline_ns = match remaining {
            None => 0,
            // `max(1)`: 0 means "no deadline".
            Some(d) => boottime_ns()
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .max(1),
        };
        self.write_config()
    }

    /// The active replica's LAN MAC, where a standby bounces mesh-bound packets.
    pub fn set_active_mac(&mut self, mac: [u8; 6]) -> Result<(), DataplaneError> {
        self.config.active_mac = mac;
        self.write_config()
    }

    /// This replica's LAN MAC, the source of hairpinned frames (set by `attach`).
    pub fn set_own_mac(&mut self, mac: [u8; 6]) -> Result<(), DataplaneError> {
        self.config.own_mac = mac;
        self.write_config()
    }

    /// The TUN device (for redirect mode) and the largest IP packet the tunnel carries,
    /// from which the TCP MSS clamp follows.
    pub fn set_tunnel(&mut self, ifindex: u32, mtu: u32) -> Result<(), DataplaneError> {
        if !(576..=65_535).contains(&mtu) {
            return Err(DataplaneError::InvalidMtu(mtu));
        }
        self.config.tunnel_ifindex = ifindex;
        self.config.tunnel_mtu = mtu;
        self.write_mss()
    }

    /// Turns the TCP MSS clamp at XDP on (the default) or off. The agent turns it off
    /// in the kernel-route tunnel mode and clamps in the kernel's forward path instead
    /// (`crate::mss`): an incremental checksum update here corrupts `CHECKSUM_PARTIAL`
    /// packets (veth, VMs, containers), whose checksum field holds only the
    /// pseudo-header sum.
    pub fn set_mss_clamp(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.clamp_mss = on;
        self.write_mss()
    }

    fn write_mss(&mut self) -> Result<(), DataplaneError> {
        let mtu = self.config.tunnel_mtu;
        // 0 disables the clamp in the program. Both fit: set_tunnel keeps 576 ≤ mtu ≤ 65535.
        let on = self.clamp_mss && mtu != 0;
        self.config.mss_v4 = if on {
            (mtu - TCP_IPV4_OVERHEAD) as u16
        } else {
            0
        };
        self.config.mss_v6 = if on {
            (mtu - TCP_IPV6_OVERHEAD) as u16
        } else {
            0
        };
        self.write_config()
    }

    /// Like [`Dataplane::set_tunnel`], looking the TUN device up by name.
    pub fn set_tunnel_by_name(&mut self, tun: &str, mtu: u32) -> Result<(), DataplaneError> {
        let ifindex = iface::index(tun).map_err(|source| DataplaneError::Interface {
            iface: tun.into(),
            source,
        })?;
        self.set_tunnel(ifindex, mtu)
    }

    /// How the active hands packets to the tunnel (see `ebpf/README.md`). Redirect
    /// mode is refused while attached in native mode ([`DataplaneError::RedirectNeedsSkb`]).
    pub fn set_tunnel_mode(&mut self, mode: TunnelMode) -> Result<(), DataplaneError> {
        if mode == TunnelMode::Redirect
            && self
                .attachment
                .as_ref()
                .is_some_and(|a| !redirect_capable(a.mode))
        {
            return Err(DataplaneError::RedirectNeedsSkb);
        }
        self.config.tunnel_mode = mode as u32;
        self.write_config()
    }

    /// Per-verdict totals, and per-route totals for the installed route ids, summed
    /// over CPUs. Counters only grow; a reused route id continues its predecessor's.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let mut verdicts = [Counter::default(); Verdict::COUNT as usize];
        for verdict in Verdict::ALL {
            verdicts[verdict as usize] =
                sum_counter(&self.verdict_stats, map::VERDICT_STATS, verdict as u32)?;
        }
        let ids: BTreeSet<u32> = self.routes.values().copied().collect();
        let mut routes = BTreeMap::new();
        for id in ids {
            routes.insert(id, sum_counter(&self.route_stats, map::ROUTE_STATS, id)?);
        }
        Ok(Counters { verdicts, routes })
    }

    fn write_config(&mut self) -> Result<(), DataplaneError> {
        self.config_map
            .set(CONFIG_INDEX, self.config, 0)
            .map_err(|source| DataplaneError::Map {
                name: map::CONFIG,
                source,
            })
    }
}

/// Whether `bpf_redirect` into a TUN delivers in this XDP mode: only generic XDP, which
/// transmits the skb; native redirect needs the target's `ndo_xdp_xmit`, which the
/// kernel's TUN (unlike TAP) lacks. `Default` lets the kernel pick native on veth.
fn redirect_capable(mode: XdpMode) -> bool {
    mode == XdpMode::Skb
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, DataplaneError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })?;
    M::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}

fn sum_counter(
    array: &PerCpuArray<MapData, Counter>,
    name: &'static str,
    index: u32,
) -> Result<Counter, DataplaneError> {
    let values = array
        .get(&index, 0)
        .map_err(|source| DataplaneError::Map { name, source })?;
    Ok(values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    }))
}

/// `CLOCK_BOOTTIME` in nanoseconds, the clock of `bpf_ktime_get_boot_ns`.
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_BOOTTIME always exists on Linux ≥ 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
