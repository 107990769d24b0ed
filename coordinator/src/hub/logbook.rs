//! Each node's recent replica log records: what its agents sent about themselves
//! (warnings, errors, role flips; [`meshgate_proto::logs`]), tagged with the replica id
//! and numbered, for `GET /api/v1/nodes/{id}/logs` and the console. No I/O; the caller
//! passes the clocks.
//!
//! Bounds, so an agent (which holds the node's token, but may be broken or hostile)
//! cannot blow the coordinator's memory or push its peers' records out:
//! * each replica has its own ring of at most [`PER_REPLICA`] lines, and a node keeps the
//!   rings of at most [`REPLICAS`] replicas (the registry's replica limit; beyond it the
//!   ring that was written to least recently goes);
//! * text is clipped to [`logs::MAX_TEXT`] bytes and the target to
//!   [`logs::MAX_TARGET`], so one node holds at most about 16 × 128 × 1.2 KiB ≈ 2.4 MiB;
//! * a replica may add [`RATE_PER_S`] lines a second on average (bursts of
//!   [`PER_REPLICA`]); what it sends beyond that, and what its agent reports it dropped,
//!   becomes one "lost" line once it may write again.
//!
//! Every line gets a sequence number from one counter, so numbers grow in the order of
//! arrival across all replicas and nodes; `since` in a query is such a number.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use meshgate_proto::logs::{self, LogBatch, LogLevel};
use meshgate_proto::{Id, LogRecord};

/// Lines kept per replica.
pub const PER_REPLICA: usize = 128;
/// Replica rings kept per node (the registry refuses a 17th replica id).
pub const REPLICAS: usize = 16;
/// Lines a replica may add per second on average; agents send at most
/// `MAX_BATCH_RECORDS` every `BATCH_EVERY_MS` (64 a second).
pub const RATE_PER_S: f64 = 64.0;
/// The target of the lines the coordinator writes itself (records lost on the way).
pub const LOST_TARGET: &str = "meshgate_coordinator::logs";

/// One kept record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Where it falls in the order of arrival (see the module docs).
    pub seq: u64,
    /// The replica that sent it.
    pub replica: String,
    /// When the agent logged it (its clock), microseconds since the Unix epoch.
    pub at_unix_us: u64,
    /// When the coordinator received it, microseconds since the Unix epoch.
    pub received_unix_us: u64,
    /// Severity.
    pub level: LogLevel,
    /// The emitting module.
    pub target: String,
    /// The text, at most [`logs::MAX_TEXT`] bytes.
    pub text: String,
}

/// What a query asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    /// Only this replica's lines.
    pub replica: Option<&'a str>,
    /// Only lines with a greater sequence number.
    pub since: Option<u64>,
    /// At most this many lines (the newest).
    pub limit: usize,
}

struct Ring {
    lines: VecDeque<Line>,
    /// Token bucket: lines it may still add now, refilled at [`RATE_PER_S`].
    tokens: f64,
    refilled: Instant,
    /// Records lost since the last line written (agent queue full, or over the rate).
    lost: u64,
    /// Sequence number of the newest write, to find the least recently used ring.
    touched: u64,
}

impl Ring {
    fn new(now: Instant) -> Self {
        Self {
            lines: VecDeque::new(),
            tokens: PER_REPLICA as f64,
            refilled: now,
            lost: 0,
            touched: 0,
        }
    }

    fn take(&mut self) -> bool {
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }

    fn push(&mut self, line: Line) {
        if self.lines.len() == PER_REPLICA {
            self.lines.pop_front();
        }
        self.touched = line.seq;
        self.lines.push_back(line);
    }
}

/// Every node's recent replica log lines.
#[derive(Default)]
pub struct LogBook {
    nodes: HashMap<Id, BTreeMap<String, Ring>>,
    next_seq: u64,
}

