//! Replacing a node's whole route list in one call: what a gateway with thousands of
//! routes, or a configuration tool, needs instead of one API call (and one durable
//! write) per route.

use std::collections::{HashMap, HashSet};

use ipnet::Ipv4Net;
use meshgate_proto::Id;

use super::route_ops::{MAX_ROUTES, MAX_ROUTES_PER_NODE};
use super::{R, Registry, RegistryError, RouteRecord, json, now_rfc3339};
use crate::routes::{self, RouteError};
use crate::store::Op;

impl Registry {
    /// Make `node` advertise exactly `wanted` (network, comment): routes already there
    /// keep their ids, the others are withdrawn, the new ones added. Everything is
    /// checked before anything is written, and the change is one transaction where the
    /// store allows that many operations (on etcd, above its transaction limit, several
    /// in a row: a retry of the same list finishes an interrupted one). Returns the
    /// node's routes afterwards.
    pub fn set_routes(&self, node: Id, wanted: &[(String, String)]) -> R<Vec<RouteRecord>> {
        let _g = self.lock();
        self.node(node)?;
        if wanted.len() > MAX_ROUTES_PER_NODE {
            return Err(RegistryError::Limit(format!(
                "{} routes for one node; the limit is {MAX_ROUTES_PER_NODE}",
                wanted.len()
            )));
        }
        let mut nets = Vec::with_capacity(wanted.len());
        let mut seen = HashSet::with_capacity(wanted.len());
        for (network, comment) in wanted {
            let net = routes::parse(network)?;
            if !seen.insert(net) {
                return Err(RouteError::Duplicate(net).into());
            }
            nets.push((net, comment.as_str()));
        }
        let all = self.all_routes()?;
        let (mine, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.node_id == node);
        if others.len() + nets.len() > MAX_ROUTES {
            return Err(RegistryError::Limit(format!(
                "the mesh would hold {} routes; the limit is {MAX_ROUTES}",
                others.len() + nets.len()
            )));
        }
        let names: HashMap<Id, String> = self
            .list_nodes()?
            .into_iter()
            .map(|n| (n.id, n.name))
            .collect();
        let existing: Vec<routes::Existing<'_>> = others
            .iter()
            .map(|r| routes::Existing {
                net: r.network,
                node: r.node_id,
                node_name: names.get(&r.node_id).map_or("?", String::as_str),
            })
            .collect();
        for (net, _) in &nets {
            routes::validate(*net, node, self.ipam.cidr(), &existing)?;
        }

        let (ops, after) = diff(node, &mine, &nets);
        if !ops.is_empty() {
            let chunk = self.store.max_txn_ops().saturating_sub(1).max(1);
            for part in ops.chunks(chunk) {
                let mut txn = part.to_vec();
                txn.extend(self.bump_routes_version()?);
                self.store.txn(&[], &txn)?;
            }
            self.forget_routes();
        }
        Ok(after)
    }
}

/// The writes that turn `mine` into `wanted`, and the node's routes afterwards.
fn diff(node: Id, mine: &[RouteRecord], wanted: &[(Ipv4Net, &str)]) -> (Vec<Op>, Vec<RouteRecord>) {
    let by_net: HashMap<Ipv4Net, &RouteRecord> = mine.iter().map(|r| (r.network, r)).collect();
    let keep: HashSet<Ipv4Net> = wanted.iter().map(|(n, _)| *n).collect();
    let mut ops: Vec<Op> = mine
        .iter()
        .filter(|r| !keep.contains(&r.network))
        .map(|r| Op::Delete(format!("routes/{node}/{}", r.id)))
        .collect();
    let mut after = Vec::with_capacity(wanted.len());
    for (net, comment) in wanted {
        let rec = match by_net.get(net) {
            Some(old) if old.comment == *comment => (*old).clone(),
            old => RouteRecord {
                id: old.map_or_else(Id::random, |o| o.id),
                node_id: node,
                network: *net,
                comment: (*comment).to_owned(),
                created_at: old.map_or_else(now_rfc3339, |o| o.created_at.clone()),
            },
        };
        if by_net.get(net).is_none_or(|old| old.comment != rec.comment) {
            ops.push(Op::put(format!("routes/{node}/{}", rec.id), json(&rec)));
        }
        after.push(rec);
    }
    (ops, after)
}
