//! The protocol client checks the timings a coordinator sends before it uses them: a
//! zero heartbeat used to panic the heartbeat task (leaving a session that never renews
//! its lease), so a Welcome with unusable timings must end in a clear error instead.

use std::{net::Ipv4Addr, time::Duration};

use meshgate_coordinator::{identity, quic};
use meshgate_proto::{
    AgentMsg, CoordMsg, Id, Kind, Role, RouteTable, Timings, Token, Welcome,
    client::{ClientError, ConnectOptions, Session},
    stream::{read_frame, write_frame},
};

/// A coordinator stand-in that answers the first Hello with `timings`.
async fn welcome_with(timings: Timings) -> anyhow::Result<Result<Session, ClientError>> {
    let dir = tempfile::tempdir()?;
    let id = identity::load_or_create(dir.path())?;
    let endpoint = quic::endpoint(&id, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;
    let server = tokio::spawn(async move {
        let incoming = endpoint.accept().await.expect("the client dials");
        let conn = incoming.await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let hello: Option<AgentMsg> = read_frame(&mut recv).await?;
        anyhow::ensure!(matches!(hello, Some(AgentMsg::Hello(_))), "{hello:?}");
        let welcome = Welcome {
            kind: Kind::Node,
            id: Id::random(),
            name: "n".into(),
            replica_id: "r".into(),
            mesh_ip: Ipv4Addr::new(100, 96, 0, 2),
            mesh_cidr: "100.96.0.0/12".parse()?,
            role: Role::Standby,
            epoch: 1,
            timings,
            active: None,
            routes_version: 1,
        };
        write_frame(&mut send, &CoordMsg::Welcome(Box::new(welcome))).await?;
        let empty = RouteTable {
            version: 1,
            entries: Vec::new(),
        };
        for part in empty.parts() {
            write_frame(&mut send, &CoordMsg::Routes(part)).await?;
        }
        // Keep the connection until the client is done with it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::Ok(())
    });
    let token = Token::generate(
        Kind::Node,
        Id::random(),
        vec![addr.to_string()],
        id.fingerprint,
    );
    let session = Session::connect(&token, ConnectOptions::new("replica-under-test")).await;
    server.await??;
    Ok(session)
}

#[tokio::test]
async fn a_zero_heartbeat_is_refused_not_a_panic() -> anyhow::Result<()> {
    let bad = Timings {
        heartbeat_ms: 0,
        lease_ms: 250,
        guard_ms: 50,
    };
    match welcome_with(bad).await? {
        Err(ClientError::Protocol(m)) => assert!(m.contains("unusable timings"), "{m}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a session with a zero heartbeat was accepted"),
    }
    Ok(())
}

#[tokio::test]
async fn a_lease_too_short_to_renew_is_refused() -> anyhow::Result<()> {
    let bad = Timings {
        heartbeat_ms: u32::MAX,
        lease_ms: 250,
        guard_ms: 50,
    };
    assert!(matches!(
        welcome_with(bad).await?,
        Err(ClientError::Protocol(_))
    ));
    Ok(())
}

#[tokio::test]
async fn sound_timings_still_make_a_session() -> anyhow::Result<()> {
    let session = welcome_with(Timings::default()).await?;
    assert!(session.is_ok(), "{:?}", session.err());
    Ok(())
}
