//! `cargo xtask`: everything a developer or CI runs, on a fresh Debian machine or a warm one.

mod bench;
mod bench_tools;
mod cmd;
mod demo;
mod demo_cluster;
mod ebpf;
mod package;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "meshgate developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs (Debian packages, nightly rust-src,
    /// bpf-linker). Idempotent: a second run only checks.
    Setup,
    /// Build the XDP programs in `ebpf/` (nightly, bpfel-unknown-none, with BTF).
    BuildEbpf,
    /// Setup if needed, build-ebpf, the workspace tests, then (as root) the namespace tests
    /// one at a time.
    Test(test::TestArgs),
    /// The HA demo: an HA gateway in network namespaces, traffic both ways, `kill -9` of
    /// the active replica, and the failover's timeline and outage (root).
    Demo(demo::DemoArgs),
    /// Build for release and run the benchmarks (`tests/tests/bench_*.rs`, as root);
    /// writes `target/bench/report.{md,json}` and flags regressions against
    /// `BENCHMARKS.md`.
    Bench(bench::BenchArgs),
    /// Build Debian packages of the coordinator and the agent into `target/debian/`
    /// (dpkg-deb from staged trees) and check them with lintian.
    Package(package::PackageArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => ebpf::build(),
        Task::Test(args) => test::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Package(args) => package::run(&args),
    }
}
