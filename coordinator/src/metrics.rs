//! Counters and the failover histogram, rendered as Prometheus text and JSON. Plain
//! atomics: the relay bumps them per packet, so no locks and no allocation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a well-formed IPv4 packet.
    Malformed = 0,
    /// Larger than the relay accepts.
    Oversized,
    /// Source address not the sender's.
    Spoofed,
    /// From a standby or fenced replica.
    NotActive,
    /// No route for the destination.
    NoRoute,
    /// Route exists but nobody is there to take it (no active, not connected).
    Unreachable,
    /// The receiving connection refused it (too big for its path, closed).
    SendFailed,
}

const DROP_NAMES: [&str; 7] = [
    "malformed",
    "oversized",
    "spoofed",
    "not_active",
    "no_route",
    "unreachable",
    "send_failed",
];
const BUCKETS_MS: [u64; 9] = [1, 5, 10, 25, 50, 100, 250, 500, 1000];

/// All counters.
#[derive(Default)]
pub struct Metrics {
    /// Packets relayed.
    pub packets: AtomicU64,
    /// Bytes relayed.
    pub bytes: AtomicU64,
    /// ICMP errors sent back for datagrams that could not be delivered.
    pub icmp_errors: AtomicU64,
    drops: [AtomicU64; 7],
    /// Promotions that replaced an expired lease.
    pub failovers: AtomicU64,
    /// Refused registrations.
    pub auth_failures: AtomicU64,
    /// Registrations accepted.
    pub registrations: AtomicU64,
    /// Connections refused at the cap on all connections.
    pub refused_total_cap: AtomicU64,
    /// Connections refused at the cap on one source's unregistered connections.
    pub refused_per_source_cap: AtomicU64,
    /// QUIC Retry packets sent (address validation).
    pub quic_retries: AtomicU64,
    hist: [AtomicU64; 10],
    hist_sum_us: AtomicU64,
}

impl Metrics {
    /// Count a drop.
    pub fn count_drop(&self, why: DropReason) {
        self.drops[why as usize].fetch_add(1, Relaxed);
    }

    /// Record the time from lease expiry to promotion.
    pub fn failover(&self, after_expiry: Duration) {
        self.failovers.fetch_add(1, Relaxed);
        let ms = after_expiry.as_millis() as u64;
        let i = BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BUCKETS_MS.len());
        self.hist[i].fetch_add(1, Relaxed);
        self.hist_sum_us
            .fetch_add(after_expiry.as_micros() as u64, Relaxed);
    }

    /// Drops by reason.
    pub fn drops(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DROP_NAMES
            .iter()
            .zip(&self.drops)
            .map(|(n, c)| (*n, c.load(Relaxed)))
    }

    /// Prometheus text. `replicas` is (node name, ha_status, count); `participants`
    /// the number of connected participants; `connections` (all QUIC connections,
    /// those not registered yet).
    pub fn prometheus(
        &self,
        participants: usize,
        connections: (u32, u32),
        replicas: &[(String, &str, usize)],
    ) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let mut c = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        c(
            "meshgate_participants_connected",
            "Connected participants.",
            "gauge",
            participants as u64,
        );
        c(
            "meshgate_packets_relayed_total",
            "Packets relayed.",
            "counter",
            self.packets.load(Relaxed),
        );
        c(
            "meshgate_bytes_relayed_total",
            "Bytes relayed.",
            "counter",
            self.bytes.load(Relaxed),
        );
        c(
            "meshgate_icmp_errors_sent_total",
            "ICMP errors sent back for undeliverable datagrams.",
            "counter",
            self.icmp_errors.load(Relaxed),
        );
        c(
            "meshgate_failovers_total",
            "Promotions after a lease expired.",
            "counter",
            self.failovers.load(Relaxed),
        );
        c(
            "meshgate_registrations_total",
            "Accepted registrations.",
            "counter",
            self.registrations.load(Relaxed),
        );
        c(
            "meshgate_auth_failures_total",
            "Refused registrations.",
            "counter",
            self.auth_failures.load(Relaxed),
        );
        c(
            "meshgate_quic_retries_total",
            "QUIC Retry packets sent to validate a client's address.",
            "counter",
            self.quic_retries.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP meshgate_connections QUIC connections, registered or still unregistered (handshake, Hello).\n# TYPE meshgate_connections gauge\nmeshgate_connections{{state=\"registered\"}} {}\nmeshgate_connections{{state=\"unregistered\"}} {}",
            connections.0 - connections.1,
            connections.1
        );
        let _ = writeln!(
            o,
            "# HELP meshgate_connections_refused_total Connections refused at a connection limit.\n# TYPE meshgate_connections_refused_total counter\nmeshgate_connections_refused_total{{limit=\"total\"}} {}\nmeshgate_connections_refused_total{{limit=\"per_source\"}} {}",
            self.refused_total_cap.load(Relaxed),
            self.refused_per_source_cap.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP meshgate_drops_total Datagrams dropped, by reason.\n# TYPE meshgate_drops_total counter"
        );
        for (n, v) in self.drops() {
            let _ = writeln!(o, "meshgate_drops_total{{reason=\"{n}\"}} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP meshgate_replicas Connected replicas per node and HA status.\n# TYPE meshgate_replicas gauge"
        );
        for (node, status, n) in replicas {
            let _ = writeln!(
                o,
                "meshgate_replicas{{node=\"{node}\",ha_status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP meshgate_failover_seconds Time from lease expiry to promotion.\n# TYPE meshgate_failover_seconds histogram"
        );
        let mut cum = 0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            cum += self.hist[i].load(Relaxed);
            let _ = writeln!(
                o,
                "meshgate_failover_seconds_bucket{{le=\"{}\"}} {cum}",
                *b as f64 / 1000.0
            );
        }
        cum += self.hist[BUCKETS_MS.len()].load(Relaxed);
        let _ = writeln!(o, "meshgate_failover_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            o,
            "meshgate_failover_seconds_sum {}",
            self.hist_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "meshgate_failover_seconds_count {cum}");
        o
    }
}
