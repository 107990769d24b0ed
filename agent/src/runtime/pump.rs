//! The packet pump: TUN → QUIC datagrams and back, one task each way, so neither
//! direction waits on the other. Counters are atomics read by `status`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::task::JoinHandle;
use tracing::debug;

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
}

impl PumpCounters {
    /// The drop counters by reason, for `status`.
    pub fn dropped(&self) -> BTreeMap<String, u64> {
        [
            ("too_big", &self.too_big),
            ("send_failed", &self.send_failed),
            ("tun_write_failed", &self.tun_write_failed),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.load(Ordering::Relaxed)))
        .filter(|(_, v)| *v > 0)
        .collect()
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
pub fn start(tun: Arc<Tun>, conn: quinn::Connection, counters: Arc<PumpCounters>) -> Pump {
    let outbound = {
        let (tun, conn, counters) = (tun.clone(), conn.clone(), counters.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; BUF];
            loop {
                let n = match tun.recv(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        debug!(error = %e, "TUN read failed; stopping the outbound pump");
                        return;
                    }
                };
                match conn.send_datagram(bytes::Bytes::copy_from_slice(&buf[..n])) {
                    Ok(()) => counters.tun_to_mesh.fetch_add(1, Ordering::Relaxed),
                    Err(quinn::SendDatagramError::TooLarge) => {
                        counters.too_big.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
                    Err(_) => counters.send_failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let inbound = tokio::spawn(async move {
        while let Ok(packet) = conn.read_datagram().await {
            match tun.send(&packet).await {
                Ok(_) => counters.mesh_to_tun.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.tun_write_failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    });
    Pump {
        tasks: [outbound, inbound],
    }
}
