//! Root-only: the TUN device carries real packets both ways and vanishes with its fd.

mod common;

use std::{process::Command, time::Duration};

use common::{addrs, ip_json, run_in, strs};
use meshgate_agent::{
    netlink::{DesiredRouting, Netlink, Routing, RoutingConfig, StandbyPath, Table},
    tun::Tun,
};
use meshgate_tests::{Netns, require_root};

/// The Internet checksum over `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Turns an IPv4 ICMP echo request into its reply.
fn echo_reply(request: &[u8]) -> Vec<u8> {
    let mut p = request.to_vec();
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let (src, dst) = (p[12..16].to_vec(), p[16..20].to_vec());
    p[12..16].copy_from_slice(&dst);
    p[16..20].copy_from_slice(&src);
    p[10..12].fill(0);
    let c = checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[ihl] = 0; // echo reply
    p[ihl + 2..ihl + 4].fill(0);
    let c = checksum(&p[ihl..]);
    p[ihl + 2..ihl + 4].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
#[ignore = "needs root: network namespaces"]
fn tun_reads_a_ping_and_delivers_the_reply_we_write() -> anyhow::Result<()> {
    require_root()?;
    let ns = Netns::new("tun")?;
    run_in(&ns, || async {
        let tun = Tun::create("mesh0", 1380)?;
        let nl = Netlink::connect()?;
        nl.add_address(tun.index(), "100.96.0.5/32".parse()?, 109)
            .await?;
        let mut routing = Routing::new(nl, RoutingConfig::default());
        routing
            .reconcile(&DesiredRouting {
                prefixes: vec!["100.96.0.0/12".parse()?],
                tun: tun.name().to_owned(),
                standby: StandbyPath::Empty,
                mesh_ip: Some("100.96.0.5".parse()?),
                coordinator: None,
                selected: Table::Active,
            })
            .await?;

        let link = &ip_json(&ns, "link show dev mesh0")?[0];
        assert_eq!(link["mtu"], 1380);
        assert!(
            link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{link}"
        );
        assert_eq!(addrs(&ns, "mesh0")?, strs(&["100.96.0.5/32"]));

        // A child spawned from this thread lives in the namespace too.
        let mut ping = Command::new("ping")
            .args(["-c", "1", "-W", "5", "-q", "100.96.0.9"])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let mut buf = vec![0u8; 2048];
        let request = loop {
            let n = tokio::time::timeout(Duration::from_secs(5), tun.recv(&mut buf)).await??;
            let p = &buf[..n];
            // Skip anything else the kernel sends (there should be nothing on IPv4).
            if p[0] >> 4 == 4 && p[9] == 1 && p[usize::from(p[0] & 0x0f) * 4] == 8 {
                break p.to_vec();
            }
        };
        assert_eq!(&request[12..16], &[100, 96, 0, 5], "source is the Mesh IP");
        assert_eq!(&request[16..20], &[100, 96, 0, 9]);

        let reply = echo_reply(&request);
        assert_eq!(tun.send(&reply).await?, reply.len());
        let status = tokio::task::spawn_blocking(move || ping.wait()).await??;
        assert!(
            status.success(),
            "ping got no reply through the TUN: {status}"
        );
        anyhow::Ok(())
    })?;
    assert!(
        ns.ip("link show dev mesh0").is_err(),
        "the TUN must vanish when its fd closes"
    );
    Ok(())
}
