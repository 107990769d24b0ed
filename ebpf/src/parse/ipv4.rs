//! IPv4 (RFC 791): options are skipped by IHL, fragments are recognised so that only a
//! first fragment is asked for a transport header.

use aya_ebpf::programs::XdpContext;

use super::{L3, check_len};
use crate::{error::Error, ptr::ptr_at};

pub const MIN_HLEN: usize = 20;
/// Offset of the TTL/protocol word and of the header checksum inside the header.
pub const TTL_OFF: usize = 8;
pub const CHECK_OFF: usize = 10;

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// Parsed IPv4 header: addresses in network order, plus the family-neutral part.
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub l3: L3,
}

const FRAG_OFFSET_MASK: u16 = 0x1fff;

#[inline(always)]
pub fn parse(ctx: &XdpContext, off: usize) -> Result<Ipv4, Error> {
    let hdr: *const Ipv4Hdr = ptr_at(ctx, off)?;
    // SAFETY: `ptr_at` checked the fixed header is inside the frame.
    let hdr = unsafe { &*hdr };
    if hdr.ver_ihl >> 4 != 4 {
        return Err(Error::Malformed);
    }
    let hlen = ((hdr.ver_ihl & 0x0f) as usize) * 4;
    if hlen < MIN_HLEN {
        return Err(Error::Malformed);
    }
    // Options are not interpreted, but they must be there.
    check_len(ctx, off, hlen)?;
    let tot_len = u16::from_be_bytes(hdr.tot_len) as usize;
    if tot_len < hlen {
        return Err(Error::Malformed);
    }
    // The frame may be longer (Ethernet padding) but never shorter than the packet.
    if ctx.data() + off + tot_len > ctx.data_end() {
        return Err(Error::Truncated);
    }
    let first_fragment = u16::from_be_bytes(hdr.frag) & FRAG_OFFSET_MASK == 0;
    Ok(Ipv4 {
        src: hdr.src,
        dst: hdr.dst,
        l3: L3 {
            v6: false,
            ip_len: tot_len as u32,
            ttl: hdr.ttl,
            l4_proto: hdr.proto,
            l4_off: off + hlen,
            has_l4: first_fragment,
        },
    })
}
