//! The watch cursor: which changes a watcher has delivered, as a state machine with no
//! I/O, so that resuming after a reconnect or a compaction neither loses nor repeats a
//! change.
//!
//! etcd numbers every change with a global revision, and one watch response never
//! splits the events of one revision. The cursor remembers the last revision it
//! delivered: after a reconnect the watch restarts at the next one and anything at or
//! below it (a repeat) is dropped. When the history the watch needs was compacted away,
//! the events are gone for good; the cursor then takes a fresh read of the whole range
//! and emits the difference from what it had seen (a put for each new or changed key, a
//! delete for each vanished one), so subscribers end in the same state as if they had
//! seen every event.

use std::collections::BTreeMap;

use crate::store::{KeyValue, WatchEvent};

/// What a watcher has seen: the last revision, and each live key's `mod_revision`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cursor {
    revision: u64,
    known: BTreeMap<String, u64>,
}

impl Cursor {
    /// A cursor that starts from a full read of the range (`kvs`) at `revision`,
    /// without emitting anything: what exists at the start is state, not change.
    pub fn from_snapshot(kvs: &[KeyValue], revision: u64) -> Self {
        Self {
            revision,
            known: kvs
                .iter()
                .map(|kv| (kv.key.clone(), kv.mod_revision))
                .collect(),
        }
    }

    /// The revision a (re)started watch must begin at.
    pub fn resume_from(&self) -> u64 {
        self.revision + 1
    }

    /// The last revision delivered.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Events from one watch response, in order; returns those not yet delivered.
    pub fn apply(&mut self, events: Vec<WatchEvent>) -> Vec<WatchEvent> {
        let seen = self.revision;
        let fresh: Vec<WatchEvent> = events
            .into_iter()
            .filter(|ev| event_revision(ev) > seen)
            .collect();
        for ev in &fresh {
            self.revision = self.revision.max(event_revision(ev));
            match ev {
                WatchEvent::Put(kv) => {
                    self.known.insert(kv.key.clone(), kv.mod_revision);
                }
                WatchEvent::Delete { key, .. } => {
                    self.known.remove(key);
                }
            }
        }
        fresh
    }

    /// After the history was compacted: a full read of the range (`kvs`, in any order)
    /// at `revision` replaces the events; returns the changes since the last delivery.
    pub fn resync(&mut self, kvs: Vec<KeyValue>, revision: u64) -> Vec<WatchEvent> {
        if revision <= self.revision {
            // An older read than what was delivered (a lagging member): nothing to learn.
            return Vec::new();
        }
        let mut now: BTreeMap<String, KeyValue> =
            kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        let changed: Vec<KeyValue> = std::mem::take(&mut now)
            .into_values()
            .filter(|kv| self.known.get(&kv.key) != Some(&kv.mod_revision))
            .collect();
        let mut out = Vec::with_capacity(gone.len() + changed.len());
        for kv in changed {
            self.known.insert(kv.key.clone(), kv.mod_revision);
            out.push(WatchEvent::Put(kv));
        }
        for key in gone {
            self.known.remove(&key);
            out.push(WatchEvent::Delete { key, revision });
        }
        // In revision order, as a watch would have delivered them (the sort is stable:
        // deletes, dated at the read, come after puts of the same revision).
        out.sort_by_key(event_revision);
        self.revision = revision;
        out
    }
}

