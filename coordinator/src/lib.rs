//! meshgate's coordinator: control plane (enrolment, IPAM, routes, HA election) and
//! relay. The binary in `main.rs` wires these modules together.

pub mod election;
