//! The field cases, end to end against the real kernel: a lab is built with a fault, the
//! failure is confirmed with real probes, `netray collect` runs inside every node, and
//! `netray scan` and `netray diagnose` over the collected bundle must name the right code on
//! the right node. The healthy lab must be clean.

use std::path::Path;
use std::process::Command;

use netray_lab::spec::{ClusterSpec, EXTERNAL_IP, WEB_LB_HEALTH_PORT, WEB_LB_IP, node_ip};
use netray_lab::{Agent, Fault, Lab, Probe, Proto};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

/// Whether the lab test can run (skips without root, fails under `CI=true`).
fn can_run(test: &str) -> bool {
    netray_lab::lab_tests_can_run(test)
}

/// The standard 3-node lab (2 `web` pods per node) without the deliberately empty Service.
fn spec() -> ClusterSpec {
    let mut s = ClusterSpec::standard(3, 2);
    s.services.retain(|svc| svc.name != "empty");
    s
}

fn lab(faults: &[&str], keep_empty_service: bool) -> Lab {
    let spec = if keep_empty_service {
        ClusterSpec::standard(3, 2)
    } else {
        spec()
    };
    let agent = Agent::subcommand(NETRAY, &["lab", "agent"]);
    let mut lab = Lab::up(&spec, &agent).expect("lab up");
    for f in faults {
        lab.apply(&f.parse::<Fault>().expect("fault name"))
            .expect("apply fault");
    }
    lab
}

struct Run {
    code: i32,
    json: Value,
    stderr: String,
}

fn netray(args: &[&str]) -> Run {
    let out = Command::new(NETRAY)
        .args(args)
        .output()
        .expect("run netray");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "netray {args:?} did not print JSON ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        }),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn bundle(lab: &Lab) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect bundle");
    dir
}

fn scan(dir: &Path) -> Run {
    netray(&["scan", "--bundle", dir.to_str().unwrap(), "-o", "json"])
}

fn diagnose(dir: &Path, from: &str, to: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "diagnose",
        "--bundle",
        dir.to_str().unwrap(),
        "--from",
        from,
        "--to",
        to,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    netray(&args)
}

