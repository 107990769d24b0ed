//! The policy set and settings in the [`Store`]: `policies/{id}` and
//! `settings/policy`, as JSON. Writes are serialised by one mutex, which the API also
//! holds while it deletes a device or node, so a policy can never come to reference one
//! that is gone (see [`Book::refs_to`]).

use std::sync::{Mutex, MutexGuard};

use meshgate_proto::Id;

use super::model::{Endpoint, FieldError, MAX_POLICIES, Policy, PolicySpec, Settings};
use crate::registry::Registry;
use crate::store::{Compare, Op, StoreError};

const SETTINGS_KEY: &str = "settings/policy";

/// Why a policy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A field is wrong (400).
    #[error(transparent)]
    Field(FieldError),
    /// A field conflicts with another object (409).
    #[error(transparent)]
    Conflict(FieldError),
    /// No such policy (404).
    #[error("policy {0} not found")]
    NotFound(String),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::registry::RegistryError> for PolicyError {
    fn from(e: crate::registry::RegistryError) -> Self {
        match e {
            crate::registry::RegistryError::Store(s) => PolicyError::Store(s),
            other => PolicyError::Store(StoreError::Backend(other.to_string())),
        }
    }
}

type R<T> = Result<T, PolicyError>;

/// The policy book: reads and guarded writes.
#[derive(Default)]
pub struct Book {
    write: Mutex<()>,
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Backend(format!("corrupt record {key}: {e}")))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Book {
    /// Holds policy writes off; the API keeps it while deleting a device or node.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every policy, lowest precedence first.
    pub fn list(&self, reg: &Registry) -> R<Vec<Policy>> {
        let mut out: Vec<Policy> = reg
            .store()
            .range("policies/")?
            .iter()
            .map(|kv| decode(&kv.key, &kv.value))
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|p| p.precedence);
        Ok(out)
    }

    /// One policy.
    pub fn get(&self, reg: &Registry, id: Id) -> R<Policy> {
        let key = format!("policies/{id}");
        match reg.store().get(&key)? {
            Some(kv) => Ok(decode(&key, &kv.value)?),
            None => Err(PolicyError::NotFound(id.to_string())),
        }
    }

    /// The settings (defaults if never set).
    pub fn settings(&self, reg: &Registry) -> R<Settings> {
        Ok(match reg.store().get(SETTINGS_KEY)? {
            Some(kv) => decode(SETTINGS_KEY, &kv.value)?,
            None => Settings::default(),
        })
    }

    /// Replace the settings.
    pub fn set_settings(&self, reg: &Registry, s: Settings) -> R<()> {
        let _g = self.lock();
        let v = serde_json::to_vec(&s).expect("settings serialise");
        reg.store().put(SETTINGS_KEY, &v)?;
        Ok(())
    }

    /// Checks uniqueness and references; returns the guards that keep the referenced
    /// devices and nodes in place until the write commits.
    fn check(&self, reg: &Registry, spec: &PolicySpec, except: Option<Id>) -> R<Vec<Compare>> {
        let others: Vec<Policy> = self
            .list(reg)?
            .into_iter()
            .filter(|p| Some(p.id) != except)
            .collect();
        if except.is_none() && others.len() >= MAX_POLICIES {
            return Err(PolicyError::Conflict(FieldError::new(
                "name",
                format!("the mesh already has the maximum of {MAX_POLICIES} policies"),
            )));
        }
        if let Some(p) = others.iter().find(|p| p.name == spec.name) {
            return Err(PolicyError::Conflict(FieldError::new(
                "name",
                format!("policy {} already has the name {:?}", p.id, p.name),
            )));
        }
        if let Some(p) = others.iter().find(|p| p.precedence == spec.precedence) {
            return Err(PolicyError::Conflict(FieldError::new(
                "precedence",
                format!(
                    "policy {:?} already has precedence {}",
                    p.name, p.precedence
                ),
            )));
        }
        let mut guards = Vec::new();
        for (field, list) in [
            ("sources", &spec.sources),
            ("destinations", &spec.destinations),
        ] {
            for (i, e) in list.iter().enumerate() {
                let (key, what, id) = match e {
                    Endpoint::Device(id) => (format!("devices/{id}"), "device", id),
                    Endpoint::Node(id) => (format!("nodes/{id}"), "node", id),
                    _ => continue,
                };
                let kv = reg.store().get(&key)?.ok_or_else(|| {
                    PolicyError::Field(FieldError::new(
                        format!("{field}[{i}]"),
                        format!("no {what} with id {id}"),
                    ))
                })?;
                guards.push(Compare::ModRevision(key, kv.mod_revision));
            }
        }
        Ok(guards)
    }

    fn write(&self, reg: &Registry, mut guards: Vec<Compare>, p: &Policy) -> R<()> {
        let key = format!("policies/{}", p.id);
        let v = serde_json::to_vec(p).expect("policies serialise");
        guards.dedup();
        match reg.store().txn(&guards, &[Op::put(key, v)])? {
            Some(_) => Ok(()),
            None => Err(PolicyError::Conflict(FieldError::new(
                "sources",
                "a referenced device or node changed meanwhile; retry",
            ))),
        }
    }

    /// Create a policy.
    pub fn create(&self, reg: &Registry, spec: PolicySpec) -> R<Policy> {
        let _g = self.lock();
        let mut guards = self.check(reg, &spec, None)?;
        let id = Id::random();
        guards.push(Compare::Absent(format!("policies/{id}")));
        let p = Policy::from_spec(id, spec, now_rfc3339());
        self.write(reg, guards, &p)?;
        Ok(p)
    }

    /// Replace a policy's fields.
    pub fn update(&self, reg: &Registry, id: Id, spec: PolicySpec) -> R<Policy> {
        let _g = self.lock();
        let old = self.get(reg, id)?;
        let guards = self.check(reg, &spec, Some(id))?;
        let p = Policy {
            created_at: old.created_at,
            ..Policy::from_spec(id, spec, now_rfc3339())
        };
        self.write(reg, guards, &p)?;
        Ok(p)
    }

    /// Delete a policy.
    pub fn delete(&self, reg: &Registry, id: Id) -> R<Policy> {
        let _g = self.lock();
        let p = self.get(reg, id)?;
        reg.store().delete(&format!("policies/{id}"))?;
        Ok(p)
    }

    /// The names of the policies that reference device or node `id`. Deleting a
    /// referenced device or node is refused: dropping the reference could silently
    /// widen a block policy, and keeping it dangling hides that it means nothing now.
    pub fn refs_to(&self, reg: &Registry, id: Id) -> R<Vec<String>> {
        Ok(self
            .list(reg)?
            .into_iter()
            .filter(|p| {
                p.sources
                    .iter()
                    .chain(&p.destinations)
                    .any(|e| matches!(e, Endpoint::Device(x) | Endpoint::Node(x) if *x == id))
            })
            .map(|p| p.name)
            .collect())
    }
}
