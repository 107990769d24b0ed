//! What the benchmarks run besides meshgate, kept apart from the scenario harness: the
//! references meshgate is compared with — two keepalived routers ([`vrrp`], failover),
//! plain kernel routing and a userspace WireGuard tunnel in the same topology
//! ([`routed`] on [`wg`], throughput) — and the load that drives the comparisons: iperf3
//! ([`iperf`]) and an `AF_PACKET` frame generator ([`blast`], the XDP hairpin). [`tools`]
//! finds the external programs they need, which `cargo xtask bench` installs.

pub mod blast;
pub mod iperf;
pub mod routed;
pub mod tools;
pub mod vrrp;
pub mod wg;
