//! Types shared by the kernel (XDP programs in `ebpf/`) and user space (the agent).
//!
//! Every type here is `#[repr(C)]`, `Copy` and has no implicit padding, so the kernel and
//! user space agree on its bytes. `aya::Pod` impls sit behind the `user` feature.
//! Network-order values (addresses, MACs) are `[u8; N]`; everything else is host order.
#![no_std]

/// Names of the XDP programs in the eBPF object.
pub mod program {
    /// Pass-through program that counts every packet per CPU: a probe and a baseline.
    pub const XDP_COUNT: &str = "xdp_count";
    /// Bare `XDP_PASS`: the zero-work baseline for benchmarks.
    pub const XDP_PASS: &str = "xdp_pass";
    /// The gateway program on the LAN interface: classify, tunnel, hairpin, fence, count.
    pub const XDP_GATEWAY: &str = "xdp_gateway";
}

/// Names of the maps in the eBPF object (the kernel caps them at 15 bytes).
pub mod map {
    /// `PerCpuArray<u64>` with [`crate::PROBE_COUNTER_SLOTS`] slots, written by `xdp_count`.
    pub const PROBE_COUNTERS: &str = "PROBE_COUNTERS";
    /// `LpmTrie<[u8; 4], RouteEntry>`: mesh-bound IPv4 destinations.
    pub const ROUTES_V4: &str = "ROUTES_V4";
    /// `LpmTrie<[u8; 16], RouteEntry>`: mesh-bound IPv6 destinations.
    pub const ROUTES_V6: &str = "ROUTES_V6";
    /// `LpmTrie<[u8; 4], u32>`: the node's advertised IPv4 prefixes (allowed sources).
    pub const LOCAL_V4: &str = "LOCAL_V4";
    /// `LpmTrie<[u8; 16], u32>`: the node's advertised IPv6 prefixes (allowed sources).
    pub const LOCAL_V6: &str = "LOCAL_V6";
    /// `Array<Config>` with one entry, at index 0.
    pub const CONFIG: &str = "CONFIG";
    /// `PerCpuArray<Counter>` indexed by route id, [`crate::MAX_ROUTE_IDS`] entries.
    pub const ROUTE_STATS: &str = "ROUTE_STATS";
    /// `PerCpuArray<Counter>` indexed by [`crate::Verdict`], [`crate::Verdict::COUNT`] entries.
    pub const VERDICT_STATS: &str = "VERDICT_STATS";
}

/// Slots of the probe counter map.
pub const PROBE_COUNTER_SLOTS: u32 = 2;
/// Probe counter slot: packets seen.
pub const PROBE_PACKETS: u32 = 0;
/// Probe counter slot: bytes seen.
pub const PROBE_BYTES: u32 = 1;

/// Capacity of each route LPM trie (IPv4 and IPv6 separately).
pub const MAX_ROUTES: u32 = 65_536;
/// Capacity of each local-prefix LPM trie.
pub const MAX_LOCAL_PREFIXES: u32 = 1_024;
/// Route ids are indexes into [`map::ROUTE_STATS`], so they must be below this.
/// 16 Ki ids × 16 bytes = 256 KiB per CPU, preallocated.
pub const MAX_ROUTE_IDS: u32 = 16_384;
/// Index of the only entry of [`map::CONFIG`].
pub const CONFIG_INDEX: u32 = 0;

