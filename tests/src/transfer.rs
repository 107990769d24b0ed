//! A long TCP transfer of a known byte stream between two namespaces, paced so that it
//! spans a failover: the receiver compares every byte with the stream the sender was
//! asked to send, so a connection that survived but lost, duplicated or reordered data
//! is caught at the exact offset.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::Netns;

/// How long a stalled connection may sit without progress before the transfer fails.
const STALL: Duration = Duration::from_secs(30);
const CHUNK: usize = 16 * 1024;

/// Byte `offset` of the stream: words of a SplitMix64 sequence indexed by position, so
/// no shifted or repeated chunk of it looks like the right one.
fn word(index: u64) -> [u8; 8] {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()
}

/// Fills `buf` with the stream's bytes from `offset` on.
fn fill(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let at = offset + i as u64;
        *b = word(at / 8)[(at % 8) as usize];
    }
}

/// What the receiver got.
#[derive(Debug, Clone)]
pub struct TransferReport {
    /// The direction, e.g. `device → host`.
    pub label: String,
    /// Bytes the sender was to send.
    pub total: u64,
    /// Bytes received before the sender closed the connection.
    pub received: u64,
    /// The first offset whose byte differed from the stream, if any.
    pub first_mismatch: Option<u64>,
    /// From connect to the end of the stream.
    pub elapsed: Duration,
}

impl TransferReport {
    /// Every byte arrived, in order, on the one connection.
    pub fn intact(&self) -> bool {
        self.received == self.total && self.first_mismatch.is_none()
    }
}

/// A running transfer; [`Transfer::finish`] waits for its end.
pub struct Transfer {
    label: String,
    total: u64,
    progress: Arc<AtomicU64>,
    sender: JoinHandle<anyhow::Result<()>>,
    receiver: JoinHandle<anyhow::Result<TransferReport>>,
}

impl Transfer {
    /// Connects from `from` to a listener in `to` at `to_ip:port` and starts sending
    /// `total` bytes at about `rate` bytes per second.
    pub fn start(
        label: &str,
        (from, to): (&Netns, &Netns),
        (to_ip, port): (&str, u16),
        total: u64,
        rate: u64,
    ) -> anyhow::Result<Self> {
        let listener = to
            .enter(|| TcpListener::bind(("0.0.0.0", port)))?
            .with_context(|| format!("bind TCP :{port} in {}", to.name()))?;
        let target = format!("{to_ip}:{port}");
        let mut tx = from.enter(|| -> anyhow::Result<TcpStream> {
            let s = TcpStream::connect_timeout(&target.parse()?, Duration::from_secs(5))
                .with_context(|| format!("TCP connect to {target}"))?;
            s.set_write_timeout(Some(STALL))?;
            Ok(s)
        })??;
        let (mut rx, _) = listener.accept().context("accept the transfer")?;
        rx.set_read_timeout(Some(STALL))?;
        let started = Instant::now();
        let progress = Arc::new(AtomicU64::new(0));
        let sender = std::thread::spawn(move || -> anyhow::Result<()> {
            let mut buf = vec![0u8; CHUNK];
            let mut sent = 0u64;
            while sent < total {
                let n = CHUNK.min(usize::try_from(total - sent).unwrap_or(CHUNK));
                fill(&mut buf[..n], sent);
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                tx.write_all(&buf[..n])
                    .with_context(|| format!("send at offset {sent}"))?;
                sent += n as u64;
            }
            tx.shutdown(Shutdown::Write)?;
            Ok(())
        });
        let (name, seen) = (label.to_owned(), progress.clone());
        let receiver = std::thread::spawn(move || -> anyhow::Result<TransferReport> {
            let (mut buf, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
            let (mut received, mut first_mismatch) = (0u64, None);
            loop {
                let n = rx
                    .read(&mut buf)
                    .with_context(|| format!("{name}: receive at offset {received}"))?;
                if n == 0 {
                    break;
                }
                if first_mismatch.is_none() {
                    fill(&mut want[..n], received);
                    first_mismatch = (0..n)
                        .find(|&i| buf[i] != want[i])
                        .map(|i| received + i as u64);
                }
                received += n as u64;
                seen.store(received, Ordering::Relaxed);
            }
            Ok(TransferReport {
                label: name,
                total,
                received,
                first_mismatch,
                elapsed: started.elapsed(),
            })
        });
        Ok(Self {
            label: label.to_owned(),
            total,
            progress,
            sender,
            receiver,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Bytes the sender was asked to send.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Waits for the stream to end (sender closed, or the connection failed).
    pub fn finish(self) -> anyhow::Result<TransferReport> {
        let label = self.label;
        let sent = self
            .sender
            .join()
            .map_err(|_| anyhow::anyhow!("{label}: sender panicked"))?;
        let report = self
            .receiver
            .join()
            .map_err(|_| anyhow::anyhow!("{label}: receiver panicked"))??;
        sent.with_context(|| format!("{label}: sending failed"))?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_the_same_whatever_the_chunking() {
        let mut whole = vec![0u8; 100];
        fill(&mut whole, 0);
        let mut parts = vec![0u8; 100];
        fill(&mut parts[..37], 0);
        fill(&mut parts[37..], 37);
        assert_eq!(whole, parts);
        assert_ne!(whole[..8], whole[8..16], "words differ");
    }
}
