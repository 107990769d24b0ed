//! Network namespaces, veth pairs and bridges, all inside namespaces the test owns: the
//! root namespace is never touched, so tests cannot disturb the machine or each other.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context, bail};

use crate::Process;

const PREFIX: &str = "mgt";
static NEXT: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// A network namespace that is deleted, with its links and every process in it, on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `mgt-<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        SWEEP.call_once(sweep_stale);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{}-{n}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>` (args split on whitespace) and returns its stdout.
    pub fn ip(&self, args: &str) -> anyhow::Result<String> {
        run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()))
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args…` inside the namespace; an error carries its stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(program).args(args))
    }

    /// Runs a shell script inside the namespace.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.exec("sh", &["-c", script])
    }

    /// Spawns `cmd` (built with [`Netns::command`]) as a guarded [`Process`].
    pub fn spawn(&self, name: &str, cmd: Command, log: &Path) -> anyhow::Result<Process> {
        Process::spawn(name, cmd, log)
    }

    /// Runs `f` on a thread that has entered this namespace, for code that must open
    /// netlink or attach XDP from inside it (interfaces are looked up per namespace).
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        let path = Path::new("/run/netns").join(&self.name);
        let file =
            File::open(&path).with_context(|| format!("failed to open {}", path.display()))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on a valid namespace fd affects only this thread, which
                    // exists just for `f` and ends with it.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        bail!(
                            "setns into {}: {}",
                            path.display(),
                            std::io::Error::last_os_error()
                        );
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread inside {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Kills every process still in the namespace, then deletes it (its links go with it).
fn delete(name: &str) {
    if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", name])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Removes namespaces that a killed test run left behind: those named `mgt-<pid>-…` whose
/// process is gone. A concurrent run keeps its own. Called once per process automatically.
pub fn sweep_stale() {
    for (name, pid) in owned_namespaces() {
        if !Path::new("/proc").join(pid.to_string()).exists() {
            eprintln!("harness: removing stale namespace {name} (its run, pid {pid}, is gone)");
            delete(&name);
        }
    }
}

/// Removes every namespace run `pid` created, with the processes in it (`cargo xtask
/// demo` on Ctrl-C, when its guards cannot run). Returns how many it removed.
pub fn remove_run(pid: u32) -> usize {
    let mine: Vec<String> = owned_namespaces()
        .into_iter()
        .filter(|(_, p)| *p == pid)
        .map(|(name, _)| name)
        .collect();
    for name in &mine {
        delete(name);
    }
    mine.len()
}

/// Every `mgt-<pid>-…` namespace with its run's pid.
fn owned_namespaces() -> Vec<(String, u32)> {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else {
        return Vec::new();
    };
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let pid = name
                .strip_prefix(PREFIX)?
                .strip_prefix('-')?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), pid))
        })
        .collect()
}

/// Creates a veth pair between two namespaces, `a_if` in `a` and `b_if` in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    a.ip(&format!(
        "link add {a_if} type veth peer name {b_if} netns {}",
        b.name()
    ))?;
    a.ip(&format!("link set {a_if} up"))?;
    b.ip(&format!("link set {b_if} up"))?;
    Ok(())
}

/// An Ethernet segment: a bridge `br0` in a namespace of its own, which other namespaces
/// plug into with a veth each.
pub struct Lan {
    ns: Netns,
    ports: AtomicU32,
}

impl Lan {
    /// Creates the bridge namespace and the bridge, up.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let ns = Netns::new(tag)?;
        ns.ip("link add br0 type bridge")?;
        // No STP delay: ports forward as soon as they are up.
        ns.ip("link set br0 type bridge forward_delay 0 stp_state 0")?;
        ns.ip("link set br0 up")?;
        Ok(Self {
            ns,
            ports: AtomicU32::new(0),
        })
    }

    /// Plugs `ns` into the bridge through a veth named `ifname` inside `ns`.
    pub fn attach(&self, ns: &Netns, ifname: &str) -> anyhow::Result<()> {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        veth(&self.ns, &port, ns, ifname)?;
        self.ns.ip(&format!("link set {port} master br0"))?;
        Ok(())
    }

    /// The bridge's namespace (to capture traffic or cut a port).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

/// Runs a command and returns its stdout; an error names the command and carries stderr.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
