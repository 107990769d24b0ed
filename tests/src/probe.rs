//! Numbered UDP probes: a one-way [`Flow`] of sequence-numbered datagrams from one
//! namespace to another at a fixed rate, so loss and outage during a failover are counted
//! exactly rather than guessed from pings.
//!
//! Sender and receiver are threads of this process (each socket is created inside its
//! namespace and keeps it), so both stamp packets with the same monotonic clock: the
//! outage is the send-time distance between the last datagram delivered before a gap and
//! the first delivered after it. Send errors (an ICMP unreachable reported on the
//! connected socket, an `unreachable` route) are counted by kind, which tells an error
//! from a silent black hole.

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;

use crate::Netns;

/// The default probe interval: 500 datagrams per second, so an outage is known to ±2 ms.
pub const INTERVAL: Duration = Duration::from_millis(2);
/// How long the receiver keeps listening after the last datagram was sent.
const GRACE: Duration = Duration::from_millis(300);
/// Magic prefix of a probe datagram (so stray traffic is never counted).
const MAGIC: &[u8; 4] = b"MGP1";

/// A running one-way flow. Stop it with [`Flow::stop`] to get its [`FlowReport`].
pub struct Flow {
    label: String,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<SenderLog>,
    receiver: JoinHandle<Vec<(u64, Instant)>>,
    started: Instant,
    started_wall: SystemTime,
}

struct SenderLog {
    sent_at: Vec<Instant>,
    errors: Vec<(u64, Instant, String)>,
}

impl Flow {
    /// Starts sending datagrams from `from` to `to_ip:port` (a socket bound in `to`) every
    /// `interval`. `label` names the direction in reports (e.g. `device → host`).
    pub fn start(
        label: &str,
        from: &Netns,
        to: &Netns,
        to_ip: &str,
        port: u16,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let rx = to
            .enter(|| UdpSocket::bind(("0.0.0.0", port)))?
            .with_context(|| format!("bind UDP :{port} in {}", to.name()))?;
        rx.set_read_timeout(Some(Duration::from_millis(50)))?;
        let target = format!("{to_ip}:{port}");
        let tx = from.enter(|| -> anyhow::Result<UdpSocket> {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
            // Connected, so ICMP errors for earlier datagrams surface on later sends.
            s.connect(&target)?;
            Ok(s)
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let receiver = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || receive(&rx, &stop))
        };
        let sender = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || send(&tx, &stop, started, interval))
        };
        Ok(Self {
            label: label.to_owned(),
            stop,
            sender,
            receiver,
            started,
            started_wall,
        })
    }

    /// When the flow started (monotonic and wall clock), to line events up with it.
    pub fn started(&self) -> (Instant, SystemTime) {
        (self.started, self.started_wall)
    }

    /// Stops sending, waits for stragglers and returns what arrived.
    pub fn stop(self) -> anyhow::Result<FlowReport> {
        self.stop.store(true, Ordering::SeqCst);
        let log = self
            .sender
            .join()
            .map_err(|_| anyhow::anyhow!("probe sender panicked"))?;
        let arrivals = self
            .receiver
            .join()
            .map_err(|_| anyhow::anyhow!("probe receiver panicked"))?;
        Ok(FlowReport::new(
            self.label,
            self.started,
            self.started_wall,
            log,
            arrivals,
        ))
    }
}

fn send(tx: &UdpSocket, stop: &AtomicBool, started: Instant, interval: Duration) -> SenderLog {
    let mut log = SenderLog {
        sent_at: Vec::new(),
        errors: Vec::new(),
    };
    let mut buf = [0u8; 64];
    buf[..4].copy_from_slice(MAGIC);
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let due = started + interval * u32::try_from(seq).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        buf[4..12].copy_from_slice(&seq.to_be_bytes());
        let at = Instant::now();
        if let Err(e) = tx.send(&buf) {
            log.errors.push((seq, at, error_kind(&e)));
        }
        log.sent_at.push(at);
        seq += 1;
    }
    log
}

fn error_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(libc::EMSGSIZE) => "EMSGSIZE".into(),
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        _ => e.kind().to_string(),
    }
}

fn receive(rx: &UdpSocket, stop: &AtomicBool) -> Vec<(u64, Instant)> {
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 128];
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if at.elapsed() > GRACE {
                return arrivals;
            }
        }
        match rx.recv(&mut buf) {
            Ok(n) if n >= 12 && &buf[..4] == MAGIC => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&buf[4..12]);
                arrivals.push((u64::from_be_bytes(seq), Instant::now()));
            }
            _ => {}
        }
    }
}

/// Two flows, one per direction, started and stopped together.
pub struct Probe {
    /// Toward the far side (e.g. device → LAN host).
    pub forward: Flow,
    /// Back (e.g. LAN host → device).
    pub back: Flow,
}

