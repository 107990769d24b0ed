//! The checks themselves: a TCP connect, or one ICMP echo over a raw socket (the agent
//! has CAP_NET_RAW for gratuitous ARP already; unprivileged ICMP sockets depend on
//! `net.ipv4.ping_group_range`, which is closed by default).

use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use super::Target;

/// Checks `target` once, giving up after `timeout`.
pub async fn check(target: Target, timeout: Duration) -> Result<(), String> {
    match target {
        Target::Tcp(addr) => tcp(addr, timeout).await,
        Target::Icmp(ip) => tokio::task::spawn_blocking(move || icmp_echo(ip, timeout))
            .await
            .map_err(|e| format!("probe task failed: {e}"))?
            .map_err(|e| e.to_string()),
    }
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Sends one echo request to `ip` and waits for its reply (matched by identifier and
/// sequence, since a raw socket sees every ICMP packet the host receives).
fn icmp_echo(ip: Ipv4Addr, timeout: Duration) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is checked, then owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ident = (std::process::id() as u16) ^ rand::random::<u16>();
    let seq = rand::random::<u16>();
    let request = echo_request(ident, seq);
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from(ip).to_be();
    // SAFETY: `request` is valid for its length; `addr` is a sockaddr_in of that size.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no echo reply within {} ms", timeout.as_millis()),
            ));
        }
        set_recv_timeout(&sock, left)?;
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e);
        };
        if is_reply(&buf[..n], ip, ident, seq) {
            return Ok(());
        }
    }
}

/// An ICMP echo request (type 8) with a small payload and its checksum.
fn echo_request(ident: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8;
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"meshgate");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Whether `packet` (an IPv4 packet, as raw sockets deliver them) is the echo reply
/// from `from` to our request.
fn is_reply(packet: &[u8], from: Ipv4Addr, ident: u16, seq: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    let Some(icmp) = packet.get(ihl..) else {
        return false;
    };
    packet.len() >= 20
        && packet[12..16] == from.octets()
        && icmp.len() >= 8
        && icmp[0] == 0
        && icmp[4..6] == ident.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn set_recv_timeout(sock: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        // At least 1 µs: a zero timeval means "block forever".
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros().max(1)),
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of this size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0);
        assert_eq!(p[0], 8);
    }

    #[test]
    fn only_the_matching_reply_counts() {
        let from = Ipv4Addr::new(10, 0, 0, 1);
        let mut pkt = vec![0x45u8; 1];
        pkt.resize(20, 0);
        pkt[12..16].copy_from_slice(&from.octets());
        let mut reply = echo_request(9, 3);
        reply[0] = 0;
        pkt.extend_from_slice(&reply);
        assert!(is_reply(&pkt, from, 9, 3));
        assert!(!is_reply(&pkt, from, 9, 4), "another sequence");
        assert!(
            !is_reply(&pkt, Ipv4Addr::new(10, 0, 0, 2), 9, 3),
            "another host"
        );
        pkt[20] = 8;
        assert!(!is_reply(&pkt, from, 9, 3), "our own request");
        assert!(!is_reply(&pkt[..10], from, 9, 3), "truncated");
    }
}
