//! Parsing of what users and API paths hand in: ids (`Id::from_str`, replica ids), route
//! networks (the coordinator's strict `routes::parse` and `routes::validate`), and the
//! agent's reassembly of route tables from parts (`routes::Assembler`).
#![no_main]

#[path = "../../coordinator/src/routes.rs"]
mod routes;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use meshgate_proto::id::{MAX_REPLICA_ID_LEN, valid_replica_id};
use meshgate_proto::routes::{Assembler, RoutesPart};
use meshgate_proto::{Id, RouteEntry, RouteTable};
use routes::{Existing, RouteError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    id(&text);
    route(&text);
    let _ = validate(data);
    let _ = assemble(data);
});

fn id(s: &str) {
    let hex = |b: u8| b.is_ascii_hexdigit();
    let dashed = s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                hex(b)
            }
        });
    let plain = s.len() == 32 && s.bytes().all(hex);
    match s.parse::<Id>() {
        Ok(id) => {
            assert!(dashed || plain, "{s:?} is not an id's text but parsed");
            let shown = id.to_string();
            assert_eq!(
                shown,
                s.to_ascii_lowercase()
                    .replace('-', "")
                    .chars()
                    .enumerate()
                    .flat_map(|(i, c)| matches!(i, 8 | 12 | 16 | 20)
                        .then_some('-')
                        .into_iter()
                        .chain([c]))
                    .collect::<String>()
            );
            assert_eq!(shown.parse::<Id>(), Ok(id));
        }
        Err(_) => assert!(!dashed && !plain, "{s:?} is an id's text but did not parse"),
    }
    let replica = !s.is_empty()
        && s.len() <= MAX_REPLICA_ID_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    assert_eq!(valid_replica_id(s), replica, "{s:?}");
}

fn route(s: &str) {
    match routes::parse(s) {
        Ok(net) => {
            assert!(s.trim().contains('/'));
            assert_eq!(net.trunc(), net, "host bits clear");
            assert_eq!(routes::parse(&net.to_string()), Ok(net), "round trip");
        }
        Err(RouteError::HostBits { given, suggested }) => {
            assert_eq!(given, s.trim());
            assert_eq!(routes::parse(&suggested.to_string()), Ok(suggested));
        }
        Err(RouteError::Invalid(given)) => assert_eq!(given, s.trim()),
        Err(e) => panic!("parse returned {e:?}"),
    }
}

fn net(u: &mut Unstructured<'_>) -> Result<Ipv4Net> {
    let addr = Ipv4Addr::from(u.arbitrary::<u32>()?);
    Ok(Ipv4Net::new(addr, u.int_in_range(0..=32)?)
        .expect("prefix length within 0..=32")
        .trunc())
}

fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    let (a0, a1) = (u32::from(a.network()), u32::from(a.broadcast()));
    let (b0, b1) = (u32::from(b.network()), u32::from(b.broadcast()));
    a0 <= b1 && b0 <= a1
}

/// `validate` against the rules it states, with overlap as interval intersection.
fn validate(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mesh = net(&mut u)?;
    let node = Id([u.int_in_range(0..=3)?; 16]);
    let candidate = net(&mut u)?;
    let mut existing = Vec::new();
    for _ in 0..u.int_in_range(0..=16)? {
        existing.push(Existing {
            net: net(&mut u)?,
            node: Id([u.int_in_range(0..=3)?; 16]),
            node_name: "n",
        });
    }
    let reserved = ["0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"]
        .map(|r| r.parse::<Ipv4Net>().expect("a valid network"));
    let got = routes::validate(candidate, node, mesh, &existing);
    let want_reserved =
        candidate.prefix_len() == 0 || reserved.iter().any(|r| overlap(r, &candidate));
    assert_eq!(matches!(got, Err(RouteError::Reserved(_))), want_reserved);
    if want_reserved {
        return Ok(());
    }
    assert_eq!(
        matches!(got, Err(RouteError::InsideMesh { .. })),
        overlap(&candidate, &mesh)
    );
    if overlap(&candidate, &mesh) {
        return Ok(());
    }
    let conflict = existing.iter().find(|e| {
        if e.node == node {
            e.net == candidate
        } else {
            overlap(&e.net, &candidate)
        }
    });
    match (conflict, got) {
        (None, Ok(())) => {}
        (Some(e), Err(RouteError::Duplicate(n))) => assert!(e.node == node && n == candidate),
        (Some(e), Err(RouteError::Overlaps { other, .. })) => {
            assert!(e.node != node && other == e.net)
        }
        (c, g) => panic!("expected a conflict with {:?}, got {g:?}", c.map(|e| e.net)),
    }
    Ok(())
}

/// Arbitrary parts into an `Assembler`: any table it hands out is exactly a run of the
/// parts just pushed — one version, the first starting at 0, each continuing the last,
/// all declaring the table's size — never a half or a mix.
fn assemble(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mut a = Assembler::default();
    let mut pushed: Vec<RoutesPart> = Vec::new();
    while !u.is_empty() {
        let n = u.int_in_range(0..=4)?;
        let entries = (0..n)
            .map(|i| RouteEntry {
                network: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, i), 32).expect("a /32"),
                node: None,
            })
            .collect();
        let part = RoutesPart {
            version: u.int_in_range(0..=2)?,
            total: u.int_in_range(0..=8)?,
            first: u.int_in_range(0..=8)?,
            entries,
        };
        pushed.push(part.clone());
        let Some(t) = a.push(part) else {
            continue;
        };
        let mut len = 0;
        let run = pushed
            .iter()
            .rev()
            .position(|p| {
                len += p.entries.len();
                p.first == 0 && len == t.entries.len()
            })
            .expect("the table is made of the parts pushed");
        let run = &pushed[pushed.len() - 1 - run..];
        let mut at = 0u32;
        for p in run {
            assert_eq!(p.version, t.version, "one version");
            assert_eq!(p.first, at, "each part continues the last");
            assert_eq!(
                p.total as usize,
                t.entries.len(),
                "every part declares the size"
            );
            at += p.entries.len() as u32;
        }
        let entries: Vec<RouteEntry> = run.iter().flat_map(|p| p.entries.clone()).collect();
        assert_eq!(
            t,
            RouteTable {
                version: t.version,
                entries
            }
        );
        pushed.clear();
    }
    Ok(())
}
