//! Why the gateway could not finish classifying a packet. Each variant maps to one
//! explicit verdict in [`Error::verdict`]; none of them aborts.

use meshgate_common::Verdict;

#[derive(Clone, Copy)]
pub enum Error {
    /// A header runs past the end of the frame.
    Truncated,
    /// A header field is impossible (IP version, IHL, TCP data offset, option length).
    Malformed,
    /// More IPv6 extension headers than the bounded walk follows.
    TooManyExtHeaders,
    /// The config map has no entry (cannot happen for an array map, but the lookup is
    /// fallible): treated as fenced, the safe side.
    NoConfig,
    /// `bpf_xdp_adjust_head` refused to strip the Ethernet header.
    AdjustHead,
}

impl Error {
    /// The verdict counted and acted on for this error. Malformed input goes to the
    /// kernel, whose own checks drop it or answer it; configuration trouble drops.
    #[inline(always)]
    pub fn verdict(self) -> Verdict {
        match self {
            Self::Truncated | Self::Malformed | Self::TooManyExtHeaders => Verdict::PassMalformed,
            Self::NoConfig => Verdict::DropFenced,
            Self::AdjustHead => Verdict::DropNoPath,
        }
    }
}
