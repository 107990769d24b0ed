//! The tools only the benchmarks use, as the references meshgate is compared with:
//! keepalived (VRRP failover), wireguard-go and boringtun-cli (userspace WireGuard
//! tunnels), `wg` to configure them, iperf3, and `perf` for the throughput row's profile. Each is installed only when missing, so a
//! warm machine only checks. Debian has no boringtun, so it is built from crates.io into
//! setup's cache dir, where the benchmarks look for it (`boringtun/bin/boringtun-cli`).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

use crate::{cmd, setup};

/// Debian packages the benchmarks need, with the program each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("keepalived", "keepalived"),
    ("wireguard-go", "wireguard-go"),
    ("wireguard-tools", "wg"),
    ("iperf3", "iperf3"),
    // Not a reference: the throughput row's profile of meshgate's processes.
    ("linux-perf", "perf"),
];

/// The crates.io package of the boringtun command-line tunnel.
const BORINGTUN: &str = "boringtun-cli";

/// Where boringtun-cli is installed (the benchmarks look in the same place).
pub fn boringtun_path() -> PathBuf {
    setup::cache_dir().join("boringtun/bin").join(BORINGTUN)
}

/// Installs whatever of the benchmark tools is missing. `quick` does not change the list:
/// `--quick` runs every benchmark too, only shorter, so it needs the same references.
pub fn ensure(quick: bool) -> anyhow::Result<()> {
    cmd::step(if quick {
        "benchmark tools (quick run: the same references)"
    } else {
        "benchmark tools"
    });
    let missing = setup::missing_packages(PACKAGES);
    if missing.is_empty() {
        eprintln!("    Debian packages present");
    } else {
        if !cmd::is_root() {
            bail!(
                "the benchmarks need {} (and root for their namespaces): run `sudo cargo xtask bench`",
                missing.join(" ")
            );
        }
        setup::apt_install(&missing)?;
    }
    boringtun()
}

/// boringtun-cli from crates.io, built once into the cache (about two minutes).
fn boringtun() -> anyhow::Result<()> {
    let path = boringtun_path();
    if works(&path) {
        eprintln!("    {} works", path.display());
        return Ok(());
    }
    let root = path
        .parent()
        .and_then(|bin| bin.parent())
        .expect("boringtun/bin/boringtun-cli has two parents");
    eprintln!("    building {BORINGTUN} from crates.io (takes a few minutes, once)");
    cmd::run(
        cmd::clean_cargo(None)
            .args(["install", BORINGTUN, "--locked", "--force", "--root"])
            .arg(root),
    )
    .with_context(|| {
        format!(
            "failed to build {BORINGTUN}: see cargo's output above (crates.io must be reachable)"
        )
    })?;
    if !works(&path) {
        bail!(
            "{BORINGTUN} was built but `{} --version` fails: remove {} and run again",
            path.display(),
            root.display()
        );
    }
    Ok(())
}

fn works(path: &std::path::Path) -> bool {
    cmd::output(Command::new(path).arg("--version")).is_some()
}
