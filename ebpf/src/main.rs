//! meshgate's XDP programs. Each `#[xdp]` entry point is a thin wrapper around a
//! `try_*` function whose every error maps to an explicit verdict.
#![no_std]
#![no_main]

mod probe;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never entered at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
