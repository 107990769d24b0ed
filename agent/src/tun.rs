//! The TUN device, with the kernel's segmentation offloads, through the `tun-rs` crate.
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD` (TSO4/6, and USO4/6 where the kernel has them,
//! Linux ≥ 6.2) the kernel hands the agent TCP (and UDP-GSO) *super-packets* of up to
//! 64 KiB, one per read, instead of one MTU-sized packet per read; [`TunReader`] splits
//! each into MTU-sized packets with their checksums completed, since every packet must fit
//! one QUIC datagram. The other way, [`TunWriter`] coalesces the TCP segments (and UDP
//! datagrams) of one flow in a batch into one super-packet (GRO) before writing it, so
//! the kernel runs its forwarding path once per super-packet rather than once per
//! packet. Coalescing only happens inside a batch the pump already has: no packet waits
//! for another, so offloads add no latency (a failover flip does not wait on them).
//!
//! Why `tun-rs` rather than our own ioctls: its virtio-header handling (GSO split, GRO
//! coalescing, checksum completion) is a port of wireguard-go's, which carries
//! Tailscale's and WireGuard's production traffic; writing and fuzzing that again here
//! would be a second, less-tested copy. It is Apache-2.0 licensed and maintained.
//!
//! The device is not persistent, so the kernel deletes it, with its address and every
//! route through it, when the last fd closes: a crash leaves nothing. It is created in
//! the network namespace of the calling thread.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

use bytes::{Bytes, BytesMut};
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// The largest packet [`TunReader`] returns: the TUN MTU never exceeds what a datagram
/// carries (`meshgate_proto::datagram::MAX_PACKET`), so this leaves room.
const MAX_SEGMENT: usize = 2048;
/// The largest read: a virtio header and a 64 KiB super-packet.
const MAX_READ: usize = VIRTIO_NET_HDR_LEN + 65_535;

/// Which offloads the kernel accepted for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// TCP segmentation and receive coalescing (TSO4/6, `IFF_VNET_HDR`).
    pub tcp: bool,
    /// UDP segmentation (USO4/6; Linux ≥ 6.2).
    pub udp: bool,
}

/// A TUN device owned by this process.
pub struct Tun {
    dev: AsyncDevice,
    name: String,
    index: u32,
}

impl Tun {
    /// Creates `name` (no packet-info header, offloads on where the kernel allows), sets
    /// its MTU and brings it up. Needs CAP_NET_ADMIN and a tokio runtime with I/O enabled.
    pub fn create(name: &str, mtu: u32) -> io::Result<Self> {
        let dev = DeviceBuilder::new()
            .name(name)
            .mtu(mtu_u16(mtu)?)
            .offload(true)
            .enable(true)
            .build_async()?;
        // The kernel may have completed a `%d` pattern: read the name back.
        let name = dev.name()?;
        let index = dev.if_index()?;
        let tun = Self { dev, name, index };
        let offloads = tun.offloads();
        if !offloads.tcp {
            tracing::warn!(
                tun = %tun.name,
                "the kernel refused TUN offloads: one packet per read and per write"
            );
        }
        tracing::info!(tun = %tun.name, index, mtu, tso = offloads.tcp, uso = offloads.udp, "TUN device created");
        Ok(tun)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's ifindex.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The offloads in effect.
    pub fn offloads(&self) -> Offloads {
        Offloads {
            tcp: self.dev.tcp_gso(),
            udp: self.dev.udp_gso(),
        }
    }

    /// Changes the MTU (e.g. when the QUIC path's datagram size changes).
    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        self.dev.set_mtu(mtu_u16(mtu)?)
    }
}

fn mtu_u16(mtu: u32) -> io::Result<u16> {
    u16::try_from(mtu).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "MTU out of range"))
}

/// Reads packets from a [`Tun`]: each read returns one packet, or the MTU-sized packets
/// of one super-packet, as `Bytes` that share one allocation per read.
pub struct TunReader {
    raw: Vec<u8>,
    segments: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl Default for TunReader {
    fn default() -> Self {
        Self {
            raw: vec![0; MAX_READ],
            segments: vec![vec![0; MAX_SEGMENT]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
        }
    }
}

/// Why a read gave no packets.
#[derive(Debug)]
pub enum ReadError {
    /// The device failed (closed, gone): stop reading.
    Device(io::Error),
    /// One read could not be split into packets (a malformed virtio header or
    /// super-packet); the next read may succeed.
    Packet(io::Error),
}

impl TunReader {
    /// Waits for the next read and appends its packets to `out`.
    pub async fn read(&mut self, tun: &Tun, out: &mut Vec<Bytes>) -> Result<(), ReadError> {
        let n = tun
            .dev
            .recv_multiple(&mut self.raw, &mut self.segments, &mut self.sizes, 0)
            .await
            .map_err(|e| match e.raw_os_error() {
                Some(_) => ReadError::Device(e),
                None => ReadError::Packet(e),
            })?;
        let sizes = &self.sizes[..n];
        // One allocation per read rather than per packet; each packet's `Bytes` is a
        // reference-counted slice of it, handed to quinn without another copy.
        let mut arena = BytesMut::with_capacity(sizes.iter().sum());
        for (segment, &len) in self.segments.iter().zip(sizes) {
            arena.extend_from_slice(&segment[..len]);
        }
        let mut arena = arena.freeze();
        out.extend(sizes.iter().map(|&len| arena.split_to(len)));
        Ok(())
    }
}

/// Writes batches of packets to a [`Tun`], coalescing each flow's packets in a batch.
#[derive(Default)]
pub struct TunWriter {
    bufs: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

impl TunWriter {
    /// The most packets one batch should hold.
    pub const BATCH: usize = IDEAL_BATCH_SIZE;

    /// Packets waiting for [`TunWriter::flush`].
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether no packet waits.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Queues one IP packet for the next flush (a copy into a reused buffer, behind room
    /// for the virtio header). An empty packet is ignored: the coalescer refuses a batch
    /// that holds one.
    pub fn push(&mut self, packet: &[u8]) {
        if packet.is_empty() {
            return;
        }
        if self.used == self.bufs.len() {
            self.bufs
                .push(Vec::with_capacity(VIRTIO_NET_HDR_LEN + MAX_SEGMENT));
        }
        let buf = &mut self.bufs[self.used];
        buf.clear();
        buf.resize(VIRTIO_NET_HDR_LEN, 0);
        buf.extend_from_slice(packet);
        self.used += 1;
    }

    /// Writes every queued packet: coalesced where the kernel takes super-packets, one
    /// write per resulting packet. Returns how many were queued; an error is the last
    /// write that failed (the others were still written).
    pub async fn flush(&mut self, tun: &Tun) -> io::Result<usize> {
        let n = std::mem::take(&mut self.used);
        if n == 0 {
            return Ok(0);
        }
        tun.dev
            .send_multiple(&mut self.gro, &mut self.bufs[..n], VIRTIO_NET_HDR_LEN)
            .await?;
        Ok(n)
    }
}

/// A zeroed `ifreq` naming `name`.
pub(crate) fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1 to 15 bytes, no NUL)"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// A socket for interface ioctls, in the calling thread's network namespace.
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The ifindex of `name` in the calling thread's network namespace.
pub(crate) fn index_of(name: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: a valid C string; if_nametoindex opens its own socket in our namespace.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}
