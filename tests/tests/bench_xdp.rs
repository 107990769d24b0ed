//! Benchmark row 3, the XDP dataplane (root; run by `cargo xtask bench`):
//!
//! * classify cost in ns/packet through `BPF_PROG_TEST_RUN` `repeat` (the kernel's own
//!   mean per run) for `xdp_gateway` in the agent's default configuration (kernel-route
//!   tunnel mode, so the XDP MSS clamp is off: nftables clamps), with 10, 1,000 and
//!   10,000 routes, against `xdp_pass` in the same run;
//! * the standby hairpin's packets/s on a veth, against the kernel forwarding the same
//!   packets between the same namespaces without XDP.

use std::time::{Duration, Instant};

use aya::programs::XdpMode;
use meshgate_agent::dataplane::{Dataplane, IpNet, Probe, Program, Role};
use meshgate_tests::{
    Netns,
    bench::{self, Better, Figure},
    packet::*,
    reference::blast::Blaster,
    require_root, veth,
};

const ROW: u8 = 3;
const REPRODUCE: &str = "cargo xtask bench --only xdp";
/// The per-packet goal at 10,000 routes.
const TARGET_NS: f64 = 100.0;

fn net(s: &str) -> IpNet {
    s.parse().expect("test literal is a valid prefix")
}

/// `n` routes: the mesh range plus `n - 1` distinct /24s spread over 10.0.0.0/8.
fn routes(n: u32) -> Vec<(IpNet, u32)> {
    let mut r = vec![(net("100.96.0.0/12"), 0)];
    r.extend((1..n).map(|i| (net(&format!("10.{}.{}.0/24", i / 256, i % 256)), i)));
    r
}

/// A Linux-style SYN from the LAN to the mesh: MSS, SACK-permitted, timestamps, NOP,
/// window scale.
fn mesh_syn() -> Vec<u8> {
    let addrs = Addrs::V4(v4("192.168.50.10"), v4("100.96.0.5"));
    let opts = [
        &mss_option(1460)[..],
        &[4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7],
    ]
    .concat();
    let l3 = ipv4(
        v4("192.168.50.10"),
        v4("100.96.0.5"),
        TCP,
        64,
        DF,
        &[],
        &tcp(addrs, SYN, &opts, &[]),
    );
    frame(ETH_P_IP, &l3)
}

/// A minimal UDP frame (60 bytes) from `src` to `dst`.
fn udp_frame(src: &str, dst: &str) -> Vec<u8> {
    let addrs = Addrs::V4(v4(src), v4(dst));
    frame(
        ETH_P_IP,
        &ipv4(v4(src), v4(dst), UDP, 64, DF, &[], &udp(addrs, &[0; 18])),
    )
}

/// One sample per round: the kernel's mean ns per run over `repeat` runs.
fn cost(dp: &mut Dataplane, program: Program, frame: &[u8], rounds: usize) -> Vec<f64> {
    let repeat = if bench::quick() { 500_000 } else { 2_000_000 };
    (0..rounds)
        .map(|_| {
            let out = dp
                .test_run(program, frame, repeat)
                .expect("BPF_PROG_TEST_RUN works");
            f64::from(out.duration_ns)
        })
        .collect()
}

fn ns_figure(id: &str, label: &str, samples: Vec<f64>) -> Figure {
    Figure::new(id, ROW, label, "ns", Better::Lower)
        .samples(samples)
        .reproduce(REPRODUCE)
}

