//! Benchmark row 2: single-stream TCP and UDP throughput (iperf3), device → LAN host ("up")
//! and back ("down"), through meshgate, compared side by side in one run with plain
//! routing through the same shape of namespaces (the ceiling) and with point-to-point
//! userspace WireGuard tunnels: boringtun-cli and wireguard-go. Rounds interleave the
//! candidates, so a busy moment of the shared machine hits them all alike. Beside each
//! tunnel's Mbit/s: the CPU each of its processes spent per Gbit/s moved, and meshgate's
//! inner (TUN) MTU on the 1500-byte underlay.

use std::collections::BTreeMap;

use anyhow::Context as _;

use meshgate_tests::{
    Netns,
    bench::{self, Better, Figure},
    cpu,
    ha::{HOST_IP, Ha},
    perf,
    reference::{
        iperf::{self, Server},
        routed::Routed,
        wg::Userspace,
    },
    require_root,
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
    /// The tunnel's processes, by role (`device`, `coordinator`, `gateway`), whose CPU
    /// time is measured; none for plain routing.
    processes: Vec<(&'static str, Vec<u32>)>,
}

impl Candidate<'_> {
    /// Runs one iperf3 measurement and records its Mbit/s and, per process role, the
    /// CPU spent per Gbit/s.
    fn measure(
        &self,
        key: &str,
        runs: &mut Runs,
        f: impl FnOnce() -> anyhow::Result<(f64, Option<(f64, f64)>)>,
    ) -> anyhow::Result<f64> {
        let pids: Vec<u32> = self.processes.iter().flat_map(|(_, p)| p.clone()).collect();
        let ((mbit, udp), wall, used) = cpu::during(&pids, f)?;
        runs.push(key, self.id, mbit, udp);
        let mut used = used.into_iter();
        for (role, pids) in &self.processes {
            let seconds: f64 = used.by_ref().take(pids.len()).sum();
            let cores_per_gbit = seconds / wall / (mbit / 1000.0);
            runs.cpu
                .entry((key.to_owned(), self.id, role))
                .or_default()
                .push(cores_per_gbit);
        }
        Ok(mbit)
    }
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
    let mut meshgate = Ha::started(2)?;
    let meshgate_pids = meshgate_processes(&mut meshgate)?;
    let log = |id: &str| dir.path().join(format!("iperf3-{id}.log"));
    let candidates = vec![
        Candidate {
            id: CEILING,
            device: &ceiling.device,
            server: Server::start(&ceiling.host, HOST_IP, PORT, &log(CEILING))?,
            processes: Vec::new(),
        },
        Candidate {
            id: Userspace::Boringtun.id(),
            device: &boringtun.device,
            server: Server::start(&boringtun.host, HOST_IP, PORT, &log("boringtun"))?,
            processes: wireguard_processes(&boringtun)?,
        },
        Candidate {
            id: Userspace::WireguardGo.id(),
            device: &wireguard_go.device,
            server: Server::start(&wireguard_go.host, HOST_IP, PORT, &log("wireguard-go"))?,
            processes: wireguard_processes(&wireguard_go)?,
        },
        Candidate {
            id: MESHGATE,
            device: &meshgate.device,
            server: Server::start(&meshgate.host, HOST_IP, PORT, &log(MESHGATE))?,
            processes: meshgate_pids,
        },
    ];
    let rounds = bench::repeats(5);
    let mut runs = Runs::default();
    for round in 0..rounds {
        runs.inner_mtu.push(inner_mtu(&meshgate)?);
        for c in &candidates {
            for (dir, _, reverse) in DIRECTIONS {
                let mbit = c.measure(&format!("tcp.{dir}"), &mut runs, || {
                    Ok((c.server.tcp(c.device, seconds(), reverse)?, None))
                })?;
                eprintln!("round {round}: tcp {dir} {}: {mbit:.0} Mbit/s", c.id);
            }
        }
    }
    let meshgate = candidates.iter().find(|c| c.id == MESHGATE);
    record_profiles(meshgate.context("meshgate is a candidate")?, dir.path())?;
    udp(&candidates, rounds, &mut runs)?;
    record(&runs)?;
    record_cpu(&runs)?;
    bench::record(
        &Figure::new(
            "throughput.inner_mtu",
            ROW,
            "meshgate's inner MTU (the TUN's) on a 1500-byte underlay",
            "bytes",
            Better::Higher,
        )
        .samples(runs.inner_mtu.clone())
        .reproduce(REPRODUCE)
        .note(
            "the device's `tun_mtu` at the start of each round: the QUIC path's datagram \
             size after path MTU discovery (UDP payload ≤ 1472)",
        ),
    )
}

