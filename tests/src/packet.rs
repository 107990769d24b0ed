//! A small packet builder for tests that hand crafted frames to XDP programs
//! (`BPF_PROG_TEST_RUN`, AF_PACKET generators): Ethernet, IPv4 (options, fragments), IPv6
//! (extension headers), TCP (options), UDP, ICMP — with checksums computed from scratch,
//! so a program's rewrite is checked against an independent computation.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const DF: u16 = 0x4000;
pub const MF: u16 = 0x2000;

pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// RFC 1071 Internet checksum over `data`, from scratch.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Source and destination, for the pseudo-header.
#[derive(Clone, Copy)]
pub enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

fn pseudo_header(addrs: Addrs, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match addrs {
        Addrs::V4(s, d) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.push(0);
            p.push(proto);
            p.extend((len as u16).to_be_bytes());
        }
        Addrs::V6(s, d) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend((len as u32).to_be_bytes());
            p.extend([0, 0, 0, proto]);
        }
    }
    p
}

/// The transport checksum of `segment` (checksum field included as is): 0 when valid.
pub fn l4_checksum(addrs: Addrs, proto: u8, segment: &[u8]) -> u16 {
    let mut data = pseudo_header(addrs, proto, segment.len());
    data.extend_from_slice(segment);
    checksum(&data)
}

/// A TCP segment with a correct checksum.
pub fn tcp(addrs: Addrs, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert!(
        options.len().is_multiple_of(4),
        "TCP options are padded to 32 bits"
    );
    let hlen = 20 + options.len();
    let mut s = Vec::new();
    s.extend(40000u16.to_be_bytes());
    s.extend(443u16.to_be_bytes());
    s.extend(1u32.to_be_bytes());
    s.extend(0u32.to_be_bytes());
    s.push(((hlen / 4) as u8) << 4);
    s.push(flags);
    s.extend(64240u16.to_be_bytes());
    s.extend([0, 0]);
    s.extend([0, 0]);
    s.extend_from_slice(options);
    s.extend_from_slice(payload);
    let c = l4_checksum(addrs, TCP, &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// A UDP datagram with a correct checksum.
pub fn udp(addrs: Addrs, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(5353u16.to_be_bytes());
    s.extend(53u16.to_be_bytes());
    s.extend(((8 + payload.len()) as u16).to_be_bytes());
    s.extend([0, 0]);
    s.extend_from_slice(payload);
    let c = l4_checksum(addrs, UDP, &s);
    s[6..8].copy_from_slice(&c.to_be_bytes());
    s
}

/// An ICMP(v6) echo request.
pub fn echo(addrs: Addrs) -> Vec<u8> {
    let (ty, proto) = match addrs {
        Addrs::V4(..) => (8, ICMP),
        Addrs::V6(..) => (128, ICMPV6),
    };
    let mut s = vec![ty, 0, 0, 0, 0, 1, 0, 1];
    s.extend_from_slice(b"meshgate");
    let c = match addrs {
        Addrs::V4(..) => checksum(&s),
        Addrs::V6(..) => l4_checksum(addrs, proto, &s),
    };
    s[2..4].copy_from_slice(&c.to_be_bytes());
    s
}

/// An IPv4 packet with a correct header checksum.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    frag: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert!(
        options.len().is_multiple_of(4),
        "IPv4 options are padded to 32 bits"
    );
    let hlen = 20 + options.len();
    let mut p = Vec::new();
    p.push(0x40 | (hlen / 4) as u8);
    p.push(0);
    p.extend(((hlen + payload.len()) as u16).to_be_bytes());
    p.extend(0x1234u16.to_be_bytes());
    p.extend(frag.to_be_bytes());
    p.push(ttl);
    p.push(proto);
    p.extend([0, 0]);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend_from_slice(options);
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet; `ext` are the extension headers, already chained, with `next` the
/// first header's type.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    hop: u8,
    ext: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend(((ext.len() + payload.len()) as u16).to_be_bytes());
    p.push(next);
    p.push(hop);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend_from_slice(ext);
    p.extend_from_slice(payload);
    p
}

/// An 8-byte IPv6 extension header of the generic form (hop-by-hop, destination
/// options, routing) with PadN options.
pub fn ext8(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// An Ethernet frame from the LAN host to the gateway.
pub fn frame(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(GW_MAC);
    f.extend(HOST_MAC);
    f.extend(ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// An IPv4 address from a test literal.
pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("test literal is an IPv4 address")
}

/// An IPv6 address from a test literal.
pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test literal is an IPv6 address")
}

/// MSS option (kind 2) with `mss`.
pub fn mss_option(mss: u16) -> [u8; 4] {
    let b = mss.to_be_bytes();
    [2, 4, b[0], b[1]]
}