/// A replica's role in its node's HA group: what the coordinator grants, what the agent
/// reports, and what the XDP program enforces. The one definition for all three.
///
/// In the eBPF maps it is stored as a `u32` ([`Config::role`]): the discriminants are that
/// map representation, and zero (the value of a fresh map) is `Fenced`, so a program
/// attached before its first configuration forwards nothing. [`Role::from_u32`] and
/// [`Config::set_role`] are the only conversions.
///
/// On the wire (postcard) a variant travels as its *declaration index*, not its
/// discriminant: keep the declaration order `Active, Standby, Fenced`. In JSON it is the
/// lowercase name.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Role {
    /// Holds the lease: forwards traffic between mesh and LAN while the lease is valid
    /// (in XDP, mesh-bound packets go toward the tunnel). Devices are always `Active`
    /// with epoch 0.
    Active = 1,
    /// Healthy and eligible for promotion; bounces mesh-bound packets to the active
    /// replica's MAC (hairpin).
    Standby = 2,
    /// Forwards nothing toward the mesh and is not eligible for promotion (deposed,
    /// drained, or not yet elected).
    #[default]
    Fenced = 0,
}

impl Role {
    /// Decodes the `u32` stored in [`Config::role`]; unknown values read as `Fenced`,
    /// the safe side.
    pub const fn from_u32(value: u32) -> Self {
        match value {
            1 => Self::Active,
            2 => Self::Standby,
            _ => Self::Fenced,
        }
    }

    /// The lowercase name, as in JSON, logs and `status`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Standby => "standby",
            Self::Fenced => "fenced",
        }
    }
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the active replica hands a mesh-bound packet to the tunnel.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// `XDP_PASS`: the kernel's policy route sends it to the TUN (keeps GRO/GSO,
    /// netfilter, and ICMP errors). The default; see `ebpf/README.md` for why.
    KernelRoute = 0,
    /// Strip Ethernet and `bpf_redirect` into the TUN device at `tunnel_ifindex`.
    Redirect = 1,
}

impl TunnelMode {
    /// Decodes the `u32` stored in [`Config::tunnel_mode`]; unknown values read as
    /// `KernelRoute`.
    pub const fn from_u32(value: u32) -> Self {
        match value {
            1 => Self::Redirect,
            _ => Self::KernelRoute,
        }
    }
}

/// What the gateway program did with a packet: the index into [`map::VERDICT_STATS`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not IPv4/IPv6 (ARP, LLDP, VLAN-tagged…): `XDP_PASS` untouched.
    PassNotIp = 0,
    /// IP but the destination is not mesh-bound: `XDP_PASS` untouched.
    PassLocal = 1,
    /// Truncated or malformed header: `XDP_PASS`, the kernel's own checks decide.
    PassMalformed = 2,
    /// Mesh-bound but larger than the tunnel MTU: `XDP_PASS` so the kernel fragments it
    /// or answers with ICMP "fragmentation needed" / "packet too big".
    PassTooBig = 3,
    /// Hairpin on a standby with TTL/hop limit ≤ 1: `XDP_PASS` so the kernel answers with
    /// ICMP "time exceeded".
    PassTtlExpired = 4,
    /// Active, kernel-route mode: `XDP_PASS` into the policy route to the TUN.
    TunnelKernel = 5,
    /// Active, redirect mode: Ethernet stripped, `XDP_REDIRECT` into the TUN.
    TunnelRedirect = 6,
    /// Standby: destination MAC rewritten to the active's, `XDP_TX`.
    Hairpin = 7,
    /// Source outside the node's advertised prefixes: `XDP_DROP`.
    DropSpoofed = 8,
    /// Role is fenced: `XDP_DROP`.
    DropFenced = 9,
    /// The role's epoch is older than the newest epoch seen, or the lease deadline has
    /// passed: `XDP_DROP`.
    DropStaleEpoch = 10,
    /// Standby without a known active MAC, or redirect mode without a tunnel: `XDP_DROP`.
    DropNoPath = 11,
}

