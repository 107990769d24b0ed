//! `xdp_gateway` on real interfaces, in namespaces this test creates and deletes:
//! it attaches in native and skb mode on a veth, and a mesh-bound packet from a LAN
//! host reaches the TUN device's reader in both tunnel modes (`bpf_redirect` into the
//! TUN, and `XDP_PASS` into the kernel's route to the TUN). Root-only.

mod support;

use std::{
    fs::File,
    io::Read,
    net::UdpSocket,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use ipnet::IpNet;
use meshgate_agent::dataplane::{Dataplane, DataplaneError, Probe, Role, TunnelMode, Verdict};
use support::{dataplane, netns::*, require_root};

const TUN: &str = "mgtun0";
const TUN_MTU: u32 = 1280;

fn net(s: &str) -> IpNet {
    s.parse().expect("test literal is a valid prefix")
}

/// A LAN host namespace and a gateway namespace joined by a veth pair
/// (host `h0` 192.168.50.10 ↔ gateway `g0` 192.168.50.1), the host routing the mesh
/// (100.96.0.0/12) via the gateway.
struct Lan {
    // Field order is drop order: the gateway's namespace goes first.
    gw: NetNs,
    host: NetNs,
}

fn lan() -> Lan {
    let host = NetNs::new("host");
    let gw = NetNs::new("gw");
    ip(&[
        "link", "add", "h0", "netns", &host.name, "type", "veth", "peer", "name", "g0", "netns",
        &gw.name,
    ]);
    host.ip(&["addr", "add", "192.168.50.10/24", "dev", "h0"]);
    host.ip(&["link", "set", "h0", "up"]);
    host.ip(&["route", "add", "100.96.0.0/12", "via", "192.168.50.1"]);
    gw.ip(&["addr", "add", "192.168.50.1/24", "dev", "g0"]);
    gw.ip(&["link", "set", "g0", "up"]);
    Lan { gw, host }
}

fn xdp_state(ns: &str, dev: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-d", "link", "show", dev])
        .output()
        .expect("iproute2 is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn attaches_native_and_skb_on_veth() {
    require_root();
    let lan = lan();
    let gw = lan.gw.name.clone();
    let states = lan.gw.run(move || {
        let mut states = Vec::new();
        let mut dp = dataplane();
        for mode in [XdpMode::Driver, XdpMode::Skb] {
            dp.attach("g0", mode)
                .unwrap_or_else(|e| panic!("attach in {mode:?}: {e}"));
            states.push(xdp_state(&gw, "g0"));
            dp.detach().expect("detach");
        }
        assert_eq!(dp.attach_auto("g0").expect("auto attach"), XdpMode::Driver);
        assert_eq!(dp.attached(), Some(("g0", XdpMode::Driver)));
        assert_ne!(
            dp.config().own_mac,
            [0; 6],
            "attach reads the interface MAC"
        );
        drop(dp);
        states.push(xdp_state(&gw, "g0"));
        // The probe program too, in both modes.
        for mode in [XdpMode::Driver, XdpMode::Skb] {
            let mut probe =
                Probe::attach("g0", mode).unwrap_or_else(|e| panic!("probe in {mode:?}: {e}"));
            probe.detach().expect("detach");
        }
        states
    });
    assert!(states[0].contains(" xdp qdisc"), "native: {}", states[0]);
    assert!(
        states[1].contains(" xdpgeneric qdisc"),
        "skb: {}",
        states[1]
    );
    assert!(
        !states[2].contains("prog/xdp"),
        "dropping the handle detaches: {}",
        states[2]
    );
}

/// Makes the gateway namespace an active replica with a TUN, attached in `mode`,
/// handing packets to the tunnel in `tunnel` mode. Returns the handle and the TUN
/// reader (both usable from any thread). Runs inside the gateway namespace.
fn active_gateway(gw: &str, mode: XdpMode, tunnel: TunnelMode) -> (Dataplane, File) {
    let tun = open_tun(TUN);
    ip_in(gw, &["link", "set", TUN, "up", "mtu", &TUN_MTU.to_string()]);
    ip_in(gw, &["route", "add", "100.96.0.0/12", "dev", TUN]);
    exec_in(gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let mut dp = dataplane();
    dp.replace_routes(&[(net("100.96.0.0/12"), 1)])
        .expect("routes fit");
    dp.set_local_prefixes(&[net("192.168.50.0/24")])
        .expect("prefixes fit");
    dp.set_tunnel_by_name(TUN, TUN_MTU).expect("the TUN exists");
    dp.set_tunnel_mode(tunnel).expect("config write");
    dp.set_role(Role::Active, 1).expect("config write");
    dp.attach("g0", mode)
        .unwrap_or_else(|e| panic!("attach in {mode:?}: {e}"));
    (dp, tun)
}

/// Reads IP packets from the TUN until `deadline` or `want` of them went to
/// 100.96.0.5; returns how many did.
fn read_tun(tun: &mut File, deadline: Instant, want: u64) -> u64 {
    let mut buf = [0u8; 2048];
    let mut seen = 0;
    while seen < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(100) as i32) };
        if ready <= 0 {
            continue;
        }
        let n = tun.read(&mut buf).expect("reading the TUN");
        if n >= 20 && buf[0] >> 4 == 4 && buf[16..20] == [100, 96, 0, 5] {
            seen += 1;
        }
    }
    seen
}

