//! The QUIC endpoint: TLS 1.3 with ALPN `meshgate/1`, 0-RTT off, DATAGRAM frames on.
//! Each connection: one control stream (Hello first, then heartbeats and requests) and
//! datagrams handed to the relay. A malformed control message closes only that
//! connection, with the reason logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context as _, Result};
use meshgate_proto::frame::MAX_HELLO_FRAME;
use meshgate_proto::stream::{read_frame, read_frame_max, write_frame};
use meshgate_proto::{AgentMsg, CoordMsg, RefuseCode};

use crate::admission::{Admissions, Admitted, Decision, Refusal};
use crate::core::Input;
use crate::hub::Hub;
use crate::identity::Identity;

/// How long a new connection may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the relay to include a new connection (normally one 10 ms tick).
const RELAY_WAIT: Duration = Duration::from_secs(1);

/// Socket buffers asked for (the kernel caps them at `net.core.{r,w}mem_max`). Thousands
/// of replicas' heartbeats arrive in bursts while the endpoint task waits for a CPU; they
/// must wait in the socket rather than be dropped (and retransmitted a PTO later, past
/// leases). With the 208 KiB default, 5,000 replicas lost over a third of their
/// datagrams (`cargo xtask bench --only coordinator`).
const SOCKET_BUFFER: usize = 4 << 20;

/// The QUIC endpoint on `listen`, with room for bursts in its socket buffers and a
/// stateless-reset key that outlives this process ([`Identity::reset_key`]).
pub fn endpoint(id: &Identity, listen: SocketAddr) -> Result<quinn::Endpoint> {
    let mut config = quinn::EndpointConfig::new(Arc::new(ResetKey(id.reset_key())));
    // quinn's default generator signs its ids with a per-process key and ignores packets
    // for ids it did not sign, so a restarted coordinator would never send the reset.
    config.cid_generator(|| Box::new(RandomCids));
    let socket = std::net::UdpSocket::bind(listen)
        .with_context(|| format!("failed to bind QUIC on {listen}"))?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())
        .context("failed to configure the QUIC socket")?;
    if let Err(e) = state
        .set_recv_buffer_size((&socket).into(), SOCKET_BUFFER)
        .and_then(|()| state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER))
    {
        tracing::warn!(error = %e, "could not enlarge the QUIC socket buffers; bursts may drop");
    }
    tracing::info!(
        recv = state.recv_buffer_size((&socket).into()).ok(),
        send = state.send_buffer_size((&socket).into()).ok(),
        gso_segments = state.max_gso_segments(),
        gro_segments = state.gro_segments(),
        "QUIC socket buffers and UDP offloads"
    );
    quinn::Endpoint::new(
        config,
        Some(server_config(id)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("failed to start the QUIC endpoint")
}

/// A quinn server config from the coordinator's identity.
pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("failed to select TLS 1.3")?
        .with_no_client_auth()
        .with_single_cert(id.cert_chain(), id.key.clone_key())
        .context("failed to load the TLS identity")?;
    tls.alpn_protocols = vec![meshgate_proto::ALPN.to_vec()];
    // 0-RTT off: registration must not be replayable.
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("failed to build the QUIC TLS config")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            Duration::from_secs(10).try_into().context("idle timeout")?,
        ))
        .datagram_receive_buffer_size(Some(1 << 20))
        .max_concurrent_uni_streams(0u32.into())
        .max_concurrent_bidi_streams(1u32.into());
    meshgate_proto::socket::tunnel_transport(&mut transport);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Random 8-byte connection ids, accepted from any earlier run (see [`endpoint`]).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use rand::RngCore as _;
        let mut id = [0u8; 8];
        rand::rng().fill_bytes(&mut id);
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// HMAC-SHA256 under a fixed key: how quinn derives stateless-reset tokens from
/// connection ids.
struct ResetKey([u8; 32]);

impl ResetKey {
    fn mac(&self, data: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(data);
        mac
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        use hmac::Mac as _;
        let tag = self.mac(data).finalize().into_bytes();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        use hmac::Mac as _;
        self.mac(data)
            .verify_slice(signature)
            .map_err(|_| quinn::crypto::CryptoError)
    }
}

