//! `xdp_gateway` on real interfaces, in namespaces this test creates and deletes:
//! it attaches in native and skb mode on a veth, and a mesh-bound packet from a LAN
//! host reaches the TUN device's reader in both tunnel modes (`bpf_redirect` into the
//! TUN, and `XDP_PASS` into the kernel's route to the TUN). Root-only.

use std::{
    fs::File,
    io::Read,
    net::UdpSocket,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::programs::XdpMode;
use meshgate_agent::dataplane::{
    Dataplane, DataplaneError, IpNet, Probe, Role, TunnelMode, Verdict,
};
use meshgate_tests::{Netns, require_root, veth};

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
    gw: Netns,
    host: Netns,
}

fn lan() -> anyhow::Result<Lan> {
    let host = Netns::new("host")?;
    let gw = Netns::new("gw")?;
    veth(&host, "h0", &gw, "g0")?;
    host.ip("addr add 192.168.50.10/24 dev h0")?;
    host.ip("route add 100.96.0.0/12 via 192.168.50.1")?;
    gw.ip("addr add 192.168.50.1/24 dev g0")?;
    Ok(Lan { gw, host })
}

/// What `ip -d link show g0` says in the gateway namespace (the XDP attachment).
fn xdp_state(gw: &Netns) -> anyhow::Result<String> {
    gw.ip("-d link show g0")
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn attaches_native_and_skb_on_veth() -> anyhow::Result<()> {
    require_root()?;
    let lan = lan()?;
    let states = lan.gw.enter(|| -> anyhow::Result<Vec<String>> {
        let mut states = Vec::new();
        let mut dp = Dataplane::load()?;
        for mode in [XdpMode::Driver, XdpMode::Skb] {
            dp.attach("g0", mode)
                .with_context(|| format!("attach in {mode:?}"))?;
            states.push(xdp_state(&lan.gw)?);
            dp.detach()?;
        }
        assert_eq!(dp.attach_auto("g0")?, XdpMode::Driver);
        assert_eq!(dp.attached(), Some(("g0", XdpMode::Driver)));
        assert_ne!(
            dp.config().own_mac,
            [0; 6],
            "attach reads the interface MAC"
        );
        drop(dp);
        states.push(xdp_state(&lan.gw)?);
        // The probe program too, in both modes.
        for mode in [XdpMode::Driver, XdpMode::Skb] {
            let mut probe =
                Probe::attach("g0", mode).with_context(|| format!("probe in {mode:?}"))?;
            probe.detach()?;
        }
        Ok(states)
    })??;
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
    Ok(())
}

/// Opens a TUN device (`IFF_TUN | IFF_NO_PI`) named `name` in the calling thread's
/// namespace; the returned file reads and writes bare IP packets.
fn open_tun(name: &str) -> anyhow::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("failed to open /dev/net/tun")?;
    // SAFETY: `ifreq` is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to a valid `ifreq`, which outlives the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    anyhow::ensure!(ret == 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    Ok(file)
}

/// Makes the gateway namespace an active replica with a TUN, attached in `mode`,
/// handing packets to the tunnel in `tunnel` mode. Returns the handle and the TUN
/// reader (both usable from any thread).
fn active_gateway(
    gw: &Netns,
    mode: XdpMode,
    tunnel: TunnelMode,
) -> anyhow::Result<(Dataplane, File)> {
    let tun = gw.enter(|| open_tun(TUN))??;
    gw.ip(&format!("link set {TUN} up mtu {TUN_MTU}"))?;
    gw.ip(&format!("route add 100.96.0.0/12 dev {TUN}"))?;
    gw.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    let dp = gw.enter(|| -> anyhow::Result<Dataplane> {
        let mut dp = Dataplane::load()?;
        dp.replace_routes(&[(net("100.96.0.0/12"), 1)])?;
        dp.set_local_prefixes(&[net("192.168.50.0/24")])?;
        dp.set_tunnel_by_name(TUN, TUN_MTU)?;
        dp.set_tunnel_mode(tunnel)?;
        dp.set_role(Role::Active, 1)?;
        dp.attach("g0", mode)
            .with_context(|| format!("attach in {mode:?}"))?;
        Ok(dp)
    })??;
    Ok((dp, tun))
}

/// Reads IP packets from the TUN until `deadline` or `want` of them went to
/// 100.96.0.5; returns how many did.
fn read_tun(tun: &mut File, deadline: Instant, want: u64) -> anyhow::Result<u64> {
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
        let n = tun.read(&mut buf).context("failed to read the TUN")?;
        if n >= 20 && buf[0] >> 4 == 4 && buf[16..20] == [100, 96, 0, 5] {
            seen += 1;
        }
    }
    Ok(seen)
}

/// Sends `count` UDP packets, 5 ms apart, from the LAN host to 100.96.0.5 (stopping at
/// `until`), while the TUN is read until `until` or every packet arrived. Returns how many
/// were sent and how many reached the TUN.
fn send_and_read(
    lan: &Lan,
    tun: &mut File,
    count: u64,
    until: Instant,
) -> anyhow::Result<(u64, u64)> {
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            lan.host.enter(|| -> anyhow::Result<u64> {
                let sock = UdpSocket::bind("192.168.50.10:0")?;
                let payload = [0x5au8; 64];
                let mut sent = 0;
                while sent < count && Instant::now() < until {
                    if sock.send_to(&payload, "100.96.0.5:9999").is_ok() {
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(sent)
            })?
        });
        let received = read_tun(tun, until, count);
        let sent = sender
            .join()
            .map_err(|_| anyhow::anyhow!("the UDP sender panicked"))??;
        Ok((sent, received?))
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
fn native_redirect_into_tun_is_refused() -> anyhow::Result<()> {
    require_root()?;
    let lan = lan()?;
    lan.gw.enter(|| -> anyhow::Result<()> {
        let mut dp = Dataplane::load()?;
        dp.set_tunnel_mode(TunnelMode::Redirect)?;
        assert!(matches!(
            dp.attach("g0", XdpMode::Driver),
            Err(DataplaneError::RedirectNeedsSkb)
        ));
        assert_eq!(dp.attach_auto("g0")?, XdpMode::Skb);
        dp.set_tunnel_mode(TunnelMode::KernelRoute)?;
        dp.attach("g0", XdpMode::Driver)
            .context("kernel-route mode attaches natively")?;
        assert!(matches!(
            dp.set_tunnel_mode(TunnelMode::Redirect),
            Err(DataplaneError::RedirectNeedsSkb)
        ));
        Ok(())
    })?
}

#[test]
#[ignore = "needs root: loads XDP programs (run by `cargo xtask test`)"]
fn mesh_bound_packets_reach_the_tun_reader() -> anyhow::Result<()> {
    require_root()?;
    const N: u64 = 20;
    for (mode, tunnel) in DELIVERING {
        let lan = lan()?;
        let (dp, mut tun) = active_gateway(&lan.gw, mode, tunnel)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let (sent, received) = send_and_read(&lan, &mut tun, N, deadline)?;
        let verdict = match tunnel {
            TunnelMode::Redirect => Verdict::TunnelRedirect,
            TunnelMode::KernelRoute => Verdict::TunnelKernel,
        };
        let counted = dp.counters()?.verdict(verdict).packets;
        assert_eq!(sent, N, "{mode:?}/{tunnel:?}: sender");
        assert_eq!(
            received, N,
            "{mode:?}/{tunnel:?}: TUN reader got every packet"
        );
        assert_eq!(counted, N, "{mode:?}/{tunnel:?}: counted under {verdict:?}");
    }
    Ok(())
}
