//! The agent's failover core: a deterministic state machine with an injected clock and no
//! I/O. It turns what the coordinator says (role, epoch, lease, the active replica's LAN
//! identity, routes) and what the agent sees (its LAN link, its health targets, a shutdown
//! request) into an ordered list of kernel steps. The runtime (`runtime.rs`) applies them.
//!
//! The order is what keeps two replicas from forwarding at once:
//! - **demote**: XDP role off (bouncing to the successor at once, if one is known), then
//!   the VIP released, then the standby routing table;
//! - **promote**: the active routing table, then XDP role on, then the VIP with
//!   gratuitous ARP.
//!
//! A replica forwards only while the coordinator says it is active *and* its own view of
//! the lease is valid (see `meshgate_proto::lease`): when the lease deadline passes
//! without a renewal — the coordinator is unreachable, or this process was frozen — the
//! core fences the data plane at once, before the coordinator can promote anyone.

use std::time::Instant;

use ipnet::Ipv4Net;
use meshgate_proto::{HandoverReason, LanInfo, Role};

/// What the data plane is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// Forwards between the mesh and the LAN, in `epoch`.
    Active {
        /// The lease's epoch.
        epoch: u64,
    },
    /// Sends mesh-bound traffic to the active replica (hairpin), if one is known.
    Standby {
        /// The node's epoch as last told.
        epoch: u64,
        /// The active replica's LAN identity; `None` while no replica is active.
        active: Option<LanInfo>,
    },
    /// Forwards nothing: deposed, drained, or its lease ran out.
    Fenced {
        /// The node's epoch as last told.
        epoch: u64,
    },
}

impl Forwarding {
    /// The data plane's role in this state.
    pub fn role(&self) -> Role {
        match self {
            Self::Active { .. } => Role::Active,
            Self::Standby { .. } => Role::Standby,
            Self::Fenced { .. } => Role::Fenced,
        }
    }

    /// The epoch this state was decided in.
    pub fn epoch(&self) -> u64 {
        match *self {
            Self::Active { epoch } | Self::Standby { epoch, .. } | Self::Fenced { epoch } => epoch,
        }
    }
}

/// Which prepared routing table the policy rule selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Mesh-bound prefixes go into the TUN.
    Active,
    /// Mesh-bound prefixes go via the active replica on the LAN (or are unreachable).
    Standby,
}

/// One kernel step, applied in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Install this set of mesh-bound prefixes in both prepared tables.
    InstallRoutes(Vec<Ipv4Net>),
    /// Point the standby table (and the XDP hairpin) at this active replica.
    SetActivePeer(Option<LanInfo>),
    /// Point only the XDP hairpin at this active replica: one map write, so a demoted
    /// active can bounce to its successor the moment its XDP role changes, before the
    /// slower routing-table step.
    SetHairpin(LanInfo),
    /// Set the XDP program's role and epoch.
    SetXdpRole {
        /// The role the program enforces.
        role: Role,
        /// The epoch it is valid in.
        epoch: u64,
    },
    /// Make the policy rule select this table.
    SelectTable(Table),
    /// Add the VIP to the LAN interface and announce it with gratuitous ARP.
    AcquireVip,
    /// Remove the VIP from the LAN interface.
    ReleaseVip,
    /// Ask the coordinator to move the active role elsewhere.
    RequestHandover(HandoverReason),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The coordinator's current view of this replica (from a Welcome, a RoleChange or a
    /// LeaseGrant), with the agent-side lease deadline.
    Status {
        /// This replica's role.
        role: Role,
        /// The node's epoch.
        epoch: u64,
        /// The active replica's LAN identity.
        active: Option<LanInfo>,
        /// When this replica must stop forwarding (agent view), if it holds a lease.
        lease_deadline: Option<Instant>,
    },
    /// The mesh-bound prefixes changed (the mesh range plus other nodes' routes).
    Routes(Vec<Ipv4Net>),
    /// The session to the coordinator ended; the lease runs out on its own.
    Disconnected,
    /// The LAN link went up or down.
    Link {
        /// Whether the link is up.
        up: bool,
    },
    /// The health targets (`--health-target`) stopped or started answering.
    Health {
        /// Whether at least one target answers.
        healthy: bool,
    },
    /// The agent is shutting down and wants to hand over first.
    Drain,
    /// Time passed (delivered at [`Failover::next_deadline`] at the latest).
    Tick,
}

