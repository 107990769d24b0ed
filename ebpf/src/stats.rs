//! Per-CPU counters by verdict and by route: plain adds, no atomics needed.

use meshgate_common::{Counter, MAX_ROUTE_IDS, Verdict};

use crate::maps::{ROUTE_STATS, VERDICT_STATS};

/// Route id meaning "no route" (the packet was not mesh-bound or not parsed that far).
pub const NO_ROUTE: u32 = u32::MAX;

#[inline(always)]
pub fn count(verdict: Verdict, route: u32, bytes: u64) {
    add(VERDICT_STATS.get_ptr_mut(verdict as u32), bytes);
    if route < MAX_ROUTE_IDS {
        add(ROUTE_STATS.get_ptr_mut(route), bytes);
    }
}

#[inline(always)]
fn add(counter: Option<*mut Counter>, bytes: u64) {
    if let Some(counter) = counter {
        // SAFETY: a per-CPU slot, written only by this CPU while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
