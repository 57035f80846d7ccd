//! Each fault makes the expected probes fail for real, and only those: the pod/node → pod
//! TCP matrix is checked in full against the fault's expected reach, plus the flows the fault
//! is about. These outcomes are the ground truth netray's simulation is compared with.

mod common;

use common::*;
use netray_lab::lab::{VM_CLUSTER_IP, VM_IP};
use netray_lab::spec::{
    EXTERNAL_IP, POD_TCP_PORT, WEB_LB_HEALTH_PORT, WEB_LB_IP, WEB_NODE_PORTS, node_ip,
};
use netray_lab::{Fault, Lab, Probe, Proto};

fn lab_with(fault: &str) -> Lab {
    let mut lab = standard_lab();
    lab.apply(&fault.parse::<Fault>().unwrap())
        .expect("apply fault");
    lab
}

fn is_pod_on(lab: &Lab, s: &Src, node: &str) -> bool {
    matches!(s, Src::Pod(p) if pod_node(lab, p) == node)
}

#[test]
fn forward_drop_seed_003() {
    if !can_run("forward_drop_seed_003") {
        return;
    }
    let lab = lab_with("forward-drop:node1");
    // Everything node1 forwards dies: to its pods from anywhere but node1's host (bridged
    // pod-to-pod traffic too: bridge-nf-call-iptables=1), and from its pods to anywhere.
    assert_matrix(&lab, "forward-drop:node1", |s, d| {
        let dst_on_1 = pod_node(&lab, d) == "node1";
        let src_pod_on_1 = is_pod_on(&lab, s, "node1");
        let src_host_1 = *s == Src::Host("node1".into());
        !(src_pod_on_1 || (dst_on_1 && !src_host_1))
    });
    // Seed 003: from a node host, the ClusterIP works only when it picks a backend off node1.
    let s = lab.spread(&lab.service_probe("node0", "web", Proto::Tcp).unwrap(), 30);
    assert!(s.failed > 0, "{s:?}");
    assert!(
        !s.answered.contains_key("web-2") && !s.answered.contains_key("web-3"),
        "{s:?}"
    );
    assert!(s.answered.len() >= 2, "{s:?}");
}

#[test]
fn ip_forward_off() {
    if !can_run("ip_forward_off") {
        return;
    }
    let lab = lab_with("ip-forward-off:node1");
    // Traffic node1 must route between its pods and the overlay dies; bridged traffic on
    // node1 and node1's own (host) traffic live.
    assert_matrix(&lab, "ip-forward-off:node1", |s, d| {
        let dst_on_1 = pod_node(&lab, d) == "node1";
        let src_pod_1 = is_pod_on(&lab, s, "node1");
        let src_on_1 = src_node(&lab, s) == "node1";
        let routed_out = src_pod_1 && !dst_on_1;
        let routed_in = dst_on_1 && !src_on_1;
        !routed_out && !routed_in
    });
    // NodePort on node1 forwards to pods: dead even toward its own pods (routed, not bridged).
    expect(&lab, Probe::tcp("ext", node_ip(1), WEB_NODE_PORTS.0), false);
    // On node0 the NodePort works unless it picks a backend on node1.
    let s = lab.spread(&Probe::tcp("ext", node_ip(0), WEB_NODE_PORTS.0), 12);
    assert!(!s.answered.is_empty(), "{s:?}");
    assert!(
        !s.answered.contains_key("web-2") && !s.answered.contains_key("web-3"),
        "{s:?}"
    );
}

#[test]
fn stale_vtep_seed_002() {
    if !can_run("stale_vtep_seed_002") {
        return;
    }
    // node0 "rebooted" with a new flannel.1 MAC; node1 refreshed its entries, node2 did not.
    let lab = lab_with("stale-vtep:node0:node2");
    assert_matrix(&lab, "stale-vtep:node0:node2", |s, d| {
        let pair = [src_node(&lab, s), pod_node(&lab, d)];
        !(pair.contains(&"node0".to_string()) && pair.contains(&"node2".to_string()))
    });
    // DNS-like UDP through the service from node0's pods: node2's backends never answer.
    let s = lab.spread(&lab.service_probe("web-0", "web", Proto::Udp).unwrap(), 24);
    assert!(s.failed > 0, "{s:?}");
    assert!(
        !s.answered.contains_key("web-4") && !s.answered.contains_key("web-5"),
        "{s:?}"
    );
    // The cluster view carries node0's new MAC; node2 still holds the old one.
    let macs = lab.vtep_macs();
    let neigh = lab.sh("node2", "ip neigh show dev flannel.1").unwrap();
    assert!(!neigh.contains(&macs[0]) && neigh.contains(&netray_lab::spec::vtep_mac(0, 0)));
}

