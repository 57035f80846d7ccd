//! `diagnose` consults only the scan checks about the namespaces its flow visits
//! (`scan_scoped`): on every bundled example (all captured from the kernel lab), for flows
//! from every pod and node to every Service port, pod and node (and each stale conntrack
//! entry's real client port), the diagnosis with the scoped findings must equal the one with
//! the whole cluster's scan — same verdict, endpoints, causes, evidence and notes.

use std::net::IpAddr;
use std::path::Path;

use netray_datapath::walk::{Flow, Start};
use netray_datapath::{Options, RulesetEngine, World, trace};
use netray_diagnose::catalog::CATALOG;
use netray_diagnose::diagnose::{Context, TracedFlow, diagnose, findings_for, visited_namespaces};
use netray_diagnose::scan::{pod_names, scan_world};
use netray_kube::ClusterView;
use netray_snapshot::Bundle;

fn examples() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("nodes").is_dir())
        .collect();
    out.sort();
    assert!(out.len() >= 7, "examples: {out:?}");
    out
}

/// Flows from every pod and node to every Service port, every pod's target ports and every
/// node (ICMP), plus each collected conntrack entry's tuple with its real source port.
fn flows(c: &ClusterView, w: &World<'_>) -> Vec<(Flow, Options)> {
    let mut sources: Vec<(IpAddr, Start)> = Vec::new();
    for p in c.pods.iter().filter(|p| !p.host_network) {
        if let Some(ip) = p.ips.first() {
            sources.push((*ip, Start::Auto));
        }
    }
    for n in &c.nodes {
        if let Some(a) = n.addresses.iter().find(|a| a.kind == "InternalIP") {
            sources.push((
                a.address.parse().expect("node IP"),
                Start::Host(n.name.clone()),
            ));
        }
    }
    let mut dests: Vec<(IpAddr, u8, Option<u16>)> = Vec::new();
    for s in &c.services {
        for ip in &s.cluster_ips {
            for p in &s.ports {
                let proto = match p.protocol.to_ascii_lowercase().as_str() {
                    "udp" => 17,
                    "sctp" => 132,
                    _ => 6,
                };
                dests.push((*ip, proto, Some(p.port)));
                if let Some(t) = p.target_port {
                    for e in c.pods.iter().filter(|p| !p.host_network) {
                        dests.extend(e.ips.first().map(|ip| (*ip, proto, Some(t))));
                    }
                }
            }
        }
    }
    for n in &c.nodes {
        for a in n.addresses.iter().filter(|a| a.kind == "InternalIP") {
            dests.push((a.address.parse().expect("node IP"), 1, None));
        }
    }
    dests.sort();
    dests.dedup();
    let mut out = Vec::new();
    for (src, start) in &sources {
        for (dst, proto, dport) in &dests {
            if src == dst || src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            out.push((
                Flow {
                    src: *src,
                    dst: *dst,
                    proto: *proto,
                    sport: 40000,
                    dport: *dport,
                    size: None,
                    start: start.clone(),
                },
                Options::default(),
            ));
        }
    }
    // Real client ports of collected conntrack entries (stale-conntrack-entry).
    for v in &w.ns {
        for e in v.snap.conntrack.iter().flat_map(|ct| &ct.entries) {
            let proto = match e.proto {
                6 | 17 => e.proto,
                _ => continue,
            };
            let orig = &e.orig;
            {
                out.push((
                    Flow {
                        src: orig.src,
                        dst: orig.dst,
                        proto,
                        sport: orig.sport.unwrap_or(40000),
                        dport: orig.dport,
                        size: None,
                        start: Start::Auto,
                    },
                    Options {
                        collected_conntrack: true,
                        ..Options::default()
                    },
                ));
            }
        }
    }
    out
}

#[test]
fn scoped_findings_give_the_same_diagnosis_on_every_example() {
    let mut compared = 0;
    let mut with_findings = 0;
    for dir in examples() {
        let bundle = Bundle::load(&dir).expect("load");
        let view = bundle
            .cluster
            .as_ref()
            .map(|v| ClusterView::from_value("cluster.json", v).expect("cluster"))
            .expect("examples have cluster.json");
        let mut world = World::new(&bundle);
        world.name_pods(pod_names(&view));
        let engine = RulesetEngine::new(&world);
        let full = scan_world(&world, &engine, Some(&view));
        // Every finding that names objects comes from a check marked so: scan_scoped runs
        // only those.
        for f in full.iter().filter(|f| !f.objects.is_empty()) {
            assert!(
                CATALOG
                    .iter()
                    .any(|c| c.names_objects && c.codes.contains(&f.code)),
                "{}: finding {} names objects but its check is not marked names_objects",
                dir.display(),
                f.code
            );
        }
        for (flow, opts) in flows(&view, &world) {
            let Ok(t) = trace(&world, &engine, &flow, opts) else {
                continue;
            };
            let traced = vec![TracedFlow {
                from: flow.src.to_string(),
                to: flow.dst.to_string(),
                trace: t,
            }];
            let scoped = findings_for(&world, &engine, Some(&view), &traced);
            // The scoped findings are exactly the full scan's findings about objects in the
            // visited namespaces.
            let visited: Vec<(String, String)> = visited_namespaces(&world, &traced)
                .into_iter()
                .map(|i| (world.ns[i].node.to_string(), world.ns[i].netns_label()))
                .collect();
            let expected: Vec<_> = full
                .iter()
                .filter(|f| {
                    f.objects.iter().any(|o| {
                        let p = o.place();
                        visited.contains(&(p.node.clone(), p.netns.clone()))
                    })
                })
                .cloned()
                .collect();
            let brief = |v: &[netray_diagnose::Finding]| {
                v.iter()
                    .map(|f| format!("{}@{}/{}", f.code, f.node, f.netns))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                brief(&scoped),
                brief(&expected),
                "{}: {flow:?}",
                dir.display()
            );
            assert_eq!(scoped, expected, "{}: {flow:?}", dir.display());
            with_findings += usize::from(!scoped.is_empty());
            let ctx = |findings| Context {
                findings,
                world: &world,
                pod_network: None,
                rewalk: None,
                collateral: None,
            };
            let a = diagnose("a", "b", &traced, &ctx(&full));
            let b = diagnose("a", "b", &traced, &ctx(&scoped));
            assert_eq!(a, b, "{}: {flow:?}", dir.display());
            compared += 1;
        }
    }
    assert!(compared > 300, "only {compared} flows compared");
    assert!(
        with_findings > 20,
        "only {with_findings} flows had scoped findings: the comparison proves little"
    );
    eprintln!("{compared} flows compared, {with_findings} with scoped findings");
}
