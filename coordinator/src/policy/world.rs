//! What policy endpoints resolve to: a snapshot of devices and nodes with their
//! addresses and tags, taken from the registry whenever something changes.

use std::collections::HashMap;

use ipnet::Ipv4Net;
use meshgate_proto::Id;

use super::model::Endpoint;
use crate::registry::{Registry, RegistryError, ReplicaRecord};

/// A device or node as policies see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Member {
    /// Its Mesh IPs (one per replica for a node) as /32s, then a node's routes.
    pub nets: Vec<Ipv4Net>,
    /// Its tags.
    pub tags: Vec<String>,
}

/// Devices and nodes by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// Devices.
    pub devices: HashMap<Id, Member>,
    /// Nodes.
    pub nodes: HashMap<Id, Member>,
}

impl World {
    /// Reads devices, nodes, replicas and routes from the registry.
    pub fn load(reg: &Registry) -> Result<Self, RegistryError> {
        let mut w = World::default();
        for d in reg.list_devices()? {
            w.devices.insert(
                d.id,
                Member {
                    nets: vec![Ipv4Net::from(d.mesh_ip)],
                    tags: d.tags,
                },
            );
        }
        let mut nodes: HashMap<Id, Member> = reg
            .list_nodes()?
            .into_iter()
            .map(|n| {
                (
                    n.id,
                    Member {
                        nets: Vec::new(),
                        tags: n.tags,
                    },
                )
            })
            .collect();
        for (id, m) in nodes.iter_mut() {
            m.nets
                .extend(reg.replicas(*id)?.iter().map(|r| Ipv4Net::from(r.mesh_ip)));
        }
        for r in reg.all_routes()? {
            if let Some(m) = nodes.get_mut(&r.node_id) {
                m.nets.push(r.network);
            }
        }
        w.nodes = nodes;
        Ok(w)
    }

    /// The networks an endpoint stands for. A reference to a device or node that no
    /// longer exists stands for nothing, so it can never widen a policy.
    pub fn resolve(&self, e: &Endpoint) -> Vec<Ipv4Net> {
        match e {
            Endpoint::Any => vec![Ipv4Net::default()],
            Endpoint::Cidr(n) => vec![*n],
            Endpoint::Device(id) => self
                .devices
                .get(id)
                .map(|m| m.nets.clone())
                .unwrap_or_default(),
            Endpoint::Node(id) => self
                .nodes
                .get(id)
                .map(|m| m.nets.clone())
                .unwrap_or_default(),
            Endpoint::Tag(t) => {
                let mut out: Vec<Ipv4Net> = self
                    .devices
                    .values()
                    .chain(self.nodes.values())
                    .filter(|m| m.tags.contains(t))
                    .flat_map(|m| m.nets.iter().copied())
                    .collect();
                out.sort();
                out.dedup();
                out
            }
        }
    }

    /// The union of several endpoints, sorted, without duplicates.
    pub fn resolve_all(&self, es: &[Endpoint]) -> Vec<Ipv4Net> {
        let mut out: Vec<Ipv4Net> = es.iter().flat_map(|e| self.resolve(e)).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether this snapshot already holds what a stored replica record says: its node
    /// has its address. A registration that only refreshes the record's `seen_at` changes
    /// no filter.
    pub fn knows_replica(&self, r: &ReplicaRecord) -> bool {
        self.nodes
            .get(&r.node_id)
            .is_some_and(|m| m.nets.contains(&Ipv4Net::from(r.mesh_ip)))
    }

    /// What a device or node receives from the tunnel, and so what its agent filters.
    pub fn local(&self, id: &Id) -> &[Ipv4Net] {
        self.devices
            .get(id)
            .or_else(|| self.nodes.get(id))
            .map_or(&[], |m| &m.nets)
    }
}

/// The networks in both `a` and `b` (two prefixes either nest or do not meet).
pub fn intersect(a: &[Ipv4Net], b: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x.contains(y) {
                out.push(*y);
            } else if y.contains(x) {
                out.push(*x);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn intersection_keeps_the_narrower_prefix() {
        assert_eq!(
            intersect(&[n("10.0.0.0/8")], &[n("10.1.0.0/16"), n("11.0.0.0/8")]),
            vec![n("10.1.0.0/16")]
        );
        assert_eq!(
            intersect(&[n("0.0.0.0/0")], &[n("1.2.3.4/32")]),
            vec![n("1.2.3.4/32")]
        );
        assert!(intersect(&[n("10.0.0.0/24")], &[n("10.0.1.0/24")]).is_empty());
    }

    #[test]
    fn deleted_references_resolve_to_nothing() {
        let mut w = World::default();
        let d = Id([1; 16]);
        w.devices.insert(
            d,
            Member {
                nets: vec![n("100.96.0.2/32")],
                tags: vec!["ops".into()],
            },
        );
        assert_eq!(w.resolve(&Endpoint::Device(d)), vec![n("100.96.0.2/32")]);
        assert_eq!(
            w.resolve(&Endpoint::Tag("ops".into())),
            vec![n("100.96.0.2/32")]
        );
        assert!(w.resolve(&Endpoint::Device(Id([2; 16]))).is_empty());
        assert!(w.resolve(&Endpoint::Tag("nobody".into())).is_empty());
    }
}
