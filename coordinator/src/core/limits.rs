//! Rate limits with an injected clock: heartbeats per connection, failed registrations per
//! source address. Both keep a registered or would-be participant from buying
//! coordinator time (every heartbeat takes the state lock) beyond what the protocol needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Heartbeats a connection may send in a burst beyond its rate.
const HEARTBEAT_BURST: u32 = 16;
/// Heartbeats dropped in a row after which the connection is closed as abusive.
const HEARTBEAT_ABUSE: u32 = 256;

/// What to do with one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate.
    Allow,
    /// Over the rate: ignore it.
    Drop,
    /// Far over the rate for long: close the connection.
    Abuse,
}

/// A token bucket: one token every `every`, at most `burst` saved.
#[derive(Debug, Clone)]
pub struct RateLimit {
    every: Duration,
    burst: u32,
    tokens: u32,
    last: Instant,
    dropped_in_row: u32,
}

impl RateLimit {
    /// A heartbeat limit for `heartbeat` intervals: four times the agents' rate, so
    /// timer jitter and a burst after a stall never hit it.
    pub fn heartbeats(heartbeat: Duration, now: Instant) -> Self {
        Self {
            every: (heartbeat / 4).max(Duration::from_millis(1)),
            burst: HEARTBEAT_BURST,
            tokens: HEARTBEAT_BURST,
            last: now,
            dropped_in_row: 0,
        }
    }

    /// Takes a token at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let gained = now.saturating_duration_since(self.last).as_nanos() / self.every.as_nanos();
        if gained > 0 {
            let gained = u32::try_from(gained).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(gained).min(self.burst);
            self.last = now;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            self.dropped_in_row = 0;
            return Verdict::Allow;
        }
        self.dropped_in_row += 1;
        if self.dropped_in_row >= HEARTBEAT_ABUSE {
            Verdict::Abuse
        } else {
            Verdict::Drop
        }
    }
}

/// Failed registrations allowed per source address per window before refusing.
const FAILS_PER_WINDOW: u32 = 5;
const FAIL_WINDOW: Duration = Duration::from_secs(10);
/// Table size at which expired failure windows are pruned.
const FAIL_TABLE_PRUNE_AT: usize = 4096;

/// Failed registrations per source address.
#[derive(Debug, Default)]
pub struct FailLimiter {
    fails: HashMap<IpAddr, (u32, Instant)>,
}

impl FailLimiter {
    /// Whether `ip` is refused for now.
    pub fn limited(&self, ip: IpAddr, now: Instant) -> bool {
        self.fails.get(&ip).is_some_and(|(n, since)| {
            *n >= FAILS_PER_WINDOW && now.saturating_duration_since(*since) < FAIL_WINDOW
        })
    }

    /// Counts a failure from `ip`.
    pub fn record(&mut self, ip: IpAddr, now: Instant) {
        // Forget windows that have passed once the table grows, so failures from many
        // addresses cannot grow it without bound.
        if self.fails.len() >= FAIL_TABLE_PRUNE_AT {
            self.fails
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < FAIL_WINDOW);
        }
        let e = self.fails.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(e.1) >= FAIL_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_at_the_agents_rate_pass_and_a_flood_is_cut() {
        let t0 = Instant::now();
        let hb = Duration::from_millis(50);
        let mut l = RateLimit::heartbeats(hb, t0);
        for i in 0..1000u32 {
            assert_eq!(l.check(t0 + hb * i), Verdict::Allow, "beat {i}");
        }
        let t1 = t0 + hb * 1000;
        let verdicts: Vec<_> = (0..400).map(|_| l.check(t1)).collect();
        assert!(
            verdicts[..HEARTBEAT_BURST as usize]
                .iter()
                .all(|v| *v == Verdict::Allow)
        );
        assert_eq!(verdicts[HEARTBEAT_BURST as usize], Verdict::Drop);
        assert_eq!(verdicts.last(), Some(&Verdict::Abuse));
    }

    #[test]
    fn failures_limit_per_address_and_window() {
        let t0 = Instant::now();
        let ip: IpAddr = [192, 0, 2, 1].into();
        let mut f = FailLimiter::default();
        for _ in 0..FAILS_PER_WINDOW {
            assert!(!f.limited(ip, t0));
            f.record(ip, t0);
        }
        assert!(f.limited(ip, t0));
        assert!(!f.limited([192, 0, 2, 2].into(), t0));
        assert!(!f.limited(ip, t0 + FAIL_WINDOW));
    }
}
