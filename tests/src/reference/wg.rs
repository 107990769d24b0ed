//! A point-to-point userspace WireGuard tunnel between two namespaces, the reference for
//! tunnel throughput: boringtun-cli (crates.io) or wireguard-go (Debian) creates the TUN
//! in each namespace, `wg` (wireguard-tools) configures keys and the peer over the tool's
//! UAPI socket. Both ends are guarded processes; their sockets are removed on drop.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;

use super::tools;
use crate::{Netns, Process, wait_until};

/// WireGuard's port on each end.
const PORT: u16 = 51820;
/// WireGuard's usual MTU on a 1500-byte path.
const MTU: u32 = 1420;
/// Where userspace WireGuard implementations put their UAPI sockets (`wg` looks there).
const UAPI_DIR: &str = "/var/run/wireguard";

/// Which userspace implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Userspace {
    /// Cloudflare's boringtun (`boringtun-cli`).
    Boringtun,
    /// The Go reference implementation (`wireguard-go`).
    WireguardGo,
}

impl Userspace {
    /// The figure id part: `boringtun`, `wireguard_go`.
    pub fn id(self) -> &'static str {
        match self {
            Self::Boringtun => "boringtun",
            Self::WireguardGo => "wireguard_go",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Self::Boringtun => "boringtun-cli",
            Self::WireguardGo => "wireguard-go",
        }
    }
}

/// One end of the tunnel: the interface, its address inside the tunnel and the peer's.
pub struct End<'a> {
    /// The namespace.
    pub ns: &'a Netns,
    /// Its address on the underlay (the peer's endpoint).
    pub underlay_ip: &'a str,
    /// Its tunnel address, `/24` on the interface.
    pub tunnel_ip: &'a str,
    /// The prefixes behind this end: the peer routes them into the tunnel and accepts
    /// them as sources from it (the peer's `allowed-ips` for this end).
    pub prefixes: &'a str,
}

/// A running tunnel. Dropping it stops both ends.
pub struct Tunnel {
    processes: Vec<Process>,
    sockets: Vec<PathBuf>,
    /// The interface names at `a` and `b`.
    pub names: (String, String),
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for p in &mut self.processes {
            p.kill();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

impl Tunnel {
    /// The pids of the two ends' processes, `a` first.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Process::pid).collect()
    }

    /// Starts `kind` in both namespaces and configures them as each other's peer.
    pub fn new(kind: Userspace, dir: &Path, a: &End<'_>, b: &End<'_>) -> anyhow::Result<Self> {
        let program = tools::require(kind.program())?;
        let wg = tools::require("wg")?;
        // UAPI sockets live in one directory for every namespace: names must be unique.
        let prefix = match kind {
            Userspace::Boringtun => "bt",
            Userspace::WireguardGo => "wg",
        };
        let name = |side: &str| format!("{prefix}{}{side}", std::process::id());
        let mut tunnel = Self {
            processes: Vec::new(),
            sockets: Vec::new(),
            names: (name("a"), name("b")),
        };
        let mut keys = Vec::new();
        for (end, iface) in [(a, tunnel.names.0.clone()), (b, tunnel.names.1.clone())] {
            let mut cmd = end.ns.command(&program);
            match kind {
                Userspace::Boringtun => {
                    cmd.args(["--foreground", "--disable-drop-privileges", &iface]);
                }
                Userspace::WireguardGo => {
                    // wireguard-go refuses to run on Linux without this.
                    cmd.env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                        .args(["-f", &iface]);
                }
            }
            let socket = Path::new(UAPI_DIR).join(format!("{iface}.sock"));
            let _ = std::fs::remove_file(&socket);
            let log = dir.join(format!("{iface}.log"));
            tunnel
                .processes
                .push(end.ns.spawn(kind.program(), cmd, &log)?);
            tunnel.sockets.push(socket.clone());
            wait_until(
                Duration::from_secs(10),
                &format!("{} to open {}", kind.program(), socket.display()),
                || Ok(socket.exists()),
            )?;
            keys.push(key_pair(&wg, dir, &iface)?);
        }
        let ends = [(a, &tunnel.names.0, b), (b, &tunnel.names.1, a)];
        for (i, (end, iface, peer)) in ends.into_iter().enumerate() {
            let (private, _) = &keys[i];
            let (_, peer_public) = &keys[1 - i];
            end.ns.exec(
                &wg.display().to_string(),
                &[
                    "set",
                    iface,
                    "listen-port",
                    &PORT.to_string(),
                    "private-key",
                    &private.display().to_string(),
                    "peer",
                    peer_public,
                    "endpoint",
                    &format!("{}:{PORT}", peer.underlay_ip),
                    "allowed-ips",
                    peer.prefixes,
                ],
            )?;
            end.ns
                .ip(&format!("addr add {}/24 dev {iface}", end.tunnel_ip))?;
            end.ns.ip(&format!("link set {iface} mtu {MTU} up"))?;
        }
        Ok(tunnel)
    }
}

/// A private key file and its public key.
fn key_pair(wg: &Path, dir: &Path, iface: &str) -> anyhow::Result<(PathBuf, String)> {
    let out = std::process::Command::new(wg)
        .arg("genkey")
        .output()
        .context("wg genkey")?;
    anyhow::ensure!(out.status.success(), "wg genkey failed");
    let private = String::from_utf8(out.stdout)?.trim().to_owned();
    let path = dir.join(format!("{iface}.key"));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{private}"))
        .context("failed to write a key")?;
    let mut child = std::process::Command::new(wg)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("wg pubkey")?;
    child
        .stdin
        .take()
        .context("wg pubkey has no stdin")?
        .write_all(private.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "wg pubkey failed");
    Ok((path, String::from_utf8(out.stdout)?.trim().to_owned()))
}
