//! Longest-prefix match over IPv4 prefixes, for the relay's destination table.
//!
//! Only `std` and `ipnet` here: the `relay` fuzz target compiles this file on its own
//! (see `fuzz/`) and checks every lookup against a linear scan.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Longest-prefix match over IPv4 prefixes: one hash map per prefix length present,
/// longest first. At most 33 probes, no allocation.
#[derive(Debug, Clone)]
pub struct Lpm<T> {
    by_len: Vec<(u8, HashMap<u32, T>)>,
}

impl<T> Default for Lpm<T> {
    fn default() -> Self {
        Self { by_len: Vec::new() }
    }
}

impl<T: Copy> Lpm<T> {
    /// Add a prefix.
    pub fn insert(&mut self, net: Ipv4Net, v: T) {
        let len = net.prefix_len();
        let key = u32::from(net.network());
        match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(i) => {
                self.by_len[i].1.insert(key, v);
            }
            Err(i) => self.by_len.insert(i, (len, HashMap::from([(key, v)]))),
        }
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<T> {
        let a = u32::from(ip);
        self.by_len.iter().find_map(|(len, m)| {
            let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
            m.get(&(a & mask)).copied()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_prefers_longest() {
        let mut l = Lpm::default();
        l.insert("10.0.0.0/8".parse().unwrap(), 1);
        l.insert("10.1.0.0/16".parse().unwrap(), 2);
        l.insert("10.1.2.3/32".parse().unwrap(), 3);
        assert_eq!(l.lookup([10, 9, 9, 9].into()), Some(1));
        assert_eq!(l.lookup([10, 1, 9, 9].into()), Some(2));
        assert_eq!(l.lookup([10, 1, 2, 3].into()), Some(3));
        assert_eq!(l.lookup([11, 0, 0, 0].into()), None);
        l.insert("0.0.0.0/0".parse().unwrap(), 0);
        assert_eq!(l.lookup([11, 0, 0, 0].into()), Some(0));
    }
}
