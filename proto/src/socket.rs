//! The UDP socket under an agent's QUIC endpoint, with buffers sized for a tunnel. The
//! kernel's default (about 208 KiB) overflows in a few milliseconds at a few hundred
//! Mbit/s whenever the agent is not scheduled at once, and every overflow is a lost
//! tunnelled packet (the throughput benchmark, row 2, lost about 1% of a
//! 250 Mbit/s UDP flow that way). The coordinator sizes its own socket the same way
//! (`coordinator/src/quic.rs`); an agent has CAP_NET_ADMIN, so it can go past
//! `net.core.rmem_max`, as wireguard-go does.
//!
//! [`tunnel_transport`] holds the QUIC settings both ends share for moving packets.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

/// The receive and send buffer each QUIC socket asks for.
pub const BUFFER_BYTES: usize = 4 << 20;

/// The largest UDP payload on an IPv4 path with a 1500-byte MTU (Ethernet): the ceiling
/// of path MTU discovery. quinn's default (1452) also fits IPv6 headers; a probe above
/// what a path carries is simply lost, and the search settles lower.
pub const MAX_UDP_PAYLOAD: u16 = 1500 - 20 - 8;

/// Datagrams a connection may queue for sending before the oldest are dropped: a
/// TUN read can hand over a 64 KiB super-packet at once (about 45 packets), and a
/// few of those must fit while the connection waits for congestion window.
pub const DATAGRAM_SEND_BUFFER: usize = 2 << 20;

/// The tunnel's transport settings, on both ends: path MTU discovery up to
/// [`MAX_UDP_PAYLOAD`] (the inner MTU follows `max_datagram_size`), room to queue
/// datagrams, and UDP segmentation offload (quinn's default, stated here because the
/// throughput depends on it: one `sendmsg` carries many packets).
pub fn tunnel_transport(transport: &mut quinn::TransportConfig) {
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(MAX_UDP_PAYLOAD);
    transport
        .mtu_discovery_config(Some(mtud))
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER)
        .enable_segmentation_offload(true);
}

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
    match quinn::udp::UdpSocketState::new((&socket).into()) {
        Ok(state) => tracing::debug!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "UDP offloads of the QUIC socket"
        ),
        Err(e) => tracing::debug!(error = %e, "cannot read the QUIC socket's UDP offloads"),
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

    /// A server endpoint on loopback with a fresh self-signed identity, and the
    /// fingerprint a client pins.
    fn server() -> (quinn::Endpoint, [u8; 32]) {
        let cert = rcgen::generate_simple_self_signed(vec![crate::client::SERVER_NAME.into()])
            .expect("a self-signed certificate for a fixed name");
        let der = cert.cert.der().clone();
        let fingerprint = crate::token::cert_fingerprint(&der);
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported")
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .expect("the key matches the certificate");
        tls.alpn_protocols = vec![crate::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .expect("a TLS 1.3 config suits QUIC");
        let mut config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        tunnel_transport(&mut transport);
        config.transport_config(std::sync::Arc::new(transport));
        let runtime = quinn::default_runtime().expect("inside a tokio runtime");
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            bind(([127, 0, 0, 1], 0).into()).expect("bind on loopback"),
            runtime,
        )
        .expect("a server endpoint");
        (endpoint, fingerprint)
    }

    #[tokio::test]
    async fn datagrams_leave_in_batches_and_the_path_mtu_grows() {
        let (server, fingerprint) = server();
        let addr = server.local_addr().expect("bound");
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.expect("one incoming").await;
            (server, conn.expect("handshake"))
        });
        let client = client_endpoint(([127, 0, 0, 1], 0).into()).expect("client endpoint");
        let conn = client
            .connect_with(
                crate::client::client_config(fingerprint).expect("client config"),
                addr,
                crate::client::SERVER_NAME,
            )
            .expect("connect")
            .await
            .expect("handshake");
        let (_server, accepted) = accept.await.expect("accept task");
        // Path MTU discovery reaches the ceiling on loopback (its MTU is 64 KiB), so the
        // inner MTU is what a 1500-byte Ethernet path carries.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let expected = usize::from(MAX_UDP_PAYLOAD) - 38;
        while conn.max_datagram_size() != Some(expected) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "max_datagram_size stays at {:?}, not {expected}",
                conn.max_datagram_size()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let before = conn.stats().udp_tx;
        let packet = bytes::Bytes::from(vec![7u8; 1000]);
        for _ in 0..200 {
            conn.send_datagram(packet.clone())
                .expect("fits and the connection is open");
        }
        for _ in 0..200 {
            let got = accepted.read_datagram().await.expect("datagram");
            assert_eq!(got.len(), 1000);
        }
        let sent = conn.stats().udp_tx;
        let (datagrams, ios) = (sent.datagrams - before.datagrams, sent.ios - before.ios);
        assert!(
            ios * 4 <= datagrams,
            "{datagrams} UDP datagrams took {ios} sendmsg calls: segmentation offload is off"
        );
    }
}
