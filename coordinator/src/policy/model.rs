//! The policy model as the API and the store see it, and its validation: every bad field
//! is refused with an error that names it (`sources[1]`, `ports[0]`, ...).

use std::fmt;
use std::str::FromStr;

use ipnet::Ipv4Net;
use meshgate_proto::Id;
use serde::{Deserialize, Serialize};

pub use super::input::{FieldError, PolicyInput, PolicySpec, parse_spec};

/// Most entries a policy's `sources`, `destinations` or `ports` may list.
pub const MAX_ENTRIES: usize = 256;
/// Most policies a mesh may hold (compiled filters stay a few frames at most).
pub const MAX_POLICIES: usize = 10_000;
/// Most tags a node or device may carry.
pub const MAX_TAGS: usize = 32;

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the flow through, with its replies.
    Allow,
    /// Drop it.
    Block,
}

/// A source or destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Every address.
    Any,
    /// A device's Mesh IP.
    Device(Id),
    /// A node's replicas' Mesh IPs and the routes it advertises.
    Node(Id),
    /// Every device and node carrying the tag.
    Tag(String),
    /// A network.
    Cidr(Ipv4Net),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Any => f.write_str("any"),
            Endpoint::Device(id) => write!(f, "device:{id}"),
            Endpoint::Node(id) => write!(f, "node:{id}"),
            Endpoint::Tag(t) => write!(f, "tag:{t}"),
            Endpoint::Cidr(n) => write!(f, "cidr:{n}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "any" {
            return Ok(Endpoint::Any);
        }
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("{s:?} is not one of any, device:ID, node:ID, tag:NAME, cidr:NETWORK")
        })?;
        match kind {
            "device" => rest
                .parse()
                .map(Endpoint::Device)
                .map_err(|_| format!("{rest:?} is not a device id")),
            "node" => rest
                .parse()
                .map(Endpoint::Node)
                .map_err(|_| format!("{rest:?} is not a node id")),
            "tag" => validate_tag(rest).map(|()| Endpoint::Tag(rest.to_owned())),
            "cidr" => parse_cidr(rest).map(Endpoint::Cidr),
            other => Err(format!(
                "unknown kind {other:?}: use any, device:ID, node:ID, tag:NAME or cidr:NETWORK"
            )),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_cidr(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = if s.contains('/') {
        s.parse()
            .map_err(|_| format!("{s:?} is not an IPv4 network"))?
    } else {
        let ip: std::net::Ipv4Addr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 network"))?;
        Ipv4Net::from(ip)
    };
    if net.trunc() != net {
        return Err(format!(
            "{s} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Tags are names: 1-63 of letters, digits, `-`, `_`, `.`.
pub fn validate_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 63
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {t:?}: use 1-63 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Checks a tag list (field `tags`) and returns it sorted without duplicates.
pub fn validate_tags(tags: &[String]) -> Result<Vec<String>, FieldError> {
    if tags.len() > MAX_TAGS {
        return Err(FieldError::new("tags", format!("at most {MAX_TAGS} tags")));
    }
    for (i, t) in tags.iter().enumerate() {
        validate_tag(t).map_err(|e| FieldError::new(format!("tags[{i}]"), e))?;
    }
    let mut out = tags.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// A transport protocol a policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1).
    Icmp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
        }
    }

    /// Whether the protocol has ports.
    pub fn has_ports(self) -> bool {
        self != Protocol::Icmp
    }
}

/// An inclusive destination port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange(pub u16, pub u16);

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1-65535) or range (a-b)")),
                Ok(v) => Ok(v),
            }
        };
        let r = match s.split_once('-') {
            Some((a, b)) => PortRange(port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                PortRange(p, p)
            }
        };
        if r.0 > r.1 {
            return Err(format!("range {s:?} ends before it starts"));
        }
        Ok(r)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A stored policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Id.
    pub id: Id,
    /// Unique name.
    pub name: String,
    /// Lower matches first; unique across policies.
    pub precedence: u32,
    /// What it does.
    pub action: Action,
    /// Who sends.
    pub sources: Vec<Endpoint>,
    /// Who receives.
    pub destinations: Vec<Endpoint>,
    /// Empty: any protocol (any port-bearing one if `ports` is set).
    pub protocols: Vec<Protocol>,
    /// Empty: any port.
    pub ports: Vec<PortRange>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl Policy {
    /// A policy made of `spec`, created and updated at `now`.
    pub fn from_spec(id: Id, spec: PolicySpec, now: String) -> Self {
        Policy {
            id,
            name: spec.name,
            precedence: spec.precedence,
            action: spec.action,
            sources: spec.sources,
            destinations: spec.destinations,
            protocols: spec.protocols,
            ports: spec.ports,
            created_at: now.clone(),
            updated_at: now,
        }
    }

    /// The protocols this policy matches; `None` for any protocol at all.
    pub fn effective_protocols(&self) -> Option<Vec<Protocol>> {
        match (self.protocols.is_empty(), self.ports.is_empty()) {
            (true, true) => None,
            (true, false) => Some(vec![Protocol::Tcp, Protocol::Udp]),
            (false, _) => Some(self.protocols.clone()),
        }
    }
}