impl Verdict {
    /// Number of verdicts, the size of [`map::VERDICT_STATS`].
    pub const COUNT: u32 = 12;
    /// Every verdict, in index order.
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Self::PassNotIp,
        Self::PassLocal,
        Self::PassMalformed,
        Self::PassTooBig,
        Self::PassTtlExpired,
        Self::TunnelKernel,
        Self::TunnelRedirect,
        Self::Hairpin,
        Self::DropSpoofed,
        Self::DropFenced,
        Self::DropStaleEpoch,
        Self::DropNoPath,
    ];

    /// A stable snake_case name, for metrics labels and `status`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassNotIp => "pass_not_ip",
            Self::PassLocal => "pass_local",
            Self::PassMalformed => "pass_malformed",
            Self::PassTooBig => "pass_too_big",
            Self::PassTtlExpired => "pass_ttl_expired",
            Self::TunnelKernel => "tunnel_kernel",
            Self::TunnelRedirect => "tunnel_redirect",
            Self::Hairpin => "hairpin",
            Self::DropSpoofed => "drop_spoofed",
            Self::DropFenced => "drop_fenced",
            Self::DropStaleEpoch => "drop_stale_epoch",
            Self::DropNoPath => "drop_no_path",
        }
    }
}

/// Value of the route tries: which route a mesh-bound destination belongs to.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteEntry {
    /// Index into [`map::ROUTE_STATS`]; below [`MAX_ROUTE_IDS`].
    pub route_id: u32,
}

/// Packets and bytes, per CPU in the maps, summed in user space.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (the frame as XDP saw it, Ethernet header included).
    pub bytes: u64,
}

/// The gateway's configuration, the only entry of [`map::CONFIG`]. 56 bytes, no padding.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// A [`Role`] as `u32`.
    pub role: u32,
    /// A [`TunnelMode`] as `u32`.
    pub tunnel_mode: u32,
    /// The epoch under which `role` (and `active_mac`) was granted.
    pub epoch: u64,
    /// The newest epoch this replica has seen for its node; `epoch < newest_epoch` means
    /// this replica's view is stale and it forwards nothing.
    pub newest_epoch: u64,
    /// `CLOCK_BOOTTIME` nanoseconds after which an active stops forwarding even if user
    /// space is stuck (lease self-fencing); 0 means no deadline.
    pub lease_deadline_ns: u64,
    /// The TUN device's ifindex, for redirect mode.
    pub tunnel_ifindex: u32,
    /// Largest IP packet the tunnel carries.
    pub tunnel_mtu: u32,
    /// MSS that TCP SYNs over IPv4 are clamped to (`tunnel_mtu - 40`).
    pub mss_v4: u16,
    /// MSS that TCP SYNs over IPv6 are clamped to (`tunnel_mtu - 60`).
    pub mss_v6: u16,
    /// The active replica's LAN MAC, the hairpin's destination.
    pub active_mac: [u8; 6],
    /// This replica's LAN MAC, the hairpin's source.
    pub own_mac: [u8; 6],
}

impl Config {
    /// The role, decoded.
    pub const fn role(&self) -> Role {
        Role::from_u32(self.role)
    }

    /// Stores `role` in its map representation.
    pub const fn set_role(&mut self, role: Role) {
        self.role = role as u32;
    }

    /// The tunnel mode, decoded.
    pub const fn tunnel_mode(&self) -> TunnelMode {
        TunnelMode::from_u32(self.tunnel_mode)
    }
}

/// Key data of the IPv4 tries: an address in network order.
pub type Ipv4Key = [u8; 4];
/// Key data of the IPv6 tries: an address in network order.
pub type Ipv6Key = [u8; 16];
/// Value of the local-prefix tries (presence is what matters).
pub const LOCAL_PREFIX_PRESENT: u32 = 1;

// No implicit padding: each size equals the sum of its fields.
const _: () = assert!(core::mem::size_of::<RouteEntry>() == 4);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<Config>() == 4 + 4 + 8 + 8 + 8 + 4 + 4 + 2 + 2 + 6 + 6);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, `Copy`, only integer fields, no padding (asserted above), so
    // every bit pattern is valid and every byte is initialised.
    unsafe impl aya::Pod for super::RouteEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above; `role`/`tunnel_mode` are `u32`, decoded leniently.
    unsafe impl aya::Pod for super::Config {}
}