/// One more TCP run each way, after the rounds and outside their figures, with meshgate's
/// processes under `perf record`: per process role, the share of its samples in the
/// kernel, its hottest symbols and how many threads carry the work.
fn record_profiles(c: &Candidate<'_>, dir: &std::path::Path) -> anyhow::Result<()> {
    let all: Vec<u32> = c.processes.iter().flat_map(|(_, p)| p.clone()).collect();
    for (d, label, reverse) in DIRECTIONS {
        let data = dir.join(format!("perf-tcp-{d}.data"));
        let mbit = perf::record(&all, &data, || c.server.tcp(c.device, seconds(), reverse))?;
        for (role, pids) in &c.processes {
            let p = perf::profile(&data, pids)?;
            let threads = p.busy_threads(10.0).len();
            bench::record(
                &Figure::new(
                    &format!("throughput.tcp.{d}.meshgate.kernel.{role}"),
                    ROW,
                    &format!("TCP single stream, {label}: share of meshgate's {role} CPU in the kernel (perf)"),
                    "%",
                    Better::Lower,
                )
                .samples(vec![p.kernel_percent])
                .reproduce(REPRODUCE)
                .note(&format!(
                    "`perf record -F 999` of an extra {:.0} s run ({mbit:.0} Mbit/s under the profiler), {} samples of \
                     this role; hottest: {}; {threads} thread(s) with ≥ 10% of them",
                    seconds(),
                    p.samples,
                    p.summary(6)
                )),
            )?;
        }
    }
    Ok(())
}

/// The WireGuard tunnel's two processes: device end, gateway end.
fn wireguard_processes(r: &Routed) -> anyhow::Result<Vec<(&'static str, Vec<u32>)>> {
    let tunnel = r.tunnel.as_ref().context("a WireGuard path has a tunnel")?;
    let pids = tunnel.pids();
    anyhow::ensure!(pids.len() == 2, "a tunnel has two ends, not {}", pids.len());
    Ok(vec![("device", vec![pids[0]]), ("gateway", vec![pids[1]])])
}

/// meshgate's processes: the device's agent, the coordinator, the replicas' agents.
fn meshgate_processes(ha: &mut Ha) -> anyhow::Result<Vec<(&'static str, Vec<u32>)>> {
    let device = ha.device_agent.as_ref().context("the device agent runs")?;
    let device = vec![device.process.pid()];
    let replicas = ha
        .replicas
        .iter()
        .filter_map(|r| r.agent.as_ref().map(|a| a.process.pid()))
        .collect();
    let coordinator = ha.lab.coordinator().context("the coordinator runs")?.pid();
    Ok(vec![
        ("device", device),
        ("coordinator", vec![coordinator]),
        ("gateway", replicas),
    ])
}

/// The device agent's TUN MTU, as `status` reports it.
fn inner_mtu(ha: &Ha) -> anyhow::Result<f64> {
    let agent = ha.device_agent.as_ref().context("the device agent runs")?;
    let mtu = agent.status(&ha.device)?["tun_mtu"]
        .as_f64()
        .context("no tun_mtu in the device's status")?;
    Ok(mtu)
}

/// Samples per (`tcp.up`, candidate), with UDP's loss and offered rate per sample, and
/// CPU per Gbit/s per (`tcp.up`, candidate, process role).
#[derive(Default)]
struct Runs {
    mbit: BTreeMap<(String, &'static str), Vec<f64>>,
    udp: BTreeMap<(String, &'static str), Vec<(f64, f64)>>,
    cpu: BTreeMap<(String, &'static str, &'static str), Vec<f64>>,
    inner_mtu: Vec<f64>,
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
                let rate = match once.get(&(dir, c.id)) {
                    Some(&rate) => rate,
                    None => c.server.udp_rate(c.device, 1.0, reverse, 2)?.0,
                };
                let mbit = c.measure(&format!("udp.{dir}"), runs, || {
                    let got = c.server.udp(c.device, seconds(), reverse, Some(rate))?;
                    Ok((got.mbit, Some((rate, got.loss_percent))))
                })?;
                let (offered, loss) = runs.udp[&(format!("udp.{dir}"), c.id)]
                    .last()
                    .copied()
                    .context("measure records the UDP sample")?;
                eprintln!(
                    "round {round}: udp {dir} {}: offered {offered:.0}, got {mbit:.0} Mbit/s, {loss:.2}% lost",
                    c.id
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
                        .target(">=", if proto == "tcp" { 3000.0 } else { 1500.0 });
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
            let mut of_ceiling = Figure::new(
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
            .note("per round: meshgate's Mbit/s over the ceiling's in the same round");
            if proto == "tcp" {
                of_ceiling = of_ceiling.target(">=", 0.2);
            }
            bench::record(&of_ceiling)?;
        }
    }
    Ok(())
}

/// Per process role: the CPU it spent per Gbit/s moved, medians over the rounds.
fn record_cpu(runs: &Runs) -> anyhow::Result<()> {
    for ((key, id, role), samples) in &runs.cpu {
        let (proto, dir) = key.split_once('.').context("keys are proto.dir")?;
        let label = DIRECTIONS
            .iter()
            .find(|(d, _, _)| *d == dir)
            .map_or(dir, |(_, l, _)| l);
        bench::record(
            &Figure::new(
                &format!("throughput.{key}.{id}.cpu.{role}"),
                ROW,
                &format!(
                    "{} {label}: CPU of {}'s {role} process per Gbit/s",
                    proto_label(proto),
                    who(id)
                ),
                "cores/(Gbit/s)",
                Better::Lower,
            )
            .samples(samples.clone())
            .reproduce(REPRODUCE)
            .note(
                "user + system CPU seconds of the process (all threads, /proc/PID/stat) over \
                 the iperf3 run's wall time, divided by the Gbit/s it carried; the gateway \
                 role sums meshgate's two replicas",
            ),
        )?;
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
             round: 20% steps down from -b 0, two bisections, 1 s runs), then offered {} s",
            iperf::UDP_PAYLOAD,
            seconds()
        )
    };
    format!("{what}; candidates interleaved by round; 2 shared cores")
}
