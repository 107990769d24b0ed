//! Root-only: sysctls follow the calling thread's namespace and are restored exactly.

mod common;

use common::run_in;
use meshgate_agent::sysctl::{self, Sysctls};
use meshgate_tests::{Netns, require_root, veth};

fn read(ns: &Netns, key: &str) -> anyhow::Result<String> {
    Ok(ns.exec("sysctl", &["-n", key])?.trim().to_owned())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn sysctls_are_set_in_the_namespace_and_restored() -> anyhow::Result<()> {
    require_root()?;
    let root_redirects = sysctl::read("net/ipv4/conf/all/send_redirects")?;
    let gw = Netns::new("gw")?;
    let peer = Netns::new("peer")?;
    veth(&gw, "eth0", &peer, "eth0")?;
    gw.exec("sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;
    gw.exec("sysctl", &["-qw", "net.ipv4.conf.eth0.rp_filter=1"])?;
    // Already what we want: must not be recorded, so never "restored".
    gw.exec("sysctl", &["-qw", "net.ipv4.conf.eth0.send_redirects=0"])?;
    let before_all = read(&gw, "net.ipv4.conf.all.send_redirects")?;

    let mut sysctls = run_in(&gw, || async {
        let mut s = Sysctls::new();
        s.enable_forwarding()?;
        s.disable_redirects("eth0")?;
        s.loose_rp_filter("eth0")?;
        anyhow::Ok(s)
    })?;
    assert_eq!(read(&gw, "net.ipv4.ip_forward")?, "1");
    assert_eq!(read(&gw, "net.ipv4.conf.all.send_redirects")?, "0");
    assert_eq!(read(&gw, "net.ipv4.conf.eth0.send_redirects")?, "0");
    assert_eq!(read(&gw, "net.ipv4.conf.eth0.rp_filter")?, "2");
    let keys: Vec<&str> = sysctls.changed().iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        !keys.contains(&"net/ipv4/conf/eth0/send_redirects"),
        "{keys:?}"
    );
    assert_eq!(
        sysctl::read("net/ipv4/conf/all/send_redirects")?,
        root_redirects,
        "the root namespace is untouched"
    );

    run_in(&gw, || async { anyhow::Ok(sysctls.restore()?) })?;
    assert_eq!(read(&gw, "net.ipv4.ip_forward")?, "0");
    assert_eq!(read(&gw, "net.ipv4.conf.eth0.rp_filter")?, "1");
    assert_eq!(read(&gw, "net.ipv4.conf.eth0.send_redirects")?, "0");
    assert_eq!(read(&gw, "net.ipv4.conf.all.send_redirects")?, before_all);
    Ok(())
}
