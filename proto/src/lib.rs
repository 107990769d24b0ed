//! The meshgate agent ↔ coordinator wire protocol, shared by both ends.
//!
//! # Transport
//!
//! One QUIC connection per participant (quinn + rustls, TLS 1.3, ALPN [`ALPN`], 0-RTT
//! off, DATAGRAM frames enabled). The agent pins the coordinator's self-signed
//! certificate by the SHA-256 fingerprint its [`Token`] carries ([`pin`]).
//!
//! # Control stream
//!
//! Right after the handshake the agent opens one bidirectional stream. Every message on
//! it is a [`frame`] (length prefix, version byte, postcard payload). The exchange:
//!
//! 1. agent → [`AgentMsg::Hello`] (token, persistent replica id, LAN info, version);
//! 2. coordinator → [`CoordMsg::Welcome`] (Mesh IP, mesh range, role, epoch, timings,
//!    route table) or [`CoordMsg::Refused`] and close;
//! 3. agent → [`AgentMsg::Heartbeat`] every `heartbeat_ms`, whatever its role (standbys
//!    heartbeat to stay *healthy*, i.e. eligible for promotion); the coordinator answers
//!    the active replica's heartbeats with [`CoordMsg::LeaseGrant`];
//! 4. coordinator → [`CoordMsg::RoleChange`] on promotion, demotion, fencing, or when
//!    the node's active changes (standbys need its LAN MAC to hairpin), and
//!    [`CoordMsg::Routes`] with the whole route table after the Welcome and whenever it
//!    changes (versioned, in bounded parts: [`routes`]);
//! 5. agent → [`AgentMsg::RequestHandover`] to drain: the coordinator promotes a standby
//!    first, then fences the requester and sends [`CoordMsg::HandoverDone`];
//! 6. agent → [`AgentMsg::Goodbye`] before closing on purpose;
//! 7. coordinator → [`CoordMsg::Filter`] (the participant's network-policy filter, in
//!    chunks) after registration and whenever it changes; agent →
//!    [`AgentMsg::FilterCounters`] every few seconds while one is in force;
//! 8. agent → [`AgentMsg::Logs`]: its own warnings, errors and role flips, in small
//!    batches at most twice a second ([`logs`]), for the coordinator's per-node history.
//!
//! A malformed frame closes that one connection. Lease arithmetic — and why at most one
//! replica forwards — is in [`lease`].
//!
//! # Datagrams
//!
//! Each QUIC datagram is exactly one raw IPv4 packet ([`datagram`]). The coordinator
//! knows the sender's role and epoch from the connection and drops datagrams from a
//! replica that is not active.

pub mod datagram;
pub mod frame;
pub mod id;
pub mod lease;
pub mod logs;
pub mod messages;
pub mod routes;
pub mod token;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod pin;
#[cfg(feature = "client")]
pub mod socket;
#[cfg(feature = "stream")]
pub mod stream;

pub use id::Id;
pub use logs::{LogBatch, LogLevel, LogRecord};
pub use messages::*;
pub use routes::RoutesPart;
pub use token::{Kind, SecretText, Token, TokenError};

/// ALPN protocol id both ends of the tunnel agree on.
pub const ALPN: &[u8] = b"meshgate/1";
