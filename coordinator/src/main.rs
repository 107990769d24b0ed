//! `meshgate-coordinator`: the control plane and relay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use ipnet::Ipv4Net;
use meshgate_coordinator::admission::{Admissions, Limits};
use meshgate_coordinator::api::{self, Api};
use meshgate_coordinator::cluster::{self, Cluster, Driver, Member, Membership};
use meshgate_coordinator::hub::{self, Hub};
use meshgate_coordinator::ipam::Ipam;
use meshgate_coordinator::registry::Registry;
use meshgate_coordinator::store::Store;
use meshgate_coordinator::store::etcd::{Etcd, EtcdStore};
use meshgate_coordinator::store::redb::RedbStore;
use meshgate_coordinator::{identity, quic};
use meshgate_proto::Timings;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "meshgate coordinator: enrolment, Mesh IPs, routes, HA election, relay"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the coordinator.
    Serve(Serve),
    /// Write a support archive (tar.gz, secrets redacted) from the data directory of a
    /// coordinator that is not running; a running one serves GET /api/v1/support/sysdump.
    Sysdump(SysdumpArgs),
}

#[derive(Parser)]
struct SysdumpArgs {
    /// The coordinator's data directory.
    #[arg(long, env = "MESHGATE_DATA_DIR")]
    data_dir: PathBuf,
    /// Where to write the archive (`-`: standard output).
    #[arg(long, short, default_value = "meshgate-sysdump.tar.gz")]
    out: PathBuf,
}

#[derive(Parser)]
struct Serve {
    /// Data directory (created on first start): TLS identity, store, admin-token.
    #[arg(long, env = "MESHGATE_DATA_DIR")]
    data_dir: PathBuf,
    /// UDP address of the QUIC endpoint.
    #[arg(long, env = "MESHGATE_QUIC_LISTEN", default_value = "0.0.0.0:7443")]
    quic_listen: SocketAddr,
    /// TCP address of the REST API.
    #[arg(long, env = "MESHGATE_API_LISTEN", default_value = "127.0.0.1:7080")]
    api_listen: SocketAddr,
    /// HOST:PORT that tokens tell agents to dial (repeatable; default: the QUIC listen
    /// address, with 127.0.0.1 for an unspecified IP).
    #[arg(long, env = "MESHGATE_PUBLIC_ADDR", value_delimiter = ',')]
    public_addr: Vec<String>,
    /// The mesh range Mesh IPs come from.
    #[arg(long, env = "MESHGATE_MESH_CIDR", default_value = "100.96.0.0/12")]
    mesh_cidr: Ipv4Net,
    /// This coordinator's name (shown as `colo_name` in connections).
    #[arg(long, env = "MESHGATE_NAME", default_value = "meshgate")]
    name: String,
    /// Heartbeat interval agents use, in ms.
    #[arg(long, env = "MESHGATE_HEARTBEAT_MS", default_value_t = meshgate_proto::lease::DEFAULT_HEARTBEAT_MS)]
    heartbeat_ms: u32,
    /// Lease length from heartbeat receipt, in ms; failover happens about this long
    /// after the active is lost.
    #[arg(long, env = "MESHGATE_LEASE_MS", default_value_t = meshgate_proto::lease::DEFAULT_LEASE_MS)]
    lease_ms: u32,
    /// Guard agents subtract from their lease deadline, in ms.
    #[arg(long, env = "MESHGATE_GUARD_MS", default_value_t = meshgate_proto::lease::DEFAULT_GUARD_MS)]
    guard_ms: u32,
    /// How long an active that asked for handover (drain, link down) keeps forwarding
    /// after its successor's promotion, in ms, before it is fenced. Default: three
    /// heartbeats — the successor forwards once its first lease grant arrives.
    #[arg(long, env = "MESHGATE_HANDOVER_OVERLAP_MS")]
    handover_overlap_ms: Option<u32>,
    /// Run as a member of a coordinator cluster whose state lives in etcd at these
    /// endpoints (`http://HOST:2379`, comma-separated) instead of the embedded store.
    #[arg(long, env = "MESHGATE_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix of this cluster in etcd (several clusters can share one etcd).
    #[arg(long, env = "MESHGATE_ETCD_PREFIX", default_value = "/meshgate")]
    etcd_prefix: String,
    /// QUIC connections at once, registered or not; more are refused.
    #[arg(long, env = "MESHGATE_MAX_CONNECTIONS", default_value_t = Limits::default().total)]
    max_connections: u32,
    /// Connections from one source IP that have not registered yet (handshake, Hello);
    /// more are refused. Registered connections do not count (many gateways may share
    /// one NAT address).
    #[arg(long, env = "MESHGATE_MAX_UNAUTHENTICATED_PER_SOURCE", default_value_t = Limits::default().per_source)]
    max_unauthenticated_per_source: u32,
    /// Unregistered connections at once above which new clients must first prove their
    /// address with a QUIC Retry (one more round trip); 0: always.
    #[arg(long, env = "MESHGATE_VALIDATE_ADDRESSES_ABOVE", default_value_t = Limits::default().validate_above)]
    validate_addresses_above: u32,
    /// Seconds after which a node replica that no coordinator has seen connected loses
    /// its record and Mesh IP (a reinstalled host comes back under a new replica id);
    /// 0: never. Give every member of a cluster the same value.
    #[arg(long, env = "MESHGATE_REPLICA_RECLAIM_SECS", default_value_t = 7 * 86_400)]
    replica_reclaim_secs: u64,
}

