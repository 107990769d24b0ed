//! The external programs benchmarks compare meshgate with (keepalived, iperf3, `wg`,
//! wireguard-go, boringtun-cli). `cargo xtask bench` installs them; a benchmark run by hand
//! without them fails here, naming the command that would install them.

use std::path::PathBuf;

use anyhow::bail;

/// The program `name` (on `PATH`, in the sbin directories, or boringtun-cli in the cache
/// where `cargo xtask bench` builds it), or an error naming `cargo xtask bench`.
pub fn require(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/sbin".into(),
            cache_dir().join("boringtun/bin"),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => Ok(p),
        None => bail!(
            "{name} is missing: run `cargo xtask bench` (it installs the benchmark tools: \
             keepalived, wireguard-go, wireguard-tools, iperf3, boringtun-cli)"
        ),
    }
}

/// `cargo xtask setup`'s cache dir (`$MESHGATE_CACHE_DIR`, else `$XDG_CACHE_HOME/meshgate`,
/// else `~/.cache/meshgate`), where it builds boringtun-cli.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHGATE_CACHE_DIR") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"),
        PathBuf::from,
    );
    base.join("meshgate")
}
