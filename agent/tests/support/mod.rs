//! Shared by the BPF_PROG_TEST_RUN tests: the root check and a packet builder.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod netns;
pub mod packet;

use meshgate_agent::dataplane::Dataplane;

/// Root-only tests are `#[ignore]`d (so a plain `cargo test` lists them as ignored with
/// the reason) and run as root by `cargo xtask test`; run by hand without root, they fail
/// here with the reason instead of passing silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test needs root (CAP_BPF + CAP_NET_ADMIN): run `sudo cargo xtask test`"
    );
}

/// A freshly loaded dataplane: it must load, so failure (e.g. the verifier) fails loudly.
pub fn dataplane() -> Dataplane {
    match Dataplane::load() {
        Ok(dp) => dp,
        Err(e) => panic!("loading xdp_gateway failed: {e}"),
    }
}
