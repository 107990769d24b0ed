//! `meshgate-agent sysdump` on an active gateway replica: the archive holds the kernel
//! state the agent manages (policy rules, its routing tables, the VIP, the nftables table,
//! the XDP program and its maps, sysctls) and its status, and not its token.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use meshgate_tests::{
    ha::{Ha, VIP},
    lab::bin,
    require_root,
};

/// Every file under `dir`, by its path below the archive's top directory.
fn read_tree(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir)?.display().to_string();
                let (_, name) = rel
                    .split_once('/')
                    .context("files live under one directory")?;
                out.insert(name.to_owned(), std::fs::read_to_string(&p)?);
            }
        }
    }
    Ok(out)
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn agent_sysdump_holds_the_kernel_state_and_no_token() -> anyhow::Result<()> {
    require_root()?;
    let mut ha = Ha::new(1)?;
    ha.start_replica(0, &[])?;
    ha.wait_forwarding(0, "active")?;
    let agent = ha.agent(0)?;
    let out = ha.lab.dir.path().join("agent-sysdump.tar.gz");
    let ns = &ha.replicas[0].ns;
    ns.exec(
        &bin("meshgate-agent")?.display().to_string(),
        &[
            "sysdump",
            "--state-dir",
            &agent.state_dir.display().to_string(),
            "--out",
            &out.display().to_string(),
        ],
    )?;
    let unpacked = ha.lab.dir.path().join("agent-sysdump");
    std::fs::create_dir_all(&unpacked)?;
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&out)
        .arg("-C")
        .arg(&unpacked)
        .status()?;
    anyhow::ensure!(status.success(), "tar -xzf failed");
    let files = read_tree(&unpacked)?;
    let has = |file: &str, what: &str| -> anyhow::Result<()> {
        let text = files
            .get(file)
            .with_context(|| format!("{file} missing: {:?}", files.keys()))?;
        anyhow::ensure!(text.contains(what), "{file} lacks {what:?}:\n{text}");
        Ok(())
    };
    has("ip/rule.txt", "7310")?;
    has("ip/route.txt", "table 7301")?;
    has("ip/addr.txt", VIP)?;
    has("nft/meshgate.txt", "table inet meshgate")?;
    has("bpf/prog.txt", "xdp_gateway")?;
    has("sysctl.txt", "net.ipv4.ip_forward = 1")?;
    has("versions.json", env!("CARGO_PKG_VERSION"))?;
    has("INDEX", "status.json")?;
    let status: serde_json::Value = serde_json::from_str(&files["status.json"])?;
    anyhow::ensure!(status["forwarding"] == "active", "status: {status}");
    anyhow::ensure!(
        files.keys().any(|f| f.starts_with("bpf/map-")),
        "no XDP map dumps: {:?}",
        files.keys()
    );
    let token = &ha.node.1;
    for (name, text) in &files {
        anyhow::ensure!(
            !text.contains(token.as_str()) && !text.contains(&token[10..34]),
            "{name} contains the node's token"
        );
    }
    Ok(())
}
