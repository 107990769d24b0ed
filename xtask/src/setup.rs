//! `cargo xtask setup`: makes a fresh Debian machine of this kind ready to build and test
//! meshgate, and only checks on a machine that is ready. Every install step is skipped
//! when what it installs is already there, so a second run takes seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail};

use crate::cmd;

/// The toolchain that builds `ebpf/` (see `ebpf/rust-toolchain.toml`).
pub const NIGHTLY: &str = "nightly";
/// The bpf-linker release that fits the nightly's LLVM 22 (../shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13";
/// Debian packages the tests, the demo and the benchmarks use, with the command each
/// provides (checked first, so a machine that has them by other means is left alone).
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    ("nftables", "nft"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
    ("tcpdump", "tcpdump"),
    ("ethtool", "ethtool"),
    ("socat", "socat"),
    ("procps", "pkill"),
    ("systemd", "systemd-analyze"),
    // The coordinator cluster's tests run their own etcd members.
    ("etcd-server", "etcd"),
    ("etcd-client", "etcdctl"),
    // The etcd client crate compiles etcd's gRPC definitions at build time: protoc and
    // the well-known .proto files it imports (a file, not a program; a path works here).
    ("protobuf-compiler", "protoc"),
    (
        "libprotobuf-dev",
        "/usr/include/google/protobuf/descriptor.proto",
    ),
    // The console's browser test (Selenium drives Debian's chromedriver and Chromium)
    // and `cargo xtask package`'s checks.
    ("chromium", "chromium"),
    ("chromium-driver", "chromedriver"),
    ("lintian", "lintian"),
    ("dpkg-dev", "dpkg-shlibdeps"),
];
/// PyPI packages the tests use, as `(pip requirement, module)`: Selenium for the
/// console's browser test, schemathesis to check the API against its OpenAPI document.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("selenium>=4.20", "selenium"),
    ("schemathesis>=4,<5", "schemathesis"),
];

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    debian_packages()?;
    python_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    eprintln!("==> setup done in {:.1?}", started.elapsed());
    Ok(())
}

/// Installs the missing Debian packages. Without root it only warns: the unit tests still
/// run, and the namespace tests skip themselves anyway.
fn debian_packages() -> anyhow::Result<()> {
    cmd::step("Debian packages");
    let missing = missing_packages(PACKAGES);
    if missing.is_empty() {
        eprintln!("    all present");
        return Ok(());
    }
    if !cmd::is_root() {
        eprintln!(
            "    warning: missing {} and not root: run `sudo cargo xtask setup` for the namespace tests",
            missing.join(" ")
        );
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs the missing PyPI packages for the machine's `python3` (Selenium drives the
/// console's browser test with the chromedriver Debian ships, so no driver is downloaded).
fn python_packages() -> anyhow::Result<()> {
    cmd::step("Python packages");
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .filter(|(_, module)| {
            cmd::output(Command::new("python3").args(["-c", &format!("import {module}")])).is_none()
        })
        .map(|(requirement, _)| *requirement)
        .collect();
    if missing.is_empty() {
        eprintln!("    all present");
        return Ok(());
    }
    cmd::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--root-user-action=ignore",
            ])
            .args(&missing),
    )
    .with_context(|| {
        format!(
            "failed to install {} with pip: PyPI must be reachable",
            missing.join(" ")
        )
    })
}

/// The packages of `(package, program)` whose program is not installed.
pub fn missing_packages<'a>(packages: &[(&'a str, &str)]) -> Vec<&'a str> {
    packages
        .iter()
        .filter(|(_, program)| !has_program(program))
        .map(|(package, _)| *package)
        .collect()
}

/// Installs Debian `packages` with apt-get (root only).
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !has_program("apt-get") {
        bail!(
            "missing Debian packages {} and no apt-get: install them by hand",
            packages.join(" ")
        );
    }
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed: check the network or the apt sources")?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages),
    )
    .with_context(|| {
        format!(
            "failed to install {}: see apt-get's output above",
            packages.join(" ")
        )
    })
}

/// Whether `program` is on `PATH` (or in the sbin directories a non-root `PATH` lacks).
pub fn has_program(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

/// The nightly toolchain with rust-src (for `-Z build-std=core`), clippy and rustfmt.
fn nightly_rust_src() -> anyhow::Result<()> {
    cmd::step("nightly toolchain with rust-src");
    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is missing: install Rust with rustup (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))
        .context("failed to install the nightly toolchain: it is needed to build ebpf/")?;
    }
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    let missing: Vec<&str> = ["rust-src", "clippy", "rustfmt"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        eprintln!("    all present");
        return Ok(());
    }
    cmd::run(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", NIGHTLY])
            .args(&missing),
    )
    .with_context(|| {
        format!(
            "failed to add {} to the nightly toolchain",
            missing.join(" ")
        )
    })
}

