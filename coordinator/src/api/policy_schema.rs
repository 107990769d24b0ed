//! The policy endpoints' bodies as typed schemas for the OpenAPI document. The handlers
//! in `policies.rs` parse their bodies field by field (for precise messages), so the
//! request types here document that parsing; the answers are built from these types.

use serde::Serialize;
use utoipa::ToSchema;

use super::schema::{Name, ObjectId, Timestamp};
use crate::policy::model::{Action, Policy, Protocol, Settings};

/// What a matching policy does.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    /// Let the flow through, with its replies.
    Allow,
    /// Drop it.
    Block,
}

impl From<Action> for PolicyAction {
    fn from(a: Action) -> Self {
        match a {
            Action::Allow => Self::Allow,
            Action::Block => Self::Block,
        }
    }
}

/// A protocol a policy can name.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
}

/// A source or destination: `any`, `device:ID`, `node:ID`, `tag:NAME` or `cidr:NETWORK`.
#[derive(ToSchema)]
#[schema(
    value_type = String,
    pattern = r"^(any|(device|node):[0-9a-fA-F-]{32,36}|tag:[A-Za-z0-9._-]{1,63}|cidr:[0-9./]+)$",
    example = "tag:ops"
)]
pub struct PolicyEndpoint(pub String);

/// A destination port or inclusive range: `22` or `8000-8100`.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = r"^[0-9]{1,5}(-[0-9]{1,5})?$", example = "8000-8100")]
pub struct PortSpec(pub String);

/// `POST /api/v1/policies`, `PUT /api/v1/policies/{id}`.
#[derive(ToSchema)]
pub struct PolicyBody {
    /// Unique among policies.
    #[schema(value_type = Name)]
    pub name: String,
    /// Lower matches first; unique among policies.
    pub precedence: u32,
    /// What a match does.
    pub action: PolicyAction,
    /// Who sends.
    #[schema(value_type = Vec<PolicyEndpoint>)]
    pub sources: Vec<String>,
    /// Who receives.
    #[schema(value_type = Vec<PolicyEndpoint>)]
    pub destinations: Vec<String>,
    /// Empty or absent: any protocol.
    #[schema(value_type = Option<Vec<PolicyProtocol>>)]
    pub protocols: Option<Vec<String>>,
    /// Empty or absent: any port.
    #[schema(value_type = Option<Vec<PortSpec>>)]
    pub ports: Option<Vec<String>>,
}

/// A policy.
#[derive(Serialize, ToSchema)]
pub struct PolicyView {
    /// Its id.
    #[schema(value_type = ObjectId)]
    pub id: String,
    /// Its name.
    #[schema(value_type = Name)]
    pub name: String,
    /// Lower matches first.
    pub precedence: u32,
    /// What a match does.
    pub action: PolicyAction,
    /// Who sends.
    #[schema(value_type = Vec<PolicyEndpoint>)]
    pub sources: Vec<String>,
    /// Who receives.
    #[schema(value_type = Vec<PolicyEndpoint>)]
    pub destinations: Vec<String>,
    /// Empty: any protocol.
    pub protocols: Vec<PolicyProtocol>,
    /// Empty: any port.
    #[schema(value_type = Vec<PortSpec>)]
    pub ports: Vec<String>,
    /// When it was created.
    #[schema(value_type = Timestamp)]
    pub created_at: String,
    /// When it last changed.
    #[schema(value_type = Timestamp)]
    pub updated_at: String,
}

impl From<&Policy> for PolicyView {
    fn from(p: &Policy) -> Self {
        let strings = |v: &[_]| v.iter().map(ToString::to_string).collect();
        Self {
            id: p.id.to_string(),
            name: p.name.clone(),
            precedence: p.precedence,
            action: p.action.into(),
            sources: strings(&p.sources),
            destinations: strings(&p.destinations),
            protocols: p
                .protocols
                .iter()
                .map(|p| match p {
                    Protocol::Tcp => PolicyProtocol::Tcp,
                    Protocol::Udp => PolicyProtocol::Udp,
                    Protocol::Icmp => PolicyProtocol::Icmp,
                })
                .collect(),
            ports: p.ports.iter().map(ToString::to_string).collect(),
            created_at: p.created_at.clone(),
            updated_at: p.updated_at.clone(),
        }
    }
}

/// A policy with what agents counted for it.
#[derive(Serialize, ToSchema)]
pub struct PolicyShown {
    /// The policy.
    #[serde(flatten)]
    pub policy: PolicyView,
    /// Its counters.
    pub counters: PolicyCounters,
}

/// What agents reported for one policy.
#[derive(Serialize, ToSchema)]
pub struct PolicyCounters {
    /// Flows it matched.
    pub matches: u64,
    /// Flows it dropped (a block policy's matches).
    pub drops: u64,
}

/// `GET/PUT /api/v1/settings`.
#[derive(Serialize, ToSchema)]
pub struct SettingsBody {
    /// What happens to a packet no policy matches.
    pub default_action: PolicyAction,
}

impl From<Settings> for SettingsBody {
    fn from(s: Settings) -> Self {
        Self {
            default_action: s.default_action.into(),
        }
    }
}

/// `PATCH /api/v1/nodes/{id}`, `PATCH /api/v1/devices/{id}`.
#[derive(ToSchema)]
pub struct TagsBody {
    /// The new tags (at most 32), replacing the old ones.
    #[schema(value_type = Vec<super::schema::Tag>, max_items = 32)]
    pub tags: Vec<String>,
}

/// `POST /api/v1/policies/test`.
#[derive(ToSchema)]
pub struct PolicyQuestion {
    /// An IPv4 address, `device:ID` or `node:ID`.
    pub source: String,
    /// An IPv4 address.
    #[schema(value_type = super::schema::Ipv4)]
    pub destination: String,
    /// The protocol.
    pub protocol: PolicyProtocol,
    /// The destination port (not for ICMP).
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<u16>,
}

/// Which policy decides a packet, and why.
#[derive(Serialize, ToSchema)]
pub struct PolicyDecision {
    /// The outcome.
    pub action: PolicyAction,
    /// The deciding policy; null when the default action applies.
    pub policy: Option<DecidingPolicy>,
    /// Why, for a person.
    pub reason: String,
    /// The source address the question resolved to.
    #[schema(value_type = super::schema::Ipv4)]
    pub source: String,
    /// The participants whose agents enforce it (`device:ID`, `node:ID`).
    pub enforced_by: Vec<String>,
}

/// The policy that decided.
#[derive(Serialize, ToSchema)]
pub struct DecidingPolicy {
    /// Its id.
    #[schema(value_type = ObjectId)]
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its precedence.
    pub precedence: u32,
}