/// The store and identity: the data dir's own, or the cluster's in etcd.
struct Backend {
    store: Arc<dyn Store>,
    id: identity::Identity,
    etcd: Option<(Arc<Etcd>, Arc<EtcdStore>)>,
}

fn backend(a: &Serve) -> Result<Backend> {
    if a.etcd.is_empty() {
        let id = identity::load_or_create(&a.data_dir)?;
        let store =
            RedbStore::open(&a.data_dir.join("store.redb")).context("failed to open the store")?;
        return Ok(Backend {
            store: Arc::new(store),
            id,
            etcd: None,
        });
    }
    let prefix = a.etcd_prefix.trim_end_matches('/');
    let etcd = Etcd::connect(&a.etcd).context("invalid --etcd")?;
    let meta = EtcdStore::open(etcd.clone(), format!("{prefix}/cluster/"))
        .with_context(|| format!("failed to reach etcd at {}", a.etcd.join(",")))?;
    let id = cluster::identity::load_or_create(&meta, &a.data_dir, &a.name)?;
    let store = EtcdStore::open(etcd.clone(), format!("{prefix}/kv/"))
        .context("failed to open the store in etcd")?;
    Ok(Backend {
        store: Arc::new(store),
        id,
        etcd: Some((etcd, Arc::new(meta))),
    })
}

