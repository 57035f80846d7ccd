//! `netray audit`'s pod classes are sound: on a generated cluster (8 nodes × 10 pods, more
//! than the every-pod threshold) with three faults — a stale VXLAN neighbour on one node, a
//! pod without a default route, a FORWARD DROP rule naming one pod's address on another node —
//! the audit walked one pod per class finds exactly the groups, failing-flow counts and
//! endpoints of the audit that walks every pod, while walking fewer flows.

#[path = "../benches/support/synth_bundle.rs"]
#[allow(dead_code)]
mod synth_bundle;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicUsize;

use netray_datapath::{RulesetEngine, World};
use netray_diagnose::audit::{self, Audit, Options, SourceKind};
use netray_diagnose::scan::{pod_names, scan_world};
use netray_kube::ClusterView;
use netray_snapshot::Bundle;
use serde_json::Value;

fn edit(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

fn host(v: &mut Value) -> &mut Value {
    &mut v["namespaces"][0]
}

fn pod_ns<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    v["namespaces"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["id"]["name"] == name)
        .unwrap()
}

/// The generated bundle with its three faults.
fn faulty_bundle(dir: &Path) {
    let spec = synth_bundle::Spec {
        nodes: 8,
        pods_per_node: 10,
        services: 12,
        endpoints: 3,
    };
    synth_bundle::write_bundle(dir, &spec).unwrap();
    let nodes = dir.join("nodes");
    // node3 maps node5's VTEP address to a MAC node5's VTEP no longer has (its FDB still
    // sends that MAC to node5): node5 drops the frames (seed 002).
    edit(&nodes.join("node3.json"), |v| {
        let h = host(v);
        for n in h["neighbours"].as_array_mut().unwrap() {
            if n["dev"] == "flannel.1" && n["dst"] == "10.244.5.0" {
                n["lladdr"] = "0e:6e:72:00:ff:ff".into();
            }
        }
        let mut f = h["fdb"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["dst"] == "192.168.50.15")
            .unwrap()
            .clone();
        f["mac"] = "0e:6e:72:00:ff:ff".into();
        h["fdb"].as_array_mut().unwrap().push(f);
    });
    // pod-2-3 lost its default route.
    edit(&nodes.join("node2.json"), |v| {
        pod_ns(v, "pod-2-3")["routes"]
            .as_array_mut()
            .unwrap()
            .retain(|r| r["dst"] != "0.0.0.0/0");
    });
    // node6 drops what pod-1-2 (10.244.1.4) sends through it.
    edit(&nodes.join("node6.json"), |v| {
        let d = &mut host(v)["firewall"]["iptables"][0]["text"];
        let t = d.as_str().unwrap().replacen(
            "-A FORWARD ",
            "-A FORWARD -s 10.244.1.4/32 -j DROP\n-A FORWARD ",
            1,
        );
        *d = t.into();
    });
}

type Row = (
    String,
    String,
    String,
    usize,
    Vec<String>,
    Vec<String>,
    Vec<String>,
);

/// The groups as comparable rows. A cause in the source pod's own namespace (`in_source`) is
/// named for the pod walked: one row per pod when every pod is walked, one for the class
/// otherwise; such rows are merged (flows summed) under the namespace `SOURCE`.
fn rows(a: &Audit) -> BTreeSet<Row> {
    let mut merged: std::collections::BTreeMap<Row, usize> = std::collections::BTreeMap::new();
    for g in &a.groups {
        let row = (
            g.cause.code.to_string(),
            g.cause.node.clone(),
            if g.in_source {
                "SOURCE".to_string()
            } else {
                g.cause.netns.clone()
            },
            0,
            g.endpoints.clone(),
            g.source_nodes.clone(),
            g.targets.clone(),
        );
        *merged.entry(row).or_default() += g.flows;
    }
    merged
        .into_iter()
        .map(|(mut r, flows)| {
            r.3 = flows;
            r
        })
        .collect()
}

