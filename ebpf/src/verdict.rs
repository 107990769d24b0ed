//! Acting on a decision: the verdict → XDP action table, and the packet rewrites
//! (hairpin MACs, TTL, MSS clamp, Ethernet strip + redirect).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use meshgate_common::{Config, Verdict};

use crate::{
    checksum,
    error::Error,
    parse::{
        L3,
        eth::{ETH_HLEN, EthHdr},
        icmp, ipv4, tcp, udp,
    },
    ptr::ptr_at,
};

/// The one place where verdicts become XDP actions.
#[inline(always)]
pub fn action(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::PassNotIp
        | Verdict::PassLocal
        | Verdict::PassMalformed
        | Verdict::PassTooBig
        | Verdict::PassTtlExpired
        | Verdict::TunnelKernel => xdp_action::XDP_PASS,
        Verdict::TunnelRedirect => xdp_action::XDP_REDIRECT,
        Verdict::Hairpin => xdp_action::XDP_TX,
        Verdict::DropSpoofed
        | Verdict::DropFenced
        | Verdict::DropStaleEpoch
        | Verdict::DropNoPath => xdp_action::XDP_DROP,
    }
}

/// Standby → active: rewrite the MACs and decrement TTL / hop limit.
#[inline(always)]
pub fn hairpin(ctx: &XdpContext, cfg: &Config, l3: &L3) -> Result<(), Error> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: checked by `ptr_at`; nothing else holds a reference into the packet.
    unsafe {
        (*eth).dst = cfg.active_mac;
        if cfg.own_mac != [0; 6] {
            (*eth).src = cfg.own_mac;
        }
    }
    decrement_ttl(ctx, l3)
}

/// Validates the transport header of a packet headed for the tunnel and clamps the MSS
/// of a TCP SYN to what the tunnel carries.
#[inline(always)]
pub fn check_l4_and_clamp(ctx: &XdpContext, cfg: &Config, l3: &L3) -> Result<(), Error> {
    if !l3.has_l4 {
        return Ok(());
    }
    match l3.l4_proto {
        tcp::PROTO => {
            let hdr = tcp::parse(ctx, l3.l4_off)?;
            let max = if l3.v6 { cfg.mss_v6 } else { cfg.mss_v4 };
            if hdr.syn && max != 0 {
                clamp_mss(ctx, l3.l4_off, hdr.hlen, max)?;
            }
            Ok(())
        }
        udp::PROTO => udp::validate(ctx, l3.l4_off),
        icmp::PROTO_ICMP if !l3.v6 => icmp::validate(ctx, l3.l4_off),
        icmp::PROTO_ICMPV6 if l3.v6 => icmp::validate(ctx, l3.l4_off),
        _ => Ok(()),
    }
}

#[inline(always)]
fn clamp_mss(ctx: &XdpContext, off: usize, hlen: usize, max: u16) -> Result<(), Error> {
    let Some(opt) = tcp::find_mss(ctx, off, hlen)? else {
        return Ok(());
    };
    if opt.value <= max {
        return Ok(());
    }
    let check_off = off + tcp::CHECK_OFF;
    let check = u16::from_be_bytes(load2(ctx, check_off)?);
    let check = checksum::replace16_at(check, opt.rel_off, opt.value, max);
    // The helpers rather than packet pointers: LLVM drops bounds checks it can prove
    // from earlier ones (the TCP header check covers the checksum), and the verifier
    // cannot follow that proof across recomputed packet pointers.
    store2(ctx, opt.value_off, max.to_be_bytes())?;
    store2(ctx, check_off, check.to_be_bytes())?;
    Ok(())
}

#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, l3: &L3) -> Result<(), Error> {
    if l3.v6 {
        // Hop limit: byte 7 of the IPv6 header; IPv6 has no header checksum.
        let hop: *mut u8 = ptr_at(ctx, ETH_HLEN + 7)?;
        // SAFETY: checked by `ptr_at`.
        unsafe { *hop = l3.ttl - 1 };
        return Ok(());
    }
    let word: *mut [u8; 2] = ptr_at(ctx, ETH_HLEN + ipv4::TTL_OFF)?;
    let check: *mut [u8; 2] = ptr_at(ctx, ETH_HLEN + ipv4::CHECK_OFF)?;
    // SAFETY: both checked by `ptr_at`, disjoint.
    unsafe {
        let old = *word;
        let new = [old[0].wrapping_sub(1), old[1]];
        *word = new;
        let sum = u16::from_be_bytes(*check);
        *check = checksum::replace16(sum, u16::from_be_bytes(old), u16::from_be_bytes(new))
            .to_be_bytes();
    }
    Ok(())
}

#[inline(always)]
fn load2(ctx: &XdpContext, off: usize) -> Result<[u8; 2], Error> {
    let mut buf = [0u8; 2];
    // SAFETY: `buf` has room for the 2 bytes; the helper bounds-checks the packet.
    let ret = unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, buf.as_mut_ptr().cast(), 2) };
    if ret != 0 {
        return Err(Error::Truncated);
    }
    Ok(buf)
}

#[inline(always)]
fn store2(ctx: &XdpContext, off: usize, mut bytes: [u8; 2]) -> Result<(), Error> {
    // SAFETY: `bytes` holds the 2 bytes; the helper bounds-checks the packet.
    let ret = unsafe { bpf_xdp_store_bytes(ctx.ctx, off as u32, bytes.as_mut_ptr().cast(), 2) };
    if ret != 0 {
        return Err(Error::Truncated);
    }
    Ok(())
}

/// Active, redirect mode: decrement TTL, strip Ethernet (a TUN is an L3 device and its
/// reader expects the IP packet first) and redirect into the TUN.
#[inline(always)]
pub fn redirect(ctx: &XdpContext, l3: &L3, ifindex: u32) -> Result<(), Error> {
    decrement_ttl(ctx, l3)?;
    // SAFETY: `ctx.ctx` is the context the kernel passed in; a failed adjust leaves the
    // frame as it was.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, ETH_HLEN as i32) } != 0 {
        return Err(Error::AdjustHead);
    }
    // SAFETY: a helper; with flags 0 it only records the target and returns XDP_REDIRECT.
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret != i64::from(xdp_action::XDP_REDIRECT) {
        return Err(Error::AdjustHead);
    }
    Ok(())
}
