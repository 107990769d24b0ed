//! ICMP errors from the relay (RFC 792; RFC 1812 §4.3.2 for what a router sends). A
//! datagram the relay cannot deliver is answered with *destination unreachable*, so the
//! sender's stack reports `ENETUNREACH`, `EHOSTUNREACH` or `EMSGSIZE` at once instead of
//! waiting on a black hole (a node without an active replica, a Mesh IP nobody holds, a
//! packet larger than the receiver's path).
//!
//! The errors come from the mesh range's network address (`100.96.0.0` by default), which
//! IPAM never assigns, so they cannot be taken for a participant's. They are rate-limited
//! and never sent about an ICMP error, a non-first fragment or to a source that is not a
//! unicast address (RFC 1122 §3.2.2), so the relay cannot be used to amplify or loop.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a datagram could not be delivered: the destination-unreachable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Code 0: no route to the network, or the node that routes it has no active replica.
    Net,
    /// Code 1: a Mesh IP that nobody connected holds.
    Host,
    /// Code 4: fragmentation needed but DF set; carries the next hop's MTU (RFC 1191).
    FragNeeded(u16),
}

const PROTO_ICMP: u8 = 1;
const DEST_UNREACH: u8 = 3;
/// ICMP types that are errors (unreachable, source quench, redirect, time exceeded,
/// parameter problem): never answered with another error.
const ERROR_TYPES: [u8; 5] = [3, 4, 5, 11, 12];
/// An ICMP error quotes as much of the original as fits in 576 bytes (RFC 1812 §4.3.2.3).
const MAX_ERROR_LEN: usize = 576;
const HEADERS: usize = 20 + 8;

/// The ICMP error about `orig` (a well-formed IPv4 packet, as the relay checked), from
/// `src` to `orig`'s source; `None` where RFC 1122 §3.2.2 forbids an error.
pub fn unreachable(src: Ipv4Addr, orig: &[u8], why: Unreachable) -> Option<Vec<u8>> {
    let ihl = usize::from(orig.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*orig.get(2)?, *orig.get(3)?]));
    let orig = orig.get(..total)?;
    if ihl < 20 || orig.len() < ihl || !may_answer(orig, ihl) {
        return None;
    }
    let quoted = &orig[..orig.len().min(MAX_ERROR_LEN - HEADERS)];
    let len = HEADERS + quoted.len();
    let (code, mtu) = match why {
        Unreachable::Net => (0, 0),
        Unreachable::Host => (1, 0),
        Unreachable::FragNeeded(mtu) => (4, mtu),
    };
    let mut p = Vec::with_capacity(len);
    // TOS 0xc0 (internetwork control), as Linux sends its own ICMP errors; TTL 64.
    p.extend_from_slice(&[0x45, 0xc0]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, PROTO_ICMP, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&orig[12..16]);
    p.extend_from_slice(&[DEST_UNREACH, code, 0, 0, 0, 0]);
    p.extend_from_slice(&mtu.to_be_bytes());
    p.extend_from_slice(quoted);
    let ip_sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp_sum = checksum(&p[20..]);
    p[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    Some(p)
}

/// Whether `orig` (a well-formed IPv4 packet) has DF set.
pub fn dont_fragment(orig: &[u8]) -> bool {
    orig.get(6).is_some_and(|b| b & 0x40 != 0)
}

