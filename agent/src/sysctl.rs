//! The sysctls a gateway needs, with the previous values of those we changed so that
//! [`Sysctls::restore`] undoes exactly our changes and nothing else.
//!
//! Keys are paths under `/proc/sys` with slashes (`net/ipv4/conf/eth0.100/rp_filter`), as
//! interface names may contain dots. `/proc/sys/net` shows the network namespace of the
//! task that opens the file, so these follow the calling thread's namespace.

use std::{io, path::PathBuf};

use tracing::{info, warn};

const ROOT: &str = "/proc/sys";
/// The only part of `/proc/sys` the agent writes; the systemd unit keeps just this
/// writable under `ProtectKernelTunables`.
pub const WRITABLE_SUBTREE: &str = "net/";

/// Reads a sysctl, trimmed.
pub fn read(key: &str) -> io::Result<String> {
    let path = path(key);
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_owned())
        .map_err(|e| io::Error::new(e.kind(), format!("failed to read {}: {e}", path.display())))
}

fn write(key: &str, value: &str) -> io::Result<()> {
    let path = path(key);
    std::fs::write(&path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("failed to write {}: {e}", path.display())))
}

fn path(key: &str) -> PathBuf {
    PathBuf::from(ROOT).join(key)
}

/// The sysctls we changed, with their previous values.
#[derive(Debug, Default)]
pub struct Sysctls {
    changed: Vec<(String, String)>,
}

impl Sysctls {
    /// Nothing changed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, remembering the old value if it differed (only the first
    /// time, so the value restored is the one from before the agent).
    pub fn set(&mut self, key: &str, value: &str) -> io::Result<()> {
        if !key.starts_with(WRITABLE_SUBTREE) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{key}: the agent writes only under /proc/sys/{WRITABLE_SUBTREE}"),
            ));
        }
        let old = read(key)?;
        if old == value {
            return Ok(());
        }
        write(key, value)?;
        info!(key, %old, new = value, "sysctl changed");
        if !self.changed.iter().any(|(k, _)| k == key) {
            self.changed.push((key.to_owned(), old));
        }
        Ok(())
    }

    /// `net.ipv4.ip_forward = 1`.
    pub fn enable_forwarding(&mut self) -> io::Result<()> {
        self.set("net/ipv4/ip_forward", "1")
    }

    /// No ICMP redirects from `iface`: a standby forwards mesh traffic back out of the
    /// interface it came in on, which would otherwise make the kernel tell LAN hosts to
    /// use the active directly. The kernel sends redirects if `all` *or* the interface
    /// says so, so both are cleared.
    pub fn disable_redirects(&mut self, iface: &str) -> io::Result<()> {
        self.set("net/ipv4/conf/all/send_redirects", "0")?;
        self.set(&format!("net/ipv4/conf/{iface}/send_redirects"), "0")
    }

    /// Loose reverse-path filtering on `iface` (the TUN): on a standby, the reverse route
    /// to a mesh source points at the LAN (STANDBY table), so strict mode would drop what
    /// its own tunnel delivers. The kernel uses max(all, iface), so 2 on the interface is
    /// loose whatever `all` says.
    pub fn loose_rp_filter(&mut self, iface: &str) -> io::Result<()> {
        self.set(&format!("net/ipv4/conf/{iface}/rp_filter"), "2")
    }

    /// The changes made so far: (key, previous value).
    pub fn changed(&self) -> &[(String, String)] {
        &self.changed
    }

    /// Puts back every value we changed, newest first. A key that is gone (its interface
    /// was deleted, like the TUN) is skipped. Returns the first other error.
    pub fn restore(&mut self) -> io::Result<()> {
        let mut first_err = None;
        while let Some((key, old)) = self.changed.pop() {
            match write(&key, &old) {
                Ok(()) => info!(key, value = %old, "sysctl restored"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(key, error = %e, "failed to restore a sysctl");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
