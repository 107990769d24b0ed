//! Replica log records: what an agent sends about itself ([`crate::AgentMsg::Logs`]) so
//! that an operator reads every replica's warnings, errors and role flips in one place
//! (`GET /api/v1/nodes/{id}/logs`, the console) instead of each host's journal.
//!
//! Both ends bound what they handle with the limits here: the agent never builds a
//! bigger batch, and the coordinator clips whatever a (possibly hostile) agent sends to
//! the same limits before it keeps anything.

use serde::{Deserialize, Serialize};

/// Most records in one [`LogBatch`]; the agent sends at most one batch per
/// [`BATCH_EVERY_MS`] per coordinator, so at most 64 records a second leave an agent.
pub const MAX_BATCH_RECORDS: usize = 32;
/// How often, at most, an agent sends a batch on one connection.
pub const BATCH_EVERY_MS: u64 = 500;
/// Longest record text kept, in bytes (longer text is cut at a character boundary and
/// ends in `…`).
pub const MAX_TEXT: usize = 1024;
/// Longest target (the emitting module's path) kept, in bytes.
pub const MAX_TARGET: usize = 64;

/// How severe a record is. Agents send warnings and errors, and their role flips (the
/// failover steps they applied, handover requests) as `Info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something is wrong or degraded but the agent carries on.
    Warn,
    /// A flip record or another event worth seeing next to the warnings.
    Info,
}

impl LogLevel {
    /// The lowercase name (`error`, `warn`, `info`), as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
        }
    }
}

/// One record, as the agent logged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When the agent logged it, microseconds since the Unix epoch (the agent's clock).
    pub at_unix_us: u64,
    /// Severity.
    pub level: LogLevel,
    /// The emitting module (a tracing target such as `meshgate_agent::flip`).
    pub target: String,
    /// The message with its fields, `message key=value …`.
    pub text: String,
}

/// Records an agent sends in one control message ([`crate::AgentMsg::Logs`]), oldest
/// first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    /// At most [`MAX_BATCH_RECORDS`] records.
    pub records: Vec<LogRecord>,
    /// Records the agent dropped since its previous batch because its queue was full
    /// (logging never waits for the network).
    pub dropped: u64,
}

/// Cuts `text` to at most `max` bytes at a character boundary, ending it in `…` when
/// anything was cut, and replaces control characters (a record is one line; escape
/// sequences must not reach a terminal that shows it).
pub fn clip(text: &str, max: usize) -> String {
    const MARK: char = '…';
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            while out.len() + MARK.len_utf8() > max {
                out.pop();
            }
            out.push(MARK);
            return out;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("flip applied", 64), "flip applied");
        let long = "é".repeat(1000);
        let cut = clip(&long, MAX_TEXT);
        assert!(cut.len() <= MAX_TEXT, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
        assert_eq!(clip("abcdef", 4), "a…");
        assert_eq!(clip("abcd", 4), "abcd");
    }

    #[test]
    fn clip_flattens_control_characters() {
        assert_eq!(clip("a\nb\x1b[31mc", 64), "a b [31mc");
    }

    #[test]
    fn a_full_batch_fits_a_frame() {
        let record = LogRecord {
            at_unix_us: u64::MAX,
            level: LogLevel::Error,
            target: "t".repeat(MAX_TARGET),
            text: "x".repeat(MAX_TEXT),
        };
        let batch = LogBatch {
            records: vec![record; MAX_BATCH_RECORDS],
            dropped: u64::MAX,
        };
        let frame = crate::frame::encode(&crate::AgentMsg::Logs(batch)).expect("fits");
        assert!(frame.len() < crate::frame::MAX_FRAME / 4, "{}", frame.len());
    }
}
