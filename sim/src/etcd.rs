//! etcd as a cluster run sees it: linearizable transactions applied one at a time after
//! a network delay, member keys on leases that expire by TTL (and restart on a leader
//! change), an election of the member that decides (the oldest registration), and one
//! revision-ordered watch per coordinator that holds its events while the coordinator is
//! cut off and resumes afterwards. A leader change stalls everything for a while.
//!
//! The transactions implement [`ClusterOp`]'s documented semantics, as the real driver's
//! etcd `Txn`s do.

use std::collections::BTreeMap;
use std::time::Instant;

use meshgate_coordinator::election::quorum::{ClusterEvent, ClusterOp};
use rand::Rng as _;

use crate::coord::Coord;
use crate::world::{Ev, NODE, Time, World, us};

/// How long a coordinator waits for a transaction's answer before calling it unknown.
const OP_TIMEOUT: Time = 300_000;
/// How often etcd looks for expired leases.
pub(crate) const EXPIRE_EVERY: Time = 50_000;

/// A request to etcd.
#[derive(Debug, Clone)]
pub(crate) enum Req {
    /// Put the member key on a new lease (replacing an earlier run's) and bump `joined`.
    Register { sent_at: Instant },
    /// Renew the member's lease.
    KeepAlive { lease: u64, sent_at: Instant },
    /// An election transaction.
    Op(ClusterOp),
}

#[derive(Debug, Clone, Copy)]
struct MemberKey {
    lease: u64,
    expiry: Time,
    /// Revision of its registration (etcd's election picks the oldest).
    since: u64,
}

pub(crate) struct Etcd {
    rev: u64,
    elected: Option<(u64, String)>,
    marks: BTreeMap<(u64, String), u64>,
    members: BTreeMap<String, MemberKey>,
    joined: u64,
    next_lease: u64,
    pub(crate) stalled_until: Time,
    decider: Option<(String, u64)>,
    /// Largest one-way latency (a slow etcd has a large one).
    latency: Time,
    ttl: Time,
    /// Per coordinator: when its last etcd message arrives (one ordered stream).
    fifo: Vec<Time>,
    /// Per coordinator: its driver's lease, and whether a registration is pending.
    pub(crate) driver: Vec<(Option<u64>, bool)>,
}

impl Etcd {
    pub(crate) fn new(coords: usize, latency: Time, ttl: Time) -> Self {
        Self {
            rev: 1,
            elected: None,
            marks: BTreeMap::new(),
            members: BTreeMap::new(),
            joined: 0,
            next_lease: 100,
            stalled_until: 0,
            decider: None,
            latency,
            ttl,
            fifo: vec![0; coords],
            driver: vec![(None, false); coords],
        }
    }

    fn of(w: &mut World) -> &mut Etcd {
        w.etcd.as_mut().expect("cluster runs only")
    }

    /// A coordinator run starts: it reads the state (a snapshot through its watch) and
    /// registers.
    pub(crate) fn member_started(w: &mut World, k: usize) {
        Self::of(w).driver[k] = (None, false);
        let e = Self::of(w);
        let mut snapshot = vec![Self::members_event(e)];
        if let Some((epoch, active)) = e.elected.clone() {
            snapshot.push(ClusterEvent::Elected {
                node: NODE,
                epoch,
                active,
            });
            for ((me, member), lease) in &e.marks {
                if *me == epoch {
                    snapshot.push(ClusterEvent::Mark {
                        node: NODE,
                        epoch,
                        member: member.clone(),
                        lease: Some(*lease),
                    });
                }
            }
        }
        snapshot.push(ClusterEvent::Caught { revision: e.rev });
        for ev in snapshot {
            Self::to_member(w, k, ev);
        }
        Self::member_timer(w, k, w.coords[k].run);
    }

    fn members_event(e: &Etcd) -> ClusterEvent {
        ClusterEvent::Members {
            live: e
                .members
                .iter()
                .map(|(m, k)| (m.clone(), k.lease))
                .collect(),
            joined: e.joined,
        }
    }

    /// The member driver's keep-alive loop: register when not registered, else renew.
    pub(crate) fn member_timer(w: &mut World, k: usize, run: u64) {
        if !w.coords[k].up || w.coords[k].run != run {
            return;
        }
        let sent_at = w.at(w.now);
        match Self::of(w).driver[k] {
            (Some(lease), _) => Self::request(w, k, Req::KeepAlive { lease, sent_at }),
            (None, false) => {
                Self::of(w).driver[k].1 = true;
                Self::request(w, k, Req::Register { sent_at });
            }
            (None, true) => {}
        }
        let next = w.now + us(w.quorum_timings.unwrap_or_default().keepalive);
        w.push(next, Ev::MemberTimer { coord: k, run });
    }

