//! IPv6 (RFC 8200) with a bounded walk over extension headers: at most
//! [`MAX_EXT_HEADERS`], more is treated as malformed (RFC 8200 §4.1 expects few, and
//! the verifier needs a bound).

use aya_ebpf::programs::XdpContext;

use super::L3;
use crate::{error::Error, ptr::ptr_at};

pub const HLEN: usize = 40;
pub const MAX_EXT_HEADERS: usize = 8;

pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_AH: u8 = 51;
pub const NEXT_DEST_OPTS: u8 = 60;
pub const NEXT_MOBILITY: u8 = 135;
pub const NEXT_HIP: u8 = 139;
pub const NEXT_SHIM6: u8 = 140;

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The generic extension header prefix: next header and length.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    len: u8,
}

#[repr(C)]
struct FragHdr {
    next_hdr: u8,
    _reserved: u8,
    frag: [u8; 2],
    _id: [u8; 4],
}

pub struct Ipv6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub l3: L3,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, off: usize) -> Result<Ipv6, Error> {
    let hdr: *const Ipv6Hdr = ptr_at(ctx, off)?;
    // SAFETY: `ptr_at` checked the fixed header is inside the frame.
    let hdr = unsafe { &*hdr };
    if hdr.vtc_flow[0] >> 4 != 6 {
        return Err(Error::Malformed);
    }
    let payload_len = u16::from_be_bytes(hdr.payload_len) as usize;
    // The frame may be longer (Ethernet padding) but never shorter than the packet.
    // Jumbograms (RFC 2675) do not cross an Ethernet LAN and are not special-cased.
    if ctx.data() + off + HLEN + payload_len > ctx.data_end() {
        return Err(Error::Truncated);
    }
    let (l4_proto, l4_off, has_l4) = walk(ctx, hdr.next_hdr, off + HLEN)?;
    Ok(Ipv6 {
        src: hdr.src,
        dst: hdr.dst,
        l3: L3 {
            v6: true,
            ip_len: (HLEN + payload_len) as u32,
            ttl: hdr.hop_limit,
            l4_proto,
            l4_off,
            has_l4,
        },
    })
}

/// Follows extension headers to the transport header: `(protocol, offset, has_l4)`.
#[inline(always)]
fn walk(ctx: &XdpContext, mut next: u8, mut off: usize) -> Result<(u8, usize, bool), Error> {
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS | NEXT_MOBILITY | NEXT_HIP
            | NEXT_SHIM6 => {
                let ext: *const ExtHdr = ptr_at(ctx, off)?;
                // SAFETY: checked by `ptr_at`.
                let ext = unsafe { &*ext };
                next = ext.next_hdr;
                off += (ext.len as usize + 1) * 8;
            }
            NEXT_AH => {
                let ext: *const ExtHdr = ptr_at(ctx, off)?;
                // SAFETY: checked by `ptr_at`.
                let ext = unsafe { &*ext };
                next = ext.next_hdr;
                // RFC 4302: AH's length is in 4-octet units, minus 2.
                off += (ext.len as usize + 2) * 4;
            }
            NEXT_FRAGMENT => {
                let frag: *const FragHdr = ptr_at(ctx, off)?;
                // SAFETY: checked by `ptr_at`.
                let frag = unsafe { &*frag };
                off += core::mem::size_of::<FragHdr>();
                if u16::from_be_bytes(frag.frag) & 0xfff8 != 0 {
                    // A non-first fragment carries no transport header.
                    return Ok((frag.next_hdr, off, false));
                }
                next = frag.next_hdr;
            }
            proto => return Ok((proto, off, true)),
        }
    }
    Err(Error::TooManyExtHeaders)
}
