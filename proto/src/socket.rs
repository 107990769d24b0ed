//! The UDP socket under an agent's QUIC endpoint, with buffers sized for a tunnel. The
//! kernel's default (about 208 KiB) overflows in a few milliseconds at a few hundred
//! Mbit/s whenever the agent is not scheduled at once, and every overflow is a lost
//! tunnelled packet (the throughput benchmark, row 2, lost about 1% of a
//! 250 Mbit/s UDP flow that way). The coordinator sizes its own socket the same way
//! (`coordinator/src/quic.rs`); an agent has CAP_NET_ADMIN, so it can go past
//! `net.core.rmem_max`, as wireguard-go does.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

/// The receive and send buffer each QUIC socket asks for.
pub const BUFFER_BYTES: usize = 4 << 20;

/// Binds a UDP socket at `addr` with [`BUFFER_BYTES`] buffers: forced past
/// `net.core.{r,w}mem_max` when the process may (CAP_NET_ADMIN), else as large as those
/// allow. A buffer that cannot be enlarged is not an error.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set(&socket, force, BUFFER_BYTES).is_err() {
            let _ = set(&socket, plain, BUFFER_BYTES);
        }
    }
    Ok(socket)
}

/// A client endpoint on such a socket (what `quinn::Endpoint::client` does otherwise).
pub fn client_endpoint(local: SocketAddr) -> io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| io::Error::other("no async runtime for the QUIC endpoint"))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        bind(local)?,
        runtime,
    )
}

fn set(socket: &UdpSocket, option: libc::c_int, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_gets_larger_buffers_than_the_default() {
        let socket = bind(([127, 0, 0, 1], 0).into()).expect("bind on loopback");
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into a valid c_int.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        // Linux doubles the value it stores; unprivileged, rmem_max caps it (default
        // 208 KiB, so at least that much, doubled).
        assert!(value >= 2 * 200 * 1024, "SO_RCVBUF is {value}");
    }
}
