//! Connection admission before authentication: a cap on all connections, a cap on
//! connections from one source address that have not registered yet, and QUIC address
//! validation (a Retry round trip) when handshakes pile up or a source is at its cap.
//!
//! Pure bookkeeping; `quic.rs` asks [`Admission::decide`] for every incoming connection
//! and holds an [`Admitted`] ticket for the connection's life, which gives its slots
//! back when dropped, however the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The limits, from the `serve` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, authenticated or not (`--max-connections`).
    pub total: u32,
    /// Connections from one source IP that have not registered yet
    /// (`--max-unauthenticated-per-source`). Registered ones do not count: a thousand
    /// gateways behind one NAT address stay connected.
    pub per_source: u32,
    /// Unregistered connections at once beyond which a connection whose address is not
    /// validated yet is sent a QUIC Retry first (`--validate-addresses-above`; 0: always).
    pub validate_above: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            total: 20_000,
            per_source: 256,
            validate_above: 128,
        }
    }
}

/// What to do with an incoming connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on with the handshake; the connection holds a slot.
    Accept,
    /// Send a QUIC Retry: the client comes back with a token that proves its address.
    Retry,
    /// Refuse (QUIC CONNECTION_REFUSED), with the limit that was hit.
    Refuse(Refusal),
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Limits::total`.
    Total,
    /// `Limits::per_source`.
    PerSource,
}

/// The counts behind the decisions.
#[derive(Debug, Default)]
pub struct Admission {
    limits: Limits,
    total: u32,
    pending: u32,
    pending_by_source: HashMap<IpAddr, u32>,
}

impl Admission {
    /// No connections yet.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Decide on a connection from `source`; `validated` says whether its address was
    /// proven by a Retry token, `may_retry` whether a Retry can still be sent. `Accept`
    /// takes a slot, to be given back with [`Self::registered`] / [`Self::closed`].
    pub fn decide(&mut self, source: IpAddr, validated: bool, may_retry: bool) -> Decision {
        if self.total >= self.limits.total {
            return Decision::Refuse(Refusal::Total);
        }
        let from_source = self.pending_by_source.get(&source).copied().unwrap_or(0);
        let at_cap = from_source >= self.limits.per_source;
        // A spoofed source cannot answer a Retry, so it cannot fill another address's
        // slots: unproven addresses are challenged before they are refused.
        if !validated && may_retry && (at_cap || self.pending >= self.limits.validate_above) {
            return Decision::Retry;
        }
        if at_cap {
            return Decision::Refuse(Refusal::PerSource);
        }
        self.total += 1;
        self.pending += 1;
        *self.pending_by_source.entry(source).or_default() += 1;
        Decision::Accept
    }

    /// An accepted connection from `source` registered: it no longer counts against its
    /// source's cap.
    pub fn registered(&mut self, source: IpAddr) {
        self.pending = self.pending.saturating_sub(1);
        if let Some(n) = self.pending_by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.pending_by_source.remove(&source);
            }
        }
    }

    /// An accepted connection ended (`registered`: whether [`Self::registered`] was
    /// called for it).
    pub fn closed(&mut self, source: IpAddr, registered: bool) {
        if !registered {
            self.registered(source);
        }
        self.total = self.total.saturating_sub(1);
    }

    /// (all connections, unregistered ones).
    pub fn counts(&self) -> (u32, u32) {
        (self.total, self.pending)
    }
}

/// Shared admission state.
#[derive(Debug, Clone, Default)]
pub struct Admissions(Arc<Mutex<Admission>>);

impl Admissions {
    /// With these limits.
    pub fn new(limits: Limits) -> Self {
        Self(Arc::new(Mutex::new(Admission::new(limits))))
    }

    fn lock(&self) -> MutexGuard<'_, Admission> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Admission::decide`]; on `Accept`, the ticket that holds the slot.
    pub fn decide(
        &self,
        source: IpAddr,
        validated: bool,
        may_retry: bool,
    ) -> (Decision, Option<Admitted>) {
        let d = self.lock().decide(source, validated, may_retry);
        let ticket = (d == Decision::Accept).then(|| Admitted {
            gate: self.clone(),
            source,
            registered: false,
        });
        (d, ticket)
    }

    /// [`Admission::counts`].
    pub fn counts(&self) -> (u32, u32) {
        self.lock().counts()
    }
}

