//! `--xdp-mode auto` must not pick a mode whose standby hairpin drops silently: native
//! `XDP_TX` on a veth whose peer runs no native XDP program loses every frame (the
//! frames wait on the peer's XDP ring, which nothing drains). The LAN here is a bridge
//! whose ports are such veth peers, as on many VMs and containers. A LAN host that routes
//! the mesh via a *standby's* own address must still get answers with default flags.

use meshgate_tests::{
    ha::{HOST_IP, Ha, wait_ping},
    require_root,
};

#[test]
#[ignore = "needs root: network namespaces and XDP (run by `cargo xtask test`)"]
fn auto_mode_hairpins_through_a_standby_on_a_veth_without_peer_xdp() -> anyhow::Result<()> {
    require_root()?;
    let mut ha = Ha::new(2)?;
    ha.start_all(&[])?;
    let device_ip = ha.device_mesh_ip()?;
    wait_ping(&ha.device, HOST_IP)?;

    // The LAN host sends its mesh traffic to the standby's own address.
    let standby_ip = ha.replicas[1].lan_ip.clone();
    ha.host
        .ip(&format!("route replace 100.96.0.0/12 via {standby_ip}"))?;
    let out = ha.host.exec(
        "ping",
        &["-c", "5", "-i", "0.2", "-W", "2", "-w", "10", &device_ip],
    )?;
    assert!(out.contains(" 0% packet loss"), "{out}");
    let standby = ha.status(1)?;
    assert_eq!(standby["forwarding"], "standby");
    assert_eq!(
        standby["xdp_mode"], "skb",
        "auto mode on a veth whose peer has no XDP: {standby}"
    );
    let note = standby["xdp_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("auto chose skb") && note.contains("veth"),
        "status says why: {note:?}"
    );
    let log = ha.agent(1)?.process.log();
    assert!(log.contains("auto chose skb"), "the log says why too");

    let hairpinned = ha.status(1)?["counters"]["xdp_verdicts"]["hairpin"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        hairpinned >= 5,
        "the standby's XDP bounced the pings ({hairpinned} hairpinned)"
    );
    Ok(())
}