#[test]
fn missing_route() {
    if !can_run("missing_route") {
        return;
    }
    let lab = lab_with("missing-route:node0:node1");
    assert_matrix(&lab, "missing-route:node0:node1", |s, d| {
        let pair = [src_node(&lab, s), pod_node(&lab, d)];
        !(pair.contains(&"node0".to_string()) && pair.contains(&"node1".to_string()))
    });
}

#[test]
fn pod_without_default_route() {
    if !can_run("pod_without_default_route") {
        return;
    }
    let lab = lab_with("pod-no-default-route:web-2");
    // web-2 keeps its own subnet (web-3, node1's cni0 address) and loses everything else.
    assert_matrix(&lab, "pod-no-default-route:web-2", |s, d| {
        let involved = d == "web-2" || *s == Src::Pod("web-2".into());
        let other_ok =
            d == "web-3" || *s == Src::Pod("web-3".into()) || *s == Src::Host("node1".into());
        !involved || other_ok
    });
    let r = expect(
        &lab,
        lab.service_probe("web-2", "web", Proto::Tcp).unwrap(),
        false,
    );
    assert!(r.detail.contains("unreachable"), "{r:?}");
}

#[test]
fn policy_drop() {
    if !can_run("policy_drop") {
        return;
    }
    let lab = lab_with("policy-drop:web-2");
    // New connections to web-2 die unless they come from its own node's host (no FORWARD);
    // web-2's own connections still work (replies are ESTABLISHED).
    assert_matrix(&lab, "policy-drop:web-2", |s, d| {
        d != "web-2" || *s == Src::Host("node1".into())
    });
}

#[test]
fn rp_filter_asymmetric() {
    if !can_run("rp_filter_asymmetric") {
        return;
    }
    let lab = lab_with("rp-filter-asymmetric:node1");
    assert_matrix(&lab, "rp-filter-asymmetric:node1", |_, _| true);
    // The external client's packets arrive on eth0 but node1 routes back via eth1: dropped.
    expect(&lab, Probe::tcp("ext", node_ip(1), WEB_NODE_PORTS.0), false);
    expect(&lab, Probe::udp("ext", node_ip(1), WEB_NODE_PORTS.1), false);
    expect(&lab, Probe::ping("ext", node_ip(1), 56), false);
    expect(&lab, Probe::tcp("ext", node_ip(0), WEB_NODE_PORTS.0), true);
    // node1 itself reaches the client (out and back via eth1), and loose mode fixes the rest.
    expect(&lab, Probe::ping("node1", EXTERNAL_IP, 56), true);
    lab.ns("node1")
        .unwrap()
        .sysctl("net.ipv4.conf.all.rp_filter", "2")
        .unwrap();
    lab.ns("node1")
        .unwrap()
        .sysctl("net.ipv4.conf.eth0.rp_filter", "2")
        .unwrap();
    expect(&lab, Probe::tcp("ext", node_ip(1), WEB_NODE_PORTS.0), true);
}

#[test]
fn overlay_mtu() {
    if !can_run("overlay_mtu") {
        return;
    }
    let lab = lab_with("overlay-mtu");
    assert_matrix(&lab, "overlay-mtu", |_, _| true);
    let web2 = lab.spec().pod("web-2").unwrap().ip;
    let web1 = lab.spec().pod("web-1").unwrap().ip;
    // Full-size packets no longer fit once encapsulated: across nodes they fail...
    expect(&lab, Probe::ping("web-0", web2, 1422), false);
    // ...small ones pass, and full-size ones on the same node (no encapsulation) too.
    expect(&lab, Probe::ping("web-0", web2, 1322), true);
    expect(&lab, Probe::ping("web-0", web1, 1422), true);
}

