//! The VIP as a kernel lease: the active puts it on its LAN interface with a short
//! lifetime (`valid_lft`/`preferred_lft`) and renews it while it holds it. An agent
//! killed with SIGKILL cannot remove its VIP; the kernel does, one lifetime after the
//! last renewal, so two hosts never keep answering ARP for the gateway.
//!
//! The kernel counts address lifetimes in whole seconds and checks them at most about
//! once a second, so a dead agent's VIP goes 1–1.3 s after its last renewal (measured).
//! A live agent renews four times a second: only a process stalled for a whole second
//! loses the VIP, and by then its 250 ms lease has fenced it anyway.

use std::{sync::Arc, time::Duration};

use ipnet::Ipv4Net;
use tokio::sync::Mutex;
use tracing::warn;

use crate::netlink::{Error, Netlink};

/// The lifetime the VIP is put on the interface with, in seconds (the kernel's unit).
pub const VIP_LIFETIME_S: u32 = 1;
/// How often the holder renews it: four renewals fit in one lifetime.
pub const RENEW_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
struct Held {
    iface: u32,
    vip: Ipv4Net,
    proto: u8,
}

/// Puts, renews and removes the VIP. Renewals and removal take the same lock, so a
/// renewal can never bring back a VIP that was just released.
pub struct VipKeeper {
    nl: Netlink,
    held: Arc<Mutex<Option<Held>>>,
    renewer: tokio::task::JoinHandle<()>,
}

impl VipKeeper {
    /// Starts the renewal task on the current tokio runtime; nothing is held yet.
    pub fn new(nl: Netlink) -> Self {
        let held: Arc<Mutex<Option<Held>>> = Arc::default();
        let renewer = tokio::spawn(renew(nl.clone(), held.clone()));
        Self { nl, held, renewer }
    }

    /// Puts `vip` on the interface `iface` (tagged `proto`) and keeps renewing it.
    pub async fn acquire(&self, iface: u32, vip: Ipv4Net, proto: u8) -> Result<(), Error> {
        let mut held = self.held.lock().await;
        self.nl
            .put_address_with_lifetime(iface, vip.into(), proto, VIP_LIFETIME_S)
            .await?;
        *held = Some(Held { iface, vip, proto });
        Ok(())
    }

    /// Stops renewing and removes `vip` from `iface` (also one a previous run left).
    pub async fn release(&self, iface: u32, vip: Ipv4Net) -> Result<(), Error> {
        let mut held = self.held.lock().await;
        *held = None;
        self.nl.remove_address(iface, vip.into()).await
    }
}

impl Drop for VipKeeper {
    fn drop(&mut self) {
        // What is still held then lapses by itself within one lifetime.
        self.renewer.abort();
    }
}

async fn renew(nl: Netlink, held: Arc<Mutex<Option<Held>>>) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let guard = held.lock().await;
        let Some(h) = *guard else { continue };
        if let Err(e) = nl
            .put_address_with_lifetime(h.iface, h.vip.into(), h.proto, VIP_LIFETIME_S)
            .await
        {
            warn!(error = %e, vip = %h.vip, "failed to renew the VIP; it lapses within a second unless a renewal succeeds");
        }
    }
}
