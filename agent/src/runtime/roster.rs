//! Which coordinators the agent keeps a connection to: the token's addresses first, then
//! the members the coordinators announce ([`meshgate_proto::Members`]), at most
//! `--max-coordinators`. Pure: the runtime starts and stops connections by the keys it
//! returns.

use meshgate_proto::Member;

/// One coordinator to stay connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Names the connection across roster changes: the address it was first known by (a
    /// token address when the token names the coordinator), so a coordinator that a
    /// member list merely describes again keeps its connection.
    pub key: String,
    /// Addresses to dial, in order; `key` first.
    pub addrs: Vec<String>,
}

impl Target {
    fn new(key: &str, rest: &[String]) -> Self {
        let mut addrs = vec![key.to_owned()];
        addrs.extend(rest.iter().filter(|a| *a != key).cloned());
        Self {
            key: key.to_owned(),
            addrs,
        }
    }
}

/// The coordinators to connect to: members that the token names (in token order), then
/// the other members (in name order), then token addresses no member claims (a member
/// that is down now, or a cluster that has not said who it is yet); at most `max`. A
/// member with several addresses is one target, so the agent never holds two
/// connections to one coordinator (the second would replace the first).
pub fn targets(token: &[String], members: Option<&[Member]>, max: usize) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let taken = |out: &[Target], addr: &str| out.iter().any(|t| t.addrs.iter().any(|a| a == addr));
    let members = members.unwrap_or_default();
    let mut sorted: Vec<&Member> = members
        .iter()
        .filter(|m| !m.public_addrs.is_empty())
        .collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for addr in token {
        if taken(&out, addr) {
            continue;
        }
        if let Some(m) = sorted.iter().find(|m| m.public_addrs.contains(addr)) {
            out.push(Target::new(addr, &m.public_addrs));
        }
    }
    for m in &sorted {
        if !m.public_addrs.iter().any(|a| taken(&out, a)) {
            out.push(Target::new(&m.public_addrs[0], &m.public_addrs));
        }
    }
    for addr in token {
        if !taken(&out, addr) {
            out.push(Target::new(addr, &[]));
        }
    }
    out.truncate(max);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, addrs: &[&str]) -> Member {
        Member {
            name: name.into(),
            public_addrs: addrs.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn keys(t: &[Target]) -> Vec<&str> {
        t.iter().map(|t| t.key.as_str()).collect()
    }

    fn token(addrs: &[&str]) -> Vec<String> {
        addrs.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn before_any_member_list_every_token_address_is_a_target() {
        let t = targets(&token(&["a:1", "b:1", "a:1"]), None, 4);
        assert_eq!(keys(&t), ["a:1", "b:1"]);
        assert_eq!(keys(&targets(&token(&["a:1", "b:1"]), None, 1)), ["a:1"]);
    }

    #[test]
    fn members_join_after_the_token_ones_and_leave_again() {
        let tok = token(&["c1:1", "c2:1"]);
        let three = [m("c3", &["c3:1"]), m("c2", &["c2:1"]), m("c1", &["c1:1"])];
        assert_eq!(
            keys(&targets(&tok, Some(&three), 4)),
            ["c1:1", "c2:1", "c3:1"]
        );
        // c3 left; c1 is down (not listed) but the token names it: still dialled.
        let one = [m("c2", &["c2:1"])];
        assert_eq!(keys(&targets(&tok, Some(&one), 4)), ["c2:1", "c1:1"]);
    }

    #[test]
    fn a_member_with_several_addresses_is_one_connection() {
        let tok = token(&["[fd00::1]:1", "10.0.0.1:1", "10.0.0.2:1"]);
        let members = [
            m("c1", &["10.0.0.1:1", "[fd00::1]:1"]),
            m("c2", &["10.0.0.2:1"]),
        ];
        let t = targets(&tok, Some(&members), 4);
        assert_eq!(keys(&t), ["[fd00::1]:1", "10.0.0.2:1"]);
        assert_eq!(t[0].addrs, ["[fd00::1]:1", "10.0.0.1:1"]);
    }

    #[test]
    fn at_most_max_and_live_members_before_silent_token_addresses() {
        let tok = token(&["gone:1", "c1:1"]);
        let members: Vec<Member> = (1..=5)
            .map(|i| m(&format!("c{i}"), &[&format!("c{i}:1")]))
            .collect();
        let t = targets(&tok, Some(&members), 4);
        assert_eq!(keys(&t), ["c1:1", "c2:1", "c3:1", "c4:1"]);
    }
}
