//! Classify cost in ns/packet via BPF_PROG_TEST_RUN `repeat` (the kernel's own
//! `duration`, mean per run), for `xdp_gateway` with 10 and 10,000 routes against the
//! `xdp_pass` and `xdp_count` baselines, all in one run so they share machine state.
//!
//! `cargo test -p meshgate-agent --release --test bench_classify -- --ignored --nocapture`
//! (root). Later wired into `cargo xtask bench`.

mod support;

use ipnet::IpNet;
use meshgate_agent::dataplane::{Dataplane, Program, Role};
use support::packet::*;
use support::{dataplane, require_root};

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 5;

fn net(s: &str) -> IpNet {
    s.parse().expect("test literal is a valid prefix")
}

/// Median over rounds of the mean ns/run reported by the kernel.
fn measure(dp: &mut Dataplane, program: Program, frame: &[u8]) -> u32 {
    let mut samples: Vec<u32> = (0..ROUNDS)
        .map(|_| {
            dp.test_run(program, frame, REPEAT)
                .expect("BPF_PROG_TEST_RUN works")
                .duration_ns
        })
        .collect();
    samples.sort_unstable();
    samples[ROUNDS / 2]
}

/// `n` routes: the mesh range plus `n - 1` distinct /24s spread over 10.0.0.0/8.
fn routes(n: u32) -> Vec<(IpNet, u32)> {
    let mut r = vec![(net("100.96.0.0/12"), 0)];
    for i in 1..n {
        let p: IpNet = format!("10.{}.{}.0/24", i / 256, i % 256)
            .parse()
            .expect("generated prefix is valid");
        r.push((p, i % meshgate_common::MAX_ROUTE_IDS));
    }
    r
}

#[test]
#[ignore = "measurement, needs root: cargo test -- --ignored bench_ --nocapture"]
fn bench_classify_cost_ns_per_packet() {
    require_root();
    let mut dp = dataplane();
    dp.set_local_prefixes(&[net("192.168.50.0/24")])
        .expect("prefixes fit");
    dp.set_tunnel(7, 1280).expect("valid MTU");
    dp.set_role(Role::Active, 1).expect("config write");

    let lan = Addrs::V4(v4("192.168.50.10"), v4("192.168.50.1"));
    let mesh = Addrs::V4(v4("192.168.50.10"), v4("100.96.0.5"));
    let local_udp = frame(
        ETH_P_IP,
        &ipv4(
            v4("192.168.50.10"),
            v4("192.168.50.1"),
            UDP,
            64,
            DF,
            &[],
            &udp(lan, &[0; 18]),
        ),
    );
    let mesh_udp = frame(
        ETH_P_IP,
        &ipv4(
            v4("192.168.50.10"),
            v4("100.96.0.5"),
            UDP,
            64,
            DF,
            &[],
            &udp(mesh, &[0; 18]),
        ),
    );
    // A Linux-style SYN: MSS, SACK-permitted, timestamps, NOP, window scale.
    let opts = [
        &mss_option(1460)[..],
        &[4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7],
    ]
    .concat();
    let mesh_syn = frame(
        ETH_P_IP,
        &ipv4(
            v4("192.168.50.10"),
            v4("100.96.0.5"),
            TCP,
            64,
            DF,
            &[],
            &tcp(mesh, SYN, &opts, &[]),
        ),
    );

    println!("classify cost, ns/packet (median of {ROUNDS} x {REPEAT} runs, BPF_PROG_TEST_RUN)");
    println!("{:<62} {:>8}", "program / packet", "ns");
    let pass = measure(&mut dp, Program::Pass, &mesh_udp);
    println!("{:<62} {:>8}", "xdp_pass (baseline)", pass);
    let count = measure(&mut dp, Program::Count, &mesh_udp);
    println!("{:<62} {:>8}", "xdp_count (probe)", count);
    for n in [10u32, 10_000] {
        dp.replace_routes(&routes(n)).expect("routes fit");
        for (name, f) in [
            ("not mesh-bound UDP -> PASS", &local_udp),
            ("mesh-bound UDP, active -> tunnel", &mesh_udp),
            ("mesh-bound TCP SYN, active, MSS walk", &mesh_syn),
        ] {
            let ns = measure(&mut dp, Program::Gateway, f);
            println!(
                "{:<62} {:>8}  (+{} over xdp_pass)",
                format!("xdp_gateway, {n} routes: {name}"),
                ns,
                ns.saturating_sub(pass)
            );
        }
    }
}
