//! The cluster election's keys in etcd (under `{prefix}/cluster/`) and what their
//! changes mean to the core, with no I/O:
//!
//! * `members/{name}`: one per live member, on its etcd lease (the lease id is the
//!   member's registration, [`ClusterEvent::Members`]);
//! * `joined`: rewritten by every registration, in the same transaction, so that its
//!   mod revision changes whenever a member joins;
//! * `elected/{node}` = `"{epoch} {replica}"`: a node's epoch and active replica;
//! * `lapse/{node}/{epoch}/{member}` = `"{lease}"`: a member's lapse mark.
//!
//! [`View`] turns a consistent read of these keys and then each watch response into the
//! [`ClusterEvent`]s the core expects, ending each with [`ClusterEvent::Caught`].

use std::collections::BTreeMap;

use meshgate_proto::Id;

use crate::election::quorum::ClusterEvent;
use crate::store::{KeyValue, WatchEvent};

/// The key every registration rewrites.
pub const JOINED: &str = "joined";
const MEMBERS: &str = "members/";
const ELECTED: &str = "elected/";
const LAPSE: &str = "lapse/";

/// A member's key.
pub fn member(name: &str) -> String {
    format!("{MEMBERS}{name}")
}

/// A node's record.
pub fn elected(node: Id) -> String {
    format!("{ELECTED}{node}")
}

/// The record's value.
pub fn record(epoch: u64, active: &str) -> String {
    format!("{epoch} {active}")
}

/// Every mark of (`node`, `epoch`) lies under this prefix.
pub fn marks(node: Id, epoch: u64) -> String {
    format!("{LAPSE}{node}/{epoch}/")
}

/// A member's mark of (`node`, `epoch`).
pub fn mark(node: Id, epoch: u64, member: &str) -> String {
    format!("{}{member}", marks(node, epoch))
}

fn parse_record(value: &[u8]) -> Option<(u64, String)> {
    let (epoch, active) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    Some((epoch.parse().ok()?, active.to_owned()))
}

fn parse_mark(key: &str) -> Option<(Id, u64, String)> {
    let mut parts = key.strip_prefix(LAPSE)?.splitn(3, '/');
    let node = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    Some((node, epoch, parts.next()?.to_owned()))
}

/// The members and `joined` as the watch has shown them so far.
#[derive(Debug, Default)]
pub struct View {
    live: BTreeMap<String, u64>,
    joined: u64,
}

impl View {
    /// The state in a consistent read of every key at `revision`: the members, each
    /// node's record, then its marks (a mark is only meaningful after its record), and
    /// "caught up to `revision`".
    pub fn snapshot(kvs: &[KeyValue], revision: u64) -> (Self, Vec<ClusterEvent>) {
        let mut view = Self::default();
        let mut records = Vec::new();
        let mut marks = Vec::new();
        for kv in kvs {
            view.put(kv, &mut records, &mut marks);
        }
        let mut out = vec![view.members()];
        out.append(&mut records);
        out.append(&mut marks);
        out.push(ClusterEvent::Caught { revision });
        (view, out)
    }

    /// What one watch response (`events`, in revision order) means; everything up to
    /// `revision` has then been delivered.
    pub fn apply(&mut self, events: Vec<WatchEvent>, revision: u64) -> Vec<ClusterEvent> {
        let before = (self.live.clone(), self.joined);
        let mut out = Vec::new();
        let mut marks = Vec::new();
        for ev in events {
            match ev {
                WatchEvent::Put(kv) => {
                    self.put(&kv, &mut out, &mut marks);
                    out.append(&mut marks);
                }
                WatchEvent::Delete { key, .. } => {
                    if let Some(name) = key.strip_prefix(MEMBERS) {
                        self.live.remove(name);
                    } else if let Some((node, epoch, member)) = parse_mark(&key) {
                        out.push(ClusterEvent::Mark {
                            node,
                            epoch,
                            member,
                            lease: None,
                        });
                    }
                }
            }
        }
        if (&self.live, self.joined) != (&before.0, before.1) {
            out.push(self.members());
        }
        out.push(ClusterEvent::Caught { revision });
        out
    }

