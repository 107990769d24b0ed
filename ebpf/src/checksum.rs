//! Incremental Internet checksum update (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`),
//! so a rewrite never re-sums the packet.
//!
//! All values are 16-bit words as read big-endian from the packet. A field that starts
//! at an odd offset from the start of the checksummed data straddles two words; its
//! contribution to the sum is then byte-swapped (RFC 1071 §2(B)), which [`replace16_at`]
//! accounts for — TCP options such as MSS after a single NOP sit at odd offsets.

/// Updates checksum `check` for a 16-bit word changing from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Like [`replace16`] for a field at `rel_off` bytes from the start of the checksummed
/// data.
#[inline(always)]
pub fn replace16_at(check: u16, rel_off: usize, old: u16, new: u16) -> u16 {
    if rel_off.is_multiple_of(2) {
        replace16(check, old, new)
    } else {
        replace16(check, old.swap_bytes(), new.swap_bytes())
    }
}
