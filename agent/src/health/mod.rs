//! Gray-failure detection: `--health-target IP[:PORT]` names hosts the gateway must reach
//! to be of use (ICMP echo without a port, a TCP connect with one). A replica whose link
//! is up but whose targets all stop answering is treated like one whose link went down:
//! an active asks for handover, a standby asks to be fenced (not eligible), and both
//! register again as standbys once the targets answer.
//!
//! [`Health`] is the decision, with no I/O and an injected clock: results in, a verdict
//! out, counted in rounds (the timer lives in [`watch`]). [`probe`] sends the checks.

pub mod probe;
pub mod watch;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    str::FromStr,
};

use serde::Serialize;

/// One thing to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    /// ICMP echo to this address.
    Icmp(Ipv4Addr),
    /// A TCP connection to this address and port.
    Tcp(SocketAddr),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Icmp(ip) => write!(f, "{ip} (icmp)"),
            Self::Tcp(addr) => write!(f, "{addr} (tcp)"),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(Self::Icmp(ip));
        }
        match s.parse::<SocketAddr>() {
            Ok(addr) if addr.is_ipv4() && addr.port() != 0 => Ok(Self::Tcp(addr)),
            _ => Err(format!(
                "{s:?} is not IPV4 (ICMP echo) or IPV4:PORT (TCP connect)"
            )),
        }
    }
}

/// How many results in a row change the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Failed rounds in a row (no target answered) before the replica is unhealthy.
    pub fall: u32,
    /// Good rounds in a row (some target answered) before it is healthy again.
    pub rise: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { fall: 3, rise: 2 }
    }
}

/// The state of the checks, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Report {
    /// `healthy`, `unhealthy`, or `off` without targets.
    pub state: String,
    /// Each target with the result of its last check (`ok`, `failed: …`, `pending`).
    pub targets: Vec<(String, String)>,
    /// Rounds in a row that no target answered.
    pub failed_rounds: u32,
}

/// The decision. A round is healthy when at least one target answered: one host going
/// away is not the gateway's fault, all of them going away is.
#[derive(Debug, Clone)]
pub struct Health {
    targets: Vec<Target>,
    last: Vec<Option<Result<(), String>>>,
    thresholds: Thresholds,
    healthy: bool,
    failed_rounds: u32,
    good_rounds: u32,
}

impl Health {
    /// Starts healthy: a replica is not kept out of service before its first checks.
    pub fn new(targets: Vec<Target>, thresholds: Thresholds) -> Self {
        Self {
            last: vec![None; targets.len()],
            targets,
            thresholds,
            healthy: true,
            failed_rounds: 0,
            good_rounds: 0,
        }
    }

    /// The targets, in order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Whether the replica counts as healthy now.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// One round of results (one per target, in order). Returns the new verdict when it
    /// changed.
    pub fn round(&mut self, results: Vec<Result<(), String>>) -> Option<bool> {
        if self.targets.is_empty() {
            return None;
        }
        let any_ok = results.iter().any(Result::is_ok);
        self.last = results.into_iter().map(Some).collect();
        self.last.resize(self.targets.len(), None);
        if any_ok {
            self.failed_rounds = 0;
            self.good_rounds = self.good_rounds.saturating_add(1);
        } else {
            self.good_rounds = 0;
            self.failed_rounds = self.failed_rounds.saturating_add(1);
        }
        let next = if self.healthy {
            self.failed_rounds < self.thresholds.fall.max(1)
        } else {
            self.good_rounds >= self.thresholds.rise.max(1)
        };
        (next != self.healthy).then(|| {
            self.healthy = next;
            next
        })
    }

    /// What `status` shows.
    pub fn report(&self) -> Report {
        if self.targets.is_empty() {
            return Report {
                state: "off".into(),
                ..Report::default()
            };
        }
        Report {
            state: if self.healthy { "healthy" } else { "unhealthy" }.into(),
            targets: self
                .targets
                .iter()
                .zip(&self.last)
                .map(|(t, r)| {
                    let r = match r {
                        None => "pending".to_owned(),
                        Some(Ok(())) => "ok".to_owned(),
                        Some(Err(e)) => format!("failed: {e}"),
                    };
                    (t.to_string(), r)
                })
                .collect(),
            failed_rounds: self.failed_rounds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), String> {
        Err("timed out".into())
    }

    #[test]
    fn targets_parse_as_icmp_or_tcp_and_bad_ones_say_why() {
        assert_eq!(
            "192.168.50.100".parse(),
            Ok(Target::Icmp(Ipv4Addr::new(192, 168, 50, 100)))
        );
        assert_eq!(
            "192.168.50.100:80".parse(),
            Ok(Target::Tcp("192.168.50.100:80".parse().unwrap()))
        );
        for bad in ["", "host:80", "192.168.50.100:0", "[::1]:80", "10.0.0.1/24"] {
            let e = bad.parse::<Target>().unwrap_err();
            assert!(e.contains("IPV4:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn unhealthy_after_fall_rounds_with_no_answer_and_back_after_rise() {
        let targets = vec![Target::Icmp(Ipv4Addr::new(10, 0, 0, 1))];
        let mut h = Health::new(targets, Thresholds { fall: 3, rise: 2 });
        assert!(h.healthy());
        assert_eq!(h.round(vec![fail()]), None);
        assert_eq!(h.round(vec![fail()]), None);
        assert_eq!(h.round(vec![fail()]), Some(false));
        assert_eq!(h.report().state, "unhealthy");
        assert_eq!(h.report().targets[0].1, "failed: timed out");
        assert_eq!(h.round(vec![fail()]), None, "reported once");
        assert_eq!(h.round(vec![Ok(())]), None);
        assert_eq!(h.round(vec![Ok(())]), Some(true));
        assert_eq!(h.report().state, "healthy");
    }

    #[test]
    fn one_answering_target_of_several_is_enough() {
        let targets = vec![
            Target::Icmp(Ipv4Addr::new(10, 0, 0, 1)),
            Target::Tcp("10.0.0.2:80".parse().unwrap()),
        ];
        let mut h = Health::new(targets, Thresholds { fall: 1, rise: 1 });
        assert_eq!(h.round(vec![fail(), Ok(())]), None);
        assert_eq!(h.round(vec![fail(), fail()]), Some(false));
        assert_eq!(h.round(vec![Ok(()), fail()]), Some(true));
    }

    #[test]
    fn an_interrupted_streak_starts_over() {
        let mut h = Health::new(
            vec![Target::Icmp(Ipv4Addr::new(10, 0, 0, 1))],
            Thresholds { fall: 2, rise: 2 },
        );
        assert_eq!(h.round(vec![fail()]), None);
        assert_eq!(h.round(vec![Ok(())]), None);
        assert_eq!(h.round(vec![fail()]), None);
        assert_eq!(h.round(vec![fail()]), Some(false));
        assert_eq!(h.round(vec![Ok(())]), None);
        assert_eq!(h.round(vec![fail()]), None);
        assert!(!h.healthy());
    }

    #[test]
    fn without_targets_the_check_is_off() {
        let mut h = Health::new(Vec::new(), Thresholds::default());
        assert_eq!(h.round(Vec::new()), None);
        assert!(h.healthy());
        assert_eq!(h.report().state, "off");
    }
}
