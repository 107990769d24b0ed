//! The packet pump: TUN → QUIC datagrams and back, one task each way, so neither
//! direction waits on the other. Counters are atomics read by `status`.
//!
//! Both directions move batches: a TUN read yields the MTU-sized packets of a whole
//! super-packet, all queued on the connection before its driver runs, so quinn sends them
//! with one GSO `sendmsg`; the other way, the datagrams that have already arrived when the
//! first is taken are written together, coalesced per flow ([`crate::tun`]). No batch
//! ever waits for a packet that has not arrived.
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

use bytes::Bytes;
use futures_util::FutureExt as _;
use meshgate_proto::datagram::ipv4_src_dst;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::tun::{ReadError, Tun, TunReader, TunWriter};

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
    /// TUN reads that did not split into packets (a malformed super-packet).
    pub tun_read_invalid: AtomicU64,
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
            ("tun_read_invalid", &self.tun_read_invalid),
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

/// The two pump tasks of one session; dropping this stops them.
pub struct Pump {
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Pump {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts moving packets between `tun` and `conn` until the connection closes.
pub fn start(
    tun: Arc<Tun>,
    conn: quinn::Connection,
    counters: Arc<PumpCounters>,
    gate: Option<Gate>,
) -> Pump {
    let allows = move |packet: &[u8]| gate.as_ref().is_none_or(|g| g.allows(packet));
    let outbound = tokio::spawn(outbound(
        tun.clone(),
        conn.clone(),
        counters.clone(),
        allows.clone(),
    ));
    let inbound = tokio::spawn(inbound(tun, conn, counters, allows));
    Pump {
        tasks: [outbound, inbound],
    }
}

/// TUN → datagrams, a read (one packet, or one super-packet's packets) at a time.
async fn outbound(
    tun: Arc<Tun>,
    conn: quinn::Connection,
    counters: Arc<PumpCounters>,
    allows: impl Fn(&[u8]) -> bool,
) {
    let mut reader = TunReader::default();
    let mut packets: Vec<Bytes> = Vec::with_capacity(TunWriter::BATCH);
    loop {
        match reader.read(&tun, &mut packets).await {
            Ok(()) => {}
            Err(ReadError::Packet(e)) => {
                debug!(error = %e, "dropped a TUN read that does not split into packets");
                counters.tun_read_invalid.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(ReadError::Device(e)) => {
                debug!(error = %e, "TUN read failed; stopping the outbound pump");
                return;
            }
        }
        for packet in packets.drain(..) {
            if !allows(&packet) {
                counters.fenced.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match conn.send_datagram(packet) {
                Ok(()) => counters.tun_to_mesh.fetch_add(1, Ordering::Relaxed),
                Err(quinn::SendDatagramError::TooLarge) => {
                    counters.too_big.fetch_add(1, Ordering::Relaxed)
                }
                Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
                Err(_) => counters.send_failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Datagrams → TUN: waits for one datagram, takes every other one already there (up to a
/// batch), and writes them coalesced.
async fn inbound(
    tun: Arc<Tun>,
    conn: quinn::Connection,
    counters: Arc<PumpCounters>,
    allows: impl Fn(&[u8]) -> bool,
) {
    let mut writer = TunWriter::default();
    let admit = |writer: &mut TunWriter, packet: &[u8]| {
        if allows(packet) {
            writer.push(packet);
        } else {
            counters.fenced.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut open = true;
    while open {
        let Ok(first) = conn.read_datagram().await else {
            return;
        };
        admit(&mut writer, &first);
        while writer.len() < TunWriter::BATCH {
            // A datagram already received is ready at the first poll; dropping the future
            // when it is not loses nothing.
            match conn.read_datagram().now_or_never() {
                Some(Ok(packet)) => admit(&mut writer, &packet),
                Some(Err(_)) => {
                    open = false;
                    break;
                }
                None => break,
            }
        }
        let n = writer.len() as u64;
        match writer.flush(&tun).await {
            Ok(_) => counters.mesh_to_tun.fetch_add(n, Ordering::Relaxed),
            Err(_) => counters.tun_write_failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}
