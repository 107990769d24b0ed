//! The fault schedule of a run and what each fault does.

use rand::Rng as _;

use crate::agent::Agent;
use crate::coord::Coord;
use crate::etcd::{EXPIRE_EVERY, Etcd};
use crate::world::{Ev, Fault, Time, World, us};

impl World {
    pub(crate) fn schedule_faults(&mut self) {
        let mut chaos: Time = self.rng.random_range(400_000..1_500_000);
        let n = self.agents.len();
        let nc = self.coords.len();
        let kinds = if self.etcd.is_some() { 10 } else { 6 };
        for _ in 0..self.rng.random_range(0..6) {
            let at = self.rng.random_range(0..chaos);
            let agent = self.rng.random_range(0..n);
            let coord = self.rng.random_range(0..nc);
            let f = match self.rng.random_range(0..kinds) {
                0 => Fault::Freeze {
                    agent,
                    until: at + self.rng.random_range(10_000..700_000),
                },
                1 => Fault::Partition {
                    agent,
                    until: at + self.rng.random_range(10_000..700_000),
                },
                2 => Fault::Kill { agent },
                3 => Fault::Drain { agent },
                6 => Fault::CutEtcd {
                    coord,
                    until: at + self.rng.random_range(10_000..1_500_000),
                },
                7 => Fault::CutAgents {
                    coord,
                    until: at + self.rng.random_range(10_000..700_000),
                },
                8 => Fault::EtcdStall {
                    until: at + self.rng.random_range(100_000..400_000),
                },
                9 => Fault::Isolate {
                    coord,
                    agent,
                    until: at + self.rng.random_range(500_000..2_000_000),
                },
                _ => Fault::CoordDown {
                    coord,
                    until: at + self.rng.random_range(0..300_000),
                },
            };
            // Healing waits for every freeze and partition to end on its own, so what
            // they held back arrives as it would.
            if let Fault::Freeze { until, .. }
            | Fault::Partition { until, .. }
            | Fault::CutEtcd { until, .. }
            | Fault::CutAgents { until, .. }
            | Fault::EtcdStall { until }
            | Fault::Isolate { until, .. } = f
            {
                chaos = chaos.max(until);
            }
            self.push(at, Ev::Fault(f));
        }
        self.push(chaos, Ev::Fault(Fault::Heal));
        self.check.heal_at(chaos);
        // Long enough after healing for a back-off, a restart hold and a lease (and, in a
        // cluster, a restarted member's old key to be replaced).
        let mut kill = chaos + 1_000_000;
        if self.etcd.is_some() {
            // Then a coordinator dies while the active is healthy; its key expires
            // before the active is killed.
            self.push(kill, Ev::Fault(Fault::KillCoord));
            kill += us(crate::CLUSTER_TIMINGS.member_ttl) + 500_000;
            self.push(EXPIRE_EVERY, Ev::EtcdExpire);
        }
        self.push(kill, Ev::Fault(Fault::KillActive));
        self.push(kill + 500_000, Ev::Fault(Fault::End));
        for a in 0..n {
            let at = self.rng.random_range(0..50_000);
            self.push(at, Ev::Fault(Fault::Restart { agent: a }));
        }
        for k in 0..nc {
            Coord::start(self, k, 0);
        }
    }

    pub(crate) fn fault(&mut self, f: Fault) {
        match f {
            Fault::Freeze { agent, until } => self.agents[agent].frozen_until = until,
            Fault::Partition { agent, until } => self.agents[agent].partitioned_until = until,
            Fault::Kill { agent } => Agent::kill(self, agent),
            Fault::Restart { agent } => Agent::start(self, agent),
            Fault::Drain { agent } => Agent::drain(self, agent),
            Fault::CoordDown { coord, until } => {
                self.outcome.restarts += 1;
                Coord::crash(self, coord);
                self.push(until, Ev::Fault(Fault::CoordUp { coord }));
            }
            Fault::CoordUp { coord } => {
                let now = self.now;
                Coord::start(self, coord, now);
            }
            Fault::CutEtcd { coord, until } => {
                let c = &mut self.coords[coord];
                c.etcd_cut_until = c.etcd_cut_until.max(until);
            }
            Fault::CutAgents { coord, until } => {
                let c = &mut self.coords[coord];
                c.agents_cut_until = c.agents_cut_until.max(until);
            }
            Fault::EtcdStall { until } => Etcd::stall(self, until),
            Fault::Isolate {
                coord,
                agent,
                until,
            } => {
                let c = &mut self.coords[coord];
                c.etcd_cut_until = c.etcd_cut_until.max(until);
                for k in (0..self.coords.len()).filter(|k| *k != coord) {
                    let cut = self.link_cut.entry((agent, k)).or_default();
                    *cut = (*cut).max(until);
                }
            }
            Fault::Exit { agent, life } => Agent::exit(self, agent, life),
            Fault::Heal => {
                self.faults = None;
                for a in 0..self.agents.len() {
                    if !self.agents[a].alive || self.agents[a].draining {
                        Agent::kill(self, a);
                        Agent::start(self, a);
                    }
                    let now = self.now;
                    Agent::arm(self, a, now);
                }
                let now = self.now;
                for k in 0..self.coords.len() {
                    Coord::start(self, k, now);
                }
            }
            Fault::KillCoord => {
                let at = self.at(self.now);
                let active: Vec<(usize, u64)> = self
                    .agents
                    .iter()
                    .filter_map(|a| a.forwarding(at).map(|e| (a.idx, e)))
                    .collect();
                let k = self.rng.random_range(0..self.coords.len());
                if let [(a, epoch)] = active[..] {
                    self.check.coordinator_died(self.now, a, epoch);
                }
                self.log(|| format!("coordinator {k} dies for good"));
                Coord::crash(self, k);
            }
            Fault::KillActive => {
                let at = self.at(self.now);
                let active: Vec<usize> = self
                    .agents
                    .iter()
                    .filter(|a| a.forwarding(at).is_some())
                    .map(|a| a.idx)
                    .collect();
                if let [a] = active[..] {
                    self.check.killed_active(self.now, a);
                    Agent::kill(self, a);
                }
            }
            Fault::End => {}
        }
    }
}
