//! `xdp_count`: passes every packet and counts packets and bytes per CPU. Used by the
//! foundation test (a program that loads and sees traffic) and as the `XDP_PASS`
//! baseline in benchmarks.

use aya_ebpf::{
    bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext,
};
use meshgate_common::{PROBE_BYTES, PROBE_COUNTER_SLOTS, PROBE_PACKETS};

#[map(name = "PROBE_COUNTERS")]
static PROBE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_COUNTER_SLOTS, 0);

#[xdp]
pub fn xdp_count(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    add(PROBE_PACKETS, 1);
    add(PROBE_BYTES, len);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn add(slot: u32, n: u64) {
    if let Some(counter) = PROBE_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += n };
    }
}
