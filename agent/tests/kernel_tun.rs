//! Root-only: the TUN device carries real packets both ways and vanishes with its fd.

mod common;

use std::{process::Command, time::Duration};

use common::{addrs, ip_json, run_in, strs};
use meshgate_agent::{
    netlink::{DesiredRouting, Netlink, Routing, RoutingConfig, StandbyPath, Table},
    tun::{Tun, TunReader, TunWriter},
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
        let mut reader = TunReader::default();
        let mut packets = Vec::new();
        let request = 'found: loop {
            tokio::time::timeout(Duration::from_secs(5), reader.read(&tun, &mut packets))
                .await?
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            // Skip anything else the kernel sends (there should be nothing on IPv4).
            for p in packets.drain(..) {
                if p[0] >> 4 == 4 && p[9] == 1 && p[usize::from(p[0] & 0x0f) * 4] == 8 {
                    break 'found p.to_vec();
                }
            }
        };
        assert_eq!(&request[12..16], &[100, 96, 0, 5], "source is the Mesh IP");
        assert_eq!(&request[16..20], &[100, 96, 0, 9]);

        let reply = echo_reply(&request);
        let mut writer = TunWriter::default();
        writer.push(&reply);
        assert_eq!(writer.flush(&tun).await?, 1);
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

/// Moves every read from `from` into `to`, as the pump does; counts reads that were
/// super-packets, packets moved, and the largest packet.
async fn relay(
    from: std::sync::Arc<Tun>,
    to: std::sync::Arc<Tun>,
    stats: std::sync::Arc<std::sync::Mutex<(u64, u64, usize)>>,
) {
    let (mut reader, mut writer, mut packets) =
        (TunReader::default(), TunWriter::default(), Vec::new());
    while reader.read(&from, &mut packets).await.is_ok() {
        {
            let mut s = stats.lock().expect("no panic holds it");
            s.0 += u64::from(packets.len() > 1);
            s.1 += packets.len() as u64;
            s.2 = s.2.max(packets.iter().map(|p| p.len()).max().unwrap_or(0));
        }
        for p in packets.drain(..) {
            writer.push(&p);
        }
        if writer.flush(&to).await.is_err() {
            return;
        }
    }
}

/// The kernel's `rx_packets` of `dev` in `ns`.
fn rx_packets(ns: &Netns, dev: &str) -> anyhow::Result<u64> {
    let link = &ip_json(ns, &format!("-s link show dev {dev}"))?[0];
    link["stats64"]["rx"]["packets"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no rx packets in {link}"))
}

#[test]
#[ignore = "needs root: network namespaces"]
fn tcp_crosses_two_tuns_split_intact() -> anyhow::Result<()> {
    require_root()?;
    const MTU: usize = 1400;
    let (a, b) = (Netns::new("tuna")?, Netns::new("tunb")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let make = |ns: &Netns, local: &'static str, peer: &'static str| {
        let handle = rt.handle().clone();
        let tun = ns.enter(move || {
            let _guard = handle.enter();
            Tun::create("off0", MTU as u32)
        })??;
        ns.ip(&format!("addr add {local}/32 dev off0"))?;
        ns.ip(&format!("route add {peer}/32 dev off0"))?;
        anyhow::Ok(std::sync::Arc::new(tun))
    };
    let tun_a = make(&a, "10.77.0.1", "10.77.0.2")?;
    let tun_b = make(&b, "10.77.0.2", "10.77.0.1")?;
    assert!(tun_a.offloads().tcp, "the kernel refused TUN offloads");
    let stats = std::sync::Arc::new(std::sync::Mutex::new((0, 0, 0)));
    let forward = rt.spawn(relay(tun_a.clone(), tun_b.clone(), stats.clone()));
    let back = rt.spawn(relay(tun_b.clone(), tun_a.clone(), Default::default()));

    let sent = meshgate_tests::traffic::pattern(8 << 20, 7);
    let got = meshgate_tests::traffic::tcp_send(&b, &a, "10.77.0.2", 5600, &sent)?;
    forward.abort();
    back.abort();
    assert!(
        got.bytes == sent,
        "{} of {} bytes arrived intact",
        got.bytes.len(),
        sent.len()
    );
    let (super_reads, packets, largest) = *stats.lock().expect("no panic holds it");
    assert!(
        largest <= MTU,
        "a {largest}-byte packet left a {MTU}-byte TUN"
    );
    assert!(
        super_reads > 0,
        "no read was a super-packet: TSO is not in use"
    );
    // Not asserted: that the writes into `tunb` were coalesced (GRO). The kernel's
    // `rx_packets` of the receiving TUN came out equal to the packets moved, or one
    // less, in every one of 12 runs (2026-12-02), so the check that stood here passed
    // only on that off-by-one, about half the time. Whether tun-rs coalesces this
    // traffic on write at all is open (issue 14); `rx_packets` stays in the output.
    eprintln!(
        "moved {packets} packets in {super_reads} super-packet reads; tunb counted {} writes",
        rx_packets(&b, "off0")?
    );
    Ok(())
}