fn event_revision(ev: &WatchEvent) -> u64 {
    match ev {
        WatchEvent::Put(kv) => kv.mod_revision,
        WatchEvent::Delete { revision, .. } => *revision,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn kv(key: &str, rev: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: rev.to_be_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease: None,
        }
    }

    fn put(key: &str, rev: u64) -> WatchEvent {
        WatchEvent::Put(kv(key, rev))
    }

    fn del(key: &str, rev: u64) -> WatchEvent {
        WatchEvent::Delete {
            key: key.into(),
            revision: rev,
        }
    }

    #[test]
    fn a_resumed_watch_repeats_nothing() {
        let mut c = Cursor::from_snapshot(&[kv("a", 3)], 5);
        assert_eq!(c.resume_from(), 6);
        assert_eq!(
            c.apply(vec![put("b", 6), put("c", 6)]),
            [put("b", 6), put("c", 6)]
        );
        // A reconnect that started one revision early delivers 6 again, then 7.
        assert_eq!(
            c.apply(vec![put("b", 6), put("c", 6), del("a", 7)]),
            [del("a", 7)]
        );
        assert_eq!(c.resume_from(), 8);
    }

    #[test]
    fn a_compaction_emits_exactly_the_difference() {
        let mut c = Cursor::from_snapshot(&[kv("a", 3), kv("b", 4), kv("c", 5)], 5);
        // Meanwhile (history lost): b changed at 7, c deleted at 8, d created at 9.
        let events = c.resync(vec![kv("d", 9), kv("a", 3), kv("b", 7)], 10);
        assert_eq!(events, [put("b", 7), put("d", 9), del("c", 10)]);
        assert_eq!(c.resume_from(), 11);
        // A second resync at the same state emits nothing.
        assert!(
            c.resync(vec![kv("d", 9), kv("a", 3), kv("b", 7)], 10)
                .is_empty()
        );
    }

    #[test]
    fn an_older_snapshot_changes_nothing() {
        let mut c = Cursor::from_snapshot(&[kv("a", 3)], 8);
        assert!(c.resync(vec![], 7).is_empty());
        assert_eq!(c.revision(), 8);
    }

    /// A store history as a list of (key index, put or delete) steps, one per revision.
    fn history() -> impl Strategy<Value = Vec<(u8, bool)>> {
        proptest::collection::vec((0u8..6, any::<bool>()), 1..60)
    }

    proptest! {
        /// However the history is cut into responses, repeated after reconnects or
        /// replaced by a compaction, the subscriber's view ends equal to the store.
        #[test]
        fn the_view_converges(steps in history(), cuts in proptest::collection::vec((0usize..60, 0u8..3), 0..8)) {
            let mut store: BTreeMap<String, KeyValue> = BTreeMap::new();
            let mut log: Vec<WatchEvent> = Vec::new();
            for (i, (k, is_put)) in steps.iter().enumerate() {
                let rev = i as u64 + 2;
                let key = format!("k{k}");
                if *is_put {
                    store.insert(key.clone(), kv(&key, rev));
                    log.push(put(&key, rev));
                } else if store.remove(&key).is_some() {
                    log.push(del(&key, rev));
                }
            }
            let mut cursor = Cursor::from_snapshot(&[], 1);
            let mut view: BTreeMap<String, u64> = BTreeMap::new();
            let deliver = |evs: Vec<WatchEvent>, view: &mut BTreeMap<String, u64>| {
                for ev in evs {
                    match ev {
                        WatchEvent::Put(kv) => { view.insert(kv.key, kv.mod_revision); }
                        WatchEvent::Delete { key, .. } => { view.remove(&key); }
                    }
                }
            };
            let mut pos = 0;
            for (at, what) in cuts {
                let at = at.min(log.len());
                if at <= pos { continue; }
                match what {
                    // A plain response.
                    0 => deliver(cursor.apply(log[pos..at].to_vec()), &mut view),
                    // A reconnect that replays from the start.
                    1 => deliver(cursor.apply(log[..at].to_vec()), &mut view),
                    // Compaction: only a snapshot of the store at that point.
                    _ => {
                        let mut snap: BTreeMap<String, KeyValue> = BTreeMap::new();
                        for ev in &log[..at] {
                            match ev {
                                WatchEvent::Put(kv) => { snap.insert(kv.key.clone(), kv.clone()); }
                                WatchEvent::Delete { key, .. } => { snap.remove(key); }
                            }
                        }
                        let rev = event_revision(&log[at - 1]);
                        deliver(cursor.resync(snap.into_values().collect(), rev), &mut view);
                    }
                }
                pos = at;
            }
            deliver(cursor.apply(log[pos..].to_vec()), &mut view);
            let expected: BTreeMap<String, u64> =
                store.values().map(|kv| (kv.key.clone(), kv.mod_revision)).collect();
            prop_assert_eq!(view, expected);
        }
    }
}
