//! Runs the simulation over many seeds.
//!
//! * `cargo test -p meshgate-sim` runs [`DEFAULT_SEEDS`] seeds;
//! * `MESHGATE_SIM_SEEDS=1000000` runs that many (spread over the machine's cores);
//! * `MESHGATE_SIM_SEED=N` replays one seed and prints its whole trace.

use std::time::Instant;

use meshgate_sim::{Params, run};

const DEFAULT_SEEDS: u64 = 10_000;
/// Cluster runs last longer (a member key must expire in each).
const DEFAULT_CLUSTER_SEEDS: u64 = 2_000;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

/// Runs `seeds` seeds from `first` on every core; returns the first failing seed's
/// report, and the totals.
fn sweep(first: u64, seeds: u64, p: Params) -> (Option<(u64, String)>, u64, u64) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let (mut promotions, mut restarts) = (0, 0);
                    let mut seed = first + t;
                    while seed < first + seeds {
                        match run(seed, p) {
                            Ok(o) => {
                                promotions += o.promotions;
                                restarts += o.restarts;
                            }
                            Err(v) => return (Some((seed, v.to_string())), promotions, restarts),
                        }
                        seed += threads;
                    }
                    (None, promotions, restarts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let failure = results
        .iter()
        .filter_map(|r| r.0.clone())
        .min_by_key(|f| f.0);
    let promotions = results.iter().map(|r| r.1).sum();
    let restarts = results.iter().map(|r| r.2).sum();
    (failure, promotions, restarts)
}

#[test]
fn every_seed_keeps_the_invariants() {
    if let Some(seed) = env("MESHGATE_SIM_SEED") {
        match run(seed, Params::default()) {
            Ok(o) => println!("seed {seed}: ok, {o:?}"),
            Err(v) => panic!("seed {seed} fails:\n{v:#}"),
        }
        return;
    }
    let seeds = env("MESHGATE_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let started = Instant::now();
    let (failure, promotions, restarts) = sweep(0, seeds, Params::default());
    if let Some((seed, report)) = failure {
        panic!(
            "seed {seed} breaks an invariant; replay it with\n  MESHGATE_SIM_SEED={seed} cargo test -p meshgate-sim --release -- --nocapture\n{report}"
        );
    }
    println!(
        "{seeds} seeds in {:.1?}: {promotions} promotions, {restarts} coordinator restarts",
        started.elapsed()
    );
    assert!(promotions > seeds, "the runs must exercise failovers");
    assert!(
        restarts > seeds / 10,
        "the runs must restart the coordinator"
    );
}

/// The coordinator cluster: two or three members on a modelled etcd.
#[test]
fn every_cluster_seed_keeps_the_invariants() {
    let p = Params {
        cluster: true,
        ..Params::default()
    };
    if let Some(seed) = env("MESHGATE_SIM_CLUSTER_SEED") {
        match run(seed, p) {
            Ok(o) => println!("cluster seed {seed}: ok, {o:?}"),
            Err(v) => panic!("cluster seed {seed} fails:\n{v:#}"),
        }
        return;
    }
    let seeds = env("MESHGATE_SIM_CLUSTER_SEEDS").unwrap_or(DEFAULT_CLUSTER_SEEDS);
    let started = Instant::now();
    let (failure, promotions, restarts) = sweep(0, seeds, p);
    if let Some((seed, report)) = failure {
        panic!(
            "cluster seed {seed} breaks an invariant; replay it with\n  MESHGATE_SIM_CLUSTER_SEED={seed} cargo test -p meshgate-sim -- --nocapture every_cluster\n{report}"
        );
    }
    println!(
        "{seeds} cluster seeds in {:.1?}: {promotions} promotions, {restarts} coordinator restarts",
        started.elapsed()
    );
    assert!(promotions > seeds, "the runs must exercise failovers");
}

/// The simulation is not blind: without the restart hold, a restarted coordinator
/// promotes a standby while the old active still holds its lease, and some seed shows
/// two replicas forwarding.
#[test]
fn without_the_restart_hold_a_seed_finds_two_forwarders() {
    let p = Params {
        restart_hold: false,
        ..Params::default()
    };
    let (failure, _, _) = sweep(0, 2_000, p);
    let (seed, report) = failure.expect("some seed reproduces the early promotion");
    assert!(
        report.contains("more than one replica forwards"),
        "seed {seed}: {report}"
    );
}

/// Nor blind to the cluster's fencing: members that fence themselves only after etcd
/// expired their key keep granting while the others promote, and a seed shows it.
#[test]
fn a_member_that_fences_too_late_lets_a_seed_find_two_forwarders() {
    let p = Params {
        cluster: true,
        fence_late: true,
        ..Params::default()
    };
    let (failure, _, _) = sweep(0, DEFAULT_CLUSTER_SEEDS, p);
    let (seed, report) = failure.expect("some seed reproduces the late fence");
    assert!(
        report.contains("more than one replica forwards"),
        "seed {seed}: {report}"
    );
}
