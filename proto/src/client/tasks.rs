//! The session's background tasks: the control-stream writer, the heartbeat clock and
//! the reader that turns the coordinator's messages into status changes (lease, role,
//! routes) and events.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Shared, lock};
use crate::messages::*;
use crate::routes::Assembler;
use crate::stream::{read_frame, write_frame};

pub(super) async fn writer(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<AgentMsg>) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = write_frame(&mut send, &msg).await {
            tracing::debug!(error = %e, "control stream write failed");
            return;
        }
    }
}

pub(super) async fn heartbeats(
    every: Duration,
    shared: Arc<Mutex<Shared>>,
    ctl: mpsc::UnboundedSender<AgentMsg>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 1u64.. {
        tick.tick().await;
        // Record the send time before sending: the lease counts from the earlier instant.
        lock(&shared).lease.sent(seq, Instant::now());
        if ctl.send(AgentMsg::Heartbeat { seq }).is_err() {
            return;
        }
    }
}

pub(super) async fn reader(
    mut recv: quinn::RecvStream,
    early: Vec<CoordMsg>,
    mut assembler: Assembler,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::UnboundedSender<CoordMsg>,
) {
    let mut early = early.into_iter();
    let closed = loop {
        let msg = match early.next() {
            Some(m) => m,
            None => match read_frame::<CoordMsg>(&mut recv).await {
                Ok(Some(m)) => m,
                Ok(None) => break "coordinator closed the control stream".to_string(),
                Err(e) => break e.to_string(),
            },
        };
        let mut s = lock(&shared);
        let Shared { status, lease } = &mut *s;
        match &msg {
            CoordMsg::LeaseGrant {
                epoch,
                valid_for_ms,
                seq,
            } => {
                lease.grant(*epoch, *seq, Duration::from_millis((*valid_for_ms).into()));
                let deadline = lease.deadline();
                status.send_if_modified(|st| {
                    let changed = st.lease_deadline != deadline;
                    st.lease_deadline = deadline;
                    changed
                });
                continue;
            }
            CoordMsg::RoleChange {
                role,
                epoch,
                active,
            } => {
                lease.set_epoch((*role == Role::Active).then_some(*epoch));
                let deadline = lease.deadline();
                status.send_modify(|st| {
                    st.role = *role;
                    st.epoch = *epoch;
                    st.active = *active;
                    st.lease_deadline = deadline;
                });
            }
            CoordMsg::Routes(part) => {
                if let Some(table) = assembler.push(part.clone()) {
                    status.send_if_modified(|st| {
                        let newer = table.version > st.routes.version;
                        if newer {
                            st.routes = table;
                        }
                        newer
                    });
                }
                // The table is in the status; parts are no event of their own.
                continue;
            }
            CoordMsg::HandoverDone { epoch } => status.send_modify(|st| st.epoch = *epoch),
            CoordMsg::Refused { .. }
            | CoordMsg::Welcome(_)
            | CoordMsg::Filter(_)
            | CoordMsg::Members(_) => {}
        }
        drop(s);
        let _ = events.send(msg);
    };
    let mut s = lock(&shared);
    s.lease.set_epoch(None);
    s.status.send_modify(|st| {
        st.lease_deadline = None;
        st.closed = Some(closed);
    });
}
