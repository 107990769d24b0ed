//! `BPF_PROG_TEST_RUN` through the raw `bpf(2)` syscall (aya 0.14 has no public wrapper):
//! runs a loaded XDP program on a crafted frame, returning the action, the frame as the
//! program left it, and the mean run time for benchmarks. [`Dataplane::test_run`] runs
//! any program of the object against the dataplane's live maps.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use meshgate_common::program;

use super::{Dataplane, DataplaneError, program::xdp_program};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Room for programs that grow the frame; ours only shrink it.
const OUT_SLACK: usize = 256;

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h), up to `batch_size`.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The XDP action the program returned (`XDP_PASS` = 2, …).
    pub action: u32,
    /// The frame after the program ran (rewrites, stripped headers).
    pub data: Vec<u8>,
    /// Mean nanoseconds per run over `repeat` runs, as measured by the kernel.
    pub duration_ns: u32,
}

/// Runs the program behind `prog` on `data`, `repeat` times (0 counts as 1). The
/// kernel wants at least an Ethernet header's worth of data (14 bytes).
pub fn run(prog: BorrowedFd<'_>, data: &[u8], repeat: u32) -> io::Result<TestRunOutput> {
    let mut out = vec![0u8; data.len() + OUT_SLACK];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: u32::try_from(data.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
        data_size_out: u32::try_from(out.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the kernel reads
    // `data_size_in` bytes from `data` and writes at most `data_size_out` bytes to `out`,
    // both of which outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRunOutput {
        action: attr.retval,
        data: out,
        duration_ns: attr.duration,
    })
}

/// The programs of the object that [`Dataplane::test_run`] can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `xdp_gateway`, the dataplane.
    Gateway,
    /// `xdp_pass`, the zero-work baseline.
    Pass,
    /// `xdp_count`, the counting probe.
    Count,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Self::Gateway => program::XDP_GATEWAY,
            Self::Pass => program::XDP_PASS,
            Self::Count => program::XDP_COUNT,
        }
    }
}

impl Dataplane {
    /// Runs `program` on `frame` with `BPF_PROG_TEST_RUN`, `repeat` times (for
    /// benchmarks), against the live maps. Loads the baseline programs on first use.
    pub fn test_run(
        &mut self,
        program: Program,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutput, DataplaneError> {
        let name = program.name();
        let prog = xdp_program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        let fd = prog
            .fd()
            .map_err(|source| DataplaneError::Program { name, source })?;
        run(fd.as_fd(), frame, repeat).map_err(|source| DataplaneError::TestRun { name, source })
    }
}
