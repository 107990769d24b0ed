//! Reconnect delays: exponential with full jitter over the upper half, so a coordinator
//! restart is not met by every agent at the same instant.

use std::time::Duration;

/// Exponential backoff from `min` to `max`, with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff whose first delay is about `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The next delay: a random point in `[d/2, d]`, after which `d` doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Back to the shortest delay, after a session that worked.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max);
        let first = b.next_delay();
        assert!(first >= min / 2 && first <= min, "{first:?}");
        for _ in 0..10 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(capped >= max / 2 && capped <= max, "{capped:?}");
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
