//! The veth/netns test harness: the base of every test that sends real packets.
//!
//! Everything a test creates is a guard that cleans up on `Drop`, so a failing or
//! panicking test leaves no namespace, link or process behind:
//! - [`Netns`]: a network namespace (its links go with it), named `mgt-<pid>-<n>-<tag>` so
//!   two runs never collide and a later run can sweep what a killed run left;
//! - [`Process`]: a child process in its own process group, killed with its children;
//! - [`Lan`]: a bridge (inside its own namespace) that other namespaces plug into.
//!
//! Root-only tests are `#[ignore = "needs root: …"]` and run by `cargo xtask test`; use
//! [`require_root`] at their start so that running them by hand without root fails with
//! the reason instead of an obscure error.

pub mod arp;
pub mod bench;
pub mod cluster;
pub mod cpu;
pub mod etcd;
pub mod failover;
pub mod failover_trials;
pub mod ha;
pub mod http;
pub mod lab;
pub mod lan_view;
mod netns;
pub mod packet;
pub mod perf;
pub mod probe;
mod process;
pub mod reference;
pub mod timeline;
pub mod traffic;
pub mod transfer;
mod wait;

pub use netns::{Lan, Netns, remove_run, sweep_stale, veth};
pub use process::Process;
pub use wait::{wait_until, wait_until_ok};

/// Whether this process runs as root (network namespaces and XDP need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with the reason when not root. Root-only tests are `#[ignore]`d so a normal
/// `cargo test` never reaches this; someone running them by hand learns why they fail.
pub fn require_root() -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "this test needs root (network namespaces, XDP): run `sudo cargo xtask test`"
    );
    Ok(())
}