fn main() -> Result<()> {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        // One variable for both binaries, named like their other settings.
        .with(EnvFilter::try_from_env("MESHGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        // The newest lines, for sysdumps.
        .with(meshgate_coordinator::sysdump_logs::RecentLogs)
        .init();
    let args = match Cli::parse().cmd {
        Cmd::Serve(args) => args,
        Cmd::Sysdump(s) => return sysdump(&s),
    };
    tokio::runtime::Runtime::new()
        .context("failed to start the runtime")?
        .block_on(serve(args))
}

fn sysdump(s: &SysdumpArgs) -> Result<()> {
    let bytes = api::offline_sysdump(&s.data_dir)?;
    if s.out.as_os_str() == "-" {
        use std::io::Write as _;
        std::io::stdout()
            .write_all(&bytes)
            .context("failed to write the archive to stdout")?;
    } else {
        std::fs::write(&s.out, &bytes)
            .with_context(|| format!("failed to write {}", s.out.display()))?;
        eprintln!("wrote {} ({} bytes)", s.out.display(), bytes.len());
    }
    Ok(())
}

async fn serve(a: Serve) -> Result<()> {
    let timings = Timings {
        heartbeat_ms: a.heartbeat_ms,
        lease_ms: a.lease_ms,
        guard_ms: a.guard_ms,
    };
    timings
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid timings: {e}"))?;
    let ipam = Ipam::new(a.mesh_cidr).context("invalid --mesh-cidr")?;
    let Backend { store, id, etcd } = backend(&a)?;
    let registry = Registry::new(store, ipam, id.token_key);
    let overlap = a
        .handover_overlap_ms
        .unwrap_or(a.heartbeat_ms.saturating_mul(3));
    let lease = Duration::from_millis(a.lease_ms.into());
    let hold = hub::tasks::restart_hold(&registry, lease)
        .context("failed to record the lease length in the store")?;
    let (hub, epoch_writes) = Hub::new(
        registry,
        timings,
        Duration::from_millis(overlap.into()),
        hold,
        ipam.cidr(),
        a.name.clone(),
        etcd.is_some().then(|| a.name.clone()),
    );
    let hub = Arc::new(hub);
    hub::tasks::spawn(hub.clone(), epoch_writes, lease, hold)
        .await
        .context("failed to start the coordinator's tasks")?;
    if a.replica_reclaim_secs > 0 {
        hub::reclaim::spawn(hub.clone(), Duration::from_secs(a.replica_reclaim_secs));
    }

    let endpoint = quic::endpoint(&id, a.quic_listen)?;
    let quic_addr = endpoint.local_addr().context("QUIC local address")?;
    let listener = tokio::net::TcpListener::bind(a.api_listen)
        .await
        .with_context(|| format!("failed to bind the API on {}", a.api_listen))?;
    let api_addr = listener.local_addr().context("API local address")?;

    let token_addrs = if a.public_addr.is_empty() {
        let mut q = quic_addr;
        if q.ip().is_unspecified() {
            q.set_ip([127, 0, 0, 1].into());
            tracing::warn!("no --public-addr: tokens will point at {q}, reachable only locally");
        }
        vec![q.to_string()]
    } else {
        a.public_addr.clone()
    };
    let me = Member {
        name: a.name.clone(),
        public_addrs: token_addrs,
        api_addr: api_addr.to_string(),
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    // The driver runs the cluster election for as long as `serve` does.
    let (cluster, _driver) = match etcd {
        None => (Cluster::single(me), None),
        Some((etcd, meta)) => {
            tokio::spawn(cluster::follow(hub.registry.store().clone(), hub.clone()));
            let root = format!("{}/cluster/", a.etcd_prefix.trim_end_matches('/'));
            let driver = Driver::start(etcd.clone(), root, a.name.clone(), hub.clone());
            let membership = Membership::start(etcd, meta, &a.etcd_prefix, &me, driver.events());
            (Cluster::on_etcd(me, Arc::new(membership)), Some(driver))
        }
    };
    let cluster = Arc::new(cluster);
    tokio::spawn(cluster::announce(cluster.clone(), hub.clone()));
    let gate = Admissions::new(Limits {
        total: a.max_connections,
        per_source: a.max_unauthenticated_per_source,
        validate_above: a.validate_addresses_above,
    });
    let api_state = Arc::new(Api {
        hub: hub.clone(),
        admin_token: id.admin_token.clone(),
        cluster,
        fingerprint: id.fingerprint,
        quic_ready: false.into(),
        admission: gate.clone(),
    });
    api_state.quic_ready.store(true, Relaxed);

    tokio::spawn(quic::serve(endpoint, hub.clone(), gate));
    tokio::spawn(meshgate_coordinator::policy::push::run(hub.clone()));

    tracing::info!(quic = %quic_addr, api = %api_addr, data_dir = %a.data_dir.display(), mesh = %ipam.cidr(), heartbeat_ms = a.heartbeat_ms, lease_ms = a.lease_ms, handover_overlap_ms = overlap, "coordinator started");
    // Machine-readable start-up lines on stdout, so scripts and tests can wait for them.
    println!("quic listening on {quic_addr}");
    println!("api listening on {api_addr}");

    axum::serve(listener, api::router(api_state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("API server failed")
}
