//! Root-only: the VIP check, add and remove, and gratuitous ARP seen by a LAN neighbour.

mod common;

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{addrs, ip_json, run_in, strs};
use meshgate_agent::{
    garp::{self, GarpConfig},
    netlink::{Error, Netlink},
    vip::VipKeeper,
};
use meshgate_tests::{Netns, require_root, veth};

const PROTO: u8 = 109;

/// Collects the ARP announcements of `ip` seen on `ns`'s eth0 for `window`, as
/// (sender MAC, arrival), signalling `ready` once the socket listens.
fn capture_announcements(
    ns: &Netns,
    ip: [u8; 4],
    window: Duration,
    ready: mpsc::Sender<()>,
) -> anyhow::Result<Vec<([u8; 6], Instant)>> {
    ns.enter(|| -> anyhow::Result<_> {
        let proto = 0x0806u16.to_be();
        // SAFETY: plain socket(2); the fd is checked, then owned.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: just opened and owned by nothing else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
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
        ready.send(())?;
        let mut seen = Vec::new();
        let deadline = Instant::now() + window;
        let mut buf = [0u8; 128];
        while Instant::now() < deadline {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            let f = &buf[..n];
            if n >= 42 && f[20..22] == [0, 1] && f[28..32] == ip && f[38..42] == ip {
                seen.push((f[22..28].try_into()?, Instant::now()));
            }
        }
        Ok(seen)
    })?
}

#[test]
#[ignore = "needs root: network namespaces"]
fn vip_is_checked_added_announced_and_removed() -> anyhow::Result<()> {
    require_root()?;
    let gw = Netns::new("gw")?;
    let host = Netns::new("host")?;
    veth(&gw, "eth0", &host, "eth0")?;
    gw.ip("addr add 192.168.50.11/24 dev eth0")?;
    host.ip("addr add 192.168.50.20/24 dev eth0")?;
    // The host still believes the VIP is at the old active's MAC.
    host.ip("neigh replace 192.168.50.1 lladdr 02:00:00:00:00:01 dev eth0 nud stale")?;
    let gw_mac = ip_json(&gw, "link show dev eth0")?[0]["address"]
        .as_str()
        .unwrap()
        .to_owned();

    let (ready_tx, ready_rx) = mpsc::channel();
    let captured = std::thread::scope(|s| -> anyhow::Result<_> {
        let capture = s.spawn(|| {
            capture_announcements(
                &host,
                [192, 168, 50, 1],
                Duration::from_millis(900),
                ready_tx,
            )
        });
        ready_rx.recv_timeout(Duration::from_secs(5))?;
        run_in(&gw, || async {
            let nl = Netlink::connect()?;
            let vip = "192.168.50.1/24".parse()?;
            nl.check_vip("eth0", vip, PROTO).await?;
            let outside = nl.check_vip("eth0", "10.9.9.1/24".parse()?, PROTO).await;
            let Err(e @ Error::VipOutsideSubnet { .. }) = outside else {
                panic!("a VIP outside the subnet was accepted: {outside:?}");
            };
            assert!(e.to_string().contains("192.168.50.0/24"), "{e}");
            assert!(matches!(
                nl.check_vip("nope0", vip, PROTO).await,
                Err(Error::NoSuchInterface(_))
            ));

            nl.add_vip("eth0", vip, PROTO, 60).await?;
            nl.add_vip("eth0", vip, PROTO, 60).await?; // idempotent
            assert_eq!(
                garp::fmt_mac(garp::interface_mac("eth0")?),
                gw_mac,
                "MAC lookup"
            );
            let sent = garp::announce(
                "eth0",
                vip.addr(),
                GarpConfig {
                    count: 3,
                    interval: Duration::from_millis(100),
                },
            )
            .await?;
            assert_eq!(sent, 3);
            anyhow::Ok(())
        })?;
        capture
            .join()
            .map_err(|_| anyhow::anyhow!("capture thread panicked"))?
    })?;

    assert_eq!(
        addrs(&gw, "eth0")?,
        strs(&["192.168.50.11/24", "192.168.50.1/24"])
    );
    assert_eq!(captured.len(), 3, "three announcements reach the host");
    let gw_mac_bytes: Vec<u8> = gw_mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    assert!(captured.iter().all(|(mac, _)| mac[..] == gw_mac_bytes[..]));
    let gap = captured[1].1 - captured[0].1;
    assert!(
        gap >= Duration::from_millis(80),
        "announcements {gap:?} apart"
    );
    let neigh = &ip_json(&host, "neigh show 192.168.50.1 dev eth0")?[0];
    assert_eq!(
        neigh["lladdr"].as_str(),
        Some(gw_mac.as_str()),
        "the host moved the VIP: {neigh}"
    );

    run_in(&gw, || async {
        let nl = Netlink::connect()?;
        nl.remove_vip("eth0", "192.168.50.1/24".parse()?).await?;
        nl.remove_vip("eth0", "192.168.50.1/24".parse()?).await?; // idempotent
        anyhow::Ok(())
    })?;
    assert_eq!(addrs(&gw, "eth0")?, strs(&["192.168.50.11/24"]));
    Ok(())
}

/// The VIP is a kernel lease: put with a one-second lifetime and not renewed (its agent
/// was killed), the kernel removes it within two seconds; renewed, it stays.
#[test]
#[ignore = "needs root: network namespaces"]
fn vip_lapses_without_renewal_and_stays_while_renewed() -> anyhow::Result<()> {
    require_root()?;
    let gw = Netns::new("gw")?;
    let host = Netns::new("host")?;
    veth(&gw, "eth0", &host, "eth0")?;
    gw.ip("addr add 192.168.50.11/24 dev eth0")?;
    let with_vip = strs(&["192.168.50.11/24", "192.168.50.1/24"]);
    run_in(&gw, || async {
        let nl = Netlink::connect()?;
        let keeper = VipKeeper::new(nl.clone());
        let index = nl.link_index("eth0").await?;
        keeper
            .acquire(index, "192.168.50.1/24".parse()?, PROTO)
            .await?;
        // Three lifetimes with renewals: still there.
        tokio::time::sleep(Duration::from_secs(3)).await;
        anyhow::Ok(())
    })?;
    assert_eq!(addrs(&gw, "eth0")?, with_vip, "renewed, the VIP stays");
    // The keeper is gone with its runtime (as with a killed agent): the VIP lapses.
    let gone_at = Instant::now();
    while addrs(&gw, "eth0")? == with_vip {
        assert!(
            gone_at.elapsed() < Duration::from_secs(2),
            "the VIP outlived its holder by more than 2 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(addrs(&gw, "eth0")?, strs(&["192.168.50.11/24"]));
    Ok(())
}