impl Probe {
    /// Starts `a → b_ip:port` and `b → a_ip:port+1` at [`INTERVAL`].
    pub fn start(
        (a_label, a, a_ip): (&str, &Netns, &str),
        (b_label, b, b_ip): (&str, &Netns, &str),
        port: u16,
    ) -> anyhow::Result<Self> {
        let forward = Flow::start(
            &format!("{a_label} → {b_label}"),
            a,
            b,
            b_ip,
            port,
            INTERVAL,
        )?;
        let back = Flow::start(
            &format!("{b_label} → {a_label}"),
            b,
            a,
            a_ip,
            port + 1,
            INTERVAL,
        )?;
        Ok(Self { forward, back })
    }

    /// Stops both flows.
    pub fn stop(self) -> anyhow::Result<(FlowReport, FlowReport)> {
        Ok((self.forward.stop()?, self.back.stop()?))
    }
}

/// What one flow delivered.
#[derive(Debug, Clone)]
pub struct FlowReport {
    /// The direction, e.g. `device → host`.
    pub label: String,
    /// Datagrams sent.
    pub sent: u64,
    /// Distinct datagrams received.
    pub received: u64,
    /// Datagrams received more than once.
    pub duplicates: u64,
    /// Send errors by kind (`EHOSTUNREACH`, `ECONNREFUSED`, …).
    pub errors: BTreeMap<String, u64>,
    /// Runs of lost datagrams: `(first lost seq, last lost seq)`.
    pub gaps: Vec<(u64, u64)>,
    /// Per sequence number: when it was sent.
    pub sent_at: Vec<Instant>,
    /// Per received sequence number (ascending, distinct): when it arrived.
    pub arrivals: Vec<(u64, Instant)>,
    /// Every send error: `(seq, when, kind)`.
    pub error_log: Vec<(u64, Instant, String)>,
    /// When the flow started.
    pub started: Instant,
    /// The same moment on the wall clock (agents report flips in Unix milliseconds).
    pub started_wall: SystemTime,
}

impl FlowReport {
    fn new(
        label: String,
        started: Instant,
        started_wall: SystemTime,
        log: SenderLog,
        mut arrivals: Vec<(u64, Instant)>,
    ) -> Self {
        let sent = log.sent_at.len() as u64;
        let total = arrivals.len() as u64;
        arrivals.sort_by_key(|&(seq, at)| (seq, at));
        arrivals.dedup_by_key(|&mut (seq, _)| seq);
        arrivals.retain(|&(seq, _)| seq < sent);
        let received = arrivals.len() as u64;
        let mut gaps = Vec::new();
        let mut next = 0u64;
        for &(seq, _) in &arrivals {
            if seq > next {
                gaps.push((next, seq - 1));
            }
            next = seq + 1;
        }
        if next < sent {
            gaps.push((next, sent - 1));
        }
        let mut errors = BTreeMap::new();
        for (_, _, kind) in &log.errors {
            *errors.entry(kind.clone()).or_insert(0) += 1;
        }
        Self {
            label,
            sent,
            received,
            duplicates: total - received,
            errors,
            gaps,
            sent_at: log.sent_at,
            arrivals,
            error_log: log.errors,
            started,
            started_wall,
        }
    }

    /// Datagrams sent but never received.
    pub fn lost(&self) -> u64 {
        self.sent - self.received
    }

    /// The longest time without delivery, in send time: from the last datagram delivered
    /// before the worst gap to the first delivered after it, less one interval (so an
    /// unbroken flow has zero outage). A gap at either end counts up to the first/last
    /// datagram sent.
    pub fn outage(&self) -> Duration {
        self.worst_gap().map_or(Duration::ZERO, |g| g.duration)
    }

    /// The worst gap: its duration and the moments delivery stopped and resumed.
    pub fn worst_gap(&self) -> Option<Gap> {
        self.gaps
            .iter()
            .map(|&(first, last)| self.gap(first, last))
            .max_by_key(|g| g.duration)
    }

    /// Every gap, with its duration.
    pub fn all_gaps(&self) -> Vec<Gap> {
        self.gaps
            .iter()
            .map(|&(first, last)| self.gap(first, last))
            .collect()
    }

