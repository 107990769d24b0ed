//! Sends the agent's own warnings, errors and role flips to the coordinators, so an
//! operator reads every replica of a node in one place (`GET /api/v1/nodes/{id}/logs`,
//! the console) instead of each host's journal.
//!
//! [`ShipLayer`] is a tracing layer: every event at `WARN` or above, and every event of
//! [`FLIP_TARGET`] (the failover steps the agent applied, handover requests), becomes a
//! [`LogRecord`] pushed into a bounded queue with `try_send`. Logging never waits: when
//! the queue is full the record is dropped and counted, and the next batch says how many
//! were lost. The runtime takes [`Outbox::next_batch`] every
//! [`meshgate_proto::logs::BATCH_EVERY_MS`] and sends it on its coordinator sessions;
//! records logged while no session is up wait in the queue.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use meshgate_proto::logs::{self, LogBatch, LogLevel, LogRecord};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::Context;

/// The tracing target of flip records: role changes and the failover steps the agent
/// performs. Events of this target are shipped at every level.
pub const FLIP_TARGET: &str = "meshgate_agent::flip";

/// Records waiting for a session: eight batches, four seconds at the most the runtime
/// sends; enough for a reconnect, small enough to never matter for memory (≤ ~300 KiB).
const QUEUE: usize = 8 * logs::MAX_BATCH_RECORDS;

/// A shipping layer and the outbox its records land in.
pub fn channel() -> (ShipLayer, Outbox) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let layer = ShipLayer {
        tx,
        dropped: dropped.clone(),
    };
    (layer, Outbox { rx, dropped })
}

/// Whether an event is shipped: warnings, errors and flip records.
pub fn wanted(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::WARN || meta.target() == FLIP_TARGET
}

/// [`wanted`] as a function pointer, the filter's type.
pub type WantedFn = fn(&Metadata<'_>) -> bool;

/// The tracing layer (see the module docs). Install it with [`ShipLayer::filtered`], so
/// its own filter decides what it sees whatever `MESHGATE_LOG` says for stderr.
pub struct ShipLayer {
    tx: mpsc::Sender<LogRecord>,
    dropped: Arc<AtomicU64>,
}

impl ShipLayer {
    /// The layer behind its per-layer filter ([`wanted`]).
    pub fn filtered<S>(self) -> Filtered<Self, FilterFn<WantedFn>, S>
    where
        S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        self.with_filter(FilterFn::new(wanted as WantedFn))
    }
}

impl<S: Subscriber> Layer<S> for ShipLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = match *meta.level() {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            _ => LogLevel::Info,
        };
        let mut text = Text::default();
        event.record(&mut text);
        let record = LogRecord {
            at_unix_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            level,
            target: logs::clip(meta.target(), logs::MAX_TARGET),
            text: logs::clip(&text.finish(), logs::MAX_TEXT),
        };
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// An event's message and fields as one line, `message key=value …` (like the stderr
/// log). Stops growing well past the clip length, so a huge field costs no more.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn finish(self) -> String {
        let mut out = self.message;
        out.push_str(&self.fields);
        out
    }

    fn full(&self) -> bool {
        self.message.len() + self.fields.len() > 2 * logs::MAX_TEXT
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.full() {
            return;
        }
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.full() {
            return;
        }
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// Where the layer's records wait for the runtime to send them.
pub struct Outbox {
    rx: mpsc::Receiver<LogRecord>,
    dropped: Arc<AtomicU64>,
}

impl Outbox {
    /// The oldest waiting records, at most [`logs::MAX_BATCH_RECORDS`], with how many
    /// were dropped since the previous batch; `None` when there is nothing to say.
    pub fn next_batch(&mut self) -> Option<LogBatch> {
        let mut records = Vec::new();
        while records.len() < logs::MAX_BATCH_RECORDS {
            match self.rx.try_recv() {
                Ok(r) => records.push(r),
                Err(_) => break,
            }
        }
        let dropped = self.dropped.swap(0, Relaxed);
        (!records.is_empty() || dropped > 0).then_some(LogBatch { records, dropped })
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    fn logged(f: impl FnOnce()) -> Outbox {
        let (layer, outbox) = channel();
        let subscriber = tracing_subscriber::registry().with(layer.filtered());
        tracing::subscriber::with_default(subscriber, f);
        outbox
    }

    #[test]
    fn warnings_errors_and_flips_are_shipped_with_their_fields_and_nothing_else() {
        let mut out = logged(|| {
            tracing::info!("routine");
            tracing::debug!("chatter");
            tracing::warn!(
                coordinator = "10.99.0.1:7443",
                attempt = 3,
                "cannot reach the coordinator"
            );
            tracing::info!(target: FLIP_TARGET, epoch = 4, to = ?meshgate_proto::Role::Active, "flip applied");
            tracing::error!(error = %"boom", "failed");
        });
        let batch = out.next_batch().expect("three records");
        assert_eq!(batch.dropped, 0);
        let got: Vec<(LogLevel, &str, &str)> = batch
            .records
            .iter()
            .map(|r| (r.level, r.target.as_str(), r.text.as_str()))
            .collect();
        let me = module_path!();
        assert_eq!(
            got,
            [
                (
                    LogLevel::Warn,
                    me,
                    "cannot reach the coordinator coordinator=10.99.0.1:7443 attempt=3"
                ),
                (
                    LogLevel::Info,
                    FLIP_TARGET,
                    "flip applied epoch=4 to=Active"
                ),
                (LogLevel::Error, me, "failed error=boom"),
            ]
        );
        assert!(batch.records.iter().all(|r| r.at_unix_us > 0));
        assert!(out.next_batch().is_none());
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_batches_are_bounded() {
        let mut out = logged(|| {
            for i in 0..(QUEUE + 10) {
                tracing::warn!(i, "flood");
            }
        });
        let first = out.next_batch().expect("a batch");
        assert_eq!(first.records.len(), logs::MAX_BATCH_RECORDS);
        assert_eq!(first.dropped, 10);
        assert_eq!(first.records[0].text, "flood i=0");
        let mut rest = 0;
        while let Some(b) = out.next_batch() {
            assert_eq!(b.dropped, 0);
            assert!(b.records.len() <= logs::MAX_BATCH_RECORDS);
            rest += b.records.len();
        }
        assert_eq!(first.records.len() + rest, QUEUE);
    }

    #[test]
    fn long_messages_are_clipped() {
        let long = "x".repeat(100_000);
        let mut out = logged(|| tracing::warn!(field = %long, "{long}"));
        let b = out.next_batch().expect("one record");
        assert!(b.records[0].text.len() <= logs::MAX_TEXT);
    }
}
