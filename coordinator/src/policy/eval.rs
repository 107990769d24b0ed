//! Which policy decides a packet, and why: the reference semantics. Compiled filters
//! ([`super::compile`]) must agree with it for every destination they cover, which the
//! property tests check.

use std::net::Ipv4Addr;

use meshgate_proto::FilterRule;

use super::model::{Action, Policy, Protocol, Settings};
use super::world::World;

/// A packet's first-packet facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port (TCP, UDP).
    pub port: Option<u16>,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The policy that matched first; `None` if the default action applies.
    pub policy: Option<&'a Policy>,
    /// What happens.
    pub action: Action,
}

fn proto_port_match(protocols: Option<&[Protocol]>, ports: &[(u16, u16)], p: &Packet) -> bool {
    if protocols.is_some_and(|ps| !ps.contains(&p.protocol)) {
        return false;
    }
    ports.is_empty()
        || (p.protocol.has_ports()
            && p.port
                .is_some_and(|port| ports.iter().any(|(a, b)| (*a..=*b).contains(&port))))
}

/// Whether `policy` matches `p` in `world`.
pub fn matches(world: &World, policy: &Policy, p: &Packet) -> bool {
    let ports: Vec<(u16, u16)> = policy.ports.iter().map(|r| (r.0, r.1)).collect();
    let protos = policy.effective_protocols();
    proto_port_match(protos.as_deref(), &ports, p)
        && world
            .resolve_all(&policy.sources)
            .iter()
            .any(|n| n.contains(&p.src))
        && world
            .resolve_all(&policy.destinations)
            .iter()
            .any(|n| n.contains(&p.dst))
}

/// The first policy (in precedence order) that matches, else the default.
pub fn decide<'a>(
    world: &World,
    sorted: &'a [Policy],
    settings: Settings,
    p: &Packet,
) -> Decision<'a> {
    match sorted.iter().find(|pol| matches(world, pol, p)) {
        Some(pol) => Decision {
            policy: Some(pol),
            action: pol.action,
        },
        None => Decision {
            policy: None,
            action: settings.default_action,
        },
    }
}

/// What a compiled filter does with `p`: the index of the first matching rule (`None`:
/// the default). Mirrors the nftables rendering in the agent.
pub fn first_rule(rules: &[FilterRule], p: &Packet) -> Option<usize> {
    let protocol = |n: u8| match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        1 => Some(Protocol::Icmp),
        _ => None,
    };
    rules.iter().position(|r| {
        let protos: Option<Vec<Protocol>> = (!r.protocols.is_empty())
            .then(|| r.protocols.iter().filter_map(|n| protocol(*n)).collect());
        proto_port_match(protos.as_deref(), &r.ports, p)
            && r.sources.iter().any(|n| n.contains(&p.src))
            && r.destinations.iter().any(|n| n.contains(&p.dst))
    })
}