fn may_answer(orig: &[u8], ihl: usize) -> bool {
    let addr = |at: usize| Ipv4Addr::new(orig[at], orig[at + 1], orig[at + 2], orig[at + 3]);
    let (src, dst) = (addr(12), addr(16));
    let unicast = |a: Ipv4Addr| {
        !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
    };
    if !unicast(src) || dst.is_multicast() || dst.is_broadcast() {
        return false;
    }
    let fragment_offset = u16::from_be_bytes([orig[6], orig[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return false;
    }
    orig[9] != PROTO_ICMP || orig.get(ihl).is_some_and(|t| !ERROR_TYPES.contains(t))
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A token bucket shared by every error the relay sends (RFC 1812 §4.3.2.8 asks routers
/// to limit them): a burst, then a steady rate.
pub struct Limiter {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Default for Limiter {
    /// Linux's defaults for its own ICMP errors: 1000 per second, bursts of 50.
    fn default() -> Self {
        Self::new(1000, 50)
    }
}

impl Limiter {
    /// `per_second` errors on average, at most `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    /// [`Limiter::allow`] at `now`.
    pub fn allow_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now
            .saturating_duration_since(s.1)
            .min(Duration::from_secs(60));
        s.0 = (s.0 + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        s.1 = now.max(s.1);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use meshgate_proto::datagram::test_udp_packet;

    use super::*;

    const RELAY: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 0);

    fn udp(df: bool, payload: usize) -> Vec<u8> {
        let mut p = test_udp_packet(
            [100, 96, 0, 7].into(),
            [192, 168, 50, 100].into(),
            &vec![0xab; payload],
        );
        p[6] = if df { 0x40 } else { 0 };
        p
    }

    #[test]
    fn an_error_quotes_the_original_with_valid_checksums() {
        let orig = udp(true, 12);
        let e = unreachable(RELAY, &orig, Unreachable::Net).unwrap();
        assert_eq!(e.len(), 28 + orig.len());
        assert_eq!(u16::from_be_bytes([e[2], e[3]]) as usize, e.len());
        assert_eq!((e[0], e[8], e[9]), (0x45, 64, PROTO_ICMP));
        assert_eq!(&e[12..16], &RELAY.octets());
        assert_eq!(&e[16..20], &orig[12..16], "back to the original source");
        assert_eq!((e[20], e[21]), (DEST_UNREACH, 0));
        assert_eq!(&e[28..], &orig[..]);
        assert_eq!(checksum(&e[..20]), 0, "IPv4 header checksum");
        assert_eq!(checksum(&e[20..]), 0, "ICMP checksum");
        let host = unreachable(RELAY, &orig, Unreachable::Host).unwrap();
        assert_eq!(host[21], 1);
    }

    #[test]
    fn frag_needed_carries_the_mtu_and_big_packets_are_cut_at_576() {
        let orig = udp(true, 1400);
        assert!(dont_fragment(&orig) && !dont_fragment(&udp(false, 1)));
        let e = unreachable(RELAY, &orig, Unreachable::FragNeeded(1120)).unwrap();
        assert_eq!(e.len(), MAX_ERROR_LEN);
        assert_eq!(e[21], 4);
        assert_eq!(u16::from_be_bytes([e[26], e[27]]), 1120);
        assert_eq!(&e[28..], &orig[..MAX_ERROR_LEN - 28]);
        assert_eq!(checksum(&e[20..]), 0);
    }

    #[test]
    fn no_error_about_errors_fragments_or_non_unicast() {
        let mut icmp_err = udp(false, 8);
        icmp_err[9] = PROTO_ICMP;
        icmp_err[20] = 3;
        assert_eq!(unreachable(RELAY, &icmp_err, Unreachable::Net), None);
        let mut echo = icmp_err.clone();
        echo[20] = 8;
        assert!(unreachable(RELAY, &echo, Unreachable::Net).is_some());
        let mut frag = udp(false, 8);
        frag[7] = 1;
        assert_eq!(unreachable(RELAY, &frag, Unreachable::Net), None);
        for (at, addr) in [(12, [0, 0, 0, 0]), (12, [224, 0, 0, 1]), (16, [255; 4])] {
            let mut p = udp(false, 8);
            p[at..at + 4].copy_from_slice(&addr);
            assert_eq!(unreachable(RELAY, &p, Unreachable::Net), None, "{addr:?}");
        }
        assert_eq!(
            unreachable(RELAY, &udp(false, 8)[..20], Unreachable::Net),
            None
        );
    }

    #[test]
    fn the_limiter_allows_a_burst_then_the_rate() {
        let l = Limiter::new(10, 3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow_at(t0)));
        assert!(!l.allow_at(t0));
        assert!(!l.allow_at(t0 + Duration::from_millis(50)));
        assert!(l.allow_at(t0 + Duration::from_millis(110)));
        assert!(!l.allow_at(t0 + Duration::from_millis(120)));
        let later = t0 + Duration::from_secs(5);
        assert_eq!((0..10).filter(|_| l.allow_at(later)).count(), 3);
    }
}
