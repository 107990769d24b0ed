//! The relay's per-packet path on arbitrary input: `ipv4_src_dst` against a plain reading
//! of the header, ICMP error building (`None`, or a well-formed IPv4 ICMP packet with
//! valid checksums that quotes the original, and never `None` where an error is due),
//! and the longest-prefix table against a linear scan.
#![no_main]

#[path = "../../coordinator/src/icmp.rs"]
#[allow(dead_code, reason = "the rate limiter is not fuzzed")]
mod icmp;
#[path = "../../coordinator/src/lpm.rs"]
mod lpm;

use std::net::Ipv4Addr;

use icmp::Unreachable;
use ipnet::Ipv4Net;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use meshgate_proto::datagram::ipv4_src_dst;

fuzz_target!(|data: &[u8]| {
    let _ = table(data);
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (pkt, src) = match rest.split_first_chunk::<4>() {
        Some((src, pkt)) => (pkt, Ipv4Addr::from(*src)),
        None => (rest, Ipv4Addr::new(100, 96, 0, 0)),
    };
    header(pkt);
    let why = match sel % 3 {
        0 => Unreachable::Net,
        1 => Unreachable::Host,
        _ => Unreachable::FragNeeded(u16::from(sel) * 7),
    };
    error(src, pkt, why);
    assert_eq!(
        icmp::dont_fragment(pkt),
        pkt.get(6).is_some_and(|b| b & 0x40 != 0)
    );
});

fn be16(p: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([p[at], p[at + 1]]))
}

fn header(pkt: &[u8]) {
    let got = ipv4_src_dst(pkt);
    let well_formed = pkt.len() >= 20 && pkt[0] >> 4 == 4 && {
        let ihl = usize::from(pkt[0] & 0xf) * 4;
        let total = be16(pkt, 2);
        ihl >= 20 && total >= ihl && total <= pkt.len()
    };
    assert_eq!(got.is_some(), well_formed, "{pkt:?}");
    if let Some((src, dst)) = got {
        assert_eq!(src.octets(), pkt[12..16]);
        assert_eq!(dst.octets(), pkt[16..20]);
    }
}

/// RFC 1071, summed the slow way.
fn checksum_ok(data: &[u8]) -> bool {
    let mut sum: u64 = 0;
    for (i, b) in data.iter().enumerate() {
        sum += u64::from(*b) << if i % 2 == 0 { 8 } else { 0 };
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

fn error(src: Ipv4Addr, orig: &[u8], why: Unreachable) {
    let got = icmp::unreachable(src, orig, why);
    // Where the relay asks (a packet `ipv4_src_dst` accepted), an error is due unless
    // RFC 1122 §3.2.2 forbids one.
    if ipv4_src_dst(orig).is_some() {
        let ihl = usize::from(orig[0] & 0xf) * 4;
        let total = be16(orig, 2);
        let s = Ipv4Addr::new(orig[12], orig[13], orig[14], orig[15]);
        let d = Ipv4Addr::new(orig[16], orig[17], orig[18], orig[19]);
        let unicast_src =
            !(s.is_unspecified() || s.is_multicast() || s.is_broadcast() || s.is_loopback());
        let first_fragment = be16(orig, 6) & 0x1fff == 0;
        let about_error = orig[9] == 1 && (ihl >= total || [3, 4, 5, 11, 12].contains(&orig[ihl]));
        let due =
            unicast_src && !d.is_multicast() && !d.is_broadcast() && first_fragment && !about_error;
        assert_eq!(got.is_some(), due, "{orig:?}");
    }
    let Some(e) = got else {
        return;
    };
    let total = be16(orig, 2);
    let quoted = total.min(576 - 28);
    assert!(e.len() <= 576);
    assert_eq!(e.len(), 28 + quoted);
    assert_eq!(be16(&e, 2), e.len(), "total length");
    assert_eq!((e[0], e[9]), (0x45, 1), "IPv4 without options, ICMP");
    assert_eq!(be16(&e, 6) & 0x3fff, 0, "not a fragment");
    assert!(checksum_ok(&e[..20]), "IPv4 header checksum");
    assert!(checksum_ok(&e[20..]), "ICMP checksum");
    assert_eq!(e[12..16], src.octets());
    assert_eq!(e[16..20], orig[12..16], "back to the original's source");
    let (code, mtu) = match why {
        Unreachable::Net => (0, 0),
        Unreachable::Host => (1, 0),
        Unreachable::FragNeeded(m) => (4, m),
    };
    assert_eq!((e[20], e[21]), (3, code));
    assert_eq!(be16(&e, 24), 0);
    assert_eq!(be16(&e, 26), usize::from(mtu));
    assert_eq!(
        e[28..],
        orig[..quoted],
        "quotes the original from its header on"
    );
}

/// Inserts arbitrary prefixes and checks lookups against a linear scan (the last value
/// inserted for a prefix wins, the longest prefix containing the address is chosen).
fn table(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mut l = lpm::Lpm::default();
    let mut inserted: Vec<(Ipv4Net, u16)> = Vec::new();
    for _ in 0..u.int_in_range(0..=48)? {
        let net = Ipv4Net::new(
            Ipv4Addr::from(u.arbitrary::<u32>()?),
            u.int_in_range(0..=32)?,
        )
        .expect("prefix length within 0..=32");
        let v: u16 = u.arbitrary()?;
        l.insert(net, v);
        inserted.retain(|(n, _)| n.trunc() != net.trunc());
        inserted.push((net, v));
    }
    let mut probes: Vec<Ipv4Addr> = inserted
        .iter()
        .flat_map(|(n, _)| [n.network(), n.broadcast(), n.addr()])
        .collect();
    while let Ok(a) = u.arbitrary::<u32>() {
        if u.is_empty() {
            break;
        }
        probes.push(a.into());
    }
    for ip in probes {
        let want = inserted
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, v)| *v);
        assert_eq!(l.lookup(ip), want, "{ip}");
    }
    Ok(())
}
