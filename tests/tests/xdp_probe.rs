//! Foundation check: the eBPF object loads, its probe program attaches to a veth inside a
//! namespace in native and in skb mode, counts the pings that cross it, and counts nothing
//! once detached.

use aya::programs::XdpMode;
use meshgate_agent::dataplane::Probe;
use meshgate_tests::{Netns, require_root, veth};

const PINGS: u64 = 5;
/// An ICMP echo request of ping's default size in an Ethernet frame.
const ECHO_FRAME_BYTES: u64 = 98;

fn ping(from: &Netns, to: &str) -> anyhow::Result<()> {
    from.exec(
        "ping",
        &["-c", &PINGS.to_string(), "-i", "0.05", "-W", "2", "-q", to],
    )?;
    Ok(())
}

fn probe_counts_pings(mode: XdpMode) -> anyhow::Result<()> {
    require_root()?;
    let a = Netns::new("a")?;
    let b = Netns::new("b")?;
    veth(&a, "eth0", &b, "eth0")?;
    a.ip("addr add 10.210.0.1/24 dev eth0")?;
    b.ip("addr add 10.210.0.2/24 dev eth0")?;

    let mut probe = b.enter(|| Probe::attach("eth0", mode).map_err(anyhow::Error::from))??;
    ping(&a, "10.210.0.2")?;
    let seen = probe.counters()?;
    assert!(
        seen.packets >= PINGS,
        "the probe saw {} packets, expected at least {PINGS}",
        seen.packets
    );
    assert!(
        seen.bytes >= PINGS * ECHO_FRAME_BYTES,
        "the probe saw {} bytes, expected at least {}",
        seen.bytes,
        PINGS * ECHO_FRAME_BYTES
    );

    probe.detach()?;
    ping(&a, "10.210.0.2")?;
    assert_eq!(
        probe.counters()?,
        seen,
        "a detached probe must count nothing"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: network namespaces and XDP (run by `cargo xtask test`)"]
fn probe_counts_pings_in_native_mode() -> anyhow::Result<()> {
    probe_counts_pings(XdpMode::Driver)
}

#[test]
#[ignore = "needs root: network namespaces and XDP (run by `cargo xtask test`)"]
fn probe_counts_pings_in_skb_mode() -> anyhow::Result<()> {
    probe_counts_pings(XdpMode::Skb)
}
