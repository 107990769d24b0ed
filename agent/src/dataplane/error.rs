//! Errors of the dataplane handles.

use aya::programs::XdpMode;
use ipnet::IpNet;

/// Errors of the dataplane handles.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The eBPF object could not be parsed or its maps could not be created.
    #[error("failed to load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing from the object or the verifier refused it (its log follows).
    #[error("failed to load XDP program `{name}`: {source}")]
    Program {
        /// The program's name in the object.
        name: &'static str,
        /// What aya reported, including the verifier log.
        source: aya::programs::ProgramError,
    },
    /// Attaching to the interface failed (unknown interface, or the mode is unsupported).
    #[error("failed to attach XDP program `{name}` to {iface} in {mode:?} mode: {source}")]
    Attach {
        /// The program's name in the object.
        name: &'static str,
        /// The interface.
        iface: String,
        /// The requested mode.
        mode: XdpMode,
        /// What aya reported.
        source: aya::programs::ProgramError,
    },
    /// Attaching in `auto` mode failed in native and in skb mode.
    #[error("failed to attach XDP program `{name}` to {iface}: native: {native}; skb: {skb}")]
    AttachAuto {
        /// The program's name in the object.
        name: &'static str,
        /// The interface.
        iface: String,
        /// Why native (driver) mode failed (boxed: two aya errors make the enum large).
        native: Box<aya::programs::ProgramError>,
        /// Why skb (generic) mode failed.
        skb: Box<aya::programs::ProgramError>,
    },
    /// Redirect tunnel mode with native XDP: the kernel's L3 TUN has no
    /// `ndo_xdp_xmit`, so native `bpf_redirect` into it fails with EOPNOTSUPP and the
    /// packet is lost (measured on 6.18; see `ebpf/README.md`). Use skb mode or
    /// kernel-route mode.
    #[error(
        "redirect tunnel mode needs skb (generic) XDP: native XDP cannot redirect into a TUN device"
    )]
    RedirectNeedsSkb,
    /// A map is missing, has an unexpected type, or an operation on it failed.
    #[error("eBPF map `{name}`: {source}")]
    Map {
        /// The map's name in the object.
        name: &'static str,
        /// What aya reported.
        source: aya::maps::MapError,
    },
    /// A route id does not fit the per-route counter array.
    #[error("route {net}: route id {route_id} is not below {max}")]
    RouteIdOutOfRange {
        /// The route.
        net: IpNet,
        /// Its id.
        route_id: u32,
        /// The exclusive upper bound, `MAX_ROUTE_IDS`.
        max: u32,
    },
    /// The same prefix was given twice with different route ids.
    #[error("route {net} given twice, with ids {first} and {second}")]
    DuplicateRoute {
        /// The prefix.
        net: IpNet,
        /// The first id.
        first: u32,
        /// The second id.
        second: u32,
    },
    /// More routes or local prefixes than the map holds.
    #[error("{what}: {count} entries exceed the map's capacity of {max}")]
    TooMany {
        /// Which set.
        what: &'static str,
        /// How many were given for one family.
        count: usize,
        /// The capacity.
        max: u32,
    },
    /// A tunnel MTU outside what IP allows.
    #[error("tunnel MTU {0} is outside 576..=65535")]
    InvalidMtu(u32),
    /// An interface query (index, MAC) failed.
    #[error("interface {iface}: {source}")]
    Interface {
        /// The interface.
        iface: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `BPF_PROG_TEST_RUN` failed (a test hook).
    #[cfg(feature = "test-hooks")]
    #[error("BPF_PROG_TEST_RUN on `{name}`: {source}")]
    TestRun {
        /// The program's name.
        name: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}
