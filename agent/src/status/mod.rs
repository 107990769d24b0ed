//! `meshgate-agent status`: the running agent answers on a unix socket in its state dir
//! with one JSON document; the CLI prints it as is (`--json`, for scripts) or as a short
//! report for a person at a terminal.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use meshgate_proto::{Kind, Role};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
};

use crate::config::XdpMode;

mod human;

pub use human::human;

/// Everything `status` shows. Field names and the lowercase enum values are the JSON
/// contract for scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `node` or `device`.
    pub kind: Kind,
    /// The node's or device's name, once registered.
    pub name: Option<String>,
    /// This replica's persistent id.
    pub replica_id: String,
    /// The Mesh IP, once registered.
    pub mesh_ip: Option<String>,
    /// The coordinator connection.
    pub connection: Connection,
    /// The coordinator's view of this replica: `active`, `standby`, `fenced`, or
    /// `unknown` before the coordinator has said anything.
    #[serde(with = "role_or_unknown")]
    pub role: Option<Role>,
    /// What the data plane does now: `active`, `standby` or `fenced`. Differs from `role`
    /// when the lease ran out before the coordinator said anything.
    pub forwarding: Role,
    /// The node's epoch.
    pub epoch: u64,
    /// Milliseconds left on the lease, if this replica holds one.
    pub lease_remaining_ms: Option<u64>,
    /// The active replica's LAN address, as a standby sees it.
    pub active_peer: Option<String>,
    /// Mesh-bound prefixes routed into the mesh.
    pub routes: Vec<String>,
    /// The LAN interface (node).
    pub lan_iface: Option<String>,
    /// The VIP (node).
    pub gateway_ip: Option<String>,
    /// The VIP is on the LAN interface now.
    pub holds_vip: bool,
    /// The XDP attach mode in effect: `native`, `skb` or `off`.
    pub xdp_mode: XdpMode,
    /// Why `--xdp-mode auto` chose what it did, or what the chosen mode cannot do.
    #[serde(default)]
    pub xdp_note: Option<String>,
    /// The TUN device and its MTU.
    pub tun: String,
    /// The TUN device's MTU.
    pub tun_mtu: u32,
    /// The health checks (`--health-target`), if any.
    #[serde(default)]
    pub health: crate::health::Report,
    /// The last role flip this agent applied.
    pub last_flip: Option<Flip>,
    /// Packet counters.
    pub counters: Counters,
    /// The network-policy filter this agent enforces, once the coordinator sent one.
    #[serde(default)]
    pub filter: Option<crate::policy::FilterStatus>,
}

impl StatusReport {
    /// The report of an agent that has just started: not registered, fenced, connecting.
    pub fn starting(kind: Kind, replica_id: String, xdp_mode: XdpMode, tun: String) -> Self {
        Self {
            kind,
            name: None,
            replica_id,
            mesh_ip: None,
            connection: Connection::default(),
            role: None,
            forwarding: Role::Fenced,
            epoch: 0,
            lease_remaining_ms: None,
            active_peer: None,
            routes: Vec::new(),
            lan_iface: None,
            gateway_ip: None,
            holds_vip: false,
            xdp_mode,
            xdp_note: None,
            tun,
            tun_mtu: 0,
            health: crate::health::Report::default(),
            last_flip: None,
            counters: Counters::default(),
            filter: None,
        }
    }
}

/// `role` in JSON: the role's name, or `unknown` for `None`.
mod role_or_unknown {
    use meshgate_proto::Role;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Named {
        Role(Role),
        Unknown(Unknown),
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Unknown {
        Unknown,
    }

    pub fn serialize<S: Serializer>(role: &Option<Role>, s: S) -> Result<S::Ok, S::Error> {
        match role {
            Some(r) => Named::Role(*r),
            None => Named::Unknown(Unknown::Unknown),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Role>, D::Error> {
        Ok(match Named::deserialize(d)? {
            Named::Role(r) => Some(r),
            Named::Unknown(_) => None,
        })
    }
}

/// The state of the coordinator connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    /// Dialling, or registering.
    #[default]
    Connecting,
    /// Registered; the session is up.
    Connected,
    /// The last attempt or session failed; a retry follows after a backoff.
    Disconnected,
    /// The coordinator refused this agent (its token); a retry follows after a long
    /// backoff, since only the coordinator's operator can change that.
    Refused,
}

/// The coordinator connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// `connecting`, `connected`, `disconnected` or `refused`.
    pub state: ConnState,
    /// The address of the coordinator that carries outbound traffic (the primary).
    pub coordinator: Option<String>,
    /// Round-trip time to it, as QUIC measures it.
    pub rtt_ms: Option<f64>,
    /// Why the last attempt or session failed.
    pub last_error: Option<String>,
    /// Sessions opened since start.
    pub sessions: u64,
    /// One entry per live coordinator connection (the agent keeps one to every
    /// coordinator it knows, up to `--max-coordinators`).
    #[serde(default)]
    pub conns: Vec<CoordinatorConn>,
}

/// One live coordinator connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorConn {
    /// The coordinator's `--name`, once it said (it does right after the Welcome).
    pub colo_name: Option<String>,
    /// The address that answered.
    pub addr: String,
    /// When the session opened (RFC 3339).
    pub opened_at: String,
    /// Whether this connection carries the agent's outbound traffic now.
    pub primary: bool,
    /// Round-trip time, as QUIC measures it.
    pub rtt_ms: Option<f64>,
    /// The coordinator said it is cut off from the cluster's store: it is sent through
    /// only when no other coordinator answers.
    #[serde(default)]
    pub cut_off: bool,
}

