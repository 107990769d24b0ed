//! Compilation: per participant, the policies in which it (or a subnet it advertises) is
//! a destination, resolved to networks and narrowed to what it receives, in precedence
//! order; then cut into [`Filter`] chunks that each fit a control frame.

use ipnet::Ipv4Net;
use meshgate_proto::{Filter, FilterRule};
use sha2::{Digest, Sha256};

use super::model::{Action, Policy, Settings};
use super::world::{World, intersect};

/// Encoded bytes a chunk may fill: well under the frame limit, so the estimate below
/// (an upper bound of postcard's size) can never overflow a frame.
const CHUNK_BUDGET: usize = meshgate_proto::frame::MAX_FRAME / 2;
/// Upper bound of one network's postcard size (4 address bytes and a prefix byte).
const NET_BYTES: usize = 5;
/// Upper bound of a rule's fixed part (id, flags, list lengths, protocols).
const RULE_BYTES: usize = 64;

/// Each policy with its sources and destinations resolved once, for compiling many
/// participants' filters.
#[derive(Default)]
pub struct Resolved {
    rules: Vec<(Policy, Vec<Ipv4Net>, Vec<Ipv4Net>)>,
    default_allow: bool,
}

impl Resolved {
    /// Resolves `sorted` (in precedence order) against `world`.
    pub fn new(world: &World, sorted: &[Policy], settings: Settings) -> Self {
        let rules = sorted
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    Ipv4Net::aggregate(&world.resolve_all(&p.sources)),
                    world.resolve_all(&p.destinations),
                )
            })
            .filter(|(_, s, d)| !s.is_empty() && !d.is_empty())
            .collect();
        Self {
            rules,
            default_allow: settings.default_action == Action::Allow,
        }
    }

    /// The rules of a participant that receives `local` from the tunnel.
    pub fn rules_for(&self, local: &[Ipv4Net]) -> Vec<FilterRule> {
        let mut out = Vec::new();
        for (p, sources, dsts) in &self.rules {
            let destinations = Ipv4Net::aggregate(&intersect(dsts, local));
            if destinations.is_empty() {
                continue;
            }
            let protocols: Vec<u8> = p
                .effective_protocols()
                .map(|ps| ps.iter().map(|x| x.number()).collect())
                .unwrap_or_default();
            let ports: Vec<(u16, u16)> = p.ports.iter().map(|r| (r.0, r.1)).collect();
            // A rule too big for one chunk becomes several rules of the same policy with
            // parts of its sources: the same packets match, in the same place.
            let fixed = RULE_BYTES + NET_BYTES * destinations.len() + 6 * ports.len();
            let per = (CHUNK_BUDGET.saturating_sub(fixed) / NET_BYTES).max(1);
            for part in sources.chunks(per) {
                out.push(FilterRule {
                    policy: p.id,
                    allow: p.action == Action::Allow,
                    sources: part.to_vec(),
                    destinations: destinations.clone(),
                    protocols: protocols.clone(),
                    ports: ports.clone(),
                });
            }
        }
        out
    }

    /// The filter of a participant that receives `local`, as chunks.
    pub fn filter_for(&self, local: &[Ipv4Net]) -> Vec<Filter> {
        chunks(self.default_allow, self.rules_for(local))
    }
}

fn estimate(r: &FilterRule) -> usize {
    RULE_BYTES + NET_BYTES * (r.sources.len() + r.destinations.len()) + 6 * r.ports.len()
}

/// A stable hash of a whole filter: what the agent compares to skip a filter it already
/// enforces.
pub fn digest(default_allow: bool, rules: &[FilterRule]) -> u64 {
    let bytes = postcard::to_allocvec(&(default_allow, rules)).expect("rules serialise");
    let h = Sha256::digest(&bytes);
    u64::from_be_bytes(h[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

/// Cuts `rules` into chunks that fit a frame each (always at least one chunk).
pub fn chunks(default_allow: bool, rules: Vec<FilterRule>) -> Vec<Filter> {
    let digest = digest(default_allow, &rules);
    let mut parts: Vec<Vec<FilterRule>> = vec![Vec::new()];
    let mut used = 0;
    for r in rules {
        let size = estimate(&r);
        if used + size > CHUNK_BUDGET && !parts.last().is_some_and(Vec::is_empty) {
            parts.push(Vec::new());
            used = 0;
        }
        used += size;
        parts.last_mut().expect("parts is never empty").push(r);
    }
    let total = parts.len() as u16;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, rules)| Filter {
            digest,
            chunk: i as u16,
            chunks: total,
            default_allow,
            rules,
        })
        .collect()
}
