//! The gateway's maps. Names and value types come from `meshgate_common`; the literal
//! names below must match `meshgate_common::map` (user space looks them up by those).

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
};
use meshgate_common::{
    CONFIG_INDEX, Config, Counter, Ipv4Key, Ipv6Key, MAX_LOCAL_PREFIXES, MAX_ROUTE_IDS, MAX_ROUTES,
    RouteEntry, Verdict,
};

#[map(name = "ROUTES_V4")]
static ROUTES_V4: LpmTrie<Ipv4Key, RouteEntry> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

#[map(name = "ROUTES_V6")]
static ROUTES_V6: LpmTrie<Ipv6Key, RouteEntry> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

#[map(name = "LOCAL_V4")]
static LOCAL_V4: LpmTrie<Ipv4Key, u32> = LpmTrie::with_max_entries(MAX_LOCAL_PREFIXES, 0);

#[map(name = "LOCAL_V6")]
static LOCAL_V6: LpmTrie<Ipv6Key, u32> = LpmTrie::with_max_entries(MAX_LOCAL_PREFIXES, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "ROUTE_STATS")]
pub static ROUTE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_ROUTE_IDS, 0);

#[map(name = "VERDICT_STATS")]
pub static VERDICT_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// The route of a mesh-bound IPv4 destination, if any.
#[inline(always)]
pub fn route_v4(dst: [u8; 4]) -> Option<u32> {
    ROUTES_V4.get(Key::new(32, dst)).map(|e| e.route_id)
}

/// The route of a mesh-bound IPv6 destination, if any.
#[inline(always)]
pub fn route_v6(dst: [u8; 16]) -> Option<u32> {
    ROUTES_V6.get(Key::new(128, dst)).map(|e| e.route_id)
}

/// Whether an IPv4 source lies inside the node's advertised prefixes.
#[inline(always)]
pub fn is_local_v4(src: [u8; 4]) -> bool {
    LOCAL_V4.get(Key::new(32, src)).is_some()
}

/// Whether an IPv6 source lies inside the node's advertised prefixes.
#[inline(always)]
pub fn is_local_v6(src: [u8; 16]) -> bool {
    LOCAL_V6.get(Key::new(128, src)).is_some()
}

/// The configuration. A copy, so a concurrent update from user space cannot change it
/// halfway through one packet's decision.
#[inline(always)]
pub fn config() -> Option<Config> {
    CONFIG.get(CONFIG_INDEX).copied()
}