/// Where setup keeps its builds: they outlive clones of the repository.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MESHGATE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache")
                });
            base.join("meshgate")
        })
}

/// The bpf-linker binary setup installs.
pub fn bpf_linker_path() -> PathBuf {
    cache_dir().join("bpf-linker/bin/bpf-linker")
}

/// Whether `linker` runs and is the expected release (it fails to start when the LLVM
/// library its RUNPATH points at is gone).
pub fn bpf_linker_works(linker: &Path) -> bool {
    cmd::output(Command::new(linker).arg("--version")).is_some_and(|v| {
        v.trim()
            .starts_with(&format!("bpf-linker {BPF_LINKER_VERSION}."))
    })
}

/// Builds bpf-linker against the LLVM library inside the nightly toolchain, as
/// ../shared/TOOLCHAIN.md describes: no prebuilt binary can be downloaded here and Debian
/// has no LLVM 22. The build script only needs `$LLVM_PREFIX/bin/llvm-config` to exist and
/// `$LLVM_PREFIX/lib/libLLVM.so` to link against; the binary then finds the library by
/// its SONAME through a RUNPATH into the same prefix, so the prefix lives in the cache.
fn bpf_linker() -> anyhow::Result<()> {
    cmd::step("bpf-linker");
    let prefix = cache_dir().join("llvm-prefix");
    let llvm = link_nightly_llvm(&prefix)?;
    let linker = bpf_linker_path();
    if bpf_linker_works(&linker) {
        eprintln!("    {} works", linker.display());
        return Ok(());
    }
    let major = llvm_major(&llvm)?;
    eprintln!(
        "    building bpf-linker {BPF_LINKER_VERSION} against {} (takes a minute or two)",
        llvm.display()
    );
    let root = linker
        .parent()
        .and_then(Path::parent)
        .expect("bin/bpf-linker has two parents");
    cmd::run(
        cmd::clean_cargo(None)
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--force", "--no-default-features"])
            .args(["--version", &format!("~{BPF_LINKER_VERSION}")])
            .args(["--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(root),
    )
    .context(
        "failed to build bpf-linker: see cargo's output above (crates.io must be reachable)",
    )?;
    if !bpf_linker_works(&linker) {
        bail!(
            "bpf-linker was built but `{} --version` fails: remove {} and run setup again",
            linker.display(),
            cache_dir().display()
        );
    }
    Ok(())
}

/// Points the prefix at the nightly's libLLVM and returns the library's path.
fn link_nightly_llvm(prefix: &Path) -> anyhow::Result<PathBuf> {
    let sysroot = cmd::output(
        Command::new("rustc")
            .arg(format!("+{NIGHTLY}"))
            .args(["--print", "sysroot"]),
    )
    .context("`rustc +nightly --print sysroot` failed: is the nightly toolchain installed?")?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("failed to read {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the nightly toolchain has no LLVM library",
                libdir.display()
            )
        })?;
    let (bin, lib) = (prefix.join("bin"), prefix.join("lib"));
    std::fs::create_dir_all(&bin)
        .and_then(|()| std::fs::create_dir_all(&lib))
        .with_context(|| format!("failed to create {}", prefix.display()))?;
    let version = llvm_version(&llvm)?;
    write_if_changed(
        &bin.join("llvm-config"),
        &format!("#!/bin/sh\necho {version}\n"),
        0o755,
    )?;
    let soname = llvm
        .file_name()
        .expect("a file found by read_dir has a name");
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = lib.join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(llvm.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm, &link)
                .with_context(|| format!("failed to link {}", link.display()))?;
        }
    }
    Ok(llvm)
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> `22.1.0`.
fn llvm_version(llvm: &Path) -> anyhow::Result<String> {
    let name = llvm
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let digits = name
        .trim_start_matches("libLLVM.so.")
        .split('-')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut parts: Vec<&str> = digits.split('.').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| p.parse::<u32>().is_err()) {
        bail!("cannot read the LLVM version from {name}");
    }
    parts.resize(3, "0");
    Ok(parts.join("."))
}

fn llvm_major(llvm: &Path) -> anyhow::Result<String> {
    Ok(llvm_version(llvm)?
        .split('.')
        .next()
        .expect("split yields at least one part")
        .to_owned())
}

fn write_if_changed(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read_to_string(path).ok().as_deref() != Some(contents) {
        std::fs::write(path, contents)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_version_from_the_soname() {
        let v = llvm_version(Path::new("/x/libLLVM.so.22.1-rust-1.97.0-nightly")).unwrap();
        assert_eq!(v, "22.1.0");
        assert_eq!(
            llvm_major(Path::new("/x/libLLVM.so.21-rust-1.90.0-nightly")).unwrap(),
            "21"
        );
        assert!(llvm_version(Path::new("/x/libLLVM.so.x-rust")).is_err());
    }
}
