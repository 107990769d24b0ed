//! Validation of advertised routes.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use meshgate_proto::Id;

/// Why a route is refused. Each message tells the user what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not `A.B.C.D/N`.
    #[error("invalid CIDR {0:?}: expected IPv4 network like 192.168.50.0/24")]
    Invalid(String),
    /// Host bits set.
    #[error("invalid CIDR {given}: host bits are set (did you mean {suggested}?)")]
    HostBits {
        /// As given.
        given: String,
        /// With host bits cleared.
        suggested: Ipv4Net,
    },
    /// Loopback, multicast, "this network", broadcast or the default route.
    #[error("{0} is a reserved range and cannot be routed through a node")]
    Reserved(Ipv4Net),
    /// Overlaps the mesh range.
    #[error("{net} overlaps the mesh range {mesh}")]
    InsideMesh {
        /// The route.
        net: Ipv4Net,
        /// The mesh range.
        mesh: Ipv4Net,
    },
    /// The node already advertises exactly this network.
    #[error("{0} is already advertised by this node")]
    Duplicate(Ipv4Net),
    /// Another node advertises an overlapping network.
    #[error("{net} overlaps {other} advertised by node {node}")]
    Overlaps {
        /// The route.
        net: Ipv4Net,
        /// The conflicting route.
        other: Ipv4Net,
        /// The node that advertises it.
        node: String,
    },
}

/// Parse a route strictly: IPv4, explicit prefix, host bits clear.
pub fn parse(s: &str) -> Result<Ipv4Net, RouteError> {
    let s = s.trim();
    if !s.contains('/') {
        return Err(RouteError::Invalid(s.to_owned()));
    }
    let net: Ipv4Net = s.parse().map_err(|_| RouteError::Invalid(s.to_owned()))?;
    if net.trunc() != net {
        return Err(RouteError::HostBits {
            given: s.to_owned(),
            suggested: net.trunc(),
        });
    }
    Ok(net)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

const RESERVED: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// An existing route, for overlap checks.
#[derive(Debug, Clone)]
pub struct Existing<'a> {
    /// The network.
    pub net: Ipv4Net,
    /// Its node.
    pub node: Id,
    /// The node's name, for the message.
    pub node_name: &'a str,
}

/// Check that `node` may advertise `net` given the mesh range and all existing routes.
pub fn validate(
    net: Ipv4Net,
    node: Id,
    mesh: Ipv4Net,
    existing: &[Existing<'_>],
) -> Result<(), RouteError> {
    if net.prefix_len() == 0
        || RESERVED.iter().any(|(a, l)| {
            // Constant prefixes above are valid.
            overlaps(&net, &Ipv4Net::new(*a, *l).expect("valid reserved prefix"))
        })
    {
        return Err(RouteError::Reserved(net));
    }
    if overlaps(&net, &mesh) {
        return Err(RouteError::InsideMesh { net, mesh });
    }
    for e in existing {
        if e.node == node {
            if e.net == net {
                return Err(RouteError::Duplicate(net));
            }
        } else if overlaps(&net, &e.net) {
            return Err(RouteError::Overlaps {
                net,
                other: e.net,
                node: e.node_name.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parse_is_strict() {
        assert_eq!(parse("192.168.50.0/24").unwrap(), n("192.168.50.0/24"));
        assert_eq!(parse(" 10.0.0.0/8 ").unwrap(), n("10.0.0.0/8"));
        assert!(
            matches!(parse("192.168.50.1/24"), Err(RouteError::HostBits { suggested, .. }) if suggested == n("192.168.50.0/24"))
        );
        for bad in [
            "",
            "192.168.50.0",
            "192.168.50.0/33",
            "fd00::/64",
            "banana/8",
            "1.2.3/24",
        ] {
            assert!(matches!(parse(bad), Err(RouteError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn validate_rules() {
        let mesh = n("100.96.0.0/12");
        let (a, b) = (Id([1; 16]), Id([2; 16]));
        let existing = [Existing {
            net: n("192.168.50.0/24"),
            node: a,
            node_name: "web",
        }];
        assert!(validate(n("10.0.0.0/8"), b, mesh, &existing).is_ok());
        assert!(validate(n("192.168.51.0/24"), a, mesh, &existing).is_ok());
        assert_eq!(
            validate(n("192.168.50.0/24"), a, mesh, &existing),
            Err(RouteError::Duplicate(n("192.168.50.0/24")))
        );
        assert!(matches!(
            validate(n("192.168.0.0/16"), b, mesh, &existing),
            Err(RouteError::Overlaps { .. })
        ));
        assert!(matches!(
            validate(n("192.168.50.128/25"), b, mesh, &existing),
            Err(RouteError::Overlaps { .. })
        ));
        assert!(matches!(
            validate(n("100.100.0.0/16"), b, mesh, &existing),
            Err(RouteError::InsideMesh { .. })
        ));
        assert!(matches!(
            validate(n("100.0.0.0/8"), b, mesh, &existing),
            Err(RouteError::InsideMesh { .. })
        ));
        assert!(matches!(
            validate(n("0.0.0.0/0"), b, mesh, &existing),
            Err(RouteError::Reserved(_))
        ));
        assert!(matches!(
            validate(n("127.0.0.0/24"), b, mesh, &existing),
            Err(RouteError::Reserved(_))
        ));
    }
}
