//! Property tests: a participant's compiled filter decides every packet it can receive
//! exactly as the reference evaluation does, whatever the policies and the mesh.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use meshgate_proto::Id;
use proptest::prelude::*;

use super::compile::{Resolved, chunks};
use super::eval::{Packet, decide, first_rule};
use super::model::{Action, Endpoint, Policy, PortRange, Protocol, Settings};
use super::world::{Member, World};

const TAGS: [&str; 3] = ["ops", "db", "web"];

fn world(tag_bits: &[u8]) -> World {
    // Three devices, two nodes (two replicas each, one or two routes), tags by bits.
    let mut w = World::default();
    let tags = |b: u8| {
        TAGS.iter()
            .enumerate()
            .filter(|(i, _)| b & (1 << i) != 0)
            .map(|(_, t)| t.to_string())
            .collect()
    };
    for i in 0..3u8 {
        w.devices.insert(
            Id([i + 1; 16]),
            Member {
                nets: vec![Ipv4Net::from(Ipv4Addr::new(100, 96, 0, 10 + i))],
                tags: tags(tag_bits[i as usize]),
            },
        );
    }
    for i in 0..2u8 {
        let mut nets = vec![
            Ipv4Net::from(Ipv4Addr::new(100, 96, 0, 20 + 2 * i)),
            Ipv4Net::from(Ipv4Addr::new(100, 96, 0, 21 + 2 * i)),
            Ipv4Net::new(Ipv4Addr::new(192, 168, 50 + i, 0), 24).unwrap(),
        ];
        if i == 1 {
            nets.push(Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 0), 16).unwrap());
        }
        w.nodes.insert(
            Id([i + 10; 16]),
            Member {
                nets,
                tags: tags(tag_bits[3 + i as usize]),
            },
        );
    }
    w
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        Just(Endpoint::Any),
        (1..=4u8).prop_map(|i| Endpoint::Device(Id([i; 16]))), // 4: a deleted device
        (10..=11u8).prop_map(|i| Endpoint::Node(Id([i; 16]))),
        (0..4usize).prop_map(|i| Endpoint::Tag(["ops", "db", "web", "none"][i].into())),
        prop_oneof![
            Just("100.96.0.0/27"),
            Just("100.96.0.11/32"),
            Just("192.168.50.0/25"),
            Just("192.168.0.0/16"),
            Just("10.1.2.0/24"),
        ]
        .prop_map(|s| Endpoint::Cidr(s.parse().unwrap())),
    ]
}

fn policy() -> impl Strategy<
    Value = (
        Action,
        Vec<Endpoint>,
        Vec<Endpoint>,
        Vec<Protocol>,
        Vec<PortRange>,
    ),
> {
    (
        prop_oneof![Just(Action::Allow), Just(Action::Block)],
        prop::collection::vec(endpoint(), 1..3),
        prop::collection::vec(endpoint(), 1..3),
        prop::collection::vec(
            prop_oneof![
                Just(Protocol::Tcp),
                Just(Protocol::Udp),
                Just(Protocol::Icmp)
            ],
            0..2,
        ),
        prop::collection::vec(
            (1..100u16, 0..20u16).prop_map(|(a, w)| PortRange(a, a + w)),
            0..2,
        ),
    )
}

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        (10..26u8).prop_map(|h| Ipv4Addr::new(100, 96, 0, h)),
        (0..255u8).prop_map(|h| Ipv4Addr::new(192, 168, 50, h)),
        (0..255u8).prop_map(|h| Ipv4Addr::new(192, 168, 51, h)),
        (0..255u8).prop_map(|h| Ipv4Addr::new(10, 1, 2, h)),
        Just(Ipv4Addr::new(8, 8, 8, 8)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn compiled_filters_agree_with_the_reference(
        tag_bits in prop::collection::vec(0..8u8, 5),
        specs in prop::collection::vec(policy(), 0..8),
        default_block in any::<bool>(),
        packets in prop::collection::vec((addr(), addr(), 0..3usize, 1..130u16), 20),
    ) {
        let w = world(&tag_bits);
        let policies: Vec<Policy> = specs
            .into_iter()
            .enumerate()
            .map(|(i, (action, sources, destinations, mut protocols, ports))| {
                if !ports.is_empty() {
                    protocols.retain(|p| *p != Protocol::Icmp);
                }
                Policy {
                    id: Id([100 + i as u8; 16]),
                    name: format!("p{i}"),
                    precedence: i as u32 * 10,
                    action,
                    sources,
                    destinations,
                    protocols,
                    ports,
                    created_at: String::new(),
                    updated_at: String::new(),
                }
            })
            .collect();
        let settings = Settings {
            default_action: if default_block { Action::Block } else { Action::Allow },
        };
        let resolved = Resolved::new(&w, &policies, settings);
        let participants: Vec<Id> = w.devices.keys().chain(w.nodes.keys()).copied().collect();
        for id in participants {
            let local = w.local(&id).to_vec();
            let rules = resolved.rules_for(&local);
            for (src, dst, proto, port) in &packets {
                if !local.iter().any(|n| n.contains(dst)) {
                    continue; // the relay never sends it here
                }
                let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp][*proto];
                let p = Packet {
                    src: *src,
                    dst: *dst,
                    protocol,
                    port: (protocol != Protocol::Icmp).then_some(*port),
                };
                let want = decide(&w, &policies, settings, &p);
                let got = first_rule(&rules, &p).map(|i| &rules[i]);
                prop_assert_eq!(got.map(|r| r.policy), want.policy.map(|p| p.id));
                let allow = got.map_or(!default_block, |r| r.allow);
                prop_assert_eq!(allow, want.action == Action::Allow);
            }
        }
    }
}

#[test]
fn big_rules_split_across_chunks_in_order() {
    let sources: Vec<Ipv4Net> = (0..60_000u32)
        .map(|i| Ipv4Net::from(Ipv4Addr::from(0x0a00_0000 + i * 2)))
        .collect();
    let rules: Vec<meshgate_proto::FilterRule> = (0..3u8)
        .map(|i| meshgate_proto::FilterRule {
            policy: Id([i; 16]),
            allow: true,
            sources: sources[i as usize * 20_000..(i as usize + 1) * 20_000].to_vec(),
            destinations: vec!["100.96.0.1/32".parse().unwrap()],
            protocols: vec![6],
            ports: vec![(22, 22)],
        })
        .collect();
    let cs = chunks(false, rules.clone());
    assert!(cs.len() > 1, "60,000 networks need more than one frame");
    for c in &cs {
        let bytes =
            meshgate_proto::frame::encode(&meshgate_proto::CoordMsg::Filter(Box::new(c.clone())))
                .expect("every chunk fits a frame");
        assert!(bytes.len() <= meshgate_proto::frame::MAX_FRAME);
        assert_eq!((c.digest, c.chunks), (cs[0].digest, cs.len() as u16));
    }
    let joined: Vec<_> = cs.into_iter().flat_map(|c| c.rules).collect();
    assert_eq!(joined, rules);
}
