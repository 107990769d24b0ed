//! Gratuitous ARP: after acquiring the VIP the active announces it, so hosts and switches
//! on the LAN move the VIP to its MAC at once instead of when their ARP cache expires.
//!
//! The frames are ARP announcements (RFC 5227 §2.3: a request whose sender and target IP
//! are both the VIP, target MAC zero, to broadcast), which Linux and common routers use
//! to update an existing neighbour entry. Several are sent, spaced, because one frame can
//! be lost while a switch relearns a port. Sending needs CAP_NET_RAW (an AF_PACKET socket).

use std::{
    io,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use tracing::{debug, info, warn};

use crate::tun::{control_socket, ifreq, index_of};

/// How many announcements to send and how far apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarpConfig {
    /// Number of frames (at least one is always sent).
    pub count: u32,
    /// Gap between frames.
    pub interval: Duration,
}

impl Default for GarpConfig {
    fn default() -> Self {
        Self {
            count: 3,
            interval: Duration::from_millis(100),
        }
    }
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xff; 6];
/// Ethernet's minimum frame without FCS; veth does not pad short frames, real NICs do.
const MIN_FRAME: usize = 60;

/// The MAC address of `iface` (in the calling thread's network namespace).
pub fn interface_mac(iface: &str) -> io::Result<[u8; 6]> {
    let ctl = control_socket()?;
    let mut req = ifreq(iface)?;
    // SAFETY: SIOCGIFHWADDR fills the hwaddr member of a `struct ifreq`.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR just wrote the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// An ARP announcement of `ip` at `mac`, padded to the Ethernet minimum.
pub fn announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // htype: Ethernet
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes()); // ptype: IPv4
    f[18] = 6; // hlen
    f[19] = 4; // plen
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // oper: request
    f[22..28].copy_from_slice(&mac); // sender MAC
    f[28..32].copy_from_slice(&ip.octets()); // sender IP
    // target MAC stays zero (f[32..38])
    f[38..42].copy_from_slice(&ip.octets()); // target IP
    f
}

/// Sends `config.count` announcements of `ip` out of `iface`, `config.interval` apart.
/// Returns the number sent.
pub async fn announce(iface: &str, ip: Ipv4Addr, config: GarpConfig) -> io::Result<u32> {
    let sender = Announcer::new(iface, ip)?;
    sender.send()?;
    sender.repeat(config).await
}

/// Sends the first announcement now and the repeats from a background task (the
/// default [`GarpConfig`]); failures are logged, since the VIP is in place either way.
pub fn announce_now_and_later(iface: String, ip: Ipv4Addr) {
    let sender = match Announcer::new(&iface, ip) {
        Ok(sender) => sender,
        Err(e) => {
            warn!(error = %e, iface = %iface, "gratuitous ARP failed");
            return;
        }
    };
    if let Err(e) = sender.send() {
        warn!(error = %e, iface = %iface, "gratuitous ARP failed");
    }
    tokio::spawn(async move {
        if let Err(e) = sender.repeat(GarpConfig::default()).await {
            warn!(error = %e, iface = %iface, "gratuitous ARP failed");
        }
    });
}

/// An announcement ready to go: socket, interface and frame prepared, so each frame is one
/// `sendto`. A flip sends the first frame inside the flip (timed as its own step) and moves
/// the announcer into a task for the repeats, which also keeps closing the packet socket
/// (an RCU grace period, milliseconds) out of the flip.
pub struct Announcer {
    sock: OwnedFd,
    index: u32,
    frame: [u8; MIN_FRAME],
    iface: String,
    ip: Ipv4Addr,
    mac: [u8; 6],
}

impl Announcer {
    /// Prepares announcements of `ip` at `iface`'s MAC.
    pub fn new(iface: &str, ip: Ipv4Addr) -> io::Result<Self> {
        let mac = interface_mac(iface)?;
        Ok(Self {
            sock: packet_socket()?,
            index: index_of(iface)?,
            frame: announcement(mac, ip),
            iface: iface.to_owned(),
            ip,
            mac,
        })
    }

    /// Sends one frame now.
    pub fn send(&self) -> io::Result<()> {
        send(&self.sock, self.index, &self.frame)?;
        debug!(iface = %self.iface, ip = %self.ip, "gratuitous ARP sent");
        Ok(())
    }

    /// After one frame went out: the remaining `config.count - 1`, `config.interval`
    /// apart. Returns the number sent in all.
    pub async fn repeat(self, config: GarpConfig) -> io::Result<u32> {
        let count = config.count.max(1);
        for _ in 1..count {
            tokio::time::sleep(config.interval).await;
            self.send()?;
        }
        info!(iface = %self.iface, ip = %self.ip, mac = %fmt_mac(self.mac), count,
            "VIP announced by gratuitous ARP");
        Ok(count)
    }
}

/// A send-only AF_PACKET socket: protocol 0 means the kernel delivers it no frames.
fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(sock: &OwnedFd, index: u32, frame: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = i32::try_from(index)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&BROADCAST);
    // SAFETY: `frame` is valid for its length; `addr` is a sockaddr_ll of the given size.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_has_the_rfc5227_shape() {
        let mac = [2, 0, 0, 0, 0, 9];
        let f = announcement(mac, Ipv4Addr::new(192, 168, 50, 1));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[192, 168, 50, 1]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[192, 168, 50, 1]);
        assert_eq!(fmt_mac(mac), "02:00:00:00:00:09");
    }
}
