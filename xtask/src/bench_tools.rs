//! Tools only the benchmarks need. A placeholder until the throughput benchmark (row 2)
//! brings its own: it only checks that `iperf3` is installed.

use std::process::Command;

use anyhow::bail;

use crate::cmd;

/// Makes sure the benchmark tools exist (`quick`: only what `--quick` needs).
pub fn ensure(_quick: bool) -> anyhow::Result<()> {
    if cmd::output(Command::new("iperf3").arg("--version")).is_none() {
        bail!("iperf3 is missing: run `cargo xtask setup` (or `apt-get install iperf3`)");
    }
    Ok(())
}
