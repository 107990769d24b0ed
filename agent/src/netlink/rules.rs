//! Policy rules, by reconciliation. A rule has no identity besides its fields, so the
//! desired set and the kernel's set (our `proto` only) are compared as sets: missing rules
//! are added *before* extra ones are deleted. For the selector that ordering is the flip:
//! the new `lookup` rule is inserted at the same priority, behind the old one (equal
//! priorities match in insertion order), and the old one is then deleted, so there is never
//! a moment without a selector.

use std::collections::BTreeSet;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteHeader, RouteProtocol},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use tracing::{debug, info};

use super::{Error, Netlink, is_exists, is_not_found};

/// IP version of a rule (a rule with neither `from` nor `to` still has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of a prefix.
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }
}

/// One `ip rule`: `pref <priority> [from <src>] [to <dst>] lookup <table>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSpec {
    /// IP version.
    pub family: Family,
    /// The rule's priority (`pref`).
    pub priority: u32,
    /// `from`, if any.
    pub src: Option<IpNet>,
    /// `to`, if any.
    pub dst: Option<IpNet>,
    /// `lookup`.
    pub table: u32,
}

/// The kernel's `main` table.
pub const MAIN_TABLE: u32 = 254;

/// The rule set we own.
pub type RuleSet = BTreeSet<RuleSpec>;

impl Netlink {
    /// Our rules (tagged `proto`), both families.
    pub async fn our_rules(&self, proto: u8) -> Result<RuleSet, Error> {
        let mut set = RuleSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RuleMessage::default();
            req.header.family = family;
            for msg in self
                .dump(RouteNetlinkMessage::GetRule(req), "dump rules")
                .await?
            {
                if let RouteNetlinkMessage::NewRule(rule) = msg
                    && let Some(spec) = parse(&rule, proto)
                {
                    set.insert(spec);
                }
            }
        }
        Ok(set)
    }

    /// Turns `actual` into `desired`: adds first, then deletes. Returns (added, removed).
    pub async fn apply_rules(
        &self,
        desired: &RuleSet,
        actual: &RuleSet,
        proto: u8,
    ) -> Result<(usize, usize), Error> {
        let add: Vec<_> = desired.difference(actual).collect();
        let remove: Vec<_> = actual.difference(desired).collect();
        for rule in &add {
            self.add_rule(rule, proto).await?;
        }
        for rule in &remove {
            self.delete_rule(rule, proto).await?;
        }
        Ok((add.len(), remove.len()))
    }

    /// Adds one rule; "exists" is success.
    pub async fn add_rule(&self, rule: &RuleSpec, proto: u8) -> Result<(), Error> {
        let res = self
            .ack(
                RouteNetlinkMessage::NewRule(message(rule, proto)),
                NLM_F_CREATE | NLM_F_EXCL,
                || format!("add rule {rule:?}"),
            )
            .await;
        match res {
            Ok(()) => {
                info!(priority = rule.priority, table = rule.table, src = ?rule.src, dst = ?rule.dst, "rule added");
                Ok(())
            }
            Err(e) if is_exists(&e) => {
                debug!(?rule, "rule already exists");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes one rule; "not found" is success.
    pub async fn delete_rule(&self, rule: &RuleSpec, proto: u8) -> Result<(), Error> {
        let res = self
            .ack(
                RouteNetlinkMessage::DelRule(message(rule, proto)),
                0,
                || format!("delete rule {rule:?}"),
            )
            .await;
        match res {
            Ok(()) => {
                info!(priority = rule.priority, table = rule.table, src = ?rule.src, dst = ?rule.dst, "rule removed");
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                debug!(?rule, "rule already gone");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn message(rule: &RuleSpec, proto: u8) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = match rule.family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    msg.header.action = RuleAction::ToTable;
    msg.header.table = u8::try_from(rule.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.attributes.push(RuleAttribute::Table(rule.table));
    msg.attributes.push(RuleAttribute::Priority(rule.priority));
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(proto)));
    if let Some(src) = rule.src {
        msg.header.src_len = src.prefix_len();
        msg.attributes.push(RuleAttribute::Source(src.network()));
    }
    if let Some(dst) = rule.dst {
        msg.header.dst_len = dst.prefix_len();
        msg.attributes
            .push(RuleAttribute::Destination(dst.network()));
    }
    msg
}

/// Reads back a dumped rule if it is ours and of the only shape we install.
fn parse(rule: &RuleMessage, proto: u8) -> Option<RuleSpec> {
    let family = match rule.header.family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    let mut table = u32::from(rule.header.table);
    let mut priority = 0;
    let mut ours = false;
    let mut src = None;
    let mut dst = None;
    for attr in &rule.attributes {
        match attr {
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Protocol(p) => ours = u8::from(*p) == proto,
            RuleAttribute::Source(a) => src = IpNet::new(*a, rule.header.src_len).ok(),
            RuleAttribute::Destination(a) => dst = IpNet::new(*a, rule.header.dst_len).ok(),
            _ => {}
        }
    }
    ours.then_some(RuleSpec {
        family,
        priority,
        src,
        dst,
        table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_message_parses_back_to_the_same_rule() {
        for rule in [
            RuleSpec {
                family: Family::V4,
                priority: 7310,
                src: None,
                dst: None,
                table: 7301,
            },
            RuleSpec {
                family: Family::V4,
                priority: 7300,
                src: None,
                dst: Some("203.0.113.7/32".parse().unwrap()),
                table: MAIN_TABLE,
            },
            RuleSpec {
                family: Family::V6,
                priority: 7305,
                src: Some("fd00::5/128".parse().unwrap()),
                dst: None,
                table: 7301,
            },
        ] {
            assert_eq!(parse(&message(&rule, 109), 109), Some(rule));
            assert_eq!(
                parse(&message(&rule, 109), 110),
                None,
                "another owner's rule"
            );
        }
    }
}
