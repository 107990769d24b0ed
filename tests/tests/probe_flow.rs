//! The numbered UDP probe measures what it claims: nothing lost over a healthy veth, and a
//! link held down for a known time shows up as one gap of about that length.

use std::time::Duration;

use meshgate_tests::{Netns, probe::Flow, probe::INTERVAL, require_root, veth};

fn pair() -> anyhow::Result<(Netns, Netns)> {
    require_root()?;
    let a = Netns::new("pa")?;
    let b = Netns::new("pb")?;
    veth(&a, "eth0", &b, "eth0")?;
    a.ip("addr add 10.77.0.1/24 dev eth0")?;
    b.ip("addr add 10.77.0.2/24 dev eth0")?;
    // Static neighbours: the gap must come from the link, not from ARP.
    let mac = |ns: &Netns| -> anyhow::Result<String> {
        let j: serde_json::Value = serde_json::from_str(&ns.ip("-j link show eth0")?)?;
        Ok(j[0]["address"].as_str().unwrap_or_default().to_owned())
    };
    a.ip(&format!("neigh add 10.77.0.2 lladdr {} dev eth0", mac(&b)?))?;
    b.ip(&format!("neigh add 10.77.0.1 lladdr {} dev eth0", mac(&a)?))?;
    Ok((a, b))
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_healthy_link_loses_nothing() -> anyhow::Result<()> {
    let (a, b) = pair()?;
    let flow = Flow::start("a → b", &a, &b, "10.77.0.2", 9100, INTERVAL)?;
    std::thread::sleep(Duration::from_millis(600));
    let r = flow.stop()?;
    assert!(r.sent >= 200, "{}", r.summary());
    assert_eq!(r.lost(), 0, "{}", r.summary());
    assert!(r.outage() < Duration::from_millis(50), "{}", r.summary());
    Ok(())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_link_held_down_shows_as_one_gap_of_that_length() -> anyhow::Result<()> {
    let (a, b) = pair()?;
    let flow = Flow::start("a → b", &a, &b, "10.77.0.2", 9100, INTERVAL)?;
    std::thread::sleep(Duration::from_millis(300));
    b.ip("link set eth0 down")?;
    std::thread::sleep(Duration::from_millis(400));
    b.ip("link set eth0 up")?;
    std::thread::sleep(Duration::from_millis(500));
    let r = flow.stop()?;
    let gaps = r.all_gaps();
    let big: Vec<_> = gaps
        .iter()
        .filter(|g| g.duration > Duration::from_millis(50))
        .collect();
    assert_eq!(big.len(), 1, "{} {gaps:?}", r.summary());
    let outage = big[0].duration;
    assert!(
        outage >= Duration::from_millis(350) && outage < Duration::from_millis(1500),
        "outage {outage:?}: {}",
        r.summary()
    );
    assert!(r.lost() >= 150, "{}", r.summary());
    Ok(())
}
