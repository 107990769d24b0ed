//! Who answers ARP for an address: sends one ARP request from a namespace and collects
//! every reply for a while. A neighbour table shows only the reply it kept; this shows
//! all of them, so a test can tell that exactly one host claims the gateway address.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::Netns;

const ETH_P_ARP: u16 = 0x0806;

/// The MACs (as `ip` prints them) that answered an ARP request for `target`, sent from
/// `iface` in `ns` with sender address `sender`, within `window`.
pub fn who_has(
    ns: &Netns,
    iface: &str,
    sender: Ipv4Addr,
    target: Ipv4Addr,
    window: Duration,
) -> anyhow::Result<BTreeSet<String>> {
    let iface = iface.to_owned();
    ns.enter(move || who_has_here(&iface, sender, target, window))?
}

fn who_has_here(
    iface: &str,
    sender: Ipv4Addr,
    target: Ipv4Addr,
    window: Duration,
) -> anyhow::Result<BTreeSet<String>> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(index != 0, "no interface {iface}");
    // SAFETY: plain socket(2); the fd is checked, then owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: just opened and owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = i32::try_from(index)?;
    let len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `addr` is a sockaddr_ll of `len` bytes.
    let rc = unsafe { libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), len) };
    anyhow::ensure!(rc == 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of this size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    let own = own_mac(iface)?;
    let frame = request(own, sender, target);
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `frame` is valid for its length; `addr` is a sockaddr_ll of `len` bytes.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            len,
        )
    };
    anyhow::ensure!(sent >= 0, "sendto: {}", std::io::Error::last_os_error());
    let mut macs = BTreeSet::new();
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 128];
    while Instant::now() < deadline {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        let f = &buf[..n];
        // An ARP reply (oper 2) whose sender IP is the target.
        if n >= 42
            && f[12..14] == ETH_P_ARP.to_be_bytes()
            && f[20..22] == [0, 2]
            && f[28..32] == target.octets()
        {
            macs.insert(fmt_mac(&f[22..28]));
        }
    }
    Ok(macs)
}

fn request(own: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&own);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&own);
    f[28..32].copy_from_slice(&sender.octets());
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// The interface's MAC (`SIOCGIFHWADDR`; `/sys` would show another namespace's).
fn own_mac(iface: &str) -> anyhow::Result<[u8; 6]> {
    anyhow::ensure!(iface.len() < libc::IFNAMSIZ, "interface name too long");
    // SAFETY: plain socket(2); the fd is checked, then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: just opened and owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name (length checked, zeroed).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    anyhow::ensure!(
        rc == 0,
        "SIOCGIFHWADDR {iface}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: after a successful SIOCGIFHWADDR the union holds `ifru_hwaddr`.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data) {
        *dst = src as u8;
    }
    Ok(mac)
}

fn fmt_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
