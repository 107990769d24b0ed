//! The XDP dataplane: the embedded eBPF object and the typed handles through which user
//! space loads programs and touches their maps.
//!
//! * [`Dataplane`]: the gateway program (`xdp_gateway`) and its maps — role, epoch,
//!   routes, local prefixes, tunnel, counters.
//! * [`Probe`]: the `xdp_count` probe used by the foundation test.
//! * [`test_run`]: `BPF_PROG_TEST_RUN`, for tests and benchmarks.

mod error;
mod gateway;
mod iface;
mod probe;
mod routes;
pub mod test_run;

pub use error::DataplaneError;
pub use gateway::{Counters, Dataplane, Program};
pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use meshgate_common::{Counter, Role, TunnelMode, Verdict};
pub use probe::{Probe, ProbeCounters};
pub use routes::RouteDiff;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MESHGATE_EBPF_OBJECT_PATH"));
