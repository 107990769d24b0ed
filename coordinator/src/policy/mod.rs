//! Network policies: who may reach what. The coordinator holds them ([`book`]),
//! resolves them against devices, nodes, routes and tags ([`world`]), compiles per
//! participant the rules in which it is a destination ([`compile`]) and pushes them
//! ([`push`]); each agent enforces its filter with nftables and conntrack on packets
//! arriving from the tunnel, and reports counters back ([`counters`]). [`eval`] is the
//! reference semantics, used by `POST /api/v1/policies/test`.

pub mod book;
pub mod compile;
pub mod counters;
pub mod eval;
mod input;
pub mod model;
pub mod push;
pub mod world;

#[cfg(test)]
mod tests;

pub use book::{Book, PolicyError};
pub use model::{Action, Endpoint, FieldError, Policy, PolicySpec, Settings};

/// The coordinator's policy state that is not in the store.
#[derive(Default)]
pub struct Engine {
    /// The stored policies and settings.
    pub book: Book,
    /// Counters reported by agents.
    pub counters: counters::Counters,
    /// Poked after every change made through this coordinator's API, so the push does
    /// not wait for the store's watch.
    pub changed: tokio::sync::Notify,
}
