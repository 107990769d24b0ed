//! `xdp_pass`: returns `XDP_PASS` and does nothing else — the zero-work baseline that
//! benchmarks subtract from the gateway's cost.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
