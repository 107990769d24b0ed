//! The durability gate: a control message that carries a node's epoch leaves only once
//! that epoch is on disk.
//!
//! Why: an agent keeps the highest epoch it was told and ignores anything older. If a
//! coordinator announced epoch `E` and crashed before `E` reached the store, its next run
//! would hand out `E` again — to another replica — and two replicas would believe they
//! hold the same lease. So every message with an epoch above the node's durable epoch
//! waits here, the epoch is handed to the store writer ([`super::Output::PersistEpochs`]),
//! and [`super::Input::EpochsDurable`] releases the messages, in the order they were made.
//! Once one message of a node waits, every later message of that node waits behind it, so
//! nobody receives a grant before the promotion it belongs to.

use std::collections::{HashMap, VecDeque};

use meshgate_proto::{CoordMsg, Id};

use super::{Output, SessionId};

/// The epoch a message carries, if any.
fn epoch_of(msg: &CoordMsg) -> Option<u64> {
    match msg {
        CoordMsg::Welcome(w) => Some(w.epoch),
        CoordMsg::LeaseGrant { epoch, .. }
        | CoordMsg::RoleChange { epoch, .. }
        | CoordMsg::HandoverDone { epoch } => Some(*epoch),
        _ => None,
    }
}

#[derive(Default)]
struct Node {
    durable: u64,
    requested: u64,
    held: VecDeque<(SessionId, CoordMsg)>,
}

/// Durable and requested epochs per node, and the messages waiting for them.
#[derive(Default)]
pub(super) struct Gate {
    nodes: HashMap<Id, Node>,
}

impl Gate {
    /// `epoch` is known to be on disk for `node` (read at registration).
    pub(super) fn known(&mut self, node: Id, epoch: u64) {
        let n = self.nodes.entry(node).or_default();
        n.durable = n.durable.max(epoch);
        n.requested = n.requested.max(epoch);
    }

    /// Asks for `epoch` to be persisted (once).
    pub(super) fn request(&mut self, node: Id, epoch: u64, persist: &mut Vec<(Id, u64)>) {
        let n = self.nodes.entry(node).or_default();
        if epoch > n.requested {
            n.requested = epoch;
            persist.push((node, epoch));
        }
    }

    /// Sends `msg` now if its epoch is durable and nothing of the node waits; else holds it.
    pub(super) fn send(
        &mut self,
        node: Id,
        session: SessionId,
        msg: CoordMsg,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
    ) {
        let epoch = epoch_of(&msg).unwrap_or(0);
        self.request(node, epoch, persist);
        let n = self.nodes.entry(node).or_default();
        if n.held.is_empty() && epoch <= n.durable {
            out.push(Output::Send { session, msg });
        } else {
            n.held.push_back((session, msg));
        }
    }

    /// `epoch` reached the disk: release what waited for it, in order.
    pub(super) fn durable(&mut self, node: Id, epoch: u64, out: &mut Vec<Output>) {
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        n.durable = n.durable.max(epoch);
        while let Some((_, msg)) = n.held.front() {
            if epoch_of(msg).unwrap_or(0) > n.durable {
                break;
            }
            let (session, msg) = n.held.pop_front().expect("front exists: checked above");
            out.push(Output::Send { session, msg });
        }
    }

    /// The node's epoch on disk as far as this gate knows.
    pub(super) fn durable_epoch(&self, node: Id) -> u64 {
        self.nodes.get(&node).map_or(0, |n| n.durable)
    }

    /// A failed write: ask again for everything not yet durable.
    pub(super) fn retry(&mut self, failed: &[(Id, u64)], persist: &mut Vec<(Id, u64)>) {
        for (node, epoch) in failed {
            if let Some(n) = self.nodes.get(node)
                && n.durable < *epoch
            {
                persist.push((*node, n.requested));
            }
        }
    }

    /// A deleted node.
    pub(super) fn forget(&mut self, node: Id) {
        self.nodes.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(epoch: u64) -> CoordMsg {
        CoordMsg::LeaseGrant {
            epoch,
            valid_for_ms: 250,
            seq: 1,
        }
    }

    #[test]
    fn holds_until_durable_and_keeps_order() {
        let mut g = Gate::default();
        let node = Id([1; 16]);
        g.known(node, 3);
        let (mut out, mut persist) = (Vec::new(), Vec::new());
        g.send(node, 1, grant(3), &mut out, &mut persist);
        assert_eq!(out.len(), 1, "epoch 3 is durable: sent at once");
        g.send(node, 1, grant(4), &mut out, &mut persist);
        g.send(node, 2, grant(3), &mut out, &mut persist);
        assert_eq!(out.len(), 1, "held, and what follows waits behind it");
        assert_eq!(persist, vec![(node, 4)]);
        g.durable(node, 4, &mut out);
        let sent: Vec<_> = out
            .iter()
            .map(|o| match o {
                Output::Send { session, msg } => (*session, epoch_of(msg)),
                _ => unreachable!("only sends"),
            })
            .collect();
        assert_eq!(sent, vec![(1, Some(3)), (1, Some(4)), (2, Some(3))]);
    }
}
