//! The packet pump: TUN → QUIC datagrams through the [`Uplink`] (the primary coordinator
//! connection), and back from every coordinator connection, one task each, so no
//! direction waits on another. Counters are atomics read by `status`.
//!
//! On a node replica a [`Gate`] stops the pump from forwarding between the mesh and the
//! LAN once its lease has run out. That matters after a freeze (SIGSTOP, a stalled VM):
//! datagrams the coordinator sent while this replica was still active wait in the socket
//! buffer, and packets from the LAN wait in the TUN queue; on waking, the pump must not
//! let them go, since by then another replica forwards. XDP fences the LAN side in the
//! kernel; this is the same rule for the path through user space.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use meshgate_proto::datagram::ipv4_src_dst;

use tokio::task::JoinHandle;
use tracing::debug;

use super::uplink::{SendError, Uplink};
use crate::tun::Tun;

/// Largest packet the TUN hands us (its MTU is never above this).
const BUF: usize = 65_536;

/// Packet counters of the pump.
#[derive(Debug, Default)]
pub struct PumpCounters {
    /// Packets read from the TUN and sent as datagrams.
    pub tun_to_mesh: AtomicU64,
    /// Datagrams written to the TUN.
    pub mesh_to_tun: AtomicU64,
    /// Packets that did not fit a datagram on this path.
    pub too_big: AtomicU64,
    /// Datagrams that could not be sent (connection closing).
    pub send_failed: AtomicU64,
    /// Writes to the TUN that failed.
    pub tun_write_failed: AtomicU64,
    /// Packets held back because this replica's lease had run out (see [`Gate`]).
    pub fenced: AtomicU64,
}

impl PumpCounters {
    /// The drop counters by reason, for `status`.
    pub fn dropped(&self) -> BTreeMap<String, u64> {
        [
            ("too_big", &self.too_big),
            ("send_failed", &self.send_failed),
            ("tun_write_failed", &self.tun_write_failed),
            ("fenced", &self.fenced),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.load(Ordering::Relaxed)))
        .filter(|(_, v)| *v > 0)
        .collect()
    }
}

/// A node replica's lease, as the pump sees it. See the module docs.
#[derive(Clone)]
pub struct Gate {
    /// The deadline of the lease this replica holds or last held as active (`None`: it
    /// holds none and has not been active since the coordinator last said otherwise).
    pub lease: Arc<dyn Fn() -> Option<Instant> + Send + Sync>,
    /// The replica's own Mesh IP: its own traffic is not forwarding and always passes.
    pub own: Ipv4Addr,
}

impl Gate {
    /// Whether `packet` may pass now: it is the replica's own traffic, or the lease it
    /// forwards under has not run out.
    fn allows(&self, packet: &[u8]) -> bool {
        if ipv4_src_dst(packet).is_some_and(|(src, dst)| src == self.own || dst == self.own) {
            return true;
        }
        (self.lease)().is_none_or(|deadline| Instant::now() < deadline)
    }
}

/// A pump task; dropping this stops it.
pub struct Pump {
    task: JoinHandle<()>,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn allows(gate: &Option<Gate>, packet: &[u8]) -> bool {
    gate.as_ref().is_none_or(|g| g.allows(packet))
}

/// Starts moving packets from `tun` to the mesh through `uplink` (whichever coordinator
/// connection is the primary), for as long as the agent runs.
pub fn outbound(
    tun: Arc<Tun>,
    uplink: Uplink,
    counters: Arc<PumpCounters>,
    gate: Option<Gate>,
) -> Pump {
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match tun.recv(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    debug!(error = %e, "TUN read failed; stopping the outbound pump");
                    return;
                }
            };
            if !allows(&gate, &buf[..n]) {
                counters.fenced.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match uplink.send_datagram(bytes::Bytes::copy_from_slice(&buf[..n])) {
                Ok(()) => counters.tun_to_mesh.fetch_add(1, Ordering::Relaxed),
                Err(SendError::TooLarge) => counters.too_big.fetch_add(1, Ordering::Relaxed),
                Err(SendError::NoConnection | SendError::Failed) => {
                    counters.send_failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    });
    Pump { task }
}

/// Starts writing what arrives on one coordinator connection to `tun`, until that
/// connection closes: any coordinator may relay to this agent.
pub fn inbound(
    tun: Arc<Tun>,
    conn: quinn::Connection,
    counters: Arc<PumpCounters>,
    gate: Option<Gate>,
) -> Pump {
    let task = tokio::spawn(async move {
        while let Ok(packet) = conn.read_datagram().await {
            if !allows(&gate, &packet) {
                counters.fenced.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match tun.send(&packet).await {
                Ok(_) => counters.mesh_to_tun.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.tun_write_failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    });
    Pump { task }
}
