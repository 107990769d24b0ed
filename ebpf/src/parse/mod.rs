//! Header parsers, one file per protocol. Each returns plain values (addresses and
//! offsets), never references into the packet, so later rewrites cannot alias them.

pub mod eth;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

use crate::{error::Error, ptr::ptr_at};
use aya_ebpf::programs::XdpContext;

/// What the gateway needs from the network layer, for either family.
#[derive(Clone, Copy)]
pub struct L3 {
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// Length of the IP packet according to its header (not the frame).
    pub ip_len: u32,
    /// TTL / hop limit.
    pub ttl: u8,
    /// The transport protocol (after IPv6 extension headers).
    pub l4_proto: u8,
    /// Offset of the transport header in the frame, valid when `has_l4`.
    pub l4_off: usize,
    /// False for non-first fragments and for payloads without a transport header.
    pub has_l4: bool,
}

/// Checks that `len` bytes from `offset` are inside the frame, for headers of
/// variable length that are skipped rather than read (IPv4 options).
#[inline(always)]
pub fn check_len(ctx: &XdpContext, offset: usize, len: usize) -> Result<(), Error> {
    if len == 0 {
        return Ok(());
    }
    ptr_at::<u8>(ctx, offset + len - 1).map(|_| ())
}