    /// Sends a request from coordinator `k`; an op lost on the way answers "unknown".
    pub(crate) fn request(w: &mut World, k: usize, req: Req) {
        let run = w.coords[k].run;
        if w.now < w.coords[k].etcd_cut_until {
            match req {
                Req::Op(op) => {
                    let ev = ClusterEvent::Done { op, ok: None };
                    w.push(w.now + OP_TIMEOUT, Ev::ToMember { coord: k, run, ev });
                }
                Req::Register { .. } => {
                    let at = w.now + OP_TIMEOUT;
                    w.push(at, Ev::RegisterTimeout { coord: k, run });
                }
                Req::KeepAlive { .. } => {}
            }
            return;
        }
        let lat = Self::of(w).latency;
        let at = (w.now + w.rng.random_range(100..lat)).max(Self::of(w).stalled_until);
        w.push(at, Ev::EtcdApply { coord: k, run, req });
    }

    /// One message from etcd to coordinator `k`, in order after the previous ones.
    fn to_member(w: &mut World, k: usize, ev: ClusterEvent) {
        let run = w.coords[k].run;
        let lat = Self::of(w).latency;
        let at = (w.now + w.rng.random_range(100..lat)).max(Self::of(w).fifo[k]);
        Self::of(w).fifo[k] = at;
        w.push(at, Ev::ToMember { coord: k, run, ev });
    }

    /// A message reaches coordinator `k`: held while it is cut off (the watch resumes
    /// later), except answers to requests, which are lost and become "unknown".
    pub(crate) fn deliver(w: &mut World, k: usize, run: u64, ev: ClusterEvent) {
        if w.coords[k].run != run || !w.coords[k].up {
            return;
        }
        let cut = w.coords[k].etcd_cut_until;
        if w.now < cut {
            match ev {
                ClusterEvent::Done { op, .. } => {
                    let ev = ClusterEvent::Done { op, ok: None };
                    Coord::cluster(w, k, run, ev);
                }
                ClusterEvent::Registered { .. } | ClusterEvent::KeptAlive { .. } => {
                    if matches!(ev, ClusterEvent::Registered { .. }) {
                        Self::of(w).driver[k].1 = false;
                    }
                }
                _ => w.push(cut, Ev::ToMember { coord: k, run, ev }),
            }
            return;
        }
        match ev {
            ClusterEvent::Registered { lease, .. } => {
                Self::of(w).driver[k] = (Some(lease), false);
            }
            ClusterEvent::Lost => Self::of(w).driver[k].0 = None,
            _ => {}
        }
        Coord::cluster(w, k, run, ev);
    }

    /// Every live coordinator's watch gets `evs`, then "caught up".
    fn broadcast(w: &mut World, evs: Vec<ClusterEvent>) {
        let rev = Self::of(w).rev;
        for k in 0..w.coords.len() {
            if !w.coords[k].up {
                continue;
            }
            for ev in &evs {
                Self::to_member(w, k, ev.clone());
            }
            Self::to_member(w, k, ClusterEvent::Caught { revision: rev });
        }
    }

    /// etcd applies one request.
    pub(crate) fn apply(w: &mut World, k: usize, run: u64, req: Req) {
        if w.now < Self::of(w).stalled_until {
            let at = Self::of(w).stalled_until;
            w.push(at, Ev::EtcdApply { coord: k, run, req });
            return;
        }
        let name = Coord::name(k);
        let now = w.now;
        let e = Self::of(w);
        let (reply, changes): (Option<ClusterEvent>, Vec<ClusterEvent>) = match req {
            Req::Register { sent_at } => {
                e.next_lease += 1;
                e.rev += 1;
                let lease = e.next_lease;
                let key = MemberKey {
                    lease,
                    expiry: now + e.ttl,
                    since: e.rev,
                };
                e.members.insert(name, key);
                e.joined = e.rev;
                let reply = ClusterEvent::Registered {
                    lease,
                    revision: e.rev,
                    sent_at,
                };
                (Some(reply), vec![Self::members_event(e)])
            }
            Req::KeepAlive { lease, sent_at } => match e.members.get_mut(&name) {
                Some(m) if m.lease == lease => {
                    m.expiry = now + e.ttl;
                    (Some(ClusterEvent::KeptAlive { sent_at }), Vec::new())
                }
                _ => (Some(ClusterEvent::Lost), Vec::new()),
            },
            Req::Op(op) => {
                let (ok, changes) = Self::txn(e, &name, &op);
                if ok && let ClusterOp::Promote { to, .. } = &op {
                    w.check.promoted(now, to.0);
                }
                (Some(ClusterEvent::Done { op, ok: Some(ok) }), changes)
            }
        };
        if let Some(r) = reply {
            Self::to_member(w, k, r);
        }
        if !changes.is_empty() {
            Self::broadcast(w, changes);
        }
        Self::elect_decider(w);
    }

