//! UDP (RFC 768): only validated (a first fragment must carry the 8-byte header).

use aya_ebpf::programs::XdpContext;

use crate::{error::Error, ptr::ptr_at};

pub const PROTO: u8 = 17;

#[repr(C)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

#[inline(always)]
pub fn validate(ctx: &XdpContext, off: usize) -> Result<(), Error> {
    let hdr: *const UdpHdr = ptr_at(ctx, off)?;
    // SAFETY: checked by `ptr_at`.
    let len = u16::from_be_bytes(unsafe { (*hdr).len }) as usize;
    if len < core::mem::size_of::<UdpHdr>() {
        return Err(Error::Malformed);
    }
    Ok(())
}
