//! Hit and drop counters as agents report them: cumulative per agent run, summed here
//! across agents. A report lower than the previous one from the same replica means its
//! agent restarted; the previous value is kept as a base, so totals never go backwards.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;

use meshgate_proto::{FilterCounters, Id};

/// What a count is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// Packets that matched a policy's rule.
    Policy(Id),
    /// Packets dropped by the default action.
    DefaultDrop,
    /// Packets let through by the default action.
    DefaultAllow,
}

#[derive(Default)]
struct Reporter {
    last: HashMap<Key, u64>,
    base: HashMap<Key, u64>,
}

/// Counters of every reporting agent, by (participant, replica).
#[derive(Default)]
pub struct Counters {
    by_agent: Mutex<HashMap<(Id, String), Reporter>>,
}

impl Counters {
    /// Records one agent's report.
    pub fn report(&self, participant: Id, replica: &str, c: &FilterCounters) {
        let mut m = self.by_agent.lock().unwrap_or_else(|e| e.into_inner());
        let r = m.entry((participant, replica.to_owned())).or_default();
        let new: HashMap<Key, u64> = c
            .policies
            .iter()
            .map(|(id, n)| (Key::Policy(*id), *n))
            .chain([
                (Key::DefaultDrop, c.default_drops),
                (Key::DefaultAllow, c.default_allows),
            ])
            .collect();
        let restarted = r
            .last
            .iter()
            .any(|(k, old)| new.get(k).is_some_and(|n| n < old));
        if restarted {
            for (k, old) in r.last.drain() {
                *r.base.entry(k).or_default() += old;
            }
        }
        for (k, n) in new {
            r.last.insert(k, n);
        }
    }

    /// Totals across agents.
    pub fn totals(&self) -> HashMap<Key, u64> {
        let m = self.by_agent.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<Key, u64> = HashMap::new();
        for r in m.values() {
            for (k, v) in r.last.iter().chain(&r.base) {
                *out.entry(*k).or_default() += v;
            }
        }
        out
    }

    /// Prometheus text: matches per policy, drops by policy and reason.
    pub fn prometheus(&self, names: &HashMap<Id, (String, bool)>) -> String {
        let totals = self.totals();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP meshgate_policy_matches_total Packets that matched a network policy at an agent (allowed flow checks and drops).\n# TYPE meshgate_policy_matches_total counter"
        );
        let mut drops = Vec::new();
        let mut rows: Vec<_> = totals.iter().collect();
        rows.sort_by_key(|(k, _)| format!("{k:?}"));
        for (k, v) in rows {
            match k {
                Key::Policy(id) => {
                    let (name, allow) = names
                        .get(id)
                        .cloned()
                        .unwrap_or_else(|| (id.to_string(), true));
                    let _ = writeln!(s, "meshgate_policy_matches_total{{policy=\"{name}\"}} {v}");
                    if !allow {
                        drops.push((name, "policy", *v));
                    }
                }
                Key::DefaultDrop => drops.push(("default".into(), "default", *v)),
                Key::DefaultAllow => {}
            }
        }
        let _ = writeln!(
            s,
            "# HELP meshgate_policy_drops_total Packets agents dropped by network policy, by policy and reason.\n# TYPE meshgate_policy_drops_total counter"
        );
        for (name, reason, v) in drops {
            let _ = writeln!(
                s,
                "meshgate_policy_drops_total{{policy=\"{name}\",reason=\"{reason}\"}} {v}"
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_survive_an_agent_restart() {
        let c = Counters::default();
        let p = Id([7; 16]);
        let rep = |n| FilterCounters {
            policies: vec![(p, n)],
            default_drops: n,
            default_allows: 0,
        };
        c.report(Id([1; 16]), "a", &rep(10));
        c.report(Id([1; 16]), "a", &rep(15));
        c.report(Id([1; 16]), "a", &rep(3)); // restarted
        c.report(Id([2; 16]), "b", &rep(1));
        assert_eq!(c.totals()[&Key::Policy(p)], 15 + 3 + 1);
        assert_eq!(c.totals()[&Key::DefaultDrop], 19);
    }
}
