//! A registered participant as the core sees it, and election messages in wire form.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use meshgate_proto::{CoordMsg, Id, Kind};

use super::limits::RateLimit;
use crate::election::Out;

/// A connected participant.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) kind: Kind,
    pub(super) id: Id,
    pub(super) replica_id: String,
    pub(super) mesh_ip: Ipv4Addr,
    pub(super) origin: SocketAddr,
    pub(super) opened_at: SystemTime,
    pub(super) heartbeats: RateLimit,
    /// Why it asked to hand its role over, if it did.
    pub(super) withdrawn: Option<meshgate_proto::HandoverReason>,
}

/// An election message as it goes on the wire.
pub(super) fn to_wire(msg: Out) -> CoordMsg {
    match msg {
        Out::LeaseGrant {
            epoch,
            valid_for,
            seq,
        } => CoordMsg::LeaseGrant {
            epoch,
            valid_for_ms: u32::try_from(valid_for.as_millis()).unwrap_or(u32::MAX),
            seq,
        },
        Out::RoleChange {
            role,
            epoch,
            active,
        } => CoordMsg::RoleChange {
            role,
            epoch,
            active,
        },
        Out::HandoverDone { epoch } => CoordMsg::HandoverDone { epoch },
    }
}
