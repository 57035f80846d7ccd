//! The healthy lab: every pod and node reaches every pod and every service, for real.

mod common;

use std::collections::BTreeSet;

use common::*;
use netray_lab::spec::{
    EMPTY_CLUSTER_IP, EXTERNAL_IP, POD_UDP_PORT, WEB_CLUSTER_IP, WEB_LB_HEALTH_PORT, WEB_LB_IP,
    WEB_LB_NODE_PORTS, WEB_NODE_PORTS, node_ip,
};
use netray_lab::{Probe, Proto};

#[test]
fn healthy_lab_reaches_everything() {
    if !can_run("healthy_lab_reaches_everything") {
        return;
    }
    let lab = standard_lab();
    let names: Vec<String> = lab.namespaces().values().cloned().collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with(&format!("nrl-{}-", lab.tag())))
    );

    // Pods and nodes → every pod, TCP request/response, answered by that pod.
    assert_matrix(&lab, "healthy", |_, _| true);

    // UDP and ICMP (at the overlay's full size, DF set) between every pair of pods.
    let pods: Vec<_> = lab.spec().pods.clone();
    let mut probes = Vec::new();
    for a in &pods {
        for b in &pods {
            if a.name != b.name {
                probes.push(Probe::udp(&a.name, b.ip, POD_UDP_PORT));
                probes.push(Probe::ping(&a.name, b.ip, 1422));
            }
        }
    }
    let bad: Vec<_> = lab
        .probe_all(&probes)
        .into_iter()
        .filter(|r| !r.ok)
        .collect();
    assert!(bad.is_empty(), "failed: {bad:#?}");
    // One byte more than the pod MTU does not leave the pod (DF): the probe can fail.
    expect(&lab, Probe::ping("web-0", pods[2].ip, 1423), false);

    // Services from every pod and node: every try answered, by several backends.
    let mut sources: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
    sources.extend(lab.spec().nodes.iter().map(|n| n.name.clone()));
    for from in &sources {
        for proto in [Proto::Tcp, Proto::Udp] {
            let probe = lab.service_probe(from, "web", proto).unwrap();
            let s = lab.spread(&probe, 12);
            assert_eq!(s.failed, 0, "{probe}: {s:?}");
            assert!(s.answered.len() >= 2, "{probe}: not balanced: {s:?}");
            assert!(s.answered.keys().all(|k| k.starts_with("web-")), "{s:?}");
        }
    }
    // Hairpin: a pod reaching its own service lands on itself some of the time.
    let s = lab.spread(&lab.service_probe("web-0", "web", Proto::Tcp).unwrap(), 60);
    assert!(s.answered.contains_key("web-0") && s.failed == 0, "{s:?}");

    // NodePorts on every node from the external client and from a pod.
    for i in 0..3 {
        for from in ["ext", "web-1"] {
            expect(&lab, Probe::tcp(from, node_ip(i), WEB_NODE_PORTS.0), true);
            expect(&lab, Probe::udp(from, node_ip(i), WEB_NODE_PORTS.1), true);
        }
    }
    // LoadBalancer IP from outside (routed to node0; externalTrafficPolicy Local → node0's pods).
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        let r = expect(&lab, Probe::tcp("ext", WEB_LB_IP, 80), true);
        seen.insert(r.answered_by.unwrap());
    }
    assert!(
        seen.iter().all(|p| p == "web-0" || p == "web-1"),
        "{seen:?}"
    );
    // The LB NodePort on node1 serves node1's own pods only.
    let r = expect(
        &lab,
        Probe::tcp("ext", node_ip(1), WEB_LB_NODE_PORTS.0),
        true,
    );
    assert!(
        matches!(r.answered_by.as_deref(), Some("web-2" | "web-3")),
        "{r:?}"
    );
    // The load balancer's health probes, sourced from the LB IP, reach every node.
    for i in 0..3 {
        let r = expect(
            &lab,
            Probe::tcp("gw", node_ip(i), WEB_LB_HEALTH_PORT).from_source(WEB_LB_IP),
            true,
        );
        assert_eq!(r.answered_by.unwrap(), format!("node{i} healthz"));
    }
    // Pods reach the outside (flannel masquerade) and the outside reaches nodes.
    let r = expect(&lab, Probe::ping("web-3", EXTERNAL_IP, 56), true);
    assert!(r.ok);
    expect(&lab, Probe::ping("ext", node_ip(2), 56), true);

    // A service without endpoints is rejected at once (REJECT, not a timeout).
    let start = std::time::Instant::now();
    let r = expect(&lab, Probe::tcp("web-0", EMPTY_CLUSTER_IP, 80), false);
    assert!(r.detail.contains("refused"), "{r:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    // Nothing answers on a port nobody serves (the probe really can fail).
    expect(&lab, Probe::tcp("web-0", WEB_CLUSTER_IP, 81), false);

    // cluster.json names every object.
    let dir = tempfile_dir();
    let path = dir.join("cluster.json");
    lab.write_cluster_json(&path).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["kind"], "List");
    // 3 nodes, 6 pods, 4 Services, 4 EndpointSlices, and the two ConfigMaps that carry the pod
    // network (flannel's net-conf.json and kube-proxy's clusterCIDR).
    assert_eq!(v["items"].as_array().unwrap().len(), 3 + 6 + 4 + 4 + 2);
    let kinds: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["kind"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "ConfigMap").count(),
        2,
        "{kinds:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Teardown removes every namespace of this lab (and nothing else is needed).
    drop(lab);
    let left: Vec<_> = netray_lab::netns::list_lab_namespaces()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nrl-test-{}", netray_lab::lab_tag()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn teardown_on_panic() {
    if !can_run("teardown_on_panic") {
        return;
    }
    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = netray_lab::Lab::up(&netray_lab::ClusterSpec::standard(1, 1), &agent()).unwrap();
        *names.lock().unwrap() = lab.namespaces().into_values().collect::<Vec<_>>();
        panic!("boom");
    }));
    assert!(r.is_err());
    let names = names.into_inner().unwrap();
    assert!(!names.is_empty());
    let left: Vec<_> = netray_lab::netns::list_lab_namespaces()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
