//! meshgate's XDP programs.
//!
//! * `xdp_gateway` (gateway.rs): the LAN-side dataplane — classify, tunnel, hairpin,
//!   fence, anti-spoof, MSS clamp, count.
//! * `xdp_count` (probe.rs) and `xdp_pass` (baseline.rs): probes and benchmark baselines.
//!
//! Layers, bottom up: `ptr` (the one bounds-checked accessor), `parse/*` (headers),
//! `checksum`, `maps`, `classify` (decisions, read-only), `verdict` (rewrites and the
//! verdict → XDP action table), `stats`.
#![no_std]
#![no_main]

mod baseline;
mod checksum;
mod classify;
mod error;
mod gateway;
mod maps;
mod parse;
mod probe;
mod ptr;
mod stats;
mod verdict;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never entered at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
