//! Issue 6's failover scenarios end to end: a replica of the HA node is killed, frozen,
//! cut off or drained while numbered UDP probes run both ways between the device and the
//! LAN host; the standby must take over in both directions, never with two actives.

use std::time::Duration;

use meshgate_tests::{
    failover::{FailoverRun, Fault},
    ha::Ha,
    require_root,
};

/// The outage bound for these tests; the speed targets live in `cargo xtask bench`.
const OUTAGE_BOUND: Duration = Duration::from_secs(5);

fn started(replicas: usize) -> anyhow::Result<Ha> {
    require_root()?;
    let mut ha = Ha::new(replicas)?;
    ha.start_replica(0, &[])?;
    ha.wait_forwarding(0, "active")?;
    for i in 1..replicas {
        ha.start_replica(i, &[])?;
        ha.wait_forwarding(i, "standby")?;
    }
    ha.start_device()?;
    let device_ip = ha.device_mesh_ip()?;
    ha.wait_ping(&ha.device, meshgate_tests::ha::HOST_IP)?;
    ha.wait_ping(&ha.host, &device_ip)?;
    Ok(ha)
}

fn describe(run: &FailoverRun) -> String {
    let mut s = format!("{}\n{}\n", run.inbound.summary(), run.outbound.summary());
    for (at, what) in run.timeline() {
        s.push_str(&format!("{at:>9.1} ms  {what}\n"));
    }
    s
}

#[test]
#[ignore = "needs root: network namespaces"]
fn kill_9_of_the_active_fails_over_both_ways_with_one_active() -> anyhow::Result<()> {
    let ha = started(2)?;
    let run = ha.measure_failover(Fault::Kill, 9200, Duration::from_millis(1000))?;
    let report = describe(&run);
    assert_eq!(run.to, 1, "{report}");
    assert!(
        run.max_agent_actives() <= 1,
        "two agents forwarding at once\n{report}"
    );
    assert!(
        run.max_api_actives() <= 1,
        "two actives in connections\n{report}"
    );
    for flow in [&run.inbound, &run.outbound] {
        assert!(flow.outage() < OUTAGE_BOUND, "{report}");
        // Traffic flows again at the end: the last 100 ms of datagrams arrived.
        let tail = flow.sent.saturating_sub(50);
        assert!(
            flow.arrivals.iter().any(|&(seq, _)| seq >= tail),
            "traffic did not resume\n{report}"
        );
    }
    assert!(run.event_ms("promoted").is_some(), "{report}");
    println!("{report}");
    Ok(())
}
