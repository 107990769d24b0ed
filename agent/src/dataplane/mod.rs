//! The XDP dataplane: the embedded eBPF object and the typed handles through which user
//! space loads programs and touches their maps.
//!
//! * [`Dataplane`]: the gateway program (`xdp_gateway`) and its maps — role, epoch,
//!   routes, local prefixes, tunnel, counters.
//!
//! With the `test-hooks` feature (enabled by the test crates, never by the agent's own
//! build), two handles that only tests and benchmarks use:
//! * `Probe`: the `xdp_count` probe, which counts the packets an interface receives;
//! * `test_run`: `BPF_PROG_TEST_RUN` (`Dataplane::test_run` and its `Program`s), which
//!   runs a program on a crafted frame.

mod error;
mod gateway;
mod iface;
#[cfg(feature = "test-hooks")]
mod probe;
mod program;
mod routes;
#[cfg(feature = "test-hooks")]
pub mod test_run;

pub use error::DataplaneError;
pub use gateway::{Counters, Dataplane};
pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use meshgate_common::{Counter, Role, TunnelMode, Verdict};
#[cfg(feature = "test-hooks")]
pub use probe::{Probe, ProbeCounters};
pub use routes::RouteDiff;
#[cfg(feature = "test-hooks")]
pub use test_run::Program;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MESHGATE_EBPF_OBJECT_PATH"));