    fn put(
        &mut self,
        kv: &KeyValue,
        records: &mut Vec<ClusterEvent>,
        marks: &mut Vec<ClusterEvent>,
    ) {
        if let Some(name) = kv.key.strip_prefix(MEMBERS) {
            // A member key without a lease is not a live registration.
            if let Some(lease) = kv.lease {
                self.live.insert(name.to_owned(), lease);
            }
        } else if kv.key == JOINED {
            self.joined = kv.mod_revision;
        } else if let Some(node) = kv.key.strip_prefix(ELECTED) {
            match (node.parse(), parse_record(&kv.value)) {
                (Ok(node), Some((epoch, active))) => records.push(ClusterEvent::Elected {
                    node,
                    epoch,
                    active,
                }),
                _ => tracing::error!(key = kv.key, "corrupt election record; ignored"),
            }
        } else if let Some((node, epoch, member)) = parse_mark(&kv.key) {
            let lease = std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|v| v.parse().ok());
            match lease {
                Some(l) => marks.push(ClusterEvent::Mark {
                    node,
                    epoch,
                    member,
                    lease: Some(l),
                }),
                None => tracing::error!(key = kv.key, "corrupt lapse mark; ignored"),
            }
        }
    }

    fn members(&self) -> ClusterEvent {
        ClusterEvent::Members {
            live: self.live.clone(),
            joined: self.joined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Id = Id([3; 16]);

    fn kv(key: &str, value: &str, rev: u64, lease: Option<u64>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease,
        }
    }

    fn members(live: &[(&str, u64)], joined: u64) -> ClusterEvent {
        ClusterEvent::Members {
            live: live.iter().map(|(m, l)| ((*m).to_owned(), *l)).collect(),
            joined,
        }
    }

    #[test]
    fn a_snapshot_gives_members_records_then_marks_then_caught() {
        let kvs = [
            kv(&mark(NODE, 4, "c2"), "12", 9, None),
            kv(&member("c1"), "{}", 5, Some(11)),
            kv(&member("c2"), "{}", 6, Some(12)),
            kv(JOINED, "c2", 6, None),
            kv(&elected(NODE), &record(4, "r1"), 8, None),
            kv("known/c1", "{}", 5, None),
        ];
        let (_, evs) = View::snapshot(&kvs, 10);
        assert_eq!(
            evs,
            [
                members(&[("c1", 11), ("c2", 12)], 6),
                ClusterEvent::Elected {
                    node: NODE,
                    epoch: 4,
                    active: "r1".into()
                },
                ClusterEvent::Mark {
                    node: NODE,
                    epoch: 4,
                    member: "c2".into(),
                    lease: Some(12)
                },
                ClusterEvent::Caught { revision: 10 },
            ]
        );
    }

    #[test]
    fn watch_responses_say_what_changed() {
        let (mut v, _) = View::snapshot(&[kv(&member("c1"), "{}", 5, Some(11))], 5);
        // A registration: member key and `joined` in one revision.
        let evs = v.apply(
            vec![
                WatchEvent::Put(kv(&member("c2"), "{}", 7, Some(12))),
                WatchEvent::Put(kv(JOINED, "c2", 7, None)),
            ],
            7,
        );
        assert_eq!(
            evs,
            [
                members(&[("c1", 11), ("c2", 12)], 7),
                ClusterEvent::Caught { revision: 7 }
            ]
        );
        // A mark, then its deletion with a promotion; nothing about members.
        let evs = v.apply(
            vec![
                WatchEvent::Put(kv(&mark(NODE, 4, "c1"), "11", 8, None)),
                WatchEvent::Put(kv(&elected(NODE), &record(5, "r2"), 9, None)),
                WatchEvent::Delete {
                    key: mark(NODE, 4, "c1"),
                    revision: 9,
                },
            ],
            9,
        );
        assert_eq!(
            evs,
            [
                ClusterEvent::Mark {
                    node: NODE,
                    epoch: 4,
                    member: "c1".into(),
                    lease: Some(11)
                },
                ClusterEvent::Elected {
                    node: NODE,
                    epoch: 5,
                    active: "r2".into()
                },
                ClusterEvent::Mark {
                    node: NODE,
                    epoch: 4,
                    member: "c1".into(),
                    lease: None
                },
                ClusterEvent::Caught { revision: 9 },
            ]
        );
        // A member's key expired.
        let evs = v.apply(
            vec![WatchEvent::Delete {
                key: member("c1"),
                revision: 12,
            }],
            12,
        );
        assert_eq!(
            evs,
            [
                members(&[("c2", 12)], 7),
                ClusterEvent::Caught { revision: 12 }
            ]
        );
    }

    #[test]
    fn mark_keys_of_epoch_1_are_not_under_epoch_10s_prefix() {
        assert!(!mark(NODE, 1, "c1").starts_with(&marks(NODE, 10)));
        assert!(mark(NODE, 10, "c1").starts_with(&marks(NODE, 10)));
        assert_eq!(
            parse_mark(&mark(NODE, 10, "c1")),
            Some((NODE, 10, "c1".into()))
        );
    }
}