#[test]
#[ignore = "benchmark, needs root: cargo xtask bench --only xdp"]
fn bench_xdp_classify_cost() -> anyhow::Result<()> {
    require_root()?;
    let rounds = bench::repeats(9);
    let mut dp = Dataplane::load()?;
    // The agent's default: kernel-route tunnel mode, XDP MSS clamp off.
    dp.set_local_prefixes(&[net("192.168.50.0/24")])?;
    dp.set_tunnel(7, 1280)?;
    dp.set_mss_clamp(false)?;
    dp.set_role(Role::Active, 1)?;
    let local_udp = udp_frame("192.168.50.10", "192.168.50.1");
    let mesh_udp = udp_frame("192.168.50.10", "100.96.0.5");
    let syn = mesh_syn();

    bench::record(
        &ns_figure(
            "xdp.pass",
            "`xdp_pass` (baseline: the cost of running any XDP program)",
            cost(&mut dp, Program::Pass, &mesh_udp, rounds),
        )
        .note("BPF_PROG_TEST_RUN on one CPU; the kernel's mean per run over 0.5 M (quick) or 2 M repeats per sample"),
    )?;
    for n in [10u32, 1_000, 10_000] {
        dp.replace_routes(&routes(n))?;
        for (kind, label, frame) in [
            ("local", "not mesh-bound UDP → PASS", &local_udp),
            ("udp", "mesh-bound UDP, active → tunnel", &mesh_udp),
            ("syn", "mesh-bound TCP SYN, active → tunnel", &syn),
        ] {
            let mut f = ns_figure(
                &format!("xdp.classify.{kind}.{n}"),
                &format!("`xdp_gateway`, {n} routes: {label}"),
                cost(&mut dp, Program::Gateway, frame, rounds),
            )
            .baseline("xdp.pass");
            if n == 10_000 && kind != "local" {
                f = f.target("<=", TARGET_NS);
            }
            bench::record(&f)?;
        }
    }
    // Informational: the non-default XDP clamp (redirect tunnel mode) walks the options.
    dp.set_mss_clamp(true)?;
    bench::record(
        &ns_figure(
            "xdp.classify.syn_clamp.10000",
            "`xdp_gateway`, 10000 routes: TCP SYN with the XDP MSS clamp on (not the default)",
            cost(&mut dp, Program::Gateway, &syn, rounds),
        )
        .baseline("xdp.pass")
        .note("informational: only the redirect tunnel mode clamps at XDP; the default clamps with nftables"),
    )?;
    Ok(())
}

/// The hairpin topology: `lan` stands for the LAN host *and* the active replica (it sends
/// the frames and counts what comes back), `standby` is the replica under test.
///
/// ```text
///  lan: eth0 192.168.50.10 + .2 (the "active"), AF_PACKET generator, xdp_count
///    └─ veth ─ standby: eth0 192.168.50.3, XDP hairpin | kernel forwarding
/// ```
struct Hairpin {
    lan: Netns,
    standby: Netns,
    /// Counts every frame that comes back to `lan` (also makes native XDP_TX on the
    /// standby's veth work: the peer must have an XDP program).
    counter: Probe,
    frame: Vec<u8>,
}

/// Generator threads: one offers more than the forwarder takes (see the notes), and a
/// second would only take CPU from the forwarder on this 2-core machine.
const GENERATORS: usize = 1;
const LAN_MAC: [u8; 6] = [0x02, 0x6d, 0x67, 0, 0, 0x0a];
const STANDBY_MAC: [u8; 6] = [0x02, 0x6d, 0x67, 0, 0, 0x0b];

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

impl Hairpin {
    fn new() -> anyhow::Result<Self> {
        let lan = Netns::new("blan")?;
        let standby = Netns::new("bstandby")?;
        veth(&lan, "eth0", &standby, "eth0")?;
        lan.ip(&format!("link set eth0 address {}", mac(LAN_MAC)))?;
        standby.ip(&format!("link set eth0 address {}", mac(STANDBY_MAC)))?;
        lan.ip("addr add 192.168.50.10/24 dev eth0")?;
        lan.ip("addr add 192.168.50.2/24 dev eth0")?;
        standby.ip("addr add 192.168.50.3/24 dev eth0")?;
        // The kernel path: mesh via the "active", without redirects back to the sender.
        standby.ip(&format!(
            "neigh replace 192.168.50.2 lladdr {} dev eth0 nud permanent",
            mac(LAN_MAC)
        ))?;
        standby.ip("route add 100.96.0.0/12 via 192.168.50.2")?;
        standby.sh(
            "sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0",
        )?;
        let counter =
            lan.enter(|| Probe::attach("eth0", XdpMode::Driver).map_err(anyhow::Error::from))??;
        // Threaded NAPI on both receiving ends (GRO on, so the standby's veth uses NAPI
        // without XDP too): each hop then runs in its own kernel thread instead of
        // inside the sender's sendmmsg, so a slow forwarder drops frames rather than
        // slowing the sender down, and the count measures the forwarder.
        standby.sh("ethtool -K eth0 gro on && echo 1 > /sys/class/net/eth0/threaded")?;
        lan.sh("echo 1 > /sys/class/net/eth0/threaded")?;
        let mut frame = udp_frame("192.168.50.10", "100.96.0.5");
        frame[..6].copy_from_slice(&STANDBY_MAC);
        frame[6..12].copy_from_slice(&LAN_MAC);
        Ok(Self {
            lan,
            standby,
            counter,
            frame,
        })
    }

