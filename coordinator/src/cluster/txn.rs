//! Each [`ClusterOp`] as one etcd transaction, with exactly the guards of
//! [`crate::election::quorum`] (the simulation's model of etcd applies the same ones):
//!
//! * `Lapse`: if `elected/{node}` is `"{epoch} {active}"`, put this member's mark with
//!   its lease;
//! * `Retract`: if the record is still that, delete this member's mark;
//! * `Promote`: if the record is `from` (absent for `None`), `joined`'s mod revision is
//!   the one the decider read with its member list, and every listed member's mark of
//!   `from`'s epoch carries that member's lease: put the new record and delete every
//!   mark of `from`'s epoch.
//!
//! A compare of a value fails on an absent key; a compare of a mod or create revision
//! counts an absent key as revision 0 (etcd's rules), which is what `joined == 0` (no
//! member ever registered) and "no record" need.

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp};

use super::keys;
use crate::election::quorum::ClusterOp;
use crate::store::etcd::{never_sent, retrying};

fn rev(r: u64) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// The transaction for `op` of member `me`, on keys under `root`.
pub fn build(root: &str, me: &str, op: &ClusterOp) -> Txn {
    let k = |key: String| format!("{root}{key}");
    let is_record = |node, epoch, active: &str| {
        Compare::value(
            k(keys::elected(node)),
            CompareOp::Equal,
            keys::record(epoch, active),
        )
    };
    match op {
        ClusterOp::Lapse {
            node,
            epoch,
            active,
            lease,
        } => Txn::new()
            .when([is_record(*node, *epoch, active)])
            .and_then([TxnOp::put(
                k(keys::mark(*node, *epoch, me)),
                lease.to_string(),
                None,
            )]),
        ClusterOp::Retract {
            node,
            epoch,
            active,
        } => Txn::new()
            .when([is_record(*node, *epoch, active)])
            .and_then([TxnOp::delete(k(keys::mark(*node, *epoch, me)), None)]),
        ClusterOp::Promote {
            node,
            from,
            to,
            members,
            joined,
        } => {
            let mut when = vec![Compare::mod_revision(
                k(keys::JOINED.to_owned()),
                CompareOp::Equal,
                rev(*joined),
            )];
            let mut then = vec![TxnOp::put(
                k(keys::elected(*node)),
                keys::record(to.0, &to.1),
                None,
            )];
            match from {
                None => when.push(Compare::create_revision(
                    k(keys::elected(*node)),
                    CompareOp::Equal,
                    0,
                )),
                Some((epoch, active)) => {
                    when.push(is_record(*node, *epoch, active));
                    when.extend(members.iter().map(|(m, lease)| {
                        Compare::value(
                            k(keys::mark(*node, *epoch, m)),
                            CompareOp::Equal,
                            lease.to_string(),
                        )
                    }));
                    then.push(TxnOp::delete(
                        k(keys::marks(*node, *epoch)),
                        Some(DeleteOptions::new().with_prefix()),
                    ));
                }
            }
            Txn::new().when(when).and_then(then)
        }
    }
}

/// Runs `op`: `Some(true)` committed, `Some(false)` a compare failed, `None` unknown (an
/// error or the request timeout: it may have committed). Sent again only when it
/// certainly never reached etcd.
pub async fn run(client: Client, root: &str, me: &str, op: &ClusterOp) -> Option<bool> {
    let txn = build(root, me, op);
    let r = retrying(client, never_sent, move |mut c| {
        let txn = txn.clone();
        async move { c.txn(txn).await }
    })
    .await;
    match r {
        Ok(resp) => Some(resp.succeeded()),
        Err(e) => {
            tracing::warn!(error = %e, ?op, "election transaction failed; outcome unknown");
            None
        }
    }
}

#[cfg(test)]
#[path = "txn_tests.rs"]
mod tests;
