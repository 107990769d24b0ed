//! A policy as the API receives it, field by field: each bad field is refused with an
//! error that names it (`sources[1]`, `ports[0]`, ...), and a good body becomes a
//! [`PolicySpec`].

use serde::Deserialize;

use super::model::{Action, Endpoint, MAX_ENTRIES, PortRange, Protocol};

/// A policy as the API receives it: every field raw, so that each error can name its
/// field instead of failing the whole body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyInput {
    /// Name.
    pub name: Option<serde_json::Value>,
    /// Precedence.
    pub precedence: Option<serde_json::Value>,
    /// Action.
    pub action: Option<serde_json::Value>,
    /// Sources.
    pub sources: Option<serde_json::Value>,
    /// Destinations.
    pub destinations: Option<serde_json::Value>,
    /// Protocols.
    #[serde(default)]
    pub protocols: Option<serde_json::Value>,
    /// Ports.
    #[serde(default)]
    pub ports: Option<serde_json::Value>,
}

/// A refused field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, with an index for list entries (`sources[2]`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The checked fields of a policy, before it gets an id and timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// Name.
    pub name: String,
    /// Precedence.
    pub precedence: u32,
    /// Action.
    pub action: Action,
    /// Sources.
    pub sources: Vec<Endpoint>,
    /// Destinations.
    pub destinations: Vec<Endpoint>,
    /// Protocols, sorted, deduplicated.
    pub protocols: Vec<Protocol>,
    /// Port ranges, sorted, deduplicated.
    pub ports: Vec<PortRange>,
}

fn required<'a>(
    v: &'a Option<serde_json::Value>,
    field: &str,
) -> Result<&'a serde_json::Value, FieldError> {
    match v {
        None | Some(serde_json::Value::Null) => Err(FieldError::new(field, "is required")),
        Some(v) => Ok(v),
    }
}

fn string_list(v: Option<&serde_json::Value>, field: &str) -> Result<Vec<String>, FieldError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let arr = v
        .as_array()
        .ok_or_else(|| FieldError::new(field, "must be a list of strings"))?;
    if arr.len() > MAX_ENTRIES {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_ENTRIES} entries"),
        ));
    }
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_str()
                .map(str::to_owned)
                .ok_or_else(|| FieldError::new(format!("{field}[{i}]"), "must be a string"))
        })
        .collect()
}

fn endpoints(v: &Option<serde_json::Value>, field: &str) -> Result<Vec<Endpoint>, FieldError> {
    let list = string_list(Some(required(v, field)?), field)?;
    if list.is_empty() {
        return Err(FieldError::new(
            field,
            "must list at least one entry (use \"any\" for everything)",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let e: Endpoint = s
            .parse()
            .map_err(|m| FieldError::new(format!("{field}[{i}]"), m))?;
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Checks the syntax of every field (references to devices and nodes are checked
/// against the registry by the caller).
pub fn parse_spec(input: &PolicyInput) -> Result<PolicySpec, FieldError> {
    let name = required(&input.name, "name")?
        .as_str()
        .ok_or_else(|| FieldError::new("name", "must be a string"))?
        .trim()
        .to_owned();
    crate::registry::validate_name(&name).map_err(|e| FieldError::new("name", e.to_string()))?;
    let precedence = required(&input.precedence, "precedence")?
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| FieldError::new("precedence", "must be an integer from 0 to 4294967295"))?;
    let action = match required(&input.action, "action")?.as_str() {
        Some("allow") => Action::Allow,
        Some("block") => Action::Block,
        _ => return Err(FieldError::new("action", "must be \"allow\" or \"block\"")),
    };
    let sources = endpoints(&input.sources, "sources")?;
    let destinations = endpoints(&input.destinations, "destinations")?;
    let mut protocols = Vec::new();
    for (i, p) in string_list(input.protocols.as_ref(), "protocols")?
        .iter()
        .enumerate()
    {
        protocols.push(match p.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            _ => {
                return Err(FieldError::new(
                    format!("protocols[{i}]"),
                    format!("{p:?} is not one of tcp, udp, icmp"),
                ));
            }
        });
    }
    protocols.sort();
    protocols.dedup();
    let mut ports = Vec::new();
    for (i, p) in string_list(input.ports.as_ref(), "ports")?
        .iter()
        .enumerate()
    {
        ports.push(
            p.parse::<PortRange>()
                .map_err(|m| FieldError::new(format!("ports[{i}]"), m))?,
        );
    }
    ports.sort();
    ports.dedup();
    if !ports.is_empty() && protocols.contains(&Protocol::Icmp) {
        // Matching ICMP regardless of the ports would widen the policy silently.
        return Err(FieldError::new(
            "ports",
            "ICMP has no ports: put ICMP in a policy of its own",
        ));
    }
    Ok(PolicySpec {
        name,
        precedence,
        action,
        sources,
        destinations,
        protocols,
        ports,
    })
}
