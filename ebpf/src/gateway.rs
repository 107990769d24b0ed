//! `xdp_gateway`, attached to the LAN interface of a node replica.
//!
//! Not IP, or not mesh-bound: `XDP_PASS` untouched. Mesh-bound: `classify::decide`, then
//! `verdict` acts. Every packet is counted under exactly one verdict (and its route).
//!
//! Deviation from the `try_* -> Result<u32, Error>` template, on purpose: `try_gateway`
//! returns the *verdict*, and `verdict::action` is the single table from verdicts (and,
//! via `Error::verdict`, errors) to XDP actions — so the counter and the action can
//! never disagree.

use aya_ebpf::{macros::xdp, programs::XdpContext};
use meshgate_common::Verdict;

use crate::{
    classify::{self, Decision},
    error::Error,
    maps,
    parse::{
        L3,
        eth::{self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
        ipv4, ipv6,
    },
    stats::{self, NO_ROUTE},
    verdict,
};

struct Outcome {
    verdict: Verdict,
    route: u32,
}

#[xdp]
pub fn xdp_gateway(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (verdict, route) = match try_gateway(&ctx) {
        Ok(Outcome { verdict, route }) => (verdict, route),
        Err(error) => (error.verdict(), NO_ROUTE),
    };
    stats::count(verdict, route, bytes);
    verdict::action(verdict)
}

#[inline(always)]
fn try_gateway(ctx: &XdpContext) -> Result<Outcome, Error> {
    let eth = eth::parse(ctx)?;
    let (l3, route, spoofed) = match eth::ethertype(eth) {
        ETH_P_IP => {
            let ip = ipv4::parse(ctx, ETH_HLEN)?;
            let Some(route) = maps::route_v4(ip.dst) else {
                return Ok(local());
            };
            (ip.l3, route, !maps::is_local_v4(ip.src))
        }
        ETH_P_IPV6 => {
            let ip = ipv6::parse(ctx, ETH_HLEN)?;
            let Some(route) = maps::route_v6(ip.dst) else {
                return Ok(local());
            };
            (ip.l3, route, !maps::is_local_v6(ip.src))
        }
        _ => {
            return Ok(Outcome {
                verdict: Verdict::PassNotIp,
                route: NO_ROUTE,
            });
        }
    };
    let verdict = mesh_bound(ctx, &l3, spoofed)?;
    Ok(Outcome { verdict, route })
}

#[inline(always)]
fn mesh_bound(ctx: &XdpContext, l3: &L3, spoofed: bool) -> Result<Verdict, Error> {
    let cfg = maps::config().ok_or(Error::NoConfig)?;
    Ok(match classify::decide(&cfg, l3, spoofed) {
        Decision::Verdict(verdict) => verdict,
        Decision::Hairpin => {
            verdict::hairpin(ctx, &cfg, l3)?;
            Verdict::Hairpin
        }
        Decision::TunnelKernel => {
            verdict::check_l4_and_clamp(ctx, &cfg, l3)?;
            Verdict::TunnelKernel
        }
        Decision::TunnelRedirect => {
            verdict::check_l4_and_clamp(ctx, &cfg, l3)?;
            verdict::redirect(ctx, l3, cfg.tunnel_ifindex)?;
            Verdict::TunnelRedirect
        }
    })
}

#[inline(always)]
fn local() -> Outcome {
    Outcome {
        verdict: Verdict::PassLocal,
        route: NO_ROUTE,
    }
}