    fn txn(e: &mut Etcd, name: &str, op: &ClusterOp) -> (bool, Vec<ClusterEvent>) {
        match op {
            ClusterOp::Lapse {
                epoch,
                active,
                lease,
                ..
            } => {
                if e.elected != Some((*epoch, active.clone())) {
                    return (false, Vec::new());
                }
                e.rev += 1;
                e.marks.insert((*epoch, name.to_owned()), *lease);
                let ev = ClusterEvent::Mark {
                    node: NODE,
                    epoch: *epoch,
                    member: name.to_owned(),
                    lease: Some(*lease),
                };
                (true, vec![ev])
            }
            ClusterOp::Retract { epoch, active, .. } => {
                if e.elected != Some((*epoch, active.clone())) {
                    return (false, Vec::new());
                }
                if e.marks.remove(&(*epoch, name.to_owned())).is_none() {
                    return (true, Vec::new());
                }
                e.rev += 1;
                let ev = ClusterEvent::Mark {
                    node: NODE,
                    epoch: *epoch,
                    member: name.to_owned(),
                    lease: None,
                };
                (true, vec![ev])
            }
            ClusterOp::Promote {
                from,
                to,
                members,
                joined,
                ..
            } => {
                let marked = match from {
                    None => true,
                    Some((epoch, _)) => members
                        .iter()
                        .all(|(m, l)| e.marks.get(&(*epoch, m.clone())) == Some(l)),
                };
                if e.elected != *from || e.joined != *joined || !marked {
                    return (false, Vec::new());
                }
                e.rev += 1;
                e.elected = Some(to.clone());
                if let Some((epoch, _)) = from {
                    e.marks.retain(|(me, _), _| me != epoch);
                }
                let ev = ClusterEvent::Elected {
                    node: NODE,
                    epoch: to.0,
                    active: to.1.clone(),
                };
                (true, vec![ev])
            }
        }
    }

    /// etcd's election: the member with the oldest registration decides.
    fn elect_decider(w: &mut World) {
        let e = Self::of(w);
        let now = e
            .members
            .iter()
            .min_by_key(|(_, m)| m.since)
            .map(|(n, m)| (n.clone(), m.lease));
        if now == e.decider {
            return;
        }
        let before = std::mem::replace(&mut e.decider, now.clone());
        for (name, d) in [(before, false), (now, true)] {
            if let Some((name, _)) = name {
                let k: usize = name[1..].parse().expect("members are named c<index>");
                if w.coords[k].up {
                    Self::to_member(w, k, ClusterEvent::Decider(d));
                }
            }
        }
    }

    /// Lapsed member keys go away (not while etcd is stalled: it has no leader).
    pub(crate) fn expire(w: &mut World) {
        let now = w.now;
        let e = Self::of(w);
        if now >= e.stalled_until {
            let before = e.members.len();
            e.members.retain(|_, m| m.expiry > now);
            if e.members.len() != before {
                e.rev += 1;
                let ev = Self::members_event(e);
                Self::broadcast(w, vec![ev]);
                Self::elect_decider(w);
            }
        }
        w.push(now + EXPIRE_EVERY, Ev::EtcdExpire);
    }

    /// A leader change: nothing is applied until `until`, when every lease restarts.
    pub(crate) fn stall(w: &mut World, until: Time) {
        let ttl = Self::of(w).ttl;
        let e = Self::of(w);
        e.stalled_until = e.stalled_until.max(until);
        for m in e.members.values_mut() {
            m.expiry = m.expiry.max(until + ttl);
        }
    }

    /// A registration got no answer: try again.
    pub(crate) fn register_timeout(w: &mut World, k: usize, run: u64) {
        if w.coords[k].run == run {
            Self::of(w).driver[k].1 = false;
        }
    }
}