#[test]
fn one_pod_per_class_finds_what_every_pod_finds() {
    let dir = tempfile::tempdir().unwrap();
    faulty_bundle(dir.path());
    let bundle = Bundle::load(dir.path()).unwrap();
    let view = ClusterView::from_value("cluster.json", bundle.cluster.as_ref().unwrap()).unwrap();
    assert!(view.pods.len() > audit::EVERY_POD_UP_TO);
    let mut world = World::new(&bundle);
    world.name_pods(pod_names(&view));
    let engine = RulesetEngine::new(&world);
    let findings = scan_world(&world, &engine, Some(&view));
    let run = |every_pod: bool| {
        let opts = Options {
            walk: netray_datapath::Options::default(),
            proto: None,
            size: None,
            sport: 40000,
            external: None,
            existing: true,
            every_pod,
            list_flows: false,
            threads: 2,
        };
        let plan = audit::plan(&world, &view, &opts);
        let done = AtomicUsize::new(0);
        let a = audit::run(&world, &engine, &view, &findings, &plan, &opts, &done);
        assert_eq!(done.into_inner(), plan.walks());
        a
    };
    let classed = run(false);
    let every = run(true);
    // The faulted pods stand alone; the other pods of a node share a class.
    let single = |who: &str| {
        classed
            .classes
            .iter()
            .any(|c| c.representative == who && c.members == 1)
    };
    assert!(single("pod/default/pod-2-3"), "{:#?}", classed.classes);
    assert!(single("pod/default/pod-1-2"), "{:#?}", classed.classes);
    let pod_classes = classed
        .classes
        .iter()
        .filter(|c| c.kind == SourceKind::Pods)
        .count();
    assert!(pod_classes <= 8 + 2 * 2, "{pod_classes} pod classes");
    assert!(
        classed.summary.walks * 3 < every.summary.walks,
        "classes walked {} flows, every pod {}",
        classed.summary.walks,
        every.summary.walks
    );
    // Same flows, same failures, same groups.
    assert_eq!(classed.summary.flows, every.summary.flows);
    assert_eq!(classed.summary.failing_flows, every.summary.failing_flows);
    let (a, b) = (rows(&classed), rows(&every));
    assert!(
        a == b,
        "only with classes: {:#?}\nonly walking every pod: {:#?}",
        a.difference(&b).collect::<Vec<_>>(),
        b.difference(&a).collect::<Vec<_>>()
    );
    // Each fault is named as a group on its node.
    let has = |code: &str, node: &str| {
        classed
            .groups
            .iter()
            .any(|g| g.cause.code == code && g.cause.node == node)
    };
    assert!(
        has("stale-vxlan-neighbor", "node3"),
        "{:#?}",
        rows(&classed)
    );
    assert!(
        has("pod-no-default-route", "node2"),
        "{:#?}",
        rows(&classed)
    );
    assert!(
        classed.groups.iter().any(|g| g.cause.node == "node6"
            && g.cause.evidence.iter().any(|e| e.contains("10.244.1.4/32"))),
        "{:#?}",
        rows(&classed)
    );
    eprintln!(
        "classes: {} walks, every pod: {} walks; {} groups, {} failing of {} flows",
        classed.summary.walks,
        every.summary.walks,
        classed.groups.len(),
        classed.summary.failing_flows,
        classed.summary.flows
    );
}

#[test]
fn a_healthy_generated_cluster_audits_clean() {
    let dir = tempfile::tempdir().unwrap();
    let spec = synth_bundle::Spec {
        nodes: 4,
        pods_per_node: 20,
        services: 6,
        endpoints: 3,
    };
    synth_bundle::write_bundle(dir.path(), &spec).unwrap();
    let bundle = Bundle::load(dir.path()).unwrap();
    let view = ClusterView::from_value("cluster.json", bundle.cluster.as_ref().unwrap()).unwrap();
    let mut world = World::new(&bundle);
    world.name_pods(pod_names(&view));
    let engine = RulesetEngine::new(&world);
    let findings = scan_world(&world, &engine, Some(&view));
    let opts = Options {
        walk: netray_datapath::Options::default(),
        proto: None,
        size: None,
        sport: 40000,
        external: None,
        existing: true,
        every_pod: false,
        list_flows: false,
        threads: 2,
    };
    let plan = audit::plan(&world, &view, &opts);
    let a = audit::run(
        &world,
        &engine,
        &view,
        &findings,
        &plan,
        &opts,
        &AtomicUsize::new(0),
    );
    assert!(a.groups.is_empty(), "{:#?}", a.groups);
    assert!(a.not_walked.is_empty(), "{:#?}", a.not_walked);
    // 4 hosts, one class of 20 pods per node, the outside client.
    assert_eq!(
        a.classes
            .iter()
            .filter(|c| c.kind == SourceKind::Pods)
            .map(|c| c.members)
            .collect::<Vec<_>>(),
        vec![20; 4]
    );
}