/// One kernel step of a flip, named as in `status` and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The mesh-bound prefixes installed in both prepared tables (and XDP).
    Routes,
    /// The standby table (and the XDP hairpin) pointed at the active replica.
    StandbyPeer,
    /// Only the XDP hairpin pointed at the active replica.
    Hairpin,
    /// The XDP program's role and epoch written.
    XdpRole,
    /// The policy rule switched to the other prepared table.
    RouteFlip,
    /// The VIP added to the LAN interface.
    VipAcquire,
    /// The VIP removed from the LAN interface.
    VipRelease,
    /// The first gratuitous ARP for the VIP sent.
    Garp,
}

/// One applied role flip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    /// The data plane's role after the flip.
    pub to: Role,
    /// The epoch of the flip.
    pub epoch: u64,
    /// How long applying every step took, in microseconds.
    pub duration_us: u64,
    /// Each step with its duration in microseconds, in the order applied.
    pub steps: Vec<(Step, u64)>,
    /// Wall-clock time of the flip, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// When its first step started, microseconds since the Unix epoch (to line the flip
    /// up with the coordinator's events and with traffic).
    #[serde(default)]
    pub started_unix_us: u64,
}

/// Packet counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets read from the TUN and sent to the coordinator.
    pub tun_to_mesh: u64,
    /// Packets received from the coordinator and written to the TUN.
    pub mesh_to_tun: u64,
    /// Packets the agent dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// XDP verdicts on the LAN interface, by verdict.
    pub xdp_verdicts: BTreeMap<String, u64>,
    /// XDP packets toward the mesh, by route.
    pub xdp_routes: BTreeMap<String, u64>,
}

/// Serves `report()` to every connection on `socket` until the task is dropped.
pub async fn serve(
    socket: PathBuf,
    report: Arc<dyn Fn() -> StatusReport + Send + Sync>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // A previous run that crashed leaves its socket file; nobody listens on it.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("failed to listen on the status socket {}", socket.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let body = serde_json::to_vec(&report()).unwrap_or_default();
            tokio::spawn(async move {
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    }))
}

/// Asks the agent behind `socket` for its status, giving up after `timeout`: a frozen
/// (SIGSTOPped) agent still accepts connections in the kernel but never answers.
pub async fn query(socket: &Path, timeout: Duration) -> anyhow::Result<StatusReport> {
    let ask = async {
        let mut stream = UnixStream::connect(socket).await.with_context(|| {
            format!(
                "no agent answers on {} (is `meshgate-agent run` running with this --state-dir?)",
                socket.display()
            )
        })?;
        let mut body = Vec::new();
        stream
            .read_to_end(&mut body)
            .await
            .context("failed to read the agent's status")?;
        anyhow::Ok(body)
    };
    let body = tokio::time::timeout(timeout, ask).await.with_context(|| {
        format!(
            "the agent on {} did not answer within {} ms (stopped or stuck?)",
            socket.display(),
            timeout.as_millis()
        )
    })??;
    serde_json::from_slice(&body).context("the agent's status is not valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn starting() -> StatusReport {
        StatusReport::starting(Kind::Node, "r1".into(), XdpMode::Native, "mg0".into())
    }

    #[test]
    fn the_json_names_are_lowercase_and_unknown_before_registration() {
        let mut r = starting();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["kind"], "node");
        assert_eq!(json["role"], "unknown");
        assert_eq!(json["forwarding"], "fenced");
        assert_eq!(json["xdp_mode"], "native");
        assert_eq!(json["connection"]["state"], "connecting");
        r.role = Some(Role::Standby);
        r.last_flip = Some(Flip {
            to: Role::Standby,
            epoch: 2,
            duration_us: 30,
            steps: vec![(Step::XdpRole, 10), (Step::VipRelease, 20)],
            at_unix_ms: 1,
            started_unix_us: 1000,
        });
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["role"], "standby");
        assert_eq!(json["last_flip"]["to"], "standby");
        assert_eq!(
            json["last_flip"]["steps"],
            serde_json::json!([["xdp-role", 10], ["vip-release", 20]])
        );
        assert_eq!(serde_json::from_value::<StatusReport>(json).unwrap(), r);
    }

    #[tokio::test]
    async fn a_client_reads_what_the_server_reports() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let report = StatusReport {
            role: Some(Role::Active),
            epoch: 7,
            ..starting()
        };
        let served = report.clone();
        let task = serve(socket.clone(), Arc::new(move || served.clone()))
            .await
            .unwrap();
        assert_eq!(query(&socket, SECOND).await.unwrap(), report);
        task.abort();
    }

    #[tokio::test]
    async fn no_agent_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = query(&dir.path().join("agent.sock"), SECOND)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no agent answers"), "{err}");
    }

    #[tokio::test]
    async fn a_stopped_agent_times_out_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        // Bound but never accepted from: what a SIGSTOPped agent looks like to a client.
        let _listener = UnixListener::bind(&socket).unwrap();
        let err = query(&socket, Duration::from_millis(100))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not answer within 100 ms"), "{err}");
    }
}
