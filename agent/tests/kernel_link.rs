//! Root-only: the link watch reports the LAN link going down and up.

mod common;

use std::{process::Command, time::Duration};

use common::run_in;
use meshgate_agent::link_watch::{LinkState, LinkWatch};
use meshgate_tests::{Netns, require_root, veth};

async fn next(watch: &mut LinkWatch) -> anyhow::Result<LinkState> {
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the link watch ended"))
}

/// `ip link set <args>` in the calling thread's namespace (a child inherits it).
fn link_set(args: &str) -> anyhow::Result<()> {
    let status = Command::new("ip")
        .args(["link", "set"])
        .args(args.split_whitespace())
        .status()?;
    anyhow::ensure!(status.success(), "ip link set {args}: {status}");
    Ok(())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn link_watch_sees_admin_down_carrier_loss_and_recovery() -> anyhow::Result<()> {
    require_root()?;
    let gw = Netns::new("gw")?;
    let peer = Netns::new("peer")?;
    veth(&gw, "eth0", &peer, "eth0")?;
    run_in(&gw, || async {
        let mut watch = LinkWatch::new("eth0").await?;
        assert_eq!(watch.current(), LinkState::Up);

        link_set("eth0 down")?;
        assert_eq!(next(&mut watch).await?, LinkState::Down);
        link_set("eth0 up")?;
        assert_eq!(next(&mut watch).await?, LinkState::Up);

        // Carrier loss: the far end goes down, ours stays administratively up.
        peer.ip("link set eth0 down")?;
        assert_eq!(next(&mut watch).await?, LinkState::Down);
        peer.ip("link set eth0 up")?;
        assert_eq!(next(&mut watch).await?, LinkState::Up);
        assert_eq!(watch.current(), LinkState::Up);

        assert!(
            LinkWatch::new("nope0").await.is_err(),
            "a missing link is refused"
        );
        anyhow::Ok(())
    })
}
