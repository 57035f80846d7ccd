//! Every check of the scan catalog fires on real kernel state: one lab is broken in many small
//! ways at once (each on its own node or namespace), collected with `netray collect`, and
//! `netray scan` must report each code on the node where the fault is. The seed faults
//! (ip_forward, rp_filter, routes, VXLAN, MTU, FORWARD policy, LB IP, br_netfilter) are
//! covered by `lab_cases.rs`; the healthy lab being clean is checked there too.

use std::path::Path;
use std::process::Command;

use netray_lab::spec::{ClusterSpec, node_ip};
use netray_lab::{Agent, Lab, Probe, Proto};
use serde_json::{Value, json};

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

/// Whether the lab test can run (skips without root, fails under `CI=true`).
fn can_run(test: &str) -> bool {
    netray_lab::lab_tests_can_run(test)
}

fn sh(lab: &Lab, member: &str, script: &str) -> String {
    lab.sh(member, script)
        .unwrap_or_else(|e| panic!("{member}: {script}: {e}"))
}

/// Name of the host-side veth of `pod` in its node's namespace.
fn host_veth(lab: &Lab, node: &str, pod: &str) -> String {
    let idx = sh(lab, pod, "cat /sys/class/net/eth0/iflink");
    let idx = idx.trim();
    let out = sh(lab, node, "ip -o link show");
    out.lines()
        .find_map(|l| {
            let (i, rest) = l.split_once(": ")?;
            (i.trim() == idx).then(|| rest.split(['@', ':']).next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no ifindex {idx} on {node}: {out}"))
}

#[test]
fn every_check_fires_on_real_state() {
    if !can_run("every_check_fires_on_real_state") {
        return;
    }
    // The standard lab keeps the `empty` Service (no endpoints).
    let agent = Agent::subcommand(NETRAY, &["lab", "agent"]);
    let lab = Lab::up(&ClusterSpec::standard(3, 2), &agent).expect("lab up");

    // node0: interface forwarding, blackhole route, policy rule, both iptables backends, a DROP
    // and a REJECT rule that have counted packets.
    sh(
        &lab,
        "node0",
        "echo 0 > /proc/sys/net/ipv4/conf/flannel.1/forwarding
         ip route add blackhole 10.244.2.128/25
         ip rule add from 10.244.0.3 lookup 100 priority 100
         iptables-legacy -w -A INPUT -s 203.0.113.9 -j DROP
         iptables -w -I INPUT 1 -p udp --dport 9 -j REJECT
         iptables -w -I FORWARD 1 -d 10.244.0.3 -p tcp --dport 9 -j DROP",
    );
    assert!(!lab.probe(&Probe::udp("node1", node_ip(0), 9)).ok);
    // A DROP counted in FORWARD: web-0 → web-1 is bridged on node0, and with
    // bridge-nf-call-iptables=1 bridged traffic crosses filter FORWARD.
    assert!(
        !lab.probe(&Probe::tcp("web-0", "10.244.0.3".parse().unwrap(), 9))
            .ok
    );

    // node1: a missing VXLAN FDB entry, a pod MTU above the overlay's, a pod port down,
    // hairpin off, STP turned on (ports listening while collected).
    let node0_mac = lab.vtep_macs()[0].clone();
    sh(
        &lab,
        "node1",
        &format!(
            "bridge fdb del {node0_mac} dev flannel.1 dst {}",
            node_ip(0)
        ),
    );
    sh(&lab, "web-2", "ip link set eth0 mtu 1500");
    let v3 = host_veth(&lab, "node1", "web-3");
    let v2 = host_veth(&lab, "node1", "web-2");
    sh(
        &lab,
        "node1",
        &format!("ip link set {v3} down; bridge link set dev {v2} hairpin off"),
    );

    // node2: a route whose gateway never answers ARP, a duplicated address, a server gone,
    // flannel's masquerade rules flushed.
    sh(
        &lab,
        "web-4",
        "ip route add 10.99.0.0/24 via 10.244.2.250; ping -c1 -W1 10.99.0.1 || true",
    );
    sh(&lab, "web-5", "ip addr add 10.244.2.2/32 dev eth0");
    sh(&lab, "node2", "iptables -w -t nat -F FLANNEL-POSTRTG");
    let web5 = lab.ns("web-5").unwrap().name().to_string();
    let pids = Command::new("ip")
        .args(["netns", "pids", &web5])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }

    // A UDP flow to the `web` Service from a pod on node0: node0's conntrack DNATs it to one
    // backend (the cluster.json edited below then says `web` has no ready endpoint left).
    let _ = lab.probe(&lab.service_probe("web-0", "web", Proto::Udp).unwrap());

    // Last: STP on node1's cni0 puts every port in `listening` for the forward delay.
    sh(
        &lab,
        "node1",
        &format!(
            "ip link set cni0 type bridge stp_state 1 forward_delay 3000
             ip link set {v2} down; ip link set {v2} up"
        ),
    );

    let dir = tempfile::tempdir().unwrap();
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect");
    drop(lab);

    // cluster.json: a kube-proxy ConfigMap whose clusterCIDR misses node2's pods, and the `web`
    // Service scaled to nothing (its conntrack entries become stale).
    let cj = dir.path().join("cluster.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&cj).unwrap()).unwrap();
    c["items"].as_array_mut().unwrap().push(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
        "data": {"config.conf": "mode: iptables\nclusterCIDR: 10.244.0.0/23\n"}
    }));
    for item in c["items"].as_array_mut().unwrap() {
        if item["kind"] == "EndpointSlice"
            && item["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
        {
            item["endpoints"] = json!([]);
        }
    }
    std::fs::write(&cj, c.to_string()).unwrap();

    let out = Command::new(NETRAY)
        .args([
            "scan",
            "--bundle",
            dir.path().to_str().unwrap(),
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("forwarding-disabled-iface", "node0"),
        ("blackhole-route", "node0"),
        ("ip-rule-diverts", "node0"),
        ("mixed-iptables-backends", "node0"),
        ("iptables-reject-rule", "node0"),
        ("iptables-drop-rule", "node0"),
        ("missing-vxlan-fdb", "node1"),
        ("pod-mtu-exceeds-overlay", "node1"),
        ("interface-down", "node1"),
        ("hairpin-disabled", "node1"),
        ("bridge-port-blocked", "node1"),
        ("neighbor-unreachable", "node2"),
        ("duplicate-address", "node2"),
        ("port-not-listening", "node2"),
        ("missing-snat", "node2"),
        ("stale-conntrack-entry", "node0"),
        ("no-endpoints", "-"),
        ("cluster-cidr-mismatch", "-"),
    ];
    let missing: Vec<_> = expected
        .iter()
        .filter(|(c, n)| !found.iter().any(|(fc, fnode)| fc == c && fnode == n))
        .collect();
    assert!(
        missing.is_empty(),
        "missing findings {missing:?}; found {found:#?}"
    );
}
