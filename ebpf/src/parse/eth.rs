//! Ethernet II. 802.1Q tags are not parsed: a tagged frame is "not IP" and passes.

use aya_ebpf::programs::XdpContext;

use crate::{error::Error, ptr::ptr_at};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

/// The Ethernet header at the start of the frame.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<*mut EthHdr, Error> {
    ptr_at(ctx, 0)
}

/// The ethertype in host order.
#[inline(always)]
pub fn ethertype(eth: *const EthHdr) -> u16 {
    // SAFETY: `eth` came from `ptr_at`, which checked the whole header is in the frame.
    u16::from_be_bytes(unsafe { (*eth).ethertype })
}
