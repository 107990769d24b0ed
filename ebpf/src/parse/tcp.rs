//! TCP (RFC 9293): the fixed header, the data offset, and the options walk that finds
//! the MSS option (kind 2, length 4) for clamping.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};

use super::check_len;
use crate::{error::Error, ptr::ptr_at};

pub const PROTO: u8 = 6;
pub const MIN_HLEN: usize = 20;
pub const MAX_HLEN: usize = 60;
/// Offset of the checksum inside the TCP header.
pub const CHECK_OFF: usize = 16;
const FLAG_SYN: u8 = 0x02;
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_MSS_LEN: usize = 4;
const MAX_OPTS: usize = MAX_HLEN - MIN_HLEN;

#[repr(C)]
pub struct TcpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub doff_res: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

pub struct Tcp {
    pub hlen: usize,
    pub syn: bool,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, off: usize) -> Result<Tcp, Error> {
    let hdr: *const TcpHdr = ptr_at(ctx, off)?;
    // SAFETY: checked by `ptr_at`.
    let hdr = unsafe { &*hdr };
    let hlen = ((hdr.doff_res >> 4) as usize) * 4;
    if hlen < MIN_HLEN {
        return Err(Error::Malformed);
    }
    check_len(ctx, off, hlen)?;
    Ok(Tcp {
        hlen,
        syn: hdr.flags & FLAG_SYN != 0,
    })
}

/// Where the MSS option's value sits: its offset in the frame, relative to the TCP
/// header too (the parity matters for the checksum), and its current value.
pub struct MssOption {
    pub value_off: usize,
    pub rel_off: usize,
    pub value: u16,
}

/// Finds the MSS option in the options of the TCP header at `off` with length `hlen`.
///
/// The options are copied to the stack with `bpf_xdp_load_bytes` and walked there: a
/// walk over packet memory with a data-dependent offset per step got its bounds checks
/// reordered by LLVM into a form the verifier refuses ("R1 offset is outside of the
/// packet"), while stack reads with a bounded index verify.
#[inline(always)]
pub fn find_mss(ctx: &XdpContext, off: usize, hlen: usize) -> Result<Option<MssOption>, Error> {
    // `black_box`: the verifier needs the range check on the very register passed as
    // the helper's size; without the barrier LLVM folds it into the earlier `hlen`
    // checks and passes a register whose bounds the verifier cannot see.
    let opts_len = core::hint::black_box(hlen.wrapping_sub(MIN_HLEN));
    if opts_len == 0 || opts_len > MAX_OPTS {
        return Ok(None);
    }
    // 4 bytes of slack: an option's kind, length and value are read at `i..i + 4` with
    // `i < MAX_OPTS`, and the verifier checks variable stack reads against the bounds
    // of the index alone (it does not carry Rust's `get` checks over to the pointer).
    // Bytes past `opts_len` stay zero, which reads as a malformed option.
    let mut opts = [0u8; MAX_OPTS + 4];
    // SAFETY: `opts` has room for `opts_len` ≤ MAX_OPTS bytes; the helper bounds-checks
    // the packet side itself and fails on a short frame.
    let ret = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (off + MIN_HLEN) as u32,
            opts.as_mut_ptr().cast(),
            opts_len as u32,
        )
    };
    if ret != 0 {
        return Err(Error::Truncated);
    }
    let mut i = 0usize;
    // Each step consumes at least one byte, so MAX_OPTS steps cover the option area.
    for _ in 0..MAX_OPTS {
        if i >= opts_len {
            return Ok(None);
        }
        let Some(&kind) = opts.get(i) else {
            return Ok(None);
        };
        if kind == OPT_EOL {
            return Ok(None);
        }
        if kind == OPT_NOP {
            i += 1;
            continue;
        }
        let Some(&len) = opts.get(i + 1) else {
            return Err(Error::Malformed);
        };
        let len = len as usize;
        if len < 2 || i + len > opts_len {
            return Err(Error::Malformed);
        }
        if kind == OPT_MSS {
            if len != OPT_MSS_LEN {
                return Err(Error::Malformed);
            }
            let (Some(&hi), Some(&lo)) = (opts.get(i + 2), opts.get(i + 3)) else {
                return Err(Error::Malformed);
            };
            return Ok(Some(MssOption {
                value_off: off + MIN_HLEN + i + 2,
                rel_off: MIN_HLEN + i + 2,
                value: u16::from_be_bytes([hi, lo]),
            }));
        }
        i += len;
    }
    Ok(None)
}
