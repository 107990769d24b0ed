//! Issue 7, row 2: single-stream TCP and UDP throughput (iperf3), device → LAN host ("up")
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

/// Samples per (protocol/direction, candidate).
type Samples = BTreeMap<(String, &'static str), Vec<f64>>;

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
    let secs = seconds();
    let mut samples = Samples::new();
    for round in 0..rounds {
        for c in &candidates {
            for (dir, _, reverse) in DIRECTIONS {
                let mbit = c.server.tcp(c.device, secs, reverse)?;
                eprintln!("round {round}: tcp {dir} {}: {mbit:.0} Mbit/s", c.id);
                samples
                    .entry((format!("tcp.{dir}"), c.id))
                    .or_default()
                    .push(mbit);
            }
        }
    }
    // UDP: per candidate and direction, the highest rate carried with < 1% loss (found
    // once, in short steps), then that rate offered in every round.
    let mut rates = BTreeMap::new();
    for c in &candidates {
        for (dir, _, reverse) in DIRECTIONS {
            let rate = c.server.udp_rate(c.device, 1.0, reverse)?;
            eprintln!("udp {dir} {}: offering {rate:.0} Mbit/s", c.id);
            rates.insert((dir, c.id), rate);
        }
    }
    let mut losses: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for c in &candidates {
            for (dir, _, reverse) in DIRECTIONS {
                let got = c
                    .server
                    .udp(c.device, secs, reverse, Some(rates[&(dir, c.id)]))?;
                eprintln!(
                    "round {round}: udp {dir} {}: {:.0} Mbit/s, {:.2}% lost",
                    c.id, got.mbit, got.loss_percent
                );
                samples
                    .entry((format!("udp.{dir}"), c.id))
                    .or_default()
                    .push(got.mbit);
                losses
                    .entry((dir, c.id))
                    .or_default()
                    .push(got.loss_percent);
            }
        }
    }
    record(&samples, &losses, &rates)
}

fn record(
    samples: &Samples,
    losses: &BTreeMap<(&str, &str), Vec<f64>>,
    rates: &BTreeMap<(&str, &str), f64>,
) -> anyhow::Result<()> {
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
                let mut figure = Figure::new(
                    &format!("throughput.{key}.{id}"),
                    ROW,
                    &format!("{} {label}: {}", proto_label(proto), who(id)),
                    "Mbit/s",
                    Better::Higher,
                )
                .samples(samples[&(key.clone(), id)].clone())
                .reproduce(REPRODUCE);
                let mut note = common_note(proto);
                if proto == "udp" {
                    let loss = bench::percentile(&losses[&(dir, id)], 50.0);
                    note.push_str(&format!(
                        "; offered {:.0} Mbit/s, median loss {loss:.2}%",
                        rates[&(dir, id)]
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
            let fractions = samples[&(key.clone(), MESHGATE)]
                .iter()
                .zip(&samples[&(key.clone(), CEILING)])
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
        "iperf3, one TCP stream".to_owned()
    } else {
        format!("iperf3 UDP, {}-byte payloads", iperf::UDP_PAYLOAD)
    };
    format!(
        "{what}, {} s per run, candidates interleaved round by round; device, gateway and \
         LAN host namespaces on the same machine, sharing its cores with the tunnels",
        seconds()
    )
}
