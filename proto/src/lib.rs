//! The agent <-> coordinator wire protocol: control messages on a QUIC stream,
//! IP packets in QUIC DATAGRAM frames, and the enrolment token codec.

/// ALPN protocol id both ends of the tunnel agree on.
pub const ALPN: &[u8] = b"meshgate/1";
