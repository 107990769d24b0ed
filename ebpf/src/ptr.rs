//! The one bounds-checked packet accessor. Every packet read or write goes through
//! [`ptr_at`], so the verifier sees one comparison against `data_end` per access.

use aya_ebpf::programs::XdpContext;

use crate::error::Error;

/// Largest offset into a frame the parsers ever look at. The explicit cap gives the
/// verifier an upper bound on variable offsets (IPv4 options, IPv6 extension headers,
/// TCP options), without which it refuses `data + offset`.
pub const MAX_OFFSET: usize = 1024;

/// A pointer to a `T` at `offset` bytes into the frame, if the whole `T` lies inside it.
/// Header types are `#[repr(C)]` structs of `u8`/`[u8; N]`, alignment 1.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Error> {
    if offset > MAX_OFFSET {
        return Err(Error::Truncated);
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Error::Truncated);
    }
    Ok((start + offset) as *mut T)
}
