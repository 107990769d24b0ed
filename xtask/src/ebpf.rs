//! `cargo xtask build-ebpf`: the XDP programs, built by nightly for bpfel-unknown-none
//! with BTF (flags in `ebpf/.cargo/config.toml`), linked by the bpf-linker that
//! `cargo xtask setup` installed.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, bail};

use crate::{cmd, setup};

/// Where the built object lands; `agent/build.rs` embeds it from there.
pub fn object_path() -> PathBuf {
    cmd::workspace_root().join("ebpf/target/bpfel-unknown-none/release/meshgate-ebpf")
}

pub fn build() -> anyhow::Result<()> {
    cmd::step("building the eBPF programs (ebpf/, nightly, bpfel-unknown-none)");
    let linker = setup::bpf_linker_path();
    if !setup::bpf_linker_works(&linker) {
        bail!(
            "bpf-linker is missing or broken at {}: run `cargo xtask setup`",
            linker.display()
        );
    }
    let started = Instant::now();
    let path = std::env::join_paths(
        std::iter::once(
            linker
                .parent()
                .expect("the linker path has a parent")
                .to_path_buf(),
        )
        .chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )
    .context("failed to build PATH for bpf-linker")?;
    cmd::run(
        cmd::clean_cargo(Some(setup::NIGHTLY))
            .current_dir(cmd::workspace_root().join("ebpf"))
            .env("PATH", path)
            .args(["build", "--release"]),
    )?;
    let object = object_path();
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    eprintln!(
        "    built {} in {:.1?}",
        object.display(),
        started.elapsed()
    );
    Ok(())
}
