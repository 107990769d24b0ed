//! Benchmark row 2: single-stream TCP and UDP throughput (iperf3), device → LAN host ("up")
//! and back ("down"), through meshgate, compared side by side in one run with plain
//! routing through the same shape of namespaces (the ceiling) and with point-to-point
//! userspace WireGuard tunnels: boringtun-cli and wireguard-go. Rounds interleave the
//! candidates, so a busy moment of the shared machine hits them all alike.

use std::collections::BTreeMap;

use meshgate_tests::{
    Netns,
    bench::{self, Better, Figure},
    ha::{HOST_IP, Ha},
    iperf::{self, Server},
    require_root,
    routed::Routed,
    wg::Userspace,
};

const ROW: u8 = 2;
const PORT: u16 = 5201;
const REPRODUCE: &str = "cargo xtask bench (or, as root after a release build: \
    MESHGATE_BIN_DIR=$PWD/target/release cargo test --release -p meshgate-tests \
    --test bench_throughput -- --ignored bench_ --test-threads=1 --nocapture)";
const MESHGATE: &str = "meshgate";
const CEILING: &str = "ceiling";

/// A path iperf3 runs over: a client namespace and a server in the LAN host.
struct Candidate<'a> {
    id: &'static str,
    device: &'a Netns,
    server: Server,
}

/// The directions: id, label, iperf3 `-R`.
const DIRECTIONS: [(&str, &str, bool); 2] = [
    ("up", "device → LAN host", false),
    ("down", "LAN host → device", true),
];

fn seconds() -> f64 {
    if bench::quick() { 1.0 } else { 5.0 }
}

#[test]
#[ignore = "benchmark, needs root: run by cargo xtask bench"]
fn bench_throughput() -> anyhow::Result<()> {
    require_root()?;
    let dir = tempfile::Builder::new()
        .prefix("meshgate-throughput-")
        .tempdir()?;
    let ceiling = Routed::plain()?;
    let boringtun = Routed::wireguard(Userspace::Boringtun, dir.path())?;
    let wireguard_go = Routed::wireguard(Userspace::WireguardGo, dir.path())?;
    let meshgate = Ha::started(2)?;
    let log = |id: &str| dir.path().join(format!("iperf3-{id}.log"));
    let candidates = vec![
        Candidate {
            id: CEILING,
            device: &ceiling.device,
            server: Server::start(&ceiling.host, HOST_IP, PORT, &log(CEILING))?,
        },
        Candidate {
            id: Userspace::Boringtun.id(),
            device: &boringtun.device,
            server: Server::start(&boringtun.host, HOST_IP, PORT, &log("boringtun"))?,
        },
        Candidate {
            id: Userspace::WireguardGo.id(),
            device: &wireguard_go.device,
            server: Server::start(&wireguard_go.host, HOST_IP, PORT, &log("wireguard-go"))?,
        },
        Candidate {
            id: MESHGATE,
            device: &meshgate.device,
            server: Server::start(&meshgate.host, HOST_IP, PORT, &log(MESHGATE))?,
        },
    ];
    let rounds = bench::repeats(5);
    let mut runs = Runs::default();
    for round in 0..rounds {
        for c in &candidates {
            for (dir, _, reverse) in DIRECTIONS {
                let mbit = c.server.tcp(c.device, seconds(), reverse)?;
                eprintln!("round {round}: tcp {dir} {}: {mbit:.0} Mbit/s", c.id);
                runs.push(&format!("tcp.{dir}"), c.id, mbit, None);
            }
        }
    }
    udp(&candidates, rounds, &mut runs)?;
    record(&runs)
}

