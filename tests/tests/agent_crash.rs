//! A replica's agent killed with SIGKILL (the commonest fault: a crash on a live host)
//! cannot clean up after itself, so what it put in the kernel must go without it: the
//! VIP lapses (it is a kernel lease the live agent renews), the XDP program goes with its
//! link (owned by the process), the TUN with its file descriptor. What stays — the two
//! routing tables, their rules, the sysctls and the nftables MSS table — is harmless
//! without an agent, and the next start reconciles it.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use meshgate_tests::{
    arp,
    ha::{HOST_IP, Ha},
    lab::bin,
    lan_view::vip_addr,
    require_root, wait_until,
};

/// The promise: a killed active's VIP is off its interface within this.
const VIP_GONE_WITHIN: Duration = Duration::from_secs(2);

#[test]
#[ignore = "needs root: network namespaces and XDP (run by `cargo xtask test`)"]
fn killed_active_loses_its_vip_and_only_the_successor_answers_arp() -> anyhow::Result<()> {
    require_root()?;
    let mut ha = Ha::new(2)?;
    ha.start_replica(0, &[])?;
    ha.wait_forwarding(0, "active")?;
    ha.start_replica(1, &[])?;
    ha.wait_forwarding(1, "standby")?;
    wait_until(Duration::from_secs(5), "replica a to hold the VIP", || {
        ha.has_vip(0)
    })?;
    // Past several renewals, so the lease is the renewed one, not the first put.
    std::thread::sleep(Duration::from_millis(1500));
    anyhow::ensure!(ha.has_vip(0)?, "a live active keeps its VIP");

    let agent = ha.replicas[0].agent.as_mut().expect("started above");
    agent.process.signal(libc::SIGKILL)?;
    let killed = Instant::now();
    agent.process.wait_exit(Duration::from_secs(5))?;
    while ha.has_vip(0)? {
        anyhow::ensure!(
            killed.elapsed() < VIP_GONE_WITHIN,
            "the killed active still holds the VIP {:?} after the kill",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "the killed active's VIP was gone {:.0} ms after the kill",
        killed.elapsed().as_secs_f64() * 1e3
    );

    // The XDP program (its link belonged to the process) and the TUN went too.
    let links = ha.replicas[0].ns.ip("-j link show")?;
    let links: serde_json::Value = serde_json::from_str(&links)?;
    for link in links.as_array().into_iter().flatten() {
        assert!(
            link.get("xdp").is_none(),
            "an XDP program outlived its agent: {link}"
        );
        assert_ne!(link["ifname"], "mesh0", "the TUN outlived its agent");
    }

    // What stays (tables and rules, harmless without the agent) goes with `cleanup`,
    // which the systemd unit runs after every stop.
    let ns = &ha.replicas[0].ns;
    assert!(
        ns.ip("rule show")?.contains("7310"),
        "the selector rule stays"
    );
    ns.exec(&bin("meshgate-agent")?.display().to_string(), &["cleanup"])?;
    let rules = ns.ip("rule show")?;
    assert!(
        !rules.contains("7300") && !rules.contains("7305") && !rules.contains("7310"),
        "cleanup removes the rules: {rules}"
    );
    assert!(ns.ip("route show table 7302")?.trim().is_empty());

    ha.wait_forwarding(1, "active")?;
    wait_until(Duration::from_secs(5), "replica b to hold the VIP", || {
        ha.has_vip(1)
    })?;
    let successor = ha.lan_mac(1)?;
    let answers = arp::who_has(
        &ha.host,
        "eth0",
        HOST_IP.parse()?,
        vip_addr().parse::<Ipv4Addr>()?,
        Duration::from_millis(500),
    )?;
    assert_eq!(
        answers.into_iter().collect::<Vec<_>>(),
        vec![successor],
        "exactly the successor answers ARP for the VIP"
    );
    Ok(())
}
