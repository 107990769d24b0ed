//! Shared by the BPF_PROG_TEST_RUN tests: the root check and a packet builder.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod netns;
pub mod packet;

use meshgate_agent::dataplane::Dataplane;

/// True when the test can use BPF; otherwise prints why it is skipped. A skipped test
/// passes, so the reason is written to file descriptor 2 directly: libtest captures
/// `eprintln!` and `io::stderr()` and would swallow it for a passing test.
pub fn have_bpf(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let msg = format!(
            "SKIPPED {test}: needs root (CAP_BPF + CAP_NET_ADMIN) to load XDP programs and run BPF_PROG_TEST_RUN\n"
        );
        // SAFETY: writes `msg.len()` bytes from a live buffer to fd 2; a short or failed
        // write only loses the notice.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        return false;
    }
    true
}

/// A freshly loaded dataplane: it must load, so failure (e.g. the verifier) fails loudly.
pub fn dataplane() -> Dataplane {
    match Dataplane::load() {
        Ok(dp) => dp,
        Err(e) => panic!("loading xdp_gateway failed: {e}"),
    }
}
