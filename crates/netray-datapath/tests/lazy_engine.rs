//! The ruleset engine parses a namespace's firewall only when the walk asks about it, at most
//! once, and an engine reusing a base engine parses only the firewalls that differ from it.

use std::collections::BTreeSet;
use std::path::Path;

use netray_datapath::{Disposition, Flow, Options, RulesetEngine, Start, Trace, World, trace};
use netray_snapshot::{Bundle, NetnsRole};

fn healthy() -> Bundle {
    Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy")).unwrap()
}

/// web-0 (node0) to web-2 (node1), TCP 8080.
fn flow() -> Flow {
    Flow {
        src: "10.244.0.2".parse().unwrap(),
        dst: "10.244.1.2".parse().unwrap(),
        proto: 6,
        sport: 40000,
        dport: Some(8080),
        size: None,
        start: Start::Auto,
    }
}

fn visited(t: &Trace) -> BTreeSet<(String, String)> {
    t.branches
        .iter()
        .flat_map(|b| b.hops.iter())
        .map(|h| (h.node.clone(), h.netns.clone()))
        .collect()
}

fn dispositions(t: &Trace) -> Vec<Disposition> {
    t.branches.iter().map(|b| b.disposition).collect()
}

#[test]
fn only_visited_namespaces_are_parsed_and_each_once() {
    let b = healthy();
    let w = World::new(&b);
    let e = RulesetEngine::new(&w);
    assert_eq!(e.parse_count(), 0, "nothing parsed before the walk");
    let t = trace(&w, &e, &flow(), Options::default()).unwrap();
    assert!(t.reachable);
    let seen = visited(&t).len();
    let parsed = e.parse_count();
    assert!(
        parsed > 0 && parsed <= seen,
        "parsed {parsed}, visited {seen}"
    );
    assert!(parsed < w.ns.len(), "parsed {parsed} of {}", w.ns.len());
    // Walking again parses nothing more.
    let again = trace(&w, &e, &flow(), Options::default()).unwrap();
    assert_eq!(dispositions(&again), dispositions(&t));
    assert_eq!(e.parse_count(), parsed);
    // Only what was parsed is reported as parsed; diagnostics() parses the rest.
    assert!(e.parsed_diagnostics().len() <= e.diagnostics().len());
    let with_rules =
        w.ns.iter()
            .filter(|v| {
                let fw = &v.snap.firewall;
                !(fw.iptables.iter().all(|d| d.text.trim().is_empty())
                    && fw.nft_json.is_none()
                    && fw.ipset.is_none())
            })
            .count();
    assert_eq!(e.parse_count(), with_rules);
}

/// node1's host firewall with `-A FORWARD -j DROP` before its other filter rules.
fn drop_forward_on_node1(b: &Bundle) -> netray_snapshot::NodeSnapshot {
    let mut n = b
        .nodes
        .iter()
        .find(|n| n.node.name == "node1")
        .unwrap()
        .clone();
    let host = n
        .namespaces
        .iter_mut()
        .find(|ns| ns.role == NetnsRole::Host)
        .unwrap();
    let dump = host
        .firewall
        .iptables
        .iter_mut()
        .find(|d| d.text.contains("*filter"))
        .unwrap();
    let at = dump.text.find("*filter").unwrap();
    // Rules are saved with counters (`[7:710] -A INPUT …`).
    let first_rule = at + dump.text[at..].find("\n[").unwrap() + 1;
    dump.text
        .insert_str(first_rule, "[0:0] -A FORWARD -j DROP\n");
    n
}

#[test]
fn an_engine_reusing_a_base_parses_only_changed_firewalls() {
    let b = healthy();
    let w = World::new(&b);
    let base = RulesetEngine::new(&w);
    let t = trace(&w, &base, &flow(), Options::default()).unwrap();
    let base_parsed = base.parse_count();

    // An unchanged copy of node1: everything comes from the base.
    let same = vec![b.nodes[1].clone()];
    let w2 = World::with_nodes(&b, &same);
    let e2 = RulesetEngine::reusing(&w2, &base);
    let t2 = trace(&w2, &e2, &flow(), Options::default()).unwrap();
    assert_eq!(dispositions(&t2), dispositions(&t));
    assert_eq!(e2.parse_count(), 0);

    // node1's host firewall changed: that one namespace is parsed, and it decides.
    let changed = vec![drop_forward_on_node1(&b)];
    let w3 = World::with_nodes(&b, &changed);
    let e3 = RulesetEngine::reusing(&w3, &base);
    let t3 = trace(&w3, &e3, &flow(), Options::default()).unwrap();
    assert!(!t3.reachable);
    assert!(
        t3.branches
            .iter()
            .all(|b| b.disposition == Disposition::Dropped),
        "{:?}",
        dispositions(&t3)
    );
    assert_eq!(e3.parse_count(), 1);
    // The base is untouched by the patched walk (same answers, nothing re-parsed there).
    assert_eq!(base.parse_count(), base_parsed);
    let t4 = trace(&w, &base, &flow(), Options::default()).unwrap();
    assert!(t4.reachable);
}
