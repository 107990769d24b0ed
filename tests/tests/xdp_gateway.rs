//! `xdp_gateway` under BPF_PROG_TEST_RUN: crafted frames in, verdict and bytes out, for
//! every branch. Root-only (`#[ignore]`d; `cargo xtask test` runs them as root).

use meshgate_agent::dataplane::{
    Dataplane, IpNet, Program, Role, TunnelMode, Verdict, test_run::TestRunOutput,
};
use meshgate_tests::{packet::*, require_root};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const ACTIVE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];
const TUNNEL_MTU: u32 = 1280;
const MESH_ROUTE: u32 = 1;
const MESH_ROUTE_V6: u32 = 2;
const SUBNET_ROUTE: u32 = 3;

fn net(s: &str) -> IpNet {
    s.parse().expect("test literal is a valid prefix")
}

/// A freshly loaded dataplane: it must load, so a failure (e.g. the verifier) fails loudly.
fn dataplane() -> Dataplane {
    Dataplane::load().unwrap_or_else(|e| panic!("loading xdp_gateway failed: {e}"))
}

/// An active replica of a node advertising 192.168.50.0/24 and fd00:50::/64, with the
/// mesh at 100.96.0.0/12 and fd7a::/48 plus another node's subnet 10.20.0.0/16.
fn active() -> Dataplane {
    let mut dp = dataplane();
    dp.replace_routes(&[
        (net("100.96.0.0/12"), MESH_ROUTE),
        (net("fd7a::/48"), MESH_ROUTE_V6),
        (net("10.20.0.0/16"), SUBNET_ROUTE),
    ])
    .expect("routes fit");
    dp.set_local_prefixes(&[net("192.168.50.0/24"), net("fd00:50::/64")])
        .expect("prefixes fit");
    dp.set_tunnel(7, TUNNEL_MTU).expect("valid MTU");
    dp.set_own_mac(OWN_MAC).expect("config write");
    dp.set_role(Role::Active, 3).expect("config write");
    dp
}

fn standby() -> Dataplane {
    let mut dp = active();
    dp.set_role(Role::Standby, 3).expect("config write");
    dp.set_active_mac(ACTIVE_MAC).expect("config write");
    dp
}

fn run(dp: &mut Dataplane, frame: &[u8]) -> TestRunOutput {
    dp.test_run(Program::Gateway, frame, 1)
        .expect("BPF_PROG_TEST_RUN works")
}

fn count(dp: &Dataplane, verdict: Verdict) -> u64 {
    dp.counters()
        .expect("counters readable")
        .verdict(verdict)
        .packets
}

fn lan_v4() -> Addrs {
    Addrs::V4(v4("192.168.50.10"), v4("100.96.0.5"))
}

fn lan_v6() -> Addrs {
    Addrs::V6(v6("fd00:50::10"), v6("fd7a::5"))
}

/// A mesh-bound UDP frame from the LAN host.
fn udp_v4(src: &str, dst: &str, ttl: u8) -> Vec<u8> {
    let addrs = Addrs::V4(v4(src), v4(dst));
    frame(
        ETH_P_IP,
        &ipv4(
            v4(src),
            v4(dst),
            UDP,
            ttl,
            DF,
            &[],
            &udp(addrs, b"hello mesh"),
        ),
    )
}

fn syn_v4(options: &[u8]) -> Vec<u8> {
    let Addrs::V4(s, d) = lan_v4() else {
        unreachable!("lan_v4 is IPv4")
    };
    frame(
        ETH_P_IP,
        &ipv4(s, d, TCP, 64, DF, &[], &tcp(lan_v4(), SYN, options, &[])),
    )
}

