use meshgate_proto::FilterRule;

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
    let stale = vec![counter_name(&Id([9; 16])), counter_name(&Id([1; 16]))];
    let s = render("mg0", &f, 0x42, &stale, &[]).unwrap().script;
    let lines: Vec<&str> = s.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {s}"))
    };
    let (p1, p2) = (counter_name(&Id([1; 16])), counter_name(&Id([2; 16])));
    assert!(
        at("flush chain ip meshgate_policy from_mesh") < at("from_mesh ct direction reply accept")
    );
    assert!(
        at("from_mesh ct direction reply accept") < at("ct state established ct mark 0x42 accept")
    );
    let block = at(&format!(
        "from_mesh ip saddr 100.96.0.5/32 ip daddr 192.168.50.0/24 counter name \"{p1}\" drop"
    ));
    let allow = at(&format!(
        "from_mesh ip daddr 192.168.50.0/24 meta l4proto @proto_0 th dport @port_1 counter name \"{p2}\" ct mark set 0x42 accept"
    ));
    assert!(at("ct state established") < block && block < allow);
    assert!(allow < at("from_mesh counter name \"default_drop\" drop"));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("iifname \"mg0\" jump from_mesh"))
            .count(),
        2
    );
    assert!(at(&format!("add counter ip meshgate_policy {p1}")) < block);
    let deleted: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("delete counter"))
        .collect();
    assert_eq!(
        deleted,
        [&format!(
            "delete counter ip meshgate_policy {}",
            counter_name(&Id([9; 16]))
        )
        .as_str()]
    );
    assert!(
        !s.contains("delete table"),
        "a replacement keeps the table and its counters"
    );
}

#[test]
fn nothing_to_enforce_removes_the_table() {
    assert_eq!(render("mg0", &filter(vec![], true), 1, &[], &[]), None);
    assert!(
        render("mg0", &filter(vec![], false), 1, &[], &[])
            .unwrap()
            .script
            .contains("counter name \"default_drop\" drop")
    );
    assert_eq!(
        render_remove(),
        "add table ip meshgate_policy\ndelete table ip meshgate_policy\n"
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
fn counters_parse_and_survive_a_recreation() {
    let id = Id([5; 16]);
    let name = counter_name(&id);
    let json = format!(
        r#"{{"nftables":[{{"metainfo":{{}}}},{{"counter":{{"family":"ip","name":"{name}","table":"meshgate_policy","packets":4,"bytes":240}}}},{{"counter":{{"name":"default_drop","packets":2,"bytes":1}}}}]}}"#
    );
    let c = parse_counters(&json).unwrap();
    assert_eq!(c[&name], 4);
    let mut t = Totals::default();
    t.observe(c);
    t.observe(HashMap::new()); // the table was removed
    t.observe(HashMap::from([
        (name.clone(), 1),
        ("default_allow".to_string(), 3),
    ]));
    let r = t.report();
    assert_eq!(r.policies, vec![(id, 5)]);
    assert_eq!((r.default_drops, r.default_allows), (2, 3));
    assert_eq!(counter_name(&id).len(), 34);
}

#[test]
fn lists_become_named_sets_shared_by_every_rule_that_names_them() {
    let own = ["100.96.0.2/31", "192.168.50.0/24"];
    let f = filter(
        (1..=50)
            .map(|p| {
                rule(
                    p,
                    false,
                    &[&format!("10.200.{p}.0/24")],
                    &own,
                    &[6],
                    &[(1000, 2000)],
                )
            })
            .chain([rule(
                60,
                true,
                &["10.1.0.0/16", "10.3.0.0/16"],
                &own,
                &[6, 17],
                &[],
            )])
            .collect(),
        true,
    );
    let old = vec![
        "net_0".to_string(),
        "net_7".to_string(),
        "other".to_string(),
    ];
    let r = render("mg0", &f, 5, &[], &old).unwrap();
    // One set for the shared destinations, one for the two sources, one for tcp+udp.
    assert_eq!(r.sets.len(), 3, "{}", r.script);
    let lines: Vec<&str> = r.script.lines().collect();
    let adds = lines.iter().filter(|l| l.starts_with("add set")).count();
    assert_eq!(adds, 3);
    let dst = lines
        .iter()
        .find(|l| l.starts_with("add element") && l.contains("100.96.0.2/31, 192.168.50.0/24"))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("the destinations' set");
    let uses = lines
        .iter()
        .filter(|l| l.contains(&format!("ip daddr @{dst} ")))
        .count();
    assert_eq!(uses, 51, "every rule matches the shared set");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ip saddr 10.200.7.0/24 ") && !l.contains('{')),
        "a single source is matched directly"
    );
    // Sets the table held that this filter does not use go, after the chains' flush;
    // a set of someone else's is left alone.
    let flush = lines
        .iter()
        .position(|l| l.starts_with("flush chain ip meshgate_policy from_mesh"));
    let deleted: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("delete set"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(deleted.len(), 1, "{}", r.script);
    assert!(lines[deleted[0]].ends_with(" net_7"));
    assert!(flush < Some(deleted[0]));
}

#[test]
fn sets_of_a_previous_table_parse() {
    let json = r#"{"nftables":[{"metainfo":{}},{"set":{"family":"ip","name":"net_0","table":"meshgate_policy","type":"ipv4_addr"}},{"set":{"name":"port_3"}},{"set":{"name":"not_ours"}}]}"#;
    assert_eq!(parse_sets(json).unwrap(), vec!["net_0", "port_3"]);
}