/// An accepted connection's slot, given back on drop.
#[derive(Debug)]
pub struct Admitted {
    gate: Admissions,
    source: IpAddr,
    registered: bool,
}

impl Admitted {
    /// The connection registered (see [`Admission::registered`]).
    pub fn registered(&mut self) {
        if !self.registered {
            self.registered = true;
            self.gate.lock().registered(self.source);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gate.lock().closed(self.source, self.registered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn limits(total: u32, per_source: u32, validate_above: u32) -> Limits {
        Limits {
            total,
            per_source,
            validate_above,
        }
    }

    #[test]
    fn the_total_cap_refuses_even_validated_connections() {
        let g = Admissions::new(limits(2, 10, 10));
        let (_a, ta) = g.decide(ip(1), true, false);
        let (_b, tb) = g.decide(ip(2), true, false);
        assert_eq!(
            g.decide(ip(3), true, false).0,
            Decision::Refuse(Refusal::Total)
        );
        drop(ta);
        assert_eq!(g.decide(ip(3), true, false).0, Decision::Accept);
        drop(tb);
    }

    #[test]
    fn a_source_at_its_cap_is_challenged_then_refused_and_registration_frees_the_slot() {
        let g = Admissions::new(limits(100, 2, 100));
        let mut held: Vec<_> = (0..2)
            .map(|_| g.decide(ip(1), false, true).1.unwrap())
            .collect();
        assert_eq!(g.decide(ip(1), false, true).0, Decision::Retry);
        assert_eq!(
            g.decide(ip(1), true, false).0,
            Decision::Refuse(Refusal::PerSource)
        );
        // Another source is not affected.
        let (d, other) = g.decide(ip(2), false, true);
        assert_eq!(d, Decision::Accept);
        held[0].registered();
        let (d, again) = g.decide(ip(1), true, false);
        assert_eq!(d, Decision::Accept);
        // Registered connections do not count against the source, only the total.
        assert_eq!(g.counts(), (4, 3));
        drop((other, again));
        assert_eq!(g.counts(), (2, 1));
    }

    #[test]
    fn many_pending_handshakes_turn_on_address_validation() {
        let g = Admissions::new(limits(100, 100, 2));
        let _held: Vec<_> = (0..2).map(|i| g.decide(ip(i), false, true).1).collect();
        assert_eq!(g.decide(ip(9), false, true).0, Decision::Retry);
        assert_eq!(g.decide(ip(9), true, false).0, Decision::Accept);
        // Validation cannot be asked for twice.
        assert_eq!(g.decide(ip(10), false, false).0, Decision::Accept);
    }

    #[test]
    fn validate_above_zero_challenges_every_new_address() {
        let g = Admissions::new(limits(100, 100, 0));
        assert_eq!(g.decide(ip(1), false, true).0, Decision::Retry);
        assert_eq!(g.decide(ip(1), true, false).0, Decision::Accept);
    }

    proptest! {
        /// Whatever the order of connections, registrations and closes, the counts stay
        /// within the limits and go back to zero once every connection is gone.
        #[test]
        fn counts_stay_within_limits_and_return_to_zero(
            ops in proptest::collection::vec((0u8..4, 0u8..3, any::<bool>()), 1..200)
        ) {
            let lim = limits(6, 2, 3);
            let g = Admissions::new(lim);
            let mut live: Vec<Admitted> = Vec::new();
            for (op, src, validated) in ops {
                match op {
                    0 | 1 => {
                        if let (_, Some(t)) = g.decide(ip(src), validated, !validated) {
                            live.push(t);
                        }
                    }
                    2 if !live.is_empty() => {
                        let i = usize::from(src) % live.len();
                        live[i].registered();
                    }
                    _ if !live.is_empty() => {
                        let i = usize::from(src) % live.len();
                        live.swap_remove(i);
                    }
                    _ => {}
                }
                let (total, pending) = g.counts();
                prop_assert!(total <= lim.total);
                prop_assert_eq!(total as usize, live.len());
                prop_assert_eq!(pending as usize, live.iter().filter(|t| !t.registered).count());
                let by = g.0.lock().unwrap().pending_by_source.clone();
                prop_assert!(by.values().all(|n| *n <= lim.per_source && *n > 0));
            }
            live.clear();
            prop_assert_eq!(g.counts(), (0, 0));
            prop_assert!(g.0.lock().unwrap().pending_by_source.is_empty());
        }
    }
}
