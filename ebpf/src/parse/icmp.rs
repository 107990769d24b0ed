//! ICMP (RFC 792) and ICMPv6 (RFC 4443): only validated (type, code, checksum present).
//! Both share the 4-byte header prefix.

use aya_ebpf::programs::XdpContext;

use crate::{error::Error, ptr::ptr_at};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

#[repr(C)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: [u8; 2],
}

#[inline(always)]
pub fn validate(ctx: &XdpContext, off: usize) -> Result<(), Error> {
    ptr_at::<IcmpHdr>(ctx, off).map(|_| ())
}
