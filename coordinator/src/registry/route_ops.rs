//! Routes in the registry: adding one checks it against every other (overlaps) and the
//! documented caps, against an in-memory copy kept as of a store revision, so a table of
//! thousands costs one read, not one per addition.

use meshgate_proto::Id;

use super::{R, Registry, RegistryError, RouteRecord, json, now_rfc3339};
use crate::routes;
use crate::store::Op;

/// Routes one node may advertise.
pub const MAX_ROUTES_PER_NODE: usize = 16_384;
/// Routes the whole mesh may hold. Every agent receives the whole table (in bounded
/// parts) and installs it, so this bounds what one change costs each of them.
pub const MAX_ROUTES: usize = 65_536;

impl Registry {
    pub(super) fn bump_routes_version(&self) -> R<Vec<Op>> {
        let v = self.routes_version()? + 1;
        Ok(vec![Op::put("meta/routes_version", json(&v))])
    }

    /// Version of the route table; grows on every change.
    pub fn routes_version(&self) -> R<u64> {
        Ok(self.get("meta/routes_version")?.unwrap_or(0))
    }

    /// Every route as of now: the cached copy if the store has not moved since.
    fn routes_now(&self) -> R<(u64, Vec<RouteRecord>)> {
        let rev = self.store.revision()?;
        let mut cache = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, all)) = cache.as_ref()
            && *at == rev
        {
            return Ok((rev, all.clone()));
        }
        let all = self.all_routes()?;
        *cache = Some((rev, all.clone()));
        Ok((rev, all))
    }

    /// After our own write at `new_rev` (the store was at `old_rev` before): keep the
    /// cache if nothing else was written in between, else drop it.
    fn routes_written(
        &self,
        old_rev: u64,
        new_rev: Option<u64>,
        edit: impl FnOnce(&mut Vec<RouteRecord>),
    ) {
        let mut cache = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        match (cache.as_mut(), new_rev) {
            (Some((at, all)), Some(new)) if *at == old_rev && new == old_rev + 1 => {
                edit(all);
                *at = new;
            }
            _ => *cache = None,
        }
    }

    /// Drop the cached copy (after a write that is not one route).
    pub(super) fn forget_routes(&self) {
        *self.routes.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Advertise `network` through `node`.
    pub fn add_route(&self, node: Id, network: &str, comment: &str) -> R<RouteRecord> {
        let net = routes::parse(network)?;
        let _g = self.lock();
        self.node(node)?;
        let (rev, all) = self.routes_now()?;
        if all.len() >= MAX_ROUTES {
            return Err(RegistryError::Limit(format!(
                "the mesh already has {MAX_ROUTES} routes (the limit)"
            )));
        }
        if all.iter().filter(|r| r.node_id == node).count() >= MAX_ROUTES_PER_NODE {
            return Err(RegistryError::Limit(format!(
                "node {node} already advertises {MAX_ROUTES_PER_NODE} routes (the limit)"
            )));
        }
        let nodes = self.list_nodes()?;
        let names: std::collections::HashMap<Id, &str> =
            nodes.iter().map(|n| (n.id, n.name.as_str())).collect();
        let existing: Vec<routes::Existing<'_>> = all
            .iter()
            .map(|r| routes::Existing {
                net: r.network,
                node: r.node_id,
                node_name: names.get(&r.node_id).copied().unwrap_or("?"),
            })
            .collect();
        routes::validate(net, node, self.ipam.cidr(), &existing)?;
        let rec = RouteRecord {
            id: Id::random(),
            node_id: node,
            network: net,
            comment: comment.to_owned(),
            created_at: now_rfc3339(),
        };
        let mut ops = vec![Op::put(format!("routes/{node}/{}", rec.id), json(&rec))];
        ops.extend(self.bump_routes_version()?);
        let new_rev = self.store.txn(&[], &ops)?;
        self.routes_written(rev, new_rev, |all| all.push(rec.clone()));
        Ok(rec)
    }

    /// Routes of one node.
    pub fn routes_of(&self, node: Id) -> R<Vec<RouteRecord>> {
        self.node(node)?;
        self.list(&format!("routes/{node}/"))
    }

    /// Every route.
    pub fn all_routes(&self) -> R<Vec<RouteRecord>> {
        self.list("routes/")
    }

    /// Withdraw a route.
    pub fn delete_route(&self, node: Id, route: Id) -> R<RouteRecord> {
        let _g = self.lock();
        self.node(node)?;
        let key = format!("routes/{node}/{route}");
        let rec: RouteRecord = self
            .get(&key)?
            .ok_or_else(|| RegistryError::NotFound(format!("route {route}")))?;
        let rev = self.store.revision()?;
        let mut ops = vec![Op::Delete(key)];
        ops.extend(self.bump_routes_version()?);
        let new_rev = self.store.txn(&[], &ops)?;
        self.routes_written(rev, new_rev, |all| all.retain(|r| r.id != route));
        Ok(rec)
    }
}
