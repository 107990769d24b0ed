//! Types shared by the kernel (XDP programs in `ebpf/`) and user space (the agent).
//!
//! Every type here is `#[repr(C)]`, `Copy` and has no implicit padding, so the kernel and
//! user space agree on its bytes. `aya::Pod` impls sit behind the `user` feature.
#![no_std]

/// Names of the XDP programs in the eBPF object.
pub mod program {
    /// Pass-through program that counts every packet per CPU: a probe and a baseline.
    pub const XDP_COUNT: &str = "xdp_count";
}

/// Names of the maps in the eBPF object.
pub mod map {
    /// `PerCpuArray<u64>` with [`crate::PROBE_COUNTER_SLOTS`] slots, written by `xdp_count`.
    pub const PROBE_COUNTERS: &str = "PROBE_COUNTERS";
}

/// Slots of the probe counter map.
pub const PROBE_COUNTER_SLOTS: u32 = 2;
/// Probe counter slot: packets seen.
pub const PROBE_PACKETS: u32 = 0;
/// Probe counter slot: bytes seen.
pub const PROBE_BYTES: u32 = 1;