fn assert_tcp_checksum(addrs: Addrs, segment: &[u8]) {
    assert_eq!(
        l4_checksum(addrs, TCP, segment),
        0,
        "TCP checksum must verify from scratch"
    );
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn non_ip_passes_untouched() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    let arp = frame(
        ETH_P_ARP,
        &[
            0, 1, 8, 0, 6, 4, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    let out = run(&mut dp, &arp);
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(out.data, arp);
    assert_eq!(count(&dp, Verdict::PassNotIp), 1);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn not_mesh_bound_passes_untouched() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    for f in [
        udp_v4("192.168.50.10", "192.168.50.1", 64),
        udp_v4("192.168.50.10", "8.8.8.8", 64),
        frame(
            ETH_P_IPV6,
            &ipv6(
                v6("fd00:50::10"),
                v6("2001:db8::1"),
                UDP,
                64,
                &[],
                &udp(Addrs::V6(v6("fd00:50::10"), v6("2001:db8::1")), b"x"),
            ),
        ),
    ] {
        let out = run(&mut dp, &f);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.data, f);
    }
    assert_eq!(count(&dp, Verdict::PassLocal), 3);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn active_kernel_route_passes_and_counts_route() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    let f = udp_v4("192.168.50.10", "100.96.0.5", 64);
    let out = run(&mut dp, &f);
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(
        out.data, f,
        "kernel-route mode leaves the frame to the kernel untouched"
    );
    let c = dp.counters().expect("counters readable");
    assert_eq!(c.verdict(Verdict::TunnelKernel).packets, 1);
    assert_eq!(c.routes[&MESH_ROUTE].packets, 1);
    assert_eq!(c.routes[&MESH_ROUTE].bytes, f.len() as u64);
    assert_eq!(c.routes[&SUBNET_ROUTE].packets, 0);
    // Longest prefix wins across routes of both sizes.
    let out = run(&mut dp, &udp_v4("192.168.50.10", "10.20.3.4", 64));
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(
        dp.counters().expect("counters readable").routes[&SUBNET_ROUTE].packets,
        1
    );
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn active_redirect_strips_ethernet_and_decrements_ttl() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    dp.set_tunnel_mode(TunnelMode::Redirect)
        .expect("config write");
    let f = udp_v4("192.168.50.10", "100.96.0.5", 64);
    let out = run(&mut dp, &f);
    assert_eq!(out.action, XDP_REDIRECT);
    assert_eq!(
        out.data.len(),
        f.len() - 14,
        "the TUN gets the IP packet, no Ethernet"
    );
    assert_eq!(out.data[8], 63, "TTL decremented");
    assert_eq!(
        checksum(&out.data[..20]),
        0,
        "IPv4 header checksum verifies from scratch"
    );
    let mut expected = f[14..].to_vec();
    expected[8] = 63;
    expected[10..12].copy_from_slice(&out.data[10..12]);
    assert_eq!(out.data, expected, "nothing else changed");
    assert_eq!(count(&dp, Verdict::TunnelRedirect), 1);

    // TTL 1 cannot be forwarded: the kernel answers with time exceeded.
    let out = run(&mut dp, &udp_v4("192.168.50.10", "100.96.0.5", 1));
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(count(&dp, Verdict::PassTtlExpired), 1);

    // No tunnel device: nowhere to redirect to.
    dp.set_tunnel(0, TUNNEL_MTU).expect("valid MTU");
    let out = run(&mut dp, &f);
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(count(&dp, Verdict::DropNoPath), 1);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn standby_hairpins_to_active_mac() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = standby();
    let f = udp_v4("192.168.50.10", "100.96.0.5", 64);
    let out = run(&mut dp, &f);
    assert_eq!(out.action, XDP_TX);
    assert_eq!(
        out.data[0..6],
        ACTIVE_MAC,
        "destination MAC is the active replica's"
    );
    assert_eq!(out.data[6..12], OWN_MAC, "source MAC is the standby's own");
    assert_eq!(
        out.data[14 + 8],
        63,
        "the hairpin is a routing hop: TTL decremented"
    );
    assert_eq!(
        checksum(&out.data[14..34]),
        0,
        "IPv4 header checksum verifies from scratch"
    );
    assert_eq!(out.data[34..], f[34..], "payload untouched");
    assert_eq!(count(&dp, Verdict::Hairpin), 1);
    assert_eq!(
        dp.counters().expect("counters readable").routes[&MESH_ROUTE].packets,
        1
    );

    let out = run(&mut dp, &udp_v4("192.168.50.10", "100.96.0.5", 1));
    assert_eq!(
        out.action, XDP_PASS,
        "TTL 1: the kernel sends time exceeded"
    );
    assert_eq!(count(&dp, Verdict::PassTtlExpired), 1);

    // Non-mesh traffic on a standby is untouched.
    let local = udp_v4("192.168.50.10", "192.168.50.2", 64);
    assert_eq!(run(&mut dp, &local).data, local);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn standby_without_active_drops() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    dp.set_role(Role::Standby, 3).expect("config write");
    let out = run(&mut dp, &udp_v4("192.168.50.10", "100.96.0.5", 64));
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(count(&dp, Verdict::DropNoPath), 1);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn spoofed_source_drops() -> anyhow::Result<()> {
    require_root()?;
    for mut dp in [active(), standby()] {
        let out = run(&mut dp, &udp_v4("192.168.51.10", "100.96.0.5", 64));
        assert_eq!(out.action, XDP_DROP);
        let s = Addrs::V6(v6("fd00:51::10"), v6("fd7a::5"));
        let Addrs::V6(src, dst) = s else {
            unreachable!("built as IPv6")
        };
        let out = run(
            &mut dp,
            &frame(ETH_P_IPV6, &ipv6(src, dst, UDP, 64, &[], &udp(s, b"x"))),
        );
        assert_eq!(out.action, XDP_DROP);
        assert_eq!(count(&dp, Verdict::DropSpoofed), 2);
    }
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn fenced_drops() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    dp.set_role(Role::Fenced, 4).expect("config write");
    let out = run(&mut dp, &udp_v4("192.168.50.10", "100.96.0.5", 64));
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(count(&dp, Verdict::DropFenced), 1);
    // Fenced forwards nothing toward the mesh, but the LAN keeps working.
    let local = udp_v4("192.168.50.10", "192.168.50.2", 64);
    assert_eq!(run(&mut dp, &local).action, XDP_PASS);

    // A fresh dataplane, before any configuration, is fenced too.
    let mut fresh = dataplane();
    fresh
        .replace_routes(&[(net("100.96.0.0/12"), MESH_ROUTE)])
        .expect("routes fit");
    assert_eq!(
        run(&mut fresh, &udp_v4("192.168.50.10", "100.96.0.5", 64)).action,
        XDP_DROP
    );
    assert_eq!(count(&fresh, Verdict::DropFenced), 1);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn stale_epoch_drops() -> anyhow::Result<()> {
    require_root()?;
    let f = udp_v4("192.168.50.10", "100.96.0.5", 64);
    for mut dp in [active(), standby()] {
        // Another replica was promoted under epoch 4: our epoch-3 role is stale.
        dp.observe_epoch(4).expect("config write");
        assert_eq!(run(&mut dp, &f).action, XDP_DROP);
        assert_eq!(count(&dp, Verdict::DropStaleEpoch), 1);
        // Epochs only grow: observing an older one changes nothing.
        dp.observe_epoch(2).expect("config write");
        assert_eq!(run(&mut dp, &f).action, XDP_DROP);
        // A role granted under the current epoch forwards again.
        dp.set_role(Role::Active, 4).expect("config write");
        assert_eq!(run(&mut dp, &f).action, XDP_PASS);
        assert_eq!(count(&dp, Verdict::TunnelKernel), 1);
        // A role granted under an older epoch than the newest seen stays stale.
        dp.set_role(Role::Active, 3).expect("config write");
        assert_eq!(run(&mut dp, &f).action, XDP_DROP);
        assert_eq!(count(&dp, Verdict::DropStaleEpoch), 3);
    }
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn expired_lease_drops() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    let f = udp_v4("192.168.50.10", "100.96.0.5", 64);
    dp.set_lease_deadline(Some(std::time::Duration::from_secs(60)))
        .expect("config write");
    assert_eq!(run(&mut dp, &f).action, XDP_PASS, "lease still valid");
    dp.set_lease_deadline(Some(std::time::Duration::ZERO))
        .expect("config write");
    assert_eq!(
        run(&mut dp, &f).action,
        XDP_DROP,
        "lease expired: self-fenced in the kernel"
    );
    assert_eq!(count(&dp, Verdict::DropStaleEpoch), 1);
    dp.set_lease_deadline(None).expect("config write");
    assert_eq!(run(&mut dp, &f).action, XDP_PASS);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn mss_clamp_v4_even_and_odd_offsets() -> anyhow::Result<()> {
    require_root()?;
    let clamp = (TUNNEL_MTU - 40) as u16;
    // The MSS option first (even offset), and after one NOP plus a 3-byte window scale
    // (odd offset: its bytes straddle 16-bit checksum words).
    let even = [&mss_option(1460)[..], &[1, 3, 3, 7]].concat();
    let odd = [&[1u8, 3, 3, 7][..], &[1], &mss_option(1460), &[1, 1, 0]].concat();
    for (name, opts, at) in [("even", even, 20usize), ("odd", odd, 25)] {
        let mut dp = active();
        let f = syn_v4(&opts);
        let out = run(&mut dp, &f);
        assert_eq!(out.action, XDP_PASS, "{name}");
        let seg = &out.data[34..];
        assert_eq!(
            u16::from_be_bytes([seg[at + 2], seg[at + 3]]),
            clamp,
            "{name}: MSS clamped"
        );
        assert_tcp_checksum(lan_v4(), seg);
        // Only the MSS value and the checksum changed.
        let mut expected = f.clone();
        expected[34 + at + 2..34 + at + 4].copy_from_slice(&clamp.to_be_bytes());
        expected[34 + 16..34 + 18].copy_from_slice(&seg[16..18]);
        assert_eq!(out.data, expected, "{name}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn mss_clamp_leaves_small_mss_and_non_syn_alone() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    let small = syn_v4(&mss_option(1000));
    assert_eq!(run(&mut dp, &small).data, small);
    let Addrs::V4(s, d) = lan_v4() else {
        unreachable!("lan_v4 is IPv4")
    };
    let ack = frame(
        ETH_P_IP,
        &ipv4(
            s,
            d,
            TCP,
            64,
            DF,
            &[],
            &tcp(lan_v4(), ACK, &mss_option(1460), &[]),
        ),
    );
    assert_eq!(run(&mut dp, &ack).data, ack);
    // A SYN-ACK from the LAN (a LAN server answering a mesh client) is clamped too.
    let synack = frame(
        ETH_P_IP,
        &ipv4(
            s,
            d,
            TCP,
            64,
            DF,
            &[],
            &tcp(lan_v4(), SYN | ACK, &mss_option(1460), &[]),
        ),
    );
    let out = run(&mut dp, &synack);
    assert_eq!(
        u16::from_be_bytes([out.data[56], out.data[57]]),
        (TUNNEL_MTU - 40) as u16
    );
    assert_tcp_checksum(lan_v4(), &out.data[34..]);
    assert_eq!(count(&dp, Verdict::TunnelKernel), 3);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn ipv4_options_and_fragments() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    let Addrs::V4(s, d) = lan_v4() else {
        unreachable!("lan_v4 is IPv4")
    };
    // 8 bytes of options (NOPs + end): the TCP header starts at 14 + 28.
    let opts = [1, 1, 1, 1, 1, 1, 1, 0];
    let seg = tcp(lan_v4(), SYN, &mss_option(1460), &[]);
    let f = frame(ETH_P_IP, &ipv4(s, d, TCP, 64, DF, &opts, &seg));
    let out = run(&mut dp, &f);
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(
        u16::from_be_bytes([out.data[42 + 22], out.data[42 + 23]]),
        (TUNNEL_MTU - 40) as u16
    );
    assert_tcp_checksum(lan_v4(), &out.data[42..]);

    // A non-first fragment has no TCP header: classified by addresses, never parsed
    // as TCP (its first bytes here look like a SYN with a huge MSS).
    let frag = frame(ETH_P_IP, &ipv4(s, d, TCP, 64, 185, &[], &seg));
    let out = run(&mut dp, &frag);
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(out.data, frag, "non-first fragment untouched");
    // A first fragment (MF, offset 0) is parsed and clamped.
    let first = frame(ETH_P_IP, &ipv4(s, d, TCP, 64, MF, &[], &seg));
    let out = run(&mut dp, &first);
    assert_eq!(
        u16::from_be_bytes([out.data[56], out.data[57]]),
        (TUNNEL_MTU - 40) as u16
    );
    assert_eq!(count(&dp, Verdict::TunnelKernel), 3);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn too_big_for_tunnel_goes_to_kernel() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    dp.set_tunnel_mode(TunnelMode::Redirect)
        .expect("config write");
    let payload = vec![0u8; TUNNEL_MTU as usize];
    let big = frame(
        ETH_P_IP,
        &ipv4(
            v4("192.168.50.10"),
            v4("100.96.0.5"),
            UDP,
            64,
            DF,
            &[],
            &udp(lan_v4(), &payload),
        ),
    );
    let out = run(&mut dp, &big);
    assert_eq!(out.action, XDP_PASS, "the kernel answers frag-needed");
    assert_eq!(out.data, big);
    assert_eq!(count(&dp, Verdict::PassTooBig), 1);
    // Exactly the tunnel MTU still fits.
    let fits = vec![0u8; TUNNEL_MTU as usize - 28];
    let f = frame(
        ETH_P_IP,
        &ipv4(
            v4("192.168.50.10"),
            v4("100.96.0.5"),
            UDP,
            64,
            DF,
            &[],
            &udp(lan_v4(), &fits),
        ),
    );
    assert_eq!(run(&mut dp, &f).action, XDP_REDIRECT);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn ipv6_tunnel_hairpin_and_mss_behind_extension_headers() -> anyhow::Result<()> {
    require_root()?;
    let Addrs::V6(s, d) = lan_v6() else {
        unreachable!("lan_v6 is IPv6")
    };
    let mut dp = active();
    let echo6 = frame(ETH_P_IPV6, &ipv6(s, d, ICMPV6, 64, &[], &echo(lan_v6())));
    let out = run(&mut dp, &echo6);
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(out.data, echo6);
    assert_eq!(
        dp.counters().expect("counters readable").routes[&MESH_ROUTE_V6].packets,
        1
    );

    // SYN behind hop-by-hop + destination options: found, clamped to MTU − 60.
    let seg = tcp(
        lan_v6(),
        SYN,
        &[&[1u8][..], &mss_option(1440), &[1, 1, 1]].concat(),
        &[],
    );
    let ext = [ext8(60), ext8(TCP)].concat();
    let f = frame(ETH_P_IPV6, &ipv6(s, d, 0, 64, &ext, &seg));
    let out = run(&mut dp, &f);
    assert_eq!(out.action, XDP_PASS);
    let tcp_off = 14 + 40 + 16;
    let seg_out = &out.data[tcp_off..];
    assert_eq!(
        u16::from_be_bytes([seg_out[23], seg_out[24]]),
        (TUNNEL_MTU - 60) as u16
    );
    assert_tcp_checksum(lan_v6(), seg_out);

    // Redirect: Ethernet stripped, hop limit decremented.
    dp.set_tunnel_mode(TunnelMode::Redirect)
        .expect("config write");
    let out = run(&mut dp, &echo6);
    assert_eq!(out.action, XDP_REDIRECT);
    assert_eq!(out.data[0] >> 4, 6);
    assert_eq!(out.data[7], 63);
    assert_eq!(out.data[8..], echo6[22..]);

    // Standby: hairpin with hop limit decremented.
    let mut dp = standby();
    let out = run(&mut dp, &echo6);
    assert_eq!(out.action, XDP_TX);
    assert_eq!(out.data[0..6], ACTIVE_MAC);
    assert_eq!(out.data[14 + 7], 63);
    assert_eq!(out.data[22..], echo6[22..]);

    // A non-first IPv6 fragment is classified but not parsed.
    let frag_hdr = [UDP, 0, 0x05, 0x00, 0, 0, 0, 1];
    let f = frame(ETH_P_IPV6, &ipv6(s, d, 44, 64, &frag_hdr, &[0xff; 16]));
    let mut dp = active();
    assert_eq!(run(&mut dp, &f).action, XDP_PASS);
    assert_eq!(count(&dp, Verdict::TunnelKernel), 1);
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn malformed_and_truncated_frames_get_defined_verdicts() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    let Addrs::V4(s, d) = lan_v4() else {
        unreachable!("lan_v4 is IPv4")
    };
    let Addrs::V6(s6, d6) = lan_v6() else {
        unreachable!("lan_v6 is IPv6")
    };
    let syn = syn_v4(&[&mss_option(1460)[..], &[1, 3, 3, 7]].concat());
    let syn6 = frame(
        ETH_P_IPV6,
        &ipv6(
            s6,
            d6,
            0,
            64,
            &ext8(TCP),
            &tcp(lan_v6(), SYN, &mss_option(1440), &[]),
        ),
    );
    // Every truncation of valid frames (the kernel needs ≥ 14 bytes): never an abort,
    // always PASS to the kernel (counted as malformed) for an active in kernel mode.
    let mut runs = 0;
    for full in [&syn, &syn6] {
        for len in 14..full.len() {
            let out = run(&mut dp, &full[..len]);
            assert_ne!(out.action, XDP_ABORTED, "truncated to {len}");
            assert_eq!(out.action, XDP_PASS, "truncated to {len}");
            assert_eq!(out.data, full[..len], "truncated to {len}: untouched");
            runs += 1;
        }
    }
    assert_eq!(count(&dp, Verdict::PassMalformed), runs);

    let mut bad: Vec<Vec<u8>> = Vec::new();
    // IHL 4 (< 5), version 5, total length beyond the frame.
    let mut p = ipv4(s, d, UDP, 64, DF, &[], &udp(lan_v4(), b"x"));
    p[0] = 0x44;
    bad.push(frame(ETH_P_IP, &p));
    p[0] = 0x55;
    bad.push(frame(ETH_P_IP, &p));
    let mut p = ipv4(s, d, UDP, 64, DF, &[], &udp(lan_v4(), b"x"));
    p[2..4].copy_from_slice(&1500u16.to_be_bytes());
    bad.push(frame(ETH_P_IP, &p));
    // TCP data offset 4 (< 5); an MSS option with length 3; an option running past the header.
    let mut seg = tcp(lan_v4(), SYN, &mss_option(1460), &[]);
    seg[12] = 0x40;
    bad.push(frame(ETH_P_IP, &ipv4(s, d, TCP, 64, DF, &[], &seg)));
    bad.push(frame(
        ETH_P_IP,
        &ipv4(
            s,
            d,
            TCP,
            64,
            DF,
            &[],
            &tcp(lan_v4(), SYN, &[2, 3, 5, 0], &[]),
        ),
    ));
    bad.push(frame(
        ETH_P_IP,
        &ipv4(
            s,
            d,
            TCP,
            64,
            DF,
            &[],
            &tcp(lan_v4(), SYN, &[1, 1, 8, 6], &[]),
        ),
    ));
    // UDP length below its header.
    let mut u = udp(lan_v4(), b"x");
    u[4..6].copy_from_slice(&3u16.to_be_bytes());
    bad.push(frame(ETH_P_IP, &ipv4(s, d, UDP, 64, DF, &[], &u)));
    // IPv6: more extension headers than the walk follows; wrong version.
    let many: Vec<u8> = (0..9)
        .flat_map(|i| ext8(if i == 8 { UDP } else { 60 }))
        .collect();
    bad.push(frame(
        ETH_P_IPV6,
        &ipv6(s6, d6, 60, 64, &many, &udp(lan_v6(), b"x")),
    ));
    let mut p6 = ipv6(s6, d6, UDP, 64, &[], &udp(lan_v6(), b"x"));
    p6[0] = 0x40;
    bad.push(frame(ETH_P_IPV6, &p6));
    // An IPv6 frame that claims IPv4.
    bad.push(frame(ETH_P_IP, &p6));
    for (i, f) in bad.iter().enumerate() {
        let out = run(&mut dp, f);
        assert_eq!(out.action, XDP_PASS, "malformed case {i}");
        assert_eq!(&out.data, f, "malformed case {i}: untouched");
    }
    assert_eq!(count(&dp, Verdict::PassMalformed), runs + bad.len() as u64);

    // Malformed but the node is fenced: its own state decides first.
    dp.set_role(Role::Fenced, 5).expect("config write");
    let mut seg = tcp(lan_v4(), SYN, &[], &[]);
    seg[12] = 0x40;
    assert_eq!(
        run(
            &mut dp,
            &frame(ETH_P_IP, &ipv4(s, d, TCP, 64, DF, &[], &seg))
        )
        .action,
        XDP_DROP
    );
    Ok(())
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn replace_routes_is_a_diff() -> anyhow::Result<()> {
    require_root()?;
    let mut dp = active();
    let f = udp_v4("192.168.50.10", "10.20.3.4", 64);
    assert_eq!(count_after(&mut dp, &f, Verdict::TunnelKernel), 1);
    let diff = dp
        .replace_routes(&[
            (net("100.96.0.0/12"), MESH_ROUTE),
            (net("fd7a::/48"), 9),
            (net("10.30.0.0/16"), 4),
        ])
        .expect("routes fit");
    assert_eq!((diff.added, diff.changed, diff.removed), (1, 1, 1));
    assert_eq!(
        count_after(&mut dp, &f, Verdict::PassLocal),
        1,
        "removed route no longer matches"
    );
    let f = udp_v4("192.168.50.10", "10.30.0.1", 64);
    assert_eq!(
        count_after(&mut dp, &f, Verdict::TunnelKernel),
        2,
        "added route matches"
    );
    let diff = dp.replace_routes(&[]).expect("empty is fine");
    assert_eq!(diff.removed, 3);
    assert!(matches!(
        dp.replace_routes(&[(net("10.0.0.0/8"), meshgate_common::MAX_ROUTE_IDS)]),
        Err(meshgate_agent::dataplane::DataplaneError::RouteIdOutOfRange { .. })
    ));
    Ok(())
}

fn count_after(dp: &mut Dataplane, f: &[u8], verdict: Verdict) -> u64 {
    run(dp, f);
    count(dp, verdict)
}
