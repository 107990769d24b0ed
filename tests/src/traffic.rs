//! Traffic checks beyond one echo: ICMP, TCP and UDP both ways between two namespaces,
//! bulk TCP transfers that must arrive intact, and what a sender is told when the path
//! is broken (an error, never silence).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::Context;

use crate::{
    Netns,
    ha::{tcp_echo, udp_echo, wait_ping},
};

/// ICMP, TCP and UDP from `a` to `b` and from `b` to `a`, each answered. Uses the four
/// ports from `port` on.
pub fn connectivity(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str, port: u16) -> anyhow::Result<()> {
    wait_ping(a, b_ip)?;
    wait_ping(b, a_ip)?;
    tcp_echo(b, a, b_ip, port, &pattern(200_000, u64::from(port)))
        .with_context(|| format!("TCP {} -> {b_ip}", a.name()))?;
    tcp_echo(a, b, a_ip, port + 1, &pattern(50_000, u64::from(port) + 1))
        .with_context(|| format!("TCP {} -> {a_ip}", b.name()))?;
    udp_echo(b, a, b_ip, port + 2).with_context(|| format!("UDP {} -> {b_ip}", a.name()))?;
    udp_echo(a, b, a_ip, port + 3).with_context(|| format!("UDP {} -> {a_ip}", b.name()))?;
    Ok(())
}

/// `n` pseudo-random bytes (xorshift from `seed`): a segment lost, duplicated or put in
/// the wrong place cannot go unnoticed, as it could with a constant pattern.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What one [`tcp_send`] delivered.
pub struct Transfer {
    /// Every byte the server read, until the client closed.
    pub bytes: Vec<u8>,
    /// The MSS the server's socket sends with (`TCP_MAXSEG`): the client's SYN option as
    /// it arrived, after any clamp on the way.
    pub server_mss: u32,
}

/// Sends `data` over one TCP connection from `client` to a listener in `server` on
/// `ip:port`, closes it, and returns what the server received.
pub fn tcp_send(
    server: &Netns,
    client: &Netns,
    ip: &str,
    port: u16,
    data: &[u8],
) -> anyhow::Result<Transfer> {
    let listener = server.enter(|| TcpListener::bind(("0.0.0.0", port)))??;
    let sink = std::thread::spawn(move || -> anyhow::Result<Transfer> {
        let (mut conn, _) = listener.accept()?;
        let server_mss = tcp_maxseg(&conn)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut bytes = Vec::new();
        conn.read_to_end(&mut bytes)
            .context("reading the transfer")?;
        Ok(Transfer { bytes, server_mss })
    });
    let target = format!("{ip}:{port}");
    let sent = data.to_vec();
    client.enter(move || -> anyhow::Result<()> {
        let mut conn = TcpStream::connect_timeout(&target.parse()?, Duration::from_secs(5))
            .with_context(|| format!("TCP connect to {target}"))?;
        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
        conn.write_all(&sent).context("writing the transfer")?;
        conn.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })??;
    sink.join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))?
}

fn tcp_maxseg(conn: &TcpStream) -> anyhow::Result<u32> {
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and pointers to a live c_int and its size.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut mss).cast(),
            &raw mut len,
        )
    };
    anyhow::ensure!(
        rc == 0,
        "getsockopt(TCP_MAXSEG): {}",
        std::io::Error::last_os_error()
    );
    Ok(u32::try_from(mss)?)
}

/// Runs `ping args…` in `ns` and returns what it printed (stdout and stderr), whatever
/// its exit status: an unreachable destination is an answer here, not a failure.
pub fn ping(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let out = ns
        .command("ping")
        .args(args)
        .output()
        .context("failed to run ping")?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Sends one UDP datagram from `ns` to `target` (`IP:PORT`) on a connected socket with
/// `IP_RECVERR` and DF always set (`IP_PMTUDISC_DO`: never fragmented locally), and waits up to `wait` for an answer. Returns the receive's outcome: the
/// reply's length, or the error an ICMP message turned into (`ENETUNREACH`,
/// `EHOSTUNREACH`, `ECONNREFUSED`, `EMSGSIZE`), or a timeout if nothing came back.
pub fn udp_probe(
    ns: &Netns,
    target: &str,
    payload: &[u8],
    wait: Duration,
) -> anyhow::Result<std::io::Result<usize>> {
    let target = target.to_owned();
    let payload = payload.to_vec();
    ns.enter(move || -> anyhow::Result<std::io::Result<usize>> {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        set_ip_option(&s, libc::IP_RECVERR, 1)?;
        set_ip_option(&s, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)?;
        s.connect(&target)?;
        s.set_read_timeout(Some(wait))?;
        if let Err(e) = s.send(&payload) {
            return Ok(Err(e));
        }
        let mut buf = [0u8; 2048];
        Ok(s.recv(&mut buf))
    })?
}

fn set_ip_option(s: &UdpSocket, option: libc::c_int, value: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: a valid socket fd and a pointer to a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    anyhow::ensure!(
        rc == 0,
        "setsockopt(IPPROTO_IP, {option}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}
