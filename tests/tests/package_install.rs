//! The Debian packages: `xtask package` builds both from this build's binaries (and
//! lintian passes them), dpkg installs them into a throwaway root (its maintainer scripts
//! run against that root through `DPKG_ROOT`), and the installed files, modes, conffiles,
//! the coordinator's system user and both units are what an administrator gets. Then
//! remove keeps the conffiles and purge removes them (the state directory is never the
//! packages': systemd makes it at the service's first start).

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use meshgate_tests::require_root;

/// Where this test's own build put its binaries (`target/<profile>`): the workspace
/// binaries and `xtask` itself, which `cargo xtask test` has just built.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .find(|d| d.join("meshgate-coordinator").is_file())
        .map(Path::to_owned)
        .context("the workspace binaries are not built: run `cargo build --workspace`")
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    let m = std::fs::metadata(path).with_context(|| format!("{} is missing", path.display()))?;
    anyhow::ensure!(
        m.uid() == 0 && m.gid() == 0,
        "{} is not root's",
        path.display()
    );
    Ok(m.permissions().mode() & 0o7777)
}

/// dpkg against `root`, running maintainer scripts outside a chroot with `DPKG_ROOT`.
fn dpkg(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args))
}

#[test]
#[ignore = "needs root: dpkg installs root-owned files and runs maintainer scripts"]
fn packages_install_into_a_throwaway_root() -> anyhow::Result<()> {
    require_root()?;
    let bins = bin_dir()?;
    let xtask = bins.join("xtask");
    anyhow::ensure!(
        xtask.is_file(),
        "{} is not built: run this through `cargo xtask test`",
        xtask.display()
    );
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("debs");
    let listed = run(Command::new(&xtask)
        .arg("package")
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(&out))?;
    let debs: Vec<&str> = listed.lines().filter(|l| l.ends_with(".deb")).collect();
    anyhow::ensure!(debs.len() == 2, "expected two packages, got {listed}");
    for deb in &debs {
        // Every file root's, nothing setuid or world-writable.
        for line in run(Command::new("dpkg-deb").args(["-c", deb]))?.lines() {
            let perms = line.split_whitespace().next().unwrap_or_default();
            anyhow::ensure!(line.contains(" root/root "), "not root's: {line}");
            anyhow::ensure!(
                !perms.contains('s') && perms.as_bytes().get(8) != Some(&b'w'),
                "unsafe mode: {line}"
            );
        }
    }

    let root = dir.path().join("root");
    let admin = root.join("var/lib/dpkg");
    for sub in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(sub))?;
    }
    for f in ["status", "available"] {
        std::fs::write(admin.join(f), "")?;
    }
    let mut args = vec!["--install"];
    args.extend(&debs);
    dpkg(&root, &args)?;

    // Binaries run and say their version.
    for bin in ["meshgate-coordinator", "meshgate-agent"] {
        let path = root.join("usr/bin").join(bin);
        assert_eq!(mode(&path)?, 0o755, "{bin}");
        let version = run(Command::new(&path).arg("--version"))?;
        assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    }
    // Settings: conffiles under /etc/meshgate, the agent's private (it may hold a token).
    assert_eq!(mode(&root.join("etc/meshgate"))?, 0o755);
    assert_eq!(mode(&root.join("etc/meshgate/agent.env"))?, 0o600);
    assert_eq!(mode(&root.join("etc/meshgate/coordinator.env"))?, 0o644);
    let conffiles = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f", "${Conffiles}\n"]))?;
    for f in ["/etc/meshgate/agent.env", "/etc/meshgate/coordinator.env"] {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    let coordinator_env = std::fs::read_to_string(root.join("etc/meshgate/coordinator.env"))?;
    assert!(coordinator_env.contains("MESHGATE_DATA_DIR=/var/lib/meshgate/coordinator"));
    let agent_env = std::fs::read_to_string(root.join("etc/meshgate/agent.env"))?;
    assert!(agent_env.contains("MESHGATE_STATE_DIR=/var/lib/meshgate"));

    // The postinst made the coordinator's system user, without a login shell.
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    let user = passwd
        .lines()
        .find(|l| l.starts_with("meshgate:"))
        .with_context(|| format!("no meshgate user in {passwd}"))?;
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields[2].parse()?;
    assert!(uid > 0 && uid < 1000, "not a system uid: {user}");
    assert!(fields[6].ends_with("nologin"), "a login shell: {user}");

    // Units: in place, the coordinator's unprivileged, both verify with the installed
    // binaries and env files.
    let units = root.join("lib/systemd/system");
    let coordinator_unit = std::fs::read_to_string(units.join("meshgate-coordinator.service"))?;
    for line in [
        "ExecStart=/usr/bin/meshgate-coordinator serve",
        "User=meshgate",
        "StateDirectory=meshgate/coordinator",
        "StateDirectoryMode=0700",
        "CapabilityBoundingSet=\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(
            coordinator_unit.contains(line),
            "coordinator unit lacks {line:?}"
        );
    }
    let verify = dir.path().join("verify");
    std::fs::create_dir_all(&verify)?;
    for (unit, bin, env) in [
        (
            "meshgate-coordinator.service",
            "meshgate-coordinator",
            "coordinator.env",
        ),
        ("meshgate-agent.service", "meshgate-agent", "agent.env"),
    ] {
        assert_eq!(mode(&units.join(unit))?, 0o644);
        let text = std::fs::read_to_string(units.join(unit))?;
        assert!(
            text.contains(&format!("ExecStart=/usr/bin/{bin}")),
            "{unit}"
        );
        let text = text
            .replace(
                &format!("/usr/bin/{bin}"),
                &root.join("usr/bin").join(bin).display().to_string(),
            )
            .replace(
                &format!("/etc/meshgate/{env}"),
                &root.join("etc/meshgate").join(env).display().to_string(),
            );
        std::fs::write(verify.join(unit), text)?;
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(verify.join(unit))
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("meshgate")).collect();
        assert!(out.status.success() && ours.is_empty(), "{unit}: {stderr}");
    }
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(verify.join("meshgate-coordinator.service")))?;
    let exposure = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .context("no exposure level")?;
    println!("{exposure}");
    assert!(exposure.contains(" OK"), "{exposure}");

    // Remove keeps the conffiles, purge removes them; nothing else stays.
    dpkg(
        &root,
        &["--remove", "meshgate-agent", "meshgate-coordinator"],
    )?;
    assert!(!root.join("usr/bin/meshgate-agent").exists());
    assert!(
        !root
            .join("lib/systemd/system/meshgate-coordinator.service")
            .exists()
    );
    assert!(root.join("etc/meshgate/agent.env").exists());
    dpkg(
        &root,
        &["--purge", "meshgate-agent", "meshgate-coordinator"],
    )?;
    assert!(!root.join("etc/meshgate").exists());
    assert!(!root.join("var/lib/meshgate").exists());
    Ok(())
}
