use super::*;

fn rule(
    policy: u8,
    allow: bool,
    src: &[&str],
    dst: &[&str],
    protos: &[u8],
    ports: &[(u16, u16)],
) -> FilterRule {
    FilterRule {
        policy: Id([policy; 16]),
        allow,
        sources: src.iter().map(|s| s.parse().unwrap()).collect(),
        destinations: dst.iter().map(|s| s.parse().unwrap()).collect(),
        protocols: protos.to_vec(),
        ports: ports.to_vec(),
    }
}

fn filter(rules: Vec<FilterRule>, default_allow: bool) -> Filter {
    Filter {
        digest: 7,
        chunk: 0,
        chunks: 1,
        default_allow,
        rules,
    }
}

#[test]
fn renders_rules_in_order_after_the_state_checks() {
    let f = filter(
        vec![
            rule(1, false, &["100.96.0.5/32"], &["192.168.50.0/24"], &[], &[]),
            rule(
                2,
                true,
                &["0.0.0.0/0"],
                &["192.168.50.0/24"],
                &[6, 17],
                &[(22, 22), (8000, 8100), (20, 30)],
            ),
        ],
        false,
    );
    let s = render("mg0", &f, 0x42).unwrap();
    let lines: Vec<&str> = s.lines().map(str::trim).collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} in {s}"))
    };
    assert!(at("ct direction reply accept") < at("ct state established ct mark 0x42 accept"));
    let block = at("ip saddr { 100.96.0.5/32 } ip daddr { 192.168.50.0/24 } counter drop");
    let allow = at(
        "ip daddr { 192.168.50.0/24 } meta l4proto { tcp, udp } th dport { 20-30, 8000-8100 } counter ct mark set 0x42 accept",
    );
    assert!(at("ct state established") < block && block < allow);
    assert!(allow < at("counter drop comment \"default\""));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("iifname \"mg0\" jump from_mesh"))
            .count(),
        2
    );
    assert!(s.starts_with("add table ip meshgate_policy\ndelete table ip meshgate_policy\n"));
}

#[test]
fn nothing_to_enforce_removes_the_table() {
    assert_eq!(render("mg0", &filter(vec![], true), 1), None);
    assert!(
        render("mg0", &filter(vec![], false), 1)
            .unwrap()
            .contains("counter drop comment \"default\"")
    );
}

#[test]
fn ports_merge_when_they_touch_or_overlap() {
    assert_eq!(
        merge_ports(&[(22, 22), (20, 30), (31, 40), (80, 80)]),
        vec![(20, 40), (80, 80)]
    );
    assert_eq!(merge_ports(&[(65535, 65535), (1, 65534)]), vec![(1, 65535)]);
}

#[test]
fn assembly_waits_for_every_chunk_of_one_digest() {
    let mut a = Assembly::default();
    let chunk = |digest, i, n, p| Filter {
        digest,
        chunk: i,
        chunks: n,
        default_allow: false,
        rules: vec![rule(p, true, &["0.0.0.0/0"], &["10.0.0.1/32"], &[], &[])],
    };
    assert!(a.add(chunk(1, 1, 2, 2)).is_none());
    assert!(
        a.add(chunk(9, 0, 2, 9)).is_none(),
        "another digest starts over"
    );
    assert!(a.add(chunk(1, 0, 2, 1)).is_none());
    let whole = a.add(chunk(1, 1, 2, 2)).unwrap();
    assert_eq!(
        whole
            .rules
            .iter()
            .map(|r| r.policy.0[0])
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(
        a.add(chunk(3, 5, 2, 1)).is_none(),
        "an index past the end is ignored"
    );
}

#[test]
fn counters_parse_and_survive_a_replacement() {
    let id = Id([5; 16]);
    let json = format!(
        r#"{{"nftables":[{{"metainfo":{{}}}},{{"rule":{{"chain":"from_mesh","comment":"p:{id}","expr":[{{"match":{{}}}},{{"counter":{{"packets":4,"bytes":240}}}},{{"drop":null}}]}}}},{{"rule":{{"chain":"from_mesh","comment":"default","expr":[{{"counter":{{"packets":2,"bytes":1}}}}]}}}},{{"rule":{{"chain":"input","expr":[]}}}}]}}"#
    );
    let c = parse_counters(&json).unwrap();
    assert_eq!(c[&format!("p:{id}")], 4);
    let mut t = Totals::default();
    t.fold(false);
    t.set_current(c.clone());
    t.fold(true); // replaced: the old table counted default drops
    t.set_current(HashMap::from([("default".to_string(), 3)]));
    let r = t.report();
    assert_eq!(r.policies, vec![(id, 4)]);
    assert_eq!((r.default_drops, r.default_allows), (2, 3));
}
