//! Mesh IP allocation policy. Persistence (who holds which address) lives in
//! [`crate::registry`]; this module only decides which address is next.
//!
//! Addresses are handed out by a cursor that moves forward through the range and wraps,
//! rather than "lowest free first": a freed address is reused only after the whole range
//! has been cycled, so a deleted participant's address does not reappear on someone
//! else while peers may still hold state (ARP, conntrack, logs) about it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Why an address could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The mesh range is too small to hold any participant.
    #[error("mesh range {0} is too small (need at least a /30)")]
    RangeTooSmall(Ipv4Net),
    /// Every address is taken.
    #[error("mesh range {0} is exhausted")]
    Exhausted(Ipv4Net),
}

/// The allocator for one mesh range.
#[derive(Debug, Clone, Copy)]
pub struct Ipam {
    cidr: Ipv4Net,
}

impl Ipam {
    /// An allocator over `cidr` (its network and broadcast addresses are never used).
    pub fn new(cidr: Ipv4Net) -> Result<Self, IpamError> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 30 {
            return Err(IpamError::RangeTooSmall(cidr));
        }
        Ok(Self { cidr })
    }

    /// The range.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    fn bounds(&self) -> (u32, u32) {
        (
            u32::from(self.cidr.network()) + 1,
            u32::from(self.cidr.broadcast()) - 1,
        )
    }

    /// Whether `ip` is an assignable host address of the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (lo, hi) = self.bounds();
        (lo..=hi).contains(&u32::from(ip))
    }

    /// Every assignable address once, starting after `cursor` and wrapping; from the
    /// start of the range when there is no cursor (or it lies outside the range).
    pub fn candidates(&self, cursor: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> {
        let (lo, hi) = self.bounds();
        let start = cursor
            .map(u32::from)
            .filter(|c| (lo..=hi).contains(c))
            .map_or(lo, |c| if c == hi { lo } else { c + 1 });
        (start..=hi).chain(lo..start).map(Ipv4Addr::from)
    }

    /// The first free address after `cursor` (wrapping), where `used` says which are
    /// taken.
    pub fn next_free(
        &self,
        cursor: Option<Ipv4Addr>,
        used: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<Ipv4Addr, IpamError> {
        self.candidates(cursor)
            .find(|ip| !used(*ip))
            .ok_or(IpamError::Exhausted(self.cidr))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_forward_skipping_used_and_special_addresses() {
        let ipam = Ipam::new(net("100.96.0.0/29")).unwrap();
        let mut used = HashSet::new();
        let mut cursor = None;
        let mut got = Vec::new();
        for _ in 0..6 {
            let ip = ipam.next_free(cursor, |ip| used.contains(&ip)).unwrap();
            assert!(used.insert(ip), "handed out twice: {ip}");
            cursor = Some(ip);
            got.push(ip.octets()[3]);
        }
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
        assert_eq!(
            ipam.next_free(cursor, |ip| used.contains(&ip)),
            Err(IpamError::Exhausted(net("100.96.0.0/29")))
        );
        used.remove(&Ipv4Addr::new(100, 96, 0, 3));
        assert_eq!(
            ipam.next_free(cursor, |ip| used.contains(&ip)).unwrap(),
            Ipv4Addr::new(100, 96, 0, 3)
        );
    }

    #[test]
    fn freed_address_is_not_reused_before_wrapping() {
        let ipam = Ipam::new(net("100.96.0.0/24")).unwrap();
        let used: HashSet<Ipv4Addr> = [Ipv4Addr::new(100, 96, 0, 2)].into();
        // 100.96.0.1 was freed; the cursor is at .2, so .3 comes next.
        let ip = ipam
            .next_free(Some(Ipv4Addr::new(100, 96, 0, 2)), |ip| used.contains(&ip))
            .unwrap();
        assert_eq!(ip, Ipv4Addr::new(100, 96, 0, 3));
    }

    #[test]
    fn candidates_visit_every_host_address_once_from_the_cursor() {
        let ipam = Ipam::new(net("100.96.0.0/29")).unwrap();
        let last = |c: Option<Ipv4Addr>| -> Vec<u8> {
            ipam.candidates(c).map(|ip| ip.octets()[3]).collect()
        };
        assert_eq!(last(None), [1, 2, 3, 4, 5, 6]);
        assert_eq!(last(Some(Ipv4Addr::new(100, 96, 0, 4))), [5, 6, 1, 2, 3, 4]);
        assert_eq!(last(Some(Ipv4Addr::new(100, 96, 0, 6))), [1, 2, 3, 4, 5, 6]);
        // A cursor from another range (the mesh was renumbered) starts at the bottom.
        assert_eq!(last(Some(Ipv4Addr::new(10, 0, 0, 9))), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn tiny_ranges_are_refused() {
        assert!(Ipam::new(net("100.96.0.0/31")).is_err());
        let ipam = Ipam::new(net("100.96.0.5/30")).unwrap();
        assert_eq!(ipam.cidr(), net("100.96.0.4/30"));
        assert!(ipam.contains(Ipv4Addr::new(100, 96, 0, 5)));
        assert!(!ipam.contains(Ipv4Addr::new(100, 96, 0, 4)));
        assert!(!ipam.contains(Ipv4Addr::new(100, 96, 0, 7)));
    }
}