/// (code, node) of every finding or cause.
fn codes(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["code"].as_str().unwrap_or("").to_string(),
                        f["node"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn assert_finding(scan: &Run, code: &str, node: &str) {
    let found = codes(&scan.json["findings"]);
    assert!(
        found.iter().any(|(c, n)| c == code && n == node),
        "scan should report {code} on {node}; got {found:?}"
    );
    assert_eq!(scan.code, 1, "scan exit code with findings");
}

fn assert_cause(d: &Run, verdict: &str, code: &str, node: &str) {
    let causes = codes(&d.json["causes"]);
    assert_eq!(
        d.json["verdict"], verdict,
        "verdict; causes {causes:?}; summary {}; stderr {}",
        d.json["summary"], d.stderr
    );
    assert!(
        causes.iter().any(|(c, n)| c == code && n == node),
        "diagnose should name {code} on {node}; got {causes:?}: {}",
        serde_json::to_string_pretty(&d.json["causes"]).unwrap()
    );
    assert_eq!(d.code, 1, "exit code of a failing diagnosis");
    // Every cause quotes evidence and says how to fix it.
    for c in d.json["causes"].as_array().unwrap() {
        assert!(!c["evidence"].as_array().unwrap().is_empty(), "{c}");
        assert!(!c["fix"].as_str().unwrap().is_empty(), "{c}");
    }
}

/// The first cause quotes state containing `needle`.
fn assert_evidence(d: &Run, needle: &str) {
    let ev = d.json["causes"][0]["evidence"].to_string();
    assert!(
        ev.contains(needle),
        "evidence should quote `{needle}`: {ev}"
    );
}

#[test]
fn healthy_lab_is_clean_and_reachable() {
    if !can_run("healthy_lab_is_clean_and_reachable") {
        return;
    }
    let lab = lab(&[], false);
    assert!(
        lab.probe(&lab.service_probe("web-0", "web", Proto::Tcp).unwrap())
            .ok
    );
    let dir = bundle(&lab);
    let s = scan(dir.path());
    let serious: Vec<_> = s.json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .collect();
    assert!(serious.is_empty(), "healthy lab has findings: {serious:#?}");
    assert_eq!(s.code, 0);
    for (from, to) in [
        ("pod/default/web-0", "svc/default/web:80"),
        ("pod/default/web-0", "svc/default/web:53/udp"),
        ("pod/default/web-0", "pod/default/web-5:8080"),
        ("node/node1", "svc/default/web:80"),
    ] {
        let d = diagnose(dir.path(), from, to, &[]);
        assert_eq!(
            d.json["verdict"],
            "reachable",
            "{from} → {to}: {}",
            serde_json::to_string_pretty(&d.json["causes"]).unwrap()
        );
        assert_eq!(d.code, 0);
    }
}

#[test]
fn seed_003_forward_policy_drop() {
    if !can_run("seed_003_forward_policy_drop") {
        return;
    }
    let lab = lab(&["forward-drop:node1"], false);
    assert!(
        !lab.probe(&lab.pod_probe("web-0", "web-2", Proto::Tcp).unwrap())
            .ok
    );
    let dir = bundle(&lab);
    assert_finding(&scan(dir.path()), "forward-policy-drop", "node1");
    let d = diagnose(dir.path(), "node/node0", "svc/default/web:80", &[]);
    assert_cause(&d, "partial", "forward-policy-drop", "node1");
    assert_evidence(&d, ":FORWARD DROP");
}

#[test]
fn seed_002_stale_vxlan_neighbour() {
    if !can_run("seed_002_stale_vxlan_neighbour") {
        return;
    }
    let lab = lab(&["stale-vtep:node0:node2"], false);
    assert!(
        !lab.probe(&lab.pod_probe("web-0", "web-4", Proto::Udp).unwrap())
            .ok
    );
    let dir = bundle(&lab);
    let s = scan(dir.path());
    assert_finding(&s, "stale-vxlan-neighbor", "node2");
    assert_finding(&s, "stale-vxlan-fdb", "node2");
    let d = diagnose(
        dir.path(),
        "pod/default/web-0",
        "svc/default/web:53/udp",
        &[],
    );
    assert_cause(&d, "partial", "stale-vxlan-neighbor", "node2");
    assert_evidence(&d, "10.244.0.0 dev flannel.1 lladdr");
}

#[test]
fn seed_001_ip_forward_off() {
    if !can_run("seed_001_ip_forward_off") {
        return;
    }
    let lab = lab(&["ip-forward-off:node1"], false);
    let dir = bundle(&lab);
    assert_finding(&scan(dir.path()), "ip-forward-disabled", "node1");
    let d = diagnose(
        dir.path(),
        "pod/default/web-0",
        "pod/default/web-2:8080",
        &[],
    );
    assert_cause(&d, "unreachable", "ip-forward-disabled", "node1");
    assert_evidence(&d, "net.ipv4.ip_forward = 0");
}

#[test]
fn seed_001_rp_filter_asymmetric() {
    if !can_run("seed_001_rp_filter_asymmetric") {
        return;
    }
    let lab = lab(&["rp-filter-asymmetric:node1"], false);
    assert!(
        !lab.probe(&Probe::tcp(
            "ext",
            node_ip(1),
            netray_lab::spec::WEB_NODE_PORTS.0
        ))
        .ok
    );
    let dir = bundle(&lab);
    assert_finding(&scan(dir.path()), "rp-filter-strict-asymmetric", "node1");
    let to = format!("{}:{}", node_ip(1), netray_lab::spec::WEB_NODE_PORTS.0);
    let d = diagnose(dir.path(), &format!("external/{EXTERNAL_IP}"), &to, &[]);
    assert_cause(&d, "unreachable", "rp-filter-drop", "node1");
    assert_evidence(&d, "rp_filter");
}

#[test]
fn seed_001_missing_route_and_default_route() {
    if !can_run("seed_001_missing_route_and_default_route") {
        return;
    }
    let lab = lab(
        &["missing-route:node0:node1", "pod-no-default-route:web-4"],
        false,
    );
    let dir = bundle(&lab);
    let s = scan(dir.path());
    assert_finding(&s, "no-route", "node0");
    assert_finding(&s, "pod-no-default-route", "node2");
    let d = diagnose(
        dir.path(),
        "pod/default/web-0",
        "pod/default/web-2:8080",
        &[],
    );
    assert_cause(&d, "unreachable", "no-route", "node0");
    let d = diagnose(dir.path(), "pod/default/web-4", "svc/default/web:80", &[]);
    assert_cause(&d, "unreachable", "pod-no-default-route", "node2");
}

#[test]
fn network_policy_drop() {
    if !can_run("network_policy_drop") {
        return;
    }
    let lab = lab(&["policy-drop:web-2"], false);
    let dir = bundle(&lab);
    let d = diagnose(
        dir.path(),
        "pod/default/web-0",
        "pod/default/web-2:8080",
        &[],
    );
    assert_cause(&d, "unreachable", "network-policy-drop", "node1");
    assert_evidence(&d, "KUBE-POD-FW");
}

#[test]
fn overlay_mtu_blackhole() {
    if !can_run("overlay_mtu_blackhole") {
        return;
    }
    let lab = lab(&["overlay-mtu"], false);
    let dir = bundle(&lab);
    assert_finding(&scan(dir.path()), "mtu-blackhole", "node0");
    let d = diagnose(
        dir.path(),
        "pod/default/web-0",
        "pod/default/web-2",
        &["--proto", "icmp", "--size", "1420"],
    );
    assert_cause(&d, "unreachable", "mtu-blackhole", "node0");
    assert_evidence(&d, "mtu 1400");
}

#[test]
fn seed_000_bridge_nf_masquerade() {
    if !can_run("seed_000_bridge_nf_masquerade") {
        return;
    }
    let lab = lab(&["bridge-nf-masq:node0"], false);
    let dir = bundle(&lab);
    assert_finding(&scan(dir.path()), "bridge-nf-snat-conflict", "node0");
    let d = diagnose(dir.path(), "node/node0", "svc/default/vm:80", &[]);
    assert_cause(&d, "unreachable", "bridge-nf-snat-conflict", "node0");
    assert_evidence(&d, "bridge-nf-call-iptables = 1");
}

#[test]
fn seed_004_lb_ip_in_local_table() {
    if !can_run("seed_004_lb_ip_in_local_table") {
        return;
    }
    let lab = lab(&["local-service-ip:node0"], false);
    let dir = bundle(&lab);
    assert_finding(&scan(dir.path()), "lb-ip-in-local-table", "node0");
    let d = diagnose(
        dir.path(),
        &format!("external/{WEB_LB_IP}"),
        &format!("{}:{WEB_LB_HEALTH_PORT}", node_ip(0)),
        &[],
    );
    assert_cause(&d, "unreachable", "martian-source", "node0");
    assert_evidence(&d, "table local");
}

#[test]
fn service_without_endpoints_rejects() {
    if !can_run("service_without_endpoints_rejects") {
        return;
    }
    let lab = lab(&[], true);
    let dir = bundle(&lab);
    let s = scan(dir.path());
    assert!(
        codes(&s.json["findings"])
            .iter()
            .any(|(c, _)| c == "no-endpoints"),
        "{:?}",
        codes(&s.json["findings"])
    );
    let d = diagnose(dir.path(), "pod/default/web-0", "svc/default/empty:80", &[]);
    assert_cause(&d, "unreachable", "no-endpoints", "node0");
    assert_evidence(&d, "has no endpoints");
}

#[test]
fn live_mode_collects_the_host_it_runs_on() {
    if !can_run("live_mode_collects_the_host_it_runs_on") {
        return;
    }
    let lab = lab(&["policy-drop:web-1"], false);
    // Same node: web-0 → web-1 is dropped by the policy, web-0 → web-0's own node host works.
    assert!(
        !lab.probe(&lab.pod_probe("web-0", "web-1", Proto::Tcp).unwrap())
            .ok
    );
    let node0 = lab.ns("node0").unwrap().name().to_string();
    let run = |to: &str| -> Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &node0, NETRAY, "diagnose", "--live"])
            .args(["--from", "10.244.0.2", "--to", to, "-o", "json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let d = run("10.244.0.3:8080");
    assert_eq!(d["verdict"], "unreachable", "{d:#}");
    assert_eq!(d["causes"][0]["code"], "network-policy-drop", "{d:#}");
    // node0's host has no server on port 22: refused for real, and netray says why.
    assert!(
        !lab.probe(&Probe::tcp("web-0", "10.244.0.1".parse().unwrap(), 22))
            .ok
    );
    let d = run("10.244.0.1:22");
    assert_eq!(d["verdict"], "unreachable", "{d:#}");
    assert_eq!(d["causes"][0]["code"], "port-not-listening", "{d:#}");
}

#[test]
fn unmodelled_match_is_uncertain_and_named() {
    if !can_run("unmodelled_match_is_uncertain_and_named") {
        return;
    }
    let lab = lab(&[], false);
    // `-m recent` is not modelled: whether this DROP matches depends on the recent list.
    lab.sh(
        "node1",
        "iptables -w -I FORWARD 1 -d 10.244.1.2 -p tcp --dport 8080 \
         -m recent --rcheck --name blocked -j DROP",
    )
    .unwrap();
    // The kernel's list is empty: the connection works for real.
    assert!(
        lab.probe(&lab.pod_probe("web-0", "web-2", Proto::Tcp).unwrap())
            .ok
    );
    let dir = bundle(&lab);
    let d = diagnose(
        dir.path(),
        "pod/default/web-0",
        "pod/default/web-2:8080",
        &[],
    );
    assert_eq!(d.json["verdict"], "uncertain", "{:#}", d.json["causes"]);
    assert_eq!(d.code, 1);
    let c = &d.json["causes"][0];
    assert_eq!(c["code"], "uncertain-rule", "{c:#}");
    assert_eq!(c["node"], "node1");
    let ev = c["evidence"].to_string();
    assert!(ev.contains("recent") && ev.contains("FORWARD"), "{ev}");
    // Both outcomes are explored: one branch delivers, one is dropped by that rule.
    let disp: Vec<&str> = d.json["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["disposition"].as_str().unwrap())
        .collect();
    assert!(
        disp.contains(&"delivered") && disp.contains(&"dropped"),
        "{disp:?}"
    );
}

/// A UDP client that keeps its source port (as DNS resolvers may) after its backend pod was
/// deleted: the kernel follows node0's old conntrack entry to the vanished address, while a new
/// source port is balanced over the remaining endpoints. `diagnose --sport` must walk the
/// collected entry and name it; without `--sport` the Service is reachable.
#[test]
fn stale_udp_conntrack_entry_after_pod_deletion() {
    if !can_run("stale_udp_conntrack_entry_after_pod_deletion") {
        return;
    }
    let mut lab = lab(&[], false);
    let svc = lab.service_probe("web-0", "web", Proto::Udp).unwrap();
    // A source port whose request node0 balances to some pod other than the client itself.
    let (sport, backend) = (5300..5340)
        .find_map(|p| {
            let r = lab.probe(&svc.clone().from_port(p));
            let by = r.answered_by.filter(|b| b != "web-0")?;
            Some((p, by))
        })
        .expect("some source port reaches another pod");
    lab.apply(&Fault::PodGone {
        pod: backend.clone(),
    })
    .expect("delete the backend pod");
    // The kernel: the old port still goes to the deleted pod, new ports work.
    let r = lab.probe(&svc.clone().from_port(sport));
    assert!(
        !r.ok,
        "source port {sport} should follow the stale entry: {r:?}"
    );
    let s = lab.spread(&svc, 6);
    assert_eq!(s.failed, 0, "new source ports avoid the deleted pod: {s:?}");
    // Refresh the entry right before collecting (UDP entries live 30 s).
    assert!(!lab.probe(&svc.clone().from_port(sport)).ok);
    let dir = bundle(&lab);
    drop(lab);
    // scripts/capture-examples.sh keeps this capture as examples/005-stale-conntrack.
    if let Some(keep) = std::env::var_os("NETRAY_CAPTURE_EXAMPLE") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep.join("nodes")).expect("example dir");
        for f in [
            "cluster.json",
            "nodes/node0.json",
            "nodes/node1.json",
            "nodes/node2.json",
        ] {
            std::fs::copy(dir.path().join(f), keep.join(f)).expect("copy capture");
        }
    }

    let port = sport.to_string();
    let d = diagnose(
        dir.path(),
        "pod/default/web-0",
        "svc/default/web:53/udp",
        &["--sport", &port],
    );
    assert_cause(&d, "unreachable", "stale-conntrack-entry", "node0");
    assert_evidence(&d, &format!("sport={sport} dport=53"));
    let d = diagnose(
        dir.path(),
        "pod/default/web-0",
        "svc/default/web:53/udp",
        &[],
    );
    assert_eq!(
        d.json["verdict"], "reachable",
        "a new source port: {}",
        d.json["summary"]
    );
    // ... but the answer points at the client's stale entry and how to walk it.
    let notes = d.json["notes"].to_string();
    assert!(
        notes.contains(&format!("--sport {sport}")),
        "notes: {notes}"
    );
    let s = scan(dir.path());
    assert_finding(&s, "stale-conntrack-entry", "node0");
}

/// Issue 10, item 1: with forwarding off on a node, a pod calling a ClusterIP whose chosen
/// endpoint sits on the same node's bridge is dropped too (br_netfilter re-routes the DNATed
/// frame and gets the `ip_error` route), so the Service is fully broken from there — while
/// pod-to-pod traffic on the bridge still works.
#[test]
fn bridged_dnat_with_forwarding_off() {
    if !can_run("bridged_dnat_with_forwarding_off") {
        return;
    }
    let lab = lab(&["ip-forward-off:node0"], false);
    let same_bridge = lab.probe(&lab.pod_probe("web-0", "web-1", Proto::Tcp).unwrap());
    assert!(
        same_bridge.ok,
        "pod to pod on one bridge needs no forwarding"
    );
    let spread = lab.spread(&lab.service_probe("web-0", "web", Proto::Tcp).unwrap(), 12);
    assert!(
        spread.answered.is_empty(),
        "the kernel answered through the Service: {:?}",
        spread.answered
    );
    let dir = bundle(&lab);
    let d = diagnose(dir.path(), "pod/default/web-0", "svc/default/web:80", &[]);
    assert_cause(&d, "unreachable", "ip-forward-disabled", "node0");
    for e in d.json["endpoints"].as_array().unwrap() {
        assert_eq!(e["reachable"], false, "{e}");
    }
    let d = diagnose(
        dir.path(),
        "pod/default/web-0",
        "pod/default/web-1:8080",
        &[],
    );
    assert_eq!(d.json["verdict"], "reachable", "{}", d.json["summary"]);
}