/// Samples per (`tcp.up`, candidate), with UDP's loss and offered rate per sample.
#[derive(Default)]
struct Runs {
    mbit: BTreeMap<(String, &'static str), Vec<f64>>,
    udp: BTreeMap<(String, &'static str), Vec<(f64, f64)>>,
}

impl Runs {
    fn push(&mut self, key: &str, id: &'static str, mbit: f64, udp: Option<(f64, f64)>) {
        let key = (key.to_owned(), id);
        self.mbit.entry(key.clone()).or_default().push(mbit);
        if let Some(u) = udp {
            self.udp.entry(key).or_default().push(u);
        }
    }
}

/// UDP: the highest rate each path carries with < 1% loss. A full run searches afresh in
/// every round (1 s steps, two bisections), so the search itself is interleaved; `--quick`
/// searches once, in 20% steps only, and then offers that rate in every round.
fn udp(candidates: &[Candidate<'_>], rounds: usize, runs: &mut Runs) -> anyhow::Result<()> {
    let mut once = BTreeMap::new();
    if bench::quick() {
        for c in candidates {
            for (dir, _, reverse) in DIRECTIONS {
                once.insert((dir, c.id), c.server.udp_rate(c.device, 1.0, reverse, 0)?.0);
            }
        }
    }
    for round in 0..rounds {
        for c in candidates {
            for (dir, _, reverse) in DIRECTIONS {
                let (offered, got) = match once.get(&(dir, c.id)) {
                    Some(&rate) => (
                        rate,
                        c.server.udp(c.device, seconds(), reverse, Some(rate))?,
                    ),
                    None => c.server.udp_rate(c.device, 1.0, reverse, 2)?,
                };
                eprintln!(
                    "round {round}: udp {dir} {}: offered {offered:.0}, got {:.0} Mbit/s, {:.2}% lost",
                    c.id, got.mbit, got.loss_percent
                );
                runs.push(
                    &format!("udp.{dir}"),
                    c.id,
                    got.mbit,
                    Some((offered, got.loss_percent)),
                );
            }
        }
    }
    Ok(())
}

fn record(runs: &Runs) -> anyhow::Result<()> {
    let ids = [
        CEILING,
        Userspace::Boringtun.id(),
        Userspace::WireguardGo.id(),
        MESHGATE,
    ];
    for proto in ["tcp", "udp"] {
        for (dir, label, _) in DIRECTIONS {
            let key = format!("{proto}.{dir}");
            for id in ids {
                let k = (key.clone(), id);
                let mut figure = Figure::new(
                    &format!("throughput.{key}.{id}"),
                    ROW,
                    &format!("{} {label}: {}", proto_label(proto), who(id)),
                    "Mbit/s",
                    Better::Higher,
                )
                .samples(runs.mbit[&k].clone())
                .reproduce(REPRODUCE);
                let mut note = common_note(proto);
                if let Some(udp) = runs.udp.get(&k) {
                    let offered: Vec<f64> = udp.iter().map(|u| u.0).collect();
                    let loss: Vec<f64> = udp.iter().map(|u| u.1).collect();
                    note.push_str(&format!(
                        "; offered {:.0} Mbit/s, loss {:.2}% (medians)",
                        bench::percentile(&offered, 50.0),
                        bench::percentile(&loss, 50.0)
                    ));
                }
                if id == MESHGATE {
                    figure = figure
                        .baseline(&format!("throughput.{key}.{}", Userspace::Boringtun.id()))
                        .target("ratio>=", 1.0);
                    note.push_str(
                        "; meshgate relays through the coordinator (device → coordinator → \
                         replica: two QUIC legs), WireGuard runs device → gateway directly",
                    );
                }
                bench::record(&figure.note(&note))?;
            }
            // The fraction of the ceiling, paired per round (the rounds interleave).
            let fractions = runs.mbit[&(key.clone(), MESHGATE)]
                .iter()
                .zip(&runs.mbit[&(key.clone(), CEILING)])
                .map(|(m, c)| m / c)
                .collect();
            bench::record(
                &Figure::new(
                    &format!("throughput.{key}.meshgate_of_ceiling"),
                    ROW,
                    &format!(
                        "{} {label}: meshgate as a fraction of plain routing",
                        proto_label(proto)
                    ),
                    "×",
                    Better::Higher,
                )
                .samples(fractions)
                .reproduce(REPRODUCE)
                .note("per round: meshgate's Mbit/s over the ceiling's in the same round"),
            )?;
        }
    }
    Ok(())
}

fn proto_label(proto: &str) -> &'static str {
    if proto == "tcp" {
        "TCP single stream,"
    } else {
        "UDP (< 1% loss),"
    }
}

fn who(id: &str) -> &'static str {
    match id {
        CEILING => "plain routing, no tunnel (ceiling)",
        "boringtun" => "boringtun-cli (userspace WireGuard)",
        "wireguard_go" => "wireguard-go (userspace WireGuard)",
        _ => "meshgate",
    }
}

fn common_note(proto: &str) -> String {
    let what = if proto == "tcp" {
        format!("iperf3, one TCP stream, {} s runs", seconds())
    } else if bench::quick() {
        format!(
            "iperf3 UDP, {}-byte payloads, the highest rate with < 1% loss (searched once in \
             20% steps, then offered {} s per round)",
            iperf::UDP_PAYLOAD,
            seconds()
        )
    } else {
        format!(
            "iperf3 UDP, {}-byte payloads, the highest rate with < 1% loss (searched each \
             round: 20% steps down from -b 0, two bisections, 1 s runs)",
            iperf::UDP_PAYLOAD
        )
    };
    format!("{what}; candidates interleaved by round; 2 shared cores")
}