/// The mesh-wide policy settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// What happens to a packet no policy matches.
    pub default_action: Action,
}

impl Default for Settings {
    fn default() -> Self {
        // Existing meshes keep working when policies arrive.
        Self {
            default_action: Action::Allow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: serde_json::Value) -> PolicyInput {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({"name": "ssh", "precedence": 100, "action": "allow",
               "sources": ["tag:ops"], "destinations": ["cidr:10.0.0.0/8"],
               "protocols": ["tcp"], "ports": ["22", "8000-8100"]})
    }

    #[test]
    fn parses_a_full_policy() {
        let s = parse_spec(&input(base())).unwrap();
        assert_eq!(s.action, Action::Allow);
        assert_eq!(s.sources, vec![Endpoint::Tag("ops".into())]);
        assert_eq!(s.ports, vec![PortRange(22, 22), PortRange(8000, 8100)]);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("name", json!(""), "name"),
            ("precedence", json!(-1), "precedence"),
            ("precedence", json!("high"), "precedence"),
            ("action", json!("permit"), "action"),
            ("sources", json!([]), "sources"),
            ("sources", json!(["any", "device:nope"]), "sources[1]"),
            (
                "destinations",
                json!(["cidr:10.0.0.1/8"]),
                "destinations[0]",
            ),
            ("destinations", json!("any"), "destinations"),
            ("protocols", json!(["sctp"]), "protocols[0]"),
            ("ports", json!(["0"]), "ports[0]"),
            ("ports", json!(["22", "90-80"]), "ports[1]"),
            ("ports", json!(["70000"]), "ports[0]"),
        ];
        for (field, value, named) in cases {
            let mut v = base();
            v[field] = value.clone();
            let e = parse_spec(&input(v)).unwrap_err();
            assert_eq!(e.field, named, "{field}={value}: {e}");
        }
        let mut v = base();
        v["protocols"] = json!(["icmp"]);
        assert_eq!(parse_spec(&input(v)).unwrap_err().field, "ports");
        let mut v = base();
        v.as_object_mut().unwrap().remove("sources");
        assert_eq!(parse_spec(&input(v)).unwrap_err().field, "sources");
    }

    #[test]
    fn endpoints_round_trip() {
        for s in [
            "any",
            "tag:db",
            "cidr:192.168.50.0/24",
            "node:00112233-4455-6677-8899-aabbccddeeff",
        ] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
        assert_eq!(
            "cidr:10.1.2.3".parse::<Endpoint>().unwrap(),
            Endpoint::Cidr("10.1.2.3/32".parse().unwrap())
        );
    }

    #[test]
    fn ports_without_protocols_mean_tcp_and_udp() {
        let mut v = base();
        v["protocols"] = json!([]);
        let s = parse_spec(&input(v)).unwrap();
        let p = Policy {
            id: Id([0; 16]),
            name: s.name,
            precedence: s.precedence,
            action: s.action,
            sources: s.sources,
            destinations: s.destinations,
            protocols: s.protocols,
            ports: s.ports,
            created_at: String::new(),
            updated_at: String::new(),
        };
        assert_eq!(
            p.effective_protocols(),
            Some(vec![Protocol::Tcp, Protocol::Udp])
        );
    }
}