/// Sends UDP from the LAN host to 100.96.0.5: `count` packets, or as many as it can
/// until `until`. Returns how many were sent.
fn send_udp(
    host: &NetNs,
    count: Option<u64>,
    until: Instant,
    gap: Duration,
) -> std::thread::JoinHandle<u64> {
    host.spawn(move || {
        let sock = UdpSocket::bind("192.168.50.10:0").expect("the host address exists");
        let payload = [0x5au8; 64];
        let mut sent = 0;
        while count.is_none_or(|c| sent < c) && Instant::now() < until {
            if sock.send_to(&payload, "100.96.0.5:9999").is_ok() {
                sent += 1;
            }
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        sent
    })
}

/// The combinations that deliver. Native XDP + redirect does not: the kernel's L3 TUN
/// has no `ndo_xdp_xmit` (the `xdp:xdp_redirect_err` tracepoint shows err=-95,
/// EOPNOTSUPP), which `native_redirect_into_tun_is_refused` pins down.
const DELIVERING: [(XdpMode, TunnelMode); 3] = [
    (XdpMode::Driver, TunnelMode::KernelRoute),
    (XdpMode::Skb, TunnelMode::KernelRoute),
    (XdpMode::Skb, TunnelMode::Redirect),
];

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn native_redirect_into_tun_is_refused() {
    require_root();
    let lan = lan();
    lan.gw.run(move || {
        let mut dp = dataplane();
        dp.set_tunnel_mode(TunnelMode::Redirect)
            .expect("not attached yet");
        assert!(matches!(
            dp.attach("g0", XdpMode::Driver),
            Err(DataplaneError::RedirectNeedsSkb)
        ));
        assert_eq!(dp.attach_auto("g0").expect("skb works"), XdpMode::Skb);
        dp.set_tunnel_mode(TunnelMode::KernelRoute)
            .expect("always allowed");
        dp.attach("g0", XdpMode::Driver)
            .expect("kernel-route mode attaches natively");
        assert!(matches!(
            dp.set_tunnel_mode(TunnelMode::Redirect),
            Err(DataplaneError::RedirectNeedsSkb)
        ));
    });
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn mesh_bound_packets_reach_the_tun_reader() {
    require_root();
    const N: u64 = 20;
    for (mode, tunnel) in DELIVERING {
        {
            let lan = lan();
            let gw = lan.gw.name.clone();
            let (dp, mut tun) = lan.gw.run(move || active_gateway(&gw, mode, tunnel));
            let deadline = Instant::now() + Duration::from_secs(5);
            let sender = send_udp(&lan.host, Some(N), deadline, Duration::from_millis(5));
            let received = read_tun(&mut tun, deadline, N);
            let sent = sender.join().expect("sender does not panic");
            let verdict = match tunnel {
                TunnelMode::Redirect => Verdict::TunnelRedirect,
                TunnelMode::KernelRoute => Verdict::TunnelKernel,
            };
            let counted = dp
                .counters()
                .expect("counters readable")
                .verdict(verdict)
                .packets;
            assert_eq!(sent, N, "{mode:?}/{tunnel:?}: sender");
            assert_eq!(
                received, N,
                "{mode:?}/{tunnel:?}: TUN reader got every packet"
            );
            assert_eq!(counted, N, "{mode:?}/{tunnel:?}: counted under {verdict:?}");
        }
    }
}

/// Throughput of the two ways into the tunnel: a UDP flood from the LAN host for 2 s,
/// counted at the TUN reader. Prints packets/s per XDP mode and tunnel mode.
#[test]
#[ignore = "measurement, needs root: cargo test -- --ignored bench_ --nocapture"]
fn bench_tunnel_handoff_throughput() {
    require_root();
    const SECS: u64 = 2;
    println!(
        "{:<10} {:<12} {:>12} {:>12} {:>8}",
        "xdp", "tunnel", "sent pps", "tun pps", "loss%"
    );
    for (mode, tunnel) in DELIVERING {
        {
            let lan = lan();
            let gw = lan.gw.name.clone();
            let (_dp, mut tun) = lan.gw.run(move || active_gateway(&gw, mode, tunnel));
            // Warm up ARP so the flood measures the steady state.
            let warm = Instant::now() + Duration::from_secs(2);
            send_udp(&lan.host, Some(3), warm, Duration::from_millis(10));
            read_tun(&mut tun, warm, 3);
            let end = Instant::now() + Duration::from_secs(SECS);
            let sender = send_udp(&lan.host, None, end, Duration::ZERO);
            let received = read_tun(&mut tun, end + Duration::from_millis(200), u64::MAX);
            let sent = sender.join().expect("sender does not panic");
            println!(
                "{:<10} {:<12} {:>12} {:>12} {:>8.1}",
                format!("{mode:?}"),
                format!("{tunnel:?}"),
                sent / SECS,
                received / SECS,
                100.0 * (sent.saturating_sub(received)) as f64 / sent.max(1) as f64
            );
        }
    }
}