/// Accept connections until the endpoint closes, within `gate`'s limits.
pub async fn serve(endpoint: quinn::Endpoint, hub: Arc<Hub>, gate: Admissions) {
    while let Some(incoming) = endpoint.accept().await {
        let origin = incoming.remote_address();
        let (decision, ticket) = gate.decide(
            origin.ip(),
            incoming.remote_address_validated(),
            incoming.may_retry(),
        );
        let ticket = match (decision, ticket) {
            (Decision::Accept, Some(t)) => t,
            (Decision::Retry, _) => {
                hub.metrics.quic_retries.fetch_add(1, Relaxed);
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            (refused, _) => {
                let counter = match refused {
                    Decision::Refuse(Refusal::PerSource) => &hub.metrics.refused_per_source_cap,
                    _ => &hub.metrics.refused_total_cap,
                };
                if counter.fetch_add(1, Relaxed) % 1000 == 0 {
                    tracing::warn!(%origin, ?refused, "connection refused at a connection limit (logged once per 1,000)");
                }
                incoming.refuse();
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(incoming, hub, ticket).await {
                tracing::info!(%origin, error = %format!("{e:#}"), "connection ended");
            }
        });
    }
}

/// One connection, holding its admission `ticket` until it ends.
async fn handle(incoming: quinn::Incoming, hub: Arc<Hub>, mut ticket: Admitted) -> Result<()> {
    let conn = incoming.await.context("handshake failed")?;
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .context("no control stream in time")??;
    let hello = match tokio::time::timeout(
        HELLO_TIMEOUT,
        read_frame_max::<AgentMsg>(&mut recv, MAX_HELLO_FRAME),
    )
    .await
    {
        Ok(Ok(Some(AgentMsg::Hello(h)))) => h,
        Ok(Ok(other)) => {
            hub.failed_attempt(conn.remote_address().ip());
            refuse(
                &conn,
                &mut send,
                RefuseCode::PROTOCOL_VIOLATION,
                "first message must be Hello",
            )
            .await;
            anyhow::bail!("first message was {other:?}");
        }
        Ok(Err(e)) => {
            hub.failed_attempt(conn.remote_address().ip());
            refuse(
                &conn,
                &mut send,
                RefuseCode::PROTOCOL_VIOLATION,
                &e.to_string(),
            )
            .await;
            return Err(e).context("malformed Hello");
        }
        Err(_) => anyhow::bail!("no Hello in time"),
    };
    // Registration may write the store (a new replica's Mesh IP, the first active's
    // epoch), which waits for an fsync: on a blocking thread, so the runtime's workers
    // keep serving every other connection's heartbeats meanwhile.
    let registered = {
        let (hub, conn) = (hub.clone(), conn.clone());
        tokio::task::spawn_blocking(move || hub.register(conn, hello))
            .await
            .context("registration panicked")?
    };
    let (conn_id, ctl_rx) = match registered {
        Ok(x) => {
            ticket.registered();
            x
        }
        Err((code, reason)) => {
            refuse(&conn, &mut send, code, &reason).await;
            anyhow::bail!("refused (code {}): {reason}", code.0);
        }
    };
    // The Welcome goes out once the relay knows the connection, so the participant can
    // send as soon as it has it. A session replaced meanwhile never appears: its
    // queued Refused goes out after the timeout.
    let _ = tokio::time::timeout(RELAY_WAIT, hub.relay_ready(conn_id)).await;
    let writer = tokio::spawn(write_loop(send, ctl_rx, hub.routes(), hub.members()));
    let dconn = conn.clone();
    let dhub = hub.clone();
    let datagrams = tokio::spawn(async move {
        while let Ok(pkt) = dconn.read_datagram().await {
            dhub.forward(conn_id, pkt);
        }
    });
    let result = control_loop(&hub, conn_id, &mut recv).await;
    hub.disconnected(conn_id);
    datagrams.abort();
    // Let the writer flush a final Refused, if any, then close.
    let _ = tokio::time::timeout(Duration::from_millis(200), writer).await;
    conn.close(0u32.into(), b"bye");
    result
}

/// Writes a session's control messages: the Welcome (or a refusal) first, then the
/// route table and the cluster's members, then whatever comes — the latest route table
/// and member list whenever they change.
async fn write_loop(
    mut send: quinn::SendStream,
    mut ctl: tokio::sync::mpsc::Receiver<CoordMsg>,
    mut routes: tokio::sync::watch::Receiver<Arc<meshgate_proto::RouteTable>>,
    mut members: tokio::sync::watch::Receiver<Arc<meshgate_proto::Members>>,
) {
    let mut welcomed = false;
    let mut early = Vec::new();
    loop {
        let msg = tokio::select! {
            biased;
            msg = ctl.recv() => match msg {
                Some(m) => m,
                None => break,
            },
            changed = routes.changed(), if welcomed => {
                if changed.is_err() {
                    break;
                }
                let table = routes.borrow_and_update().clone();
                if write_routes(&mut send, &table).await.is_err() {
                    break;
                }
                continue;
            }
            changed = members.changed(), if welcomed => {
                if changed.is_err() {
                    break;
                }
                let m = members.borrow_and_update().clone();
                if write_frame(&mut send, &CoordMsg::Members((*m).clone())).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let refused = matches!(msg, CoordMsg::Refused { .. });
        let welcome = matches!(msg, CoordMsg::Welcome(_));
        if !welcomed && !welcome && !refused {
            // Queued by another task (a policy filter) while the Welcome waited for its
            // epoch to be durable: it follows the Welcome and the route table.
            early.push(msg);
            continue;
        }
        if write_frame(&mut send, &msg).await.is_err() || refused {
            break;
        }
        if welcome && !welcomed {
            welcomed = true;
            let table = routes.borrow_and_update().clone();
            if write_routes(&mut send, &table).await.is_err() {
                break;
            }
            let m = members.borrow_and_update().clone();
            if !m.you_reached.is_empty()
                && write_frame(&mut send, &CoordMsg::Members((*m).clone()))
                    .await
                    .is_err()
            {
                break;
            }
            for m in std::mem::take(&mut early) {
                if write_frame(&mut send, &m).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = send.finish();
}

async fn write_routes(
    send: &mut quinn::SendStream,
    table: &meshgate_proto::RouteTable,
) -> Result<(), meshgate_proto::stream::StreamError> {
    for part in table.parts() {
        write_frame(send, &CoordMsg::Routes(part)).await?;
    }
    Ok(())
}

async fn control_loop(hub: &Hub, conn_id: u64, recv: &mut quinn::RecvStream) -> Result<()> {
    loop {
        let msg = read_frame::<AgentMsg>(recv)
            .await
            .context("control stream")?;
        match msg {
            Some(AgentMsg::Heartbeat { seq }) => hub.input(Input::Heartbeat {
                session: conn_id,
                seq,
            }),
            Some(AgentMsg::RequestHandover { reason }) => {
                tracing::info!(conn = conn_id, ?reason, "handover requested");
                hub.input(Input::HandoverRequested {
                    session: conn_id,
                    reason,
                });
            }
            Some(AgentMsg::FilterCounters(c)) => hub.policy_counters(conn_id, &c),
            Some(AgentMsg::Logs(batch)) => hub.agent_logs(conn_id, batch),
            Some(AgentMsg::Goodbye) | None => return Ok(()),
            Some(AgentMsg::Hello(_)) => anyhow::bail!("second Hello on one connection"),
        }
    }
}

async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    code: RefuseCode,
    reason: &str,
) {
    let _ = write_frame(
        send,
        &CoordMsg::Refused {
            code,
            reason: reason.into(),
        },
    )
    .await;
    let _ = send.finish();
    // Give the frame a moment to leave before the close frame overtakes it.
    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    conn.close(1u32.into(), reason.as_bytes());
}