impl LogBook {
    /// Keeps what `replica` of `node` sent, within the bounds; returns how many lines
    /// were added (a "lost" line included).
    pub fn ingest(
        &mut self,
        now: Instant,
        now_unix_us: u64,
        node: Id,
        replica: &str,
        batch: LogBatch,
    ) -> usize {
        let rings = self.nodes.entry(node).or_default();
        if !rings.contains_key(replica) && rings.len() >= REPLICAS {
            let stalest = rings
                .iter()
                .min_by_key(|(_, r)| r.touched)
                .map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                rings.remove(&k);
            }
        }
        let ring = rings
            .entry(replica.to_owned())
            .or_insert_with(|| Ring::new(now));
        let elapsed = now.saturating_duration_since(ring.refilled).as_secs_f64();
        ring.tokens = (ring.tokens + elapsed * RATE_PER_S).min(PER_REPLICA as f64);
        ring.refilled = now;
        let oversized = batch.records.len().saturating_sub(logs::MAX_BATCH_RECORDS);
        ring.lost = ring
            .lost
            .saturating_add(batch.dropped)
            .saturating_add(oversized as u64);
        let mut added = 0;
        let mut line = |ring: &mut Ring, r: LogRecord| {
            self.next_seq += 1;
            ring.push(Line {
                seq: self.next_seq,
                replica: replica.to_owned(),
                at_unix_us: r.at_unix_us,
                received_unix_us: now_unix_us,
                level: r.level,
                target: logs::clip(&r.target, logs::MAX_TARGET),
                text: logs::clip(&r.text, logs::MAX_TEXT),
            });
            added += 1;
        };
        let records = batch.records.into_iter().take(logs::MAX_BATCH_RECORDS);
        for r in records.map(Some).chain([None]) {
            if ring.lost > 0 && ring.take() {
                let lost = LogRecord {
                    at_unix_us: now_unix_us,
                    level: LogLevel::Warn,
                    target: LOST_TARGET.to_owned(),
                    text: format!(
                        "{} earlier records of this replica were lost (its agent's queue was \
                         full, or it sent more than {RATE_PER_S} a second)",
                        std::mem::take(&mut ring.lost)
                    ),
                };
                line(ring, lost);
            }
            let Some(r) = r else { break };
            if ring.take() {
                line(ring, r);
            } else {
                ring.lost = ring.lost.saturating_add(1);
            }
        }
        added
    }

    /// A node's lines that match `q`, oldest first (newest last).
    pub fn query(&self, node: Id, q: Query<'_>) -> Vec<Line> {
        let Some(rings) = self.nodes.get(&node) else {
            return Vec::new();
        };
        let since = q.since.unwrap_or(0);
        let mut out: Vec<Line> = rings
            .iter()
            .filter(|(replica, _)| q.replica.is_none_or(|want| want == replica.as_str()))
            .flat_map(|(_, ring)| ring.lines.iter().filter(|l| l.seq > since).cloned())
            .collect();
        out.sort_unstable_by_key(|l| l.seq);
        let skip = out.len().saturating_sub(q.limit);
        out.drain(..skip);
        out
    }

    /// Forgets a deleted node.
    pub fn forget(&mut self, node: Id) {
        self.nodes.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NODE: Id = Id([7; 16]);

    fn rec(text: &str) -> LogRecord {
        LogRecord {
            at_unix_us: 1,
            level: LogLevel::Warn,
            target: "meshgate_agent::flip".into(),
            text: text.into(),
        }
    }

    fn batch(texts: &[&str]) -> LogBatch {
        LogBatch {
            records: texts.iter().map(|t| rec(t)).collect(),
            dropped: 0,
        }
    }

    fn all(replica: Option<&str>, since: Option<u64>) -> Query<'_> {
        Query {
            replica,
            since,
            limit: usize::MAX,
        }
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_are_tagged_numbered_and_filtered_by_replica_and_since() {
        let t = Instant::now();
        let mut book = LogBook::default();
        assert_eq!(book.ingest(t, 10, NODE, "a", batch(&["a1", "a2"])), 2);
        book.ingest(t, 11, NODE, "b", batch(&["b1"]));
        book.ingest(t, 12, NODE, "a", batch(&["a3"]));
        let every = book.query(NODE, all(None, None));
        assert_eq!(texts(&every), ["a1", "a2", "b1", "a3"]);
        assert!(every.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(every[2].replica, "b");
        assert_eq!(every[2].received_unix_us, 11);
        assert_eq!(
            texts(&book.query(NODE, all(Some("a"), None))),
            ["a1", "a2", "a3"]
        );
        assert_eq!(texts(&book.query(NODE, all(Some("b"), None))), ["b1"]);
        assert!(book.query(NODE, all(Some("c"), None)).is_empty());
        let since = every[1].seq;
        assert_eq!(
            texts(&book.query(NODE, all(None, Some(since)))),
            ["b1", "a3"]
        );
        let newest = Query {
            limit: 2,
            ..all(None, None)
        };
        assert_eq!(texts(&book.query(NODE, newest)), ["b1", "a3"]);
        assert!(book.query(Id([8; 16]), all(None, None)).is_empty());
        book.forget(NODE);
        assert!(book.query(NODE, all(None, None)).is_empty());
    }

    #[test]
    fn each_replica_keeps_its_newest_lines_and_a_noisy_one_cannot_evict_its_peer() {
        let mut t = Instant::now();
        let mut book = LogBook::default();
        book.ingest(t, 0, NODE, "quiet", batch(&["flip applied"]));
        for i in 0..100 {
            t += Duration::from_secs(1);
            let texts: Vec<String> = (0..32).map(|j| format!("{i}/{j}")).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            book.ingest(t, 0, NODE, "noisy", batch(&refs));
        }
        let noisy = book.query(NODE, all(Some("noisy"), None));
        assert_eq!(noisy.len(), PER_REPLICA);
        assert_eq!(noisy.last().map(|l| l.text.as_str()), Some("99/31"));
        assert_eq!(
            texts(&book.query(NODE, all(Some("quiet"), None))),
            ["flip applied"]
        );
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_and_the_loss_is_said_once() {
        let t = Instant::now();
        let mut book = LogBook::default();
        // A burst the size of the ring passes, then the bucket is empty.
        for _ in 0..(PER_REPLICA / 32) {
            book.ingest(t, 0, NODE, "a", batch(&["x"; 32]));
        }
        assert_eq!(book.ingest(t, 0, NODE, "a", batch(&["over"; 32])), 0);
        // One second later RATE_PER_S tokens are back: the loss notice first.
        let t = t + Duration::from_secs(1);
        let added = book.ingest(t, 5, NODE, "a", batch(&["back"]));
        assert_eq!(added, 2);
        let lines = book.query(NODE, all(None, None));
        let lost = &lines[lines.len() - 2];
        assert_eq!(lost.target, LOST_TARGET);
        assert!(lost.text.starts_with("32 earlier records"), "{}", lost.text);
        assert_eq!(lines[lines.len() - 1].text, "back");
    }

    #[test]
    fn what_the_agent_dropped_and_oversized_batches_are_reported() {
        let t = Instant::now();
        let mut book = LogBook::default();
        let mut b = batch(&["y"; logs::MAX_BATCH_RECORDS + 3]);
        b.dropped = 4;
        // The loss notice takes one line of the batch; the 3 over the batch limit and
        // the 4 the agent dropped are counted in it.
        assert_eq!(book.ingest(t, 0, NODE, "a", b), logs::MAX_BATCH_RECORDS + 1);
        let lines = book.query(NODE, all(None, None));
        assert!(
            lines[0].text.starts_with("7 earlier records"),
            "{}",
            lines[0].text
        );
    }

    #[test]
    fn hostile_text_is_clipped_and_replicas_per_node_are_bounded() {
        let t = Instant::now();
        let mut book = LogBook::default();
        let mut huge = rec(&"z".repeat(1 << 20));
        huge.target = "t".repeat(1 << 16);
        let b = LogBatch {
            records: vec![huge],
            dropped: 0,
        };
        book.ingest(t, 0, NODE, "a", b);
        let l = &book.query(NODE, all(None, None))[0];
        assert!(l.text.len() <= logs::MAX_TEXT);
        assert!(l.target.len() <= logs::MAX_TARGET);
        for i in 0..(REPLICAS + 5) {
            book.ingest(t, 0, NODE, &format!("r{i}"), batch(&["hi"]));
        }
        let replicas: std::collections::BTreeSet<String> = book
            .query(NODE, all(None, None))
            .into_iter()
            .map(|l| l.replica)
            .collect();
        assert_eq!(replicas.len(), REPLICAS);
        assert!(replicas.contains(&format!("r{}", REPLICAS + 4)));
        assert!(
            !replicas.contains("a"),
            "the least recently written ring goes first"
        );
    }
}
