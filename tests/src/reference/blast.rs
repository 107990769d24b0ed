//! A packet generator for throughput benchmarks: threads that push one prebuilt Ethernet
//! frame out of an interface as fast as they can, through `AF_PACKET` with `sendmmsg`
//! in batches and the qdisc bypassed. No UDP socket or routing work on the sending side,
//! so each thread offers far more than the kernel's forwarding path can take — the
//! machine has no `pktgen` module to do this instead.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::Netns;

/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// `SOL_PACKET` / `PACKET_QDISC_BYPASS` (linux/if_packet.h): straight to the driver.
const SOL_PACKET: libc::c_int = 263;
const PACKET_QDISC_BYPASS: libc::c_int = 20;

/// Running generator threads. [`Blaster::stop`] ends them and says what they sent.
pub struct Blaster {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<io::Result<u64>>>,
    started: Instant,
}

/// What a generator sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Frames the kernel accepted.
    pub frames: u64,
    /// Over how long.
    pub elapsed: Duration,
}

impl Sent {
    /// Frames per second offered.
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }
}

impl Blaster {
    /// Starts `threads` threads sending `frame` out of `iface` in `ns`.
    pub fn start(ns: &Netns, iface: &str, frame: &[u8], threads: usize) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..threads {
            let (fd, addr) = ns
                .enter(|| open(iface))?
                .with_context(|| format!("AF_PACKET socket on {iface} in {}", ns.name()))?;
            let frame = frame.to_vec();
            let stop = Arc::clone(&stop);
            handles.push(std::thread::spawn(move || send(&fd, &addr, &frame, &stop)));
        }
        Ok(Self {
            stop,
            threads: handles,
            started: Instant::now(),
        })
    }

    /// Stops the threads; an error from any of them is returned.
    pub fn stop(self) -> anyhow::Result<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut frames = 0;
        for t in self.threads {
            frames += t
                .join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))?
                .context("sendmmsg")?;
        }
        Ok(Sent { frames, elapsed })
    }
}

fn open(iface: &str) -> io::Result<(OwnedFd, libc::sockaddr_ll)> {
    let name = std::ffi::CString::new(iface).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `name` is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto)) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a socket we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: the option value is a valid c_int of the size given. Failure only means
    // the frames take the qdisc path, which is slower but still correct.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    Ok((fd, addr))
}

fn send(
    fd: &OwnedFd,
    addr: &libc::sockaddr_ll,
    frame: &[u8],
    stop: &AtomicBool,
) -> io::Result<u64> {
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // SAFETY: all-zero mmsghdrs are valid; each points at the one iovec and address,
    // which the kernel only reads and which outlive every call below.
    let iov_ptr: *mut libc::iovec = &mut iov;
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name =
                (addr as *const libc::sockaddr_ll as *mut libc::sockaddr_ll).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov_ptr;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` holds BATCH initialised headers (see above).
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A full device queue: the receiver is the bottleneck, which is what we measure.
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == io::ErrorKind::WouldBlock {
                std::thread::yield_now();
                continue;
            }
            return Err(e);
        }
        sent += n as u64;
    }
    Ok(sent)
}
