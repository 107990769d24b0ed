//! The coordinator's own recent log lines, kept in memory (the newest [`KEEP`]) so that a
//! sysdump carries them even when the journal is on another machine or gone. A tracing
//! layer added next to the usual stderr output; it sees what the `EnvFilter` lets through.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines kept.
pub const KEEP: usize = 2000;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The layer that records every event it sees.
pub struct RecentLogs;

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentLogs {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let mut line = Line(format!("{now} {} {}:", meta.level(), meta.target()));
        event.record(&mut line);
        let mut ring = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(line.0);
    }
}

/// The recent lines, oldest first, one per line.
pub fn snapshot() -> String {
    let ring = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    ring.iter().fold(String::new(), |mut s, l| {
        s.push_str(l);
        s.push('\n');
        s
    })
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn keeps_events_with_their_fields() {
        let subscriber = tracing_subscriber::registry().with(RecentLogs);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(node = "web", epoch = 3, "lease expired");
        });
        let text = snapshot();
        assert!(
            text.lines().any(|l| l.contains("WARN")
                && l.contains("lease expired")
                && l.contains("node=web epoch=3")),
            "{text}"
        );
    }
}