    /// The standby's XDP program in hairpin position, attached in `mode`.
    fn xdp(&self, mode: XdpMode) -> anyhow::Result<Dataplane> {
        self.standby.enter(|| -> anyhow::Result<Dataplane> {
            let mut dp = Dataplane::load()?;
            dp.replace_routes(&[(net("100.96.0.0/12"), 1)])?;
            dp.set_local_prefixes(&[net("192.168.50.0/24")])?;
            dp.set_tunnel(0, 1280)?;
            dp.set_mss_clamp(false)?;
            dp.set_active_mac(LAN_MAC)?;
            dp.set_role(Role::Standby, 1)?;
            dp.attach("eth0", mode)?;
            Ok(dp)
        })?
    }

    /// Frames/s that came back over `window` (after a warm-up), and frames/s offered.
    fn trial(&self, window: Duration) -> anyhow::Result<(f64, f64)> {
        let blaster = Blaster::start(&self.lan, "eth0", &self.frame, GENERATORS)?;
        std::thread::sleep(Duration::from_millis(200));
        let before = self.counter.counters()?.packets;
        let t0 = Instant::now();
        std::thread::sleep(window);
        let after = self.counter.counters()?.packets;
        let elapsed = t0.elapsed();
        let sent = blaster.stop()?;
        Ok(((after - before) as f64 / elapsed.as_secs_f64(), sent.rate()))
    }

    /// `trials` samples with the standby's kernel forwarding or not.
    fn measure(&self, forwarding: bool, trials: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let value = if forwarding { "1" } else { "0" };
        self.standby
            .exec("sysctl", &["-qw", &format!("net.ipv4.ip_forward={value}")])?;
        let window = Duration::from_millis(if bench::quick() { 1000 } else { 2000 });
        let (mut got, mut offered) = (Vec::new(), Vec::new());
        for _ in 0..trials {
            let (g, o) = self.trial(window)?;
            got.push(g);
            offered.push(o);
        }
        anyhow::ensure!(
            bench::percentile(&got, 50.0) > 0.0,
            "nothing came back through the standby ({} namespace)",
            self.lan.name()
        );
        Ok((got, offered))
    }
}

fn pps_figure(id: &str, label: &str, (got, offered): (Vec<f64>, Vec<f64>)) -> Figure {
    let offered = bench::percentile(&offered, 50.0);
    Figure::new(id, ROW, label, "pps", Better::Higher)
        .samples(got)
        .reproduce(REPRODUCE)
        .note(&format!(
            "60-byte UDP frames from an AF_PACKET sendmmsg thread (median {offered:.0}/s offered), \
             counted by xdp_count where they come back; veths with threaded NAPI; generator, \
             standby and counter share the 2 cores"
        ))
}

#[test]
#[ignore = "benchmark, needs root: cargo xtask bench --only xdp"]
fn bench_xdp_hairpin_pps() -> anyhow::Result<()> {
    require_root()?;
    let trials = bench::repeats(7);
    let h = Hairpin::new()?;
    bench::record(&pps_figure(
        "xdp.hairpin.kernel_forward",
        "kernel forwarding on the standby (no XDP, ip_forward=1): baseline",
        h.measure(true, trials)?,
    ))?;
    for (mode, name) in [(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")] {
        let dp = h.xdp(mode)?;
        let samples = h.measure(false, trials)?;
        drop(dp);
        bench::record(
            &pps_figure(
                &format!("xdp.hairpin.{name}"),
                &format!("XDP hairpin on the standby ({name} mode, ip_forward=0)"),
                samples,
            )
            .baseline("xdp.hairpin.kernel_forward"),
        )?;
    }
    Ok(())
}