    fn gap(&self, first: u64, last: u64) -> Gap {
        let at = |seq: u64| self.sent_at[usize::try_from(seq).unwrap_or(usize::MAX)];
        let before = first.checked_sub(1).map_or(self.started, at);
        let after = self
            .sent_at
            .get(usize::try_from(last + 1).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or_else(|| at(last));
        let interval = if self.sent > 1 {
            (at(self.sent - 1) - at(0)) / u32::try_from(self.sent - 1).unwrap_or(u32::MAX)
        } else {
            Duration::ZERO
        };
        Gap {
            first,
            last,
            lost: last - first + 1,
            last_delivered_sent: before,
            first_resumed_sent: after,
            first_resumed_arrived: self
                .arrivals
                .iter()
                .find(|&&(seq, _)| seq > last)
                .map(|&(_, at)| at),
            duration: (after - before).saturating_sub(interval),
        }
    }

    /// Datagrams that arrived more than `bound` after they were sent, as `(seq, delay)`:
    /// a replica that held packets while frozen and let them go when it woke.
    pub fn late(&self, bound: Duration) -> Vec<(u64, Duration)> {
        self.arrivals
            .iter()
            .filter_map(|&(seq, arrived)| {
                let sent = self.sent_at[usize::try_from(seq).ok()?];
                let delay = arrived.saturating_duration_since(sent);
                (delay > bound).then_some((seq, delay))
            })
            .collect()
    }

    /// The first datagram delivered that was sent at or after `t`: `(seq, sent, arrived)`.
    pub fn first_delivered_after(&self, t: Instant) -> Option<(u64, Instant, Instant)> {
        self.arrivals
            .iter()
            .find(|&&(seq, _)| self.sent_at[usize::try_from(seq).unwrap_or(0)] >= t)
            .map(|&(seq, arrived)| {
                (
                    seq,
                    self.sent_at[usize::try_from(seq).unwrap_or(0)],
                    arrived,
                )
            })
    }

    /// One line for a person: `device → host: 2500 sent, 2400 received, 100 lost, outage 200 ms`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} sent, {} received, {} lost, longest outage {} ms",
            self.label,
            self.sent,
            self.received,
            self.lost(),
            self.outage().as_millis()
        );
        if !self.errors.is_empty() {
            s.push_str(&format!(", send errors {:?}", self.errors));
        }
        s
    }
}

/// One run of lost datagrams.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    /// First lost sequence number.
    pub first: u64,
    /// Last lost sequence number.
    pub last: u64,
    /// How many were lost.
    pub lost: u64,
    /// When the last datagram delivered before the gap was sent.
    pub last_delivered_sent: Instant,
    /// When the first datagram delivered after the gap was sent.
    pub first_resumed_sent: Instant,
    /// When that datagram arrived.
    pub first_resumed_arrived: Option<Instant>,
    /// The outage this gap stands for (send-time span less one interval).
    pub duration: Duration,
}

/// Records moments from several threads (e.g. a sampler) against one clock.
#[derive(Clone, Default)]
pub struct Timeline(Arc<Mutex<Vec<(Instant, String)>>>);

impl Timeline {
    /// Notes `what` now.
    pub fn mark(&self, what: impl Into<String>) {
        if let Ok(mut v) = self.0.lock() {
            v.push((Instant::now(), what.into()));
        }
    }

    /// Everything noted, in time order.
    pub fn events(&self) -> Vec<(Instant, String)> {
        let mut v = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_by_key(|(t, _)| *t);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sent: u64, received: &[u64]) -> FlowReport {
        let t0 = Instant::now();
        let sent_at: Vec<Instant> = (0..sent)
            .map(|i| t0 + Duration::from_millis(2 * i))
            .collect();
        let arrivals = received
            .iter()
            .map(|&s| (s, sent_at[s as usize] + Duration::from_micros(100)))
            .collect();
        FlowReport::new(
            "a → b".into(),
            t0,
            SystemTime::now(),
            SenderLog {
                sent_at,
                errors: vec![],
            },
            arrivals,
        )
    }

    #[test]
    fn an_unbroken_flow_has_no_loss_and_no_outage() {
        let r = report(100, &(0..100).collect::<Vec<_>>());
        assert_eq!(r.lost(), 0);
        assert_eq!(r.outage(), Duration::ZERO);
        assert!(r.gaps.is_empty());
    }

    #[test]
    fn a_gap_counts_its_datagrams_and_its_send_time_span() {
        let mut got: Vec<u64> = (0..40).collect();
        got.extend(60..100);
        got.push(10); // a duplicate
        let r = report(100, &got);
        assert_eq!(r.lost(), 20);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.gaps, vec![(40, 59)]);
        // last delivered: seq 39 at 78 ms; first after: seq 60 at 120 ms; less 2 ms.
        assert_eq!(r.outage(), Duration::from_millis(40));
        let (seq, _, _) = r
            .first_delivered_after(r.sent_at[45])
            .expect("delivery resumed");
        assert_eq!(seq, 60);
    }

    #[test]
    fn a_flow_that_never_recovers_ends_in_a_gap() {
        let r = report(50, &(0..10).collect::<Vec<_>>());
        assert_eq!(r.gaps, vec![(10, 49)]);
        assert_eq!(r.lost(), 40);
        assert!(r.outage() >= Duration::from_millis(70));
    }
}