#[test]
fn bridge_nf_masq_seed_000() {
    if !can_run("bridge_nf_masq_seed_000") {
        return;
    }
    let lab = lab_with("bridge-nf-masq:node0");
    assert_matrix(&lab, "bridge-nf-masq:node0", |_, _| true);
    let svc = Probe::tcp("node0", VM_CLUSTER_IP, 80);
    // The VM answers directly, and pods reach it through the Service...
    expect(&lab, Probe::tcp("node0", VM_IP, POD_TCP_PORT), true);
    let s = lab.spread(&Probe::tcp("web-0", VM_CLUSTER_IP, 80), 4);
    assert_eq!(s.failed, 0, "{s:?}");
    // ...but host-originated traffic through the ClusterIP dies: the handshake completes, the
    // request gets no answer (the reply was de-SNATed early in the bridge path).
    let s = lab.spread(&svc, 4);
    assert_eq!(s.failed, 4, "{s:?}");
    assert!(s.last_error.contains("receive"), "{s:?}");
    // The fix from the article: bridge-nf-call-iptables=0 on the node.
    lab.ns("node0")
        .unwrap()
        .sysctl("net.bridge.bridge-nf-call-iptables", "0")
        .unwrap();
    let s = lab.spread(&svc, 4);
    assert_eq!(s.failed, 0, "{s:?}");
}

#[test]
fn local_service_ip_seed_004() {
    if !can_run("local_service_ip_seed_004") {
        return;
    }
    let lab = lab_with("local-service-ip:node1");
    assert_matrix(&lab, "local-service-ip:node1", |_, _| true);
    let local = lab.sh("node1", "ip route show table local").unwrap();
    assert!(
        local.contains(&format!("local {WEB_LB_IP} dev kube-ipvs0")),
        "{local}"
    );
    // Health probes sourced from the LB IP are martians on node1, fine elsewhere.
    let hc = |i| Probe::tcp("gw", node_ip(i), WEB_LB_HEALTH_PORT).from_source(WEB_LB_IP);
    expect(&lab, hc(1), false);
    expect(&lab, hc(0), true);
    expect(&lab, hc(2), true);
    // The same probe from the router's own address reaches node1.
    expect(&lab, Probe::tcp("gw", node_ip(1), WEB_LB_HEALTH_PORT), true);
}

#[test]
fn no_endpoints_rejects() {
    if !can_run("no_endpoints_rejects") {
        return;
    }
    let lab = lab_with("no-endpoints:web");
    assert_matrix(&lab, "no-endpoints:web", |_, _| true);
    let r = expect(
        &lab,
        lab.service_probe("web-0", "web", Proto::Tcp).unwrap(),
        false,
    );
    assert!(r.detail.contains("refused"), "{r:?}");
    expect(
        &lab,
        lab.service_probe("node2", "web", Proto::Udp).unwrap(),
        false,
    );
    // Other services are untouched.
    expect(
        &lab,
        lab.service_probe("web-0", "web-np", Proto::Tcp).unwrap(),
        true,
    );
    let cluster = lab.cluster_json();
    let slice = cluster["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["kind"] == "EndpointSlice"
                && i["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
        })
        .unwrap();
    assert!(slice["endpoints"].is_null());
}

#[test]
fn drop_rule() {
    if !can_run("drop_rule") {
        return;
    }
    let lab = lab_with("drop-rule:web-3");
    // Everything forwarded to web-3 dies, bridged same-node traffic included
    // (bridge-nf-call-iptables=1) — and so do the replies to web-3's own connections (the rule
    // has no conntrack state); node1's own connections leave by OUTPUT and work.
    assert_matrix(&lab, "drop-rule:web-3", |s, d| {
        (d != "web-3" && *s != Src::Pod("web-3".into())) || *s == Src::Host("node1".into())
    });
    let r = lab.sh("node1", "iptables -w -S FORWARD").unwrap();
    assert!(r.contains("-A FORWARD -d 10.244.1.3/32"), "{r}");
}

#[test]
fn blackhole_route() {
    if !can_run("blackhole_route") {
        return;
    }
    let lab = lab_with("blackhole-route:node0:node2");
    // node0 swallows whatever it routes to node2's pods: requests and replies alike.
    assert_matrix(&lab, "blackhole-route:node0:node2", |s, d| {
        let pair = [src_node(&lab, s), pod_node(&lab, d)];
        !(pair.contains(&"node0".to_string()) && pair.contains(&"node2".to_string()))
    });
    let r = lab.sh("node0", "ip route show 10.244.2.0/24").unwrap();
    assert!(r.contains("blackhole"), "{r}");
}

#[test]
fn veth_down() {
    if !can_run("veth_down") {
        return;
    }
    let lab = lab_with("veth-down:web-5");
    // web-5 is cut off from everything, its own node included.
    assert_matrix(&lab, "veth-down:web-5", |s, d| {
        d != "web-5" && *s != Src::Pod("web-5".into())
    });
}
