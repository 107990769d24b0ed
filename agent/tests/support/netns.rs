//! Minimal network-namespace fixtures for the dataplane's own tests (the lead's
//! harness in `tests/` is the general one): guards that delete what they create on
//! `Drop`, and a way to run code inside a namespace on a dedicated thread.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

/// A named network namespace (`ip netns add`), deleted on drop with everything in it.
pub struct NetNs {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "mgx-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args…`, panicking with ip's stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        ip_in(&self.name, args);
    }

    /// Runs `f` on a new thread that has joined this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("the namespace thread does not panic")
    }

    /// Spawns `f` on a thread inside this namespace, without waiting for it.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn enter(path: &str) {
    let file = File::open(path).expect("the namespace exists while its guard lives");
    // SAFETY: setns on a namespace fd affects only the calling thread (network
    // namespaces can be entered per thread).
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
}

/// `ip -n NS args…`.
pub fn ip_in(ns: &str, args: &[&str]) {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all);
}

/// `ip netns exec NS cmd…`.
pub fn exec_in(ns: &str, cmd: &[&str]) {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(cmd);
    ip(&all);
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 is installed");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Opens a TUN device (`IFF_TUN | IFF_NO_PI`) named `name` in the calling thread's
/// namespace; the returned file reads and writes bare IP packets.
pub fn open_tun(name: &str) -> File {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun exists");
    // SAFETY: `ifreq` is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to a valid `ifreq`.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(ret, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    file
}
