//! meshgate's coordinator: control plane (enrolment, IPAM, routes, HA election) and
//! relay. The binary in `main.rs` wires these modules together.

pub mod admission;
pub mod api;
pub mod cluster;
pub mod core;
pub mod election;
pub mod hub;
pub mod icmp;
pub mod identity;
pub mod ipam;
pub mod lpm;
pub mod metrics;
pub mod policy;
pub mod quic;
pub mod registry;
pub mod relay;
pub mod routes;
pub mod store;
pub mod sysdump_logs;
