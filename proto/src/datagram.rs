//! The datagram convention: every QUIC DATAGRAM frame, in both directions, is exactly
//! one raw IPv4 packet, starting at the IP header. No extra header: the coordinator
//! knows the sender (and, for a node replica, its role and epoch) from the connection,
//! so it can drop datagrams from a standby or fenced replica without trusting anything
//! in the packet. Packets longer than [`MAX_PACKET`] are dropped by the coordinator.

use std::net::Ipv4Addr;

/// Largest packet the coordinator relays. The path's QUIC datagram limit
/// (`quinn::Connection::max_datagram_size`) may be lower; the agent should set its TUN
/// MTU to what the connection allows.
pub const MAX_PACKET: usize = 1500;

/// A TUN MTU that fits a QUIC datagram on any path carrying quinn's initial 1200-byte
/// UDP payloads (QUIC short header + DATAGRAM frame overhead is under 80 bytes).
pub const SAFE_TUN_MTU: u16 = 1120;

/// Source and destination of an IPv4 packet, or `None` if `pkt` is not a well-formed
/// IPv4 header (version 4, IHL >= 5, header and total length within `pkt`).
pub fn ipv4_src_dst(pkt: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let hdr: &[u8; 20] = pkt.first_chunk()?;
    if hdr[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    if ihl < 20 || total < ihl || total > pkt.len() {
        return None;
    }
    let src = Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]);
    let dst = Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]);
    Some((src, dst))
}

/// Build a minimal IPv4/UDP packet (checksums zero) — for tests and diagnostics.
pub fn test_udp_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39]);
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header() {
        let p = test_udp_packet([100, 96, 0, 1].into(), [192, 168, 50, 7].into(), b"hi");
        assert_eq!(
            ipv4_src_dst(&p),
            Some(([100, 96, 0, 1].into(), [192, 168, 50, 7].into()))
        );
        assert_eq!(ipv4_src_dst(&p[..19]), None);
        assert_eq!(ipv4_src_dst(&p[..25]), None, "total length beyond buffer");
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert_eq!(ipv4_src_dst(&v6), None);
    }
}
