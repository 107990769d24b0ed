//! iperf3 between two namespaces: a server guarded as a [`Process`], client runs parsed
//! from `--json`. The client always runs in the same namespace (the device); `reverse`
//! (`-R`) makes the server send, so both directions use one connection set-up path.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};

use super::tools;
use crate::{Netns, Process, wait_until};

/// UDP payload: fits every tunnel compared here (meshgate's TUN MTU, WireGuard's 1420).
pub const UDP_PAYLOAD: u32 = 1000;
/// The loss below which a UDP rate counts as carried.
pub const UDP_MAX_LOSS_PERCENT: f64 = 1.0;

/// How often a client turned away by a server still busy with the previous test tries.
const SERVER_BUSY_RETRIES: u32 = 10;

/// A running `iperf3 -s`.
pub struct Server {
    process: Process,
    ip: String,
    port: u16,
}

/// What one UDP run delivered.
#[derive(Debug, Clone, Copy)]
pub struct Udp {
    /// Received Mbit/s.
    pub mbit: f64,
    /// Lost datagrams, percent.
    pub loss_percent: f64,
}

impl Server {
    /// Starts `iperf3 -s` in `ns` on `port`, reachable at `ip`; waits until it listens.
    pub fn start(ns: &Netns, ip: &str, port: u16, log: &Path) -> anyhow::Result<Self> {
        let mut cmd = ns.command(tools::require("iperf3")?);
        cmd.args(["-s", "-p", &port.to_string()]);
        let process = ns.spawn("iperf3-server", cmd, log)?;
        wait_until(Duration::from_secs(10), "iperf3 to listen", || {
            Ok(ns
                .exec("ss", &["-Hltn", &format!("sport = :{port}")])
                .is_ok_and(|out| !out.trim().is_empty()))
        })?;
        Ok(Self {
            process,
            ip: ip.to_owned(),
            port,
        })
    }

    fn run(&self, client: &Netns, secs: f64, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let iperf = tools::require("iperf3")?;
        let time = format!("{secs}");
        let port = self.port.to_string();
        let mut all = vec![
            "-c",
            &self.ip,
            "-p",
            &port,
            "-t",
            &time,
            "--json",
            "--connect-timeout",
            "3000",
        ];
        all.extend_from_slice(args);
        let mut attempts = 0;
        let json = loop {
            let out = client
                .command(&iperf)
                .args(&all)
                .output()
                .context("failed to run iperf3")?;
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).with_context(|| {
                    format!(
                        "iperf3 {} printed no JSON: {}",
                        all.join(" "),
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            // The server finishes the previous test a moment after its client has: on a
            // loaded machine the next client can arrive first and is turned away.
            attempts += 1;
            let busy = json["error"]
                .as_str()
                .is_some_and(|e| e.contains("server is busy"));
            if !busy || attempts == SERVER_BUSY_RETRIES {
                break json;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        if let Some(error) = json["error"].as_str() {
            bail!(
                "iperf3 {} failed: {error} (server log: {})",
                all.join(" "),
                self.process.log()
            );
        }
        Ok(json)
    }

    /// One TCP stream for `secs`; Mbit/s at the receiver. `reverse`: server → client.
    pub fn tcp(&self, client: &Netns, secs: f64, reverse: bool) -> anyhow::Result<f64> {
        let json = self.run(client, secs, if reverse { &["-R"] } else { &[] })?;
        json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e6)
            .context("no end.sum_received in iperf3's TCP report")
    }

    /// UDP at `mbit` offered (`None`: as fast as it can send) for `secs`.
    pub fn udp(
        &self,
        client: &Netns,
        secs: f64,
        reverse: bool,
        mbit: Option<f64>,
    ) -> anyhow::Result<Udp> {
        let rate = mbit.map_or_else(|| "0".to_owned(), |m| format!("{:.0}K", m * 1000.0));
        let len = UDP_PAYLOAD.to_string();
        // 4 MiB socket buffers, so the receiving iperf3 is not what drops datagrams: at
        // the default 208 KiB it dropped 2% of 250 Mbit/s on every path alike.
        let mut args = vec!["-u", "-b", &rate, "-l", &len, "-w", "4M"];
        if reverse {
            args.push("-R");
        }
        let json = self.run(client, secs, &args)?;
        let got = &json["end"]["sum_received"];
        let (Some(bits), Some(loss)) = (
            got["bits_per_second"].as_f64(),
            got["lost_percent"].as_f64(),
        ) else {
            bail!("no end.sum_received in iperf3's UDP report: {got}");
        };
        Ok(Udp {
            mbit: bits / 1e6,
            loss_percent: loss,
        })
    }

    /// The highest offered UDP rate whose loss stays under [`UDP_MAX_LOSS_PERCENT`], and
    /// what that run delivered: from what `-b 0` got through, down in steps of 20% until
    /// one is carried, then `bisections` halvings of the interval between the last lost
    /// and the first carried rate (two put the answer within 5% of the highest carried
    /// rate). Without any carried rate, the last one tried.
    pub fn udp_rate(
        &self,
        client: &Netns,
        secs: f64,
        reverse: bool,
        bisections: usize,
    ) -> anyhow::Result<(f64, Udp)> {
        let flat_out = self.udp(client, secs, reverse, None)?;
        if flat_out.loss_percent < UDP_MAX_LOSS_PERCENT {
            return Ok((flat_out.mbit, flat_out));
        }
        let mut lost = (flat_out.mbit, flat_out);
        let mut ok = None;
        for _ in 0..6 {
            let rate = lost.0 * 0.8;
            let got = self.udp(client, secs, reverse, Some(rate))?;
            if got.loss_percent < UDP_MAX_LOSS_PERCENT {
                ok = Some((rate, got));
                break;
            }
            lost = (rate, got);
        }
        let Some(mut ok) = ok else {
            return Ok(lost);
        };
        for _ in 0..bisections {
            let mid = (ok.0 + lost.0) / 2.0;
            let got = self.udp(client, secs, reverse, Some(mid))?;
            if got.loss_percent < UDP_MAX_LOSS_PERCENT {
                ok = (mid, got);
            } else {
                lost = (mid, got);
            }
        }
        Ok(ok)
    }
}