/// Whether this agent is a node replica (LAN, XDP, VIP) or a device (TUN and routes only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A replica of a gateway node.
    Node,
    /// A client device: always forwards its own traffic.
    Device,
}

/// The failover core. See the module docs.
#[derive(Debug)]
pub struct Failover {
    mode: Mode,
    forwarding: Forwarding,
    role: Role,
    epoch: u64,
    active: Option<LanInfo>,
    lease_deadline: Option<Instant>,
    routes: Option<Vec<Ipv4Net>>,
    link_up: bool,
    healthy: bool,
    draining: bool,
    handover_requested: bool,
}

impl Failover {
    /// A core that forwards nothing yet: a starting agent has no lease.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            forwarding: Forwarding::Fenced { epoch: 0 },
            role: Role::Fenced,
            epoch: 0,
            active: None,
            lease_deadline: None,
            routes: None,
            link_up: true,
            healthy: true,
            draining: false,
            handover_requested: false,
        }
    }

    /// The steps a starting agent takes before it knows anything: the data plane fenced
    /// and the standby table selected, so nothing forwards until a lease says so.
    pub fn initial_actions(&self) -> Vec<Action> {
        match self.mode {
            Mode::Node => vec![
                Action::SetXdpRole {
                    role: Role::Fenced,
                    epoch: 0,
                },
                Action::ReleaseVip,
                Action::SelectTable(Table::Standby),
            ],
            Mode::Device => vec![Action::SelectTable(Table::Active)],
        }
    }

    /// What the data plane is doing now.
    pub fn forwarding(&self) -> Forwarding {
        self.forwarding
    }

    /// The coordinator's view of this replica's role (which may differ from
    /// [`Self::forwarding`] when the lease ran out).
    pub fn role(&self) -> Role {
        self.role
    }

    /// The node's epoch as last told (never goes back).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The agent-side lease deadline, if this replica holds a lease.
    pub fn lease_deadline(&self) -> Option<Instant> {
        self.lease_deadline
    }

    /// The lease deadline after a [`Event::Status`] with these fields. The agent hears
    /// from every coordinator it is connected to, each renewing the same lease: a grant
    /// from any of them extends the lease of the epoch this replica is active in (the
    /// latest deadline counts, since each one alone is safe; see
    /// `meshgate_proto::lease`), while a status of another epoch or role replaces it.
    pub fn lease_after(
        &self,
        role: Role,
        epoch: u64,
        deadline: Option<Instant>,
    ) -> Option<Instant> {
        if epoch < self.epoch {
            return self.lease_deadline;
        }
        let same_lease = role == Role::Active && self.role == Role::Active && epoch == self.epoch;
        if same_lease {
            self.lease_deadline.max(deadline)
        } else {
            deadline
        }
    }

    /// Whether this replica can serve its subnet: LAN link up and health targets answering.
    /// One that cannot is not eligible for the active role.
    pub fn serviceable(&self) -> bool {
        self.link_up && self.healthy
    }

    /// Whether a drain was asked for.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// When the runtime must deliver [`Event::Tick`] at the latest: the lease deadline
    /// while forwarding.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.forwarding {
            Forwarding::Active { .. } if self.mode == Mode::Node => self.lease_deadline,
            _ => None,
        }
    }

    /// Feeds one event; returns the steps to apply, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        // A lease that ran out while nobody looked (the process was frozen or starved, so
        // no tick came) fences the data plane before anything this event asks for.
        if matches!(self.forwarding, Forwarding::Active { .. })
            && self.mode == Mode::Node
            && self.lease_deadline.is_none_or(|d| now >= d)
        {
            let fenced = Forwarding::Fenced { epoch: self.epoch };
            self.transition(fenced, &mut actions);
        }
        match event {
            Event::Status {
                role,
                epoch,
                active,
                lease_deadline,
            } => {
                // Epochs never go back: a late message of an older epoch changes nothing.
                if epoch < self.epoch {
                    return actions;
                }
                self.lease_deadline = self.lease_after(role, epoch, lease_deadline);
                self.role = role;
                self.epoch = epoch;
                self.active = active;
                if role != Role::Active {
                    self.handover_requested = false;
                }
            }
            Event::Routes(mut routes) => {
                routes.sort();
                routes.dedup();
                if self.routes.as_ref() != Some(&routes) {
                    self.routes = Some(routes.clone());
                    actions.push(Action::InstallRoutes(routes));
                }
            }
            Event::Disconnected => {
                // Keep the lease we have: it expires on its own, and the coordinator
                // cannot promote anyone before it does.
                self.active = if self.role == Role::Standby {
                    self.active
                } else {
                    None
                };
            }
            Event::Link { up } => self.link_up = up,
            Event::Health { healthy } => self.healthy = healthy,
            Event::Drain => self.draining = true,
            Event::Tick => {}
        }
        if self.mode == Mode::Node && !self.handover_requested {
            // An active hands over; a standby that cannot serve asks the same way, which
            // makes the coordinator fence it: it is then never promoted until it registers
            // again, healthy.
            let reason = match self.role {
                Role::Active if self.draining => Some(HandoverReason::Drain),
                Role::Active | Role::Standby if !self.link_up => Some(HandoverReason::LinkDown),
                Role::Active | Role::Standby if !self.healthy => Some(HandoverReason::Unhealthy),
                _ => None,
            };
            if let Some(reason) = reason {
                self.handover_requested = true;
                actions.push(Action::RequestHandover(reason));
            }
        }
        let target = self.target(now);
        self.transition(target, &mut actions);
        actions
    }

    /// What the data plane should be doing at `now`.
    fn target(&self, now: Instant) -> Forwarding {
        let epoch = self.epoch;
        if self.mode == Mode::Device {
            return Forwarding::Active { epoch };
        }
        match self.role {
            Role::Active if self.lease_deadline.is_some_and(|d| now < d) => {
                Forwarding::Active { epoch }
            }
            // Promoted, the first grant not in yet (it follows the promotion at once): stay
            // the standby it was. Fencing for that moment would make the standby table
            // unreachable, and the kernel's reverse-path check would then drop what the
            // coordinator already sends here from the mesh.
            Role::Active
                if self.lease_deadline.is_none()
                    && matches!(self.forwarding, Forwarding::Standby { .. }) =>
            {
                self.forwarding
            }
            // Handed over on a drain: what still arrives (from LAN hosts whose ARP entry
            // names this replica until the successor's announcement reaches them) is
            // bounced to the successor, as any standby does, while the agent drains.
            Role::Fenced if self.draining && self.link_up && self.active.is_some() => {
                Forwarding::Standby {
                    epoch,
                    active: self.active,
                }
            }
            // Active on paper but the lease ran out: fence before the coordinator's view of
            // the lease expires (it always expires later than ours).
            Role::Active | Role::Fenced => Forwarding::Fenced { epoch },
            Role::Standby => Forwarding::Standby {
                epoch,
                active: self.active,
            },
        }
    }

    fn transition(&mut self, target: Forwarding, actions: &mut Vec<Action>) {
        let from = self.forwarding;
        if from == target {
            return;
        }
        self.forwarding = target;
        if self.mode == Mode::Device {
            return;
        }
        let peer = |f: Forwarding| match f {
            Forwarding::Standby { active, .. } => active,
            _ => None,
        };
        match (from, target) {
            (Forwarding::Active { .. }, Forwarding::Active { epoch }) => {
                actions.push(Action::SetXdpRole {
                    role: Role::Active,
                    epoch,
                });
            }
            (Forwarding::Active { .. }, _) => {
                if let Some(successor) = peer(target) {
                    actions.push(Action::SetHairpin(successor));
                }
                actions.push(Action::SetXdpRole {
                    role: target.role(),
                    epoch: target.epoch(),
                });
                actions.push(Action::ReleaseVip);
                actions.push(Action::SetActivePeer(peer(target)));
                actions.push(Action::SelectTable(Table::Standby));
            }
            (_, Forwarding::Active { epoch }) => {
                actions.push(Action::SelectTable(Table::Active));
                actions.push(Action::SetXdpRole {
                    role: Role::Active,
                    epoch,
                });
                actions.push(Action::AcquireVip);
            }
            (_, _) => {
                if peer(from) != peer(target) {
                    actions.push(Action::SetActivePeer(peer(target)));
                }
                if from.role() != target.role() || from.epoch() != target.epoch() {
                    actions.push(Action::SetXdpRole {
                        role: target.role(),
                        epoch: target.epoch(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
