//! Dual-stack Kubernetes, checked against the kernel (issue 11). A two-node lab
//! (`netray_lab::dualstack`): pods and Services with IPv4 and IPv6 addresses, kube-proxy's
//! rules in both families (NAT66 in ip6tables), IPv6 pod networks joined by flannel's IPv6
//! VXLAN device `flannel-v6.1`. Per case the kernel answers with `nc -4|-6 -z -w 2` and
//! `ping -6 -c1 -W1` from `client-0` on node0, and where the request was lost from the
//! forwarding and receive counters of each namespace on the path; netray answers with
//! `netray trace` over the bundle collected (`netray collect` in every node) right after,
//! naming flows as a user would: `--to svc/default/web-remote:80 --family 6`,
//! `--to pod/default/web-1:8080 --family 6`. Verdict, drop node and cause must agree, and the
//! IPv4 flows of the same dual-stack Services must keep working under every IPv6 fault.
//!
//! Cases: healthy; `net.ipv6.conf.all.forwarding=0` on node1; ip6tables FORWARD policy DROP
//! on node1 (flannel's accept rules gone); node0's route to node1's IPv6 pod CIDR deleted;
//! node1's `flannel-v6.1` MAC changed with node0 keeping the stale neighbour/FDB entries.
//!
//! Lab safety: everything lives in `nrl-`-prefixed namespaces created here and deleted on drop
//! (also on panic); probes are bounded in time (`timeout 5`, `-w 2`, `-W1`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use netray_lab::dualstack::{
    DS_POD_PORT, DS_SERVICE_PORT, DsFamily, DsFault, DualStackLab, DualStackSpec, V6Overlay,
    ds_node_v6,
};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const CLIENT: &str = "client-0";

/// One flow of the matrix: from `client-0` to a Service or a pod, in one family.
#[derive(Debug, Clone)]
struct FlowCase {
    label: String,
    family: DsFamily,
    /// The address the kernel probe targets and its port (`None`: ping).
    dst: IpAddr,
    port: Option<u16>,
    /// ICMP payload of a `ping -M do -s SIZE` (`None`: an ordinary ping).
    payload: Option<u32>,
    /// The pod that answers.
    server: String,
    /// `--to` for netray.
    to: String,
}

fn flows(lab: &DualStackLab) -> Vec<FlowCase> {
    let spec = lab.spec();
    let mut out = Vec::new();
    for fam in [DsFamily::V6, DsFamily::V4] {
        let n = match fam {
            DsFamily::V4 => 4,
            DsFamily::V6 => 6,
        };
        for svc in ["web-local", "web-remote"] {
            let s = spec.service(svc).expect("service");
            out.push(FlowCase {
                label: format!("svc/{svc} v{n}"),
                family: fam,
                dst: s.ip(fam),
                port: Some(DS_SERVICE_PORT),
                payload: None,
                server: spec.endpoints(s)[0].name.clone(),
                to: format!("svc/default/{svc}:{DS_SERVICE_PORT}"),
            });
        }
    }
    let web1 = spec.pod("web-1").expect("web-1");
    out.push(FlowCase {
        label: "pod/web-1 tcp v6".into(),
        family: DsFamily::V6,
        dst: web1.ip(DsFamily::V6),
        port: Some(DS_POD_PORT),
        payload: None,
        server: "web-1".into(),
        to: format!("pod/default/web-1:{DS_POD_PORT}"),
    });
    out.push(FlowCase {
        label: "pod/web-1 ping v6".into(),
        family: DsFamily::V6,
        dst: web1.ip(DsFamily::V6),
        port: None,
        payload: None,
        server: "web-1".into(),
        to: "pod/default/web-1".into(),
    });
    // 1300 bytes of payload: 1348 on the wire, within the pods' 1430; 1418 once encapsulated.
    out.push(FlowCase {
        label: "pod/web-1 ping1300 v6".into(),
        family: DsFamily::V6,
        dst: web1.ip(DsFamily::V6),
        port: None,
        payload: Some(1300),
        server: "web-1".into(),
        to: "pod/default/web-1".into(),
    });
    out
}

/// The kernel probe of a flow.
fn probe(lab: &DualStackLab, f: &FlowCase) -> bool {
    match (f.port, f.payload) {
        (Some(p), _) => lab.tcp(CLIENT, f.dst, p),
        (None, Some(s)) => lab.ping_size(CLIENT, f.dst, s),
        (None, None) => lab.ping(CLIENT, f.dst),
    }
}

/// Namespaces a request crosses, in order: the client, its node, the server's node (when
/// another), the server.
fn path(lab: &DualStackLab, f: &FlowCase) -> Vec<String> {
    let spec = lab.spec();
    let a = spec.pod(CLIENT).expect("client").node;
    let b = spec.pod(&f.server).expect("server").node;
    let mut p = vec![CLIENT.to_string(), DualStackSpec::node_name(a)];
    if b != a {
        p.push(DualStackSpec::node_name(b));
    }
    p.push(f.server.clone());
    p
}

/// What the kernel did.
#[derive(Debug)]
struct Kernel {
    ok: bool,
    /// Where the request was lost: the first node on the path that did not forward it,
    /// `reply` when it reached the server, `None` when the probe worked.
    lost_at: Option<String>,
}

fn delta(a: &BTreeMap<String, i64>, b: &BTreeMap<String, i64>, k: &str) -> i64 {
    b.get(k).copied().unwrap_or(0) - a.get(k).copied().unwrap_or(0)
}

fn kernel(lab: &mut DualStackLab, f: &FlowCase) -> Kernel {
    let members = path(lab, f);
    let last = members.len() - 1;
    let server = lab.spec().pod(&f.server).expect("server").ip(f.family);
    let nodes: Vec<String> = members[1..last].to_vec();
    let vxlan = lab.spec().v6_overlay == V6Overlay::Vxlan && f.family == DsFamily::V6;
    // Per node: packets that arrived for the server (after the first node, where the
    // destination is already the endpoint; over VXLAN the encapsulated ones from the previous
    // node count too) and packets that left towards it.
    let count = |lab: &mut DualStackLab| -> Vec<(u64, u64)> {
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let arrived = if i == 0 {
                    0
                } else {
                    let prev = DualStackSpec::node_index(&nodes[i - 1]).expect("node");
                    let from = vxlan.then(|| IpAddr::V6(ds_node_v6(prev)));
                    lab.arrived(n, server, from).expect("count")
                };
                (arrived, lab.sent_to(n, server).expect("count"))
            })
            .collect()
    };
    let before = count(lab);
    let srv0 = lab.counters(&f.server).expect("counters");
    // Up to two tries: a fresh neighbour entry can cost the first one its time.
    let ok = probe(lab, f) || probe(lab, f);
    let after = count(lab);
    let srv1 = lab.counters(&f.server).expect("counters");
    let received = match (f.family, f.port) {
        (_, Some(_)) => "TcpInSegs",
        (DsFamily::V6, None) => "Icmp6InEchos",
        (DsFamily::V4, None) => "IcmpInEchos",
    };
    let lost_at = if ok {
        None
    } else if delta(&srv0, &srv1, received) > 0 {
        Some("reply".to_string())
    } else {
        // The first node the request did not reach (lost on the underlay between two nodes)
        // or did not leave (lost in that node); past them all, the server itself.
        Some(
            (0..nodes.len())
                .find_map(|i| {
                    if i > 0 && after[i].0 == before[i].0 {
                        Some(UNDERLAY.to_string())
                    } else if after[i].1 == before[i].1 {
                        Some(nodes[i].clone())
                    } else {
                        None
                    }
                })
                .unwrap_or_else(|| f.server.clone()),
        )
    };
    Kernel { ok, lost_at }
}

/// Where a request is lost between two nodes (the lab's switch; netray sees it as the
/// switch namespace, found behind a node's uplink).
const UNDERLAY: &str = "underlay";

/// netray's answer for one flow.
#[derive(Debug)]
struct Netray {
    ok: bool,
    lost_at: Option<String>,
    disposition: Option<String>,
    cause: Option<String>,
    /// The forward leg DNATs to the endpoint through a new conntrack entry (`DST_NAT`) and the
    /// reply is de-DNATed: NAT66 through conntrack, as IPv4 NAT.
    nat_through_conntrack: bool,
}

fn run_netray(args: &[&str]) -> Value {
    let out = Command::new(NETRAY)
        .args(args)
        .output()
        .expect("run netray");
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "netray {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "netray {}: not JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn netray(bundle: &Path, f: &FlowCase) -> Netray {
    let fam = match f.family {
        DsFamily::V4 => "4",
        DsFamily::V6 => "6",
    };
    // ping's payload + 8 bytes of ICMPv6 header + 40 of IPv6 header. The TCP probes carry a
    // few bytes each way: walked at the handshake's size (SYN: 60 / 80 bytes), not with the
    // full-size data segments netray adds otherwise (those are checked in tcp_data_lab.rs).
    let size = match (f.payload, f.port) {
        (Some(p), _) => Some((p + 48).to_string()),
        (None, Some(_)) if f.family == DsFamily::V6 => Some("80".to_string()),
        (None, Some(_)) => Some("60".to_string()),
        (None, None) => None,
    };
    let from = format!("pod/default/{CLIENT}");
    let mut args = vec![
        "trace",
        "--bundle",
        bundle.to_str().expect("utf-8 path"),
        "--from",
        &from,
        "--to",
        &f.to,
        "--family",
        fam,
        "-o",
        "json",
    ];
    if let Some(s) = &size {
        args.extend(["--size", s.as_str()]);
    }
    let t = run_netray(&args);
    // The flow netray walked is of the family asked for, to the address the kernel probed.
    let dst = t["flow"]["packet"]["dst"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        dst.parse::<IpAddr>().ok(),
        Some(f.dst),
        "{}: netray walked {dst}",
        f.label
    );
    let ok = t["reachable"].as_bool().unwrap_or(false);
    let failing = t["branches"].as_array().into_iter().flatten().find(|b| {
        !matches!(
            b["disposition"].as_str(),
            Some("delivered" | "accepted-by-host")
        )
    });
    let s = |v: &Value| v.as_str().map(str::to_string);
    let lost_at = failing.and_then(|b| {
        if b["ended_on"] == "reply" {
            return Some("reply".to_string());
        }
        let h = b["hops"].as_array().and_then(|h| h.last())?;
        // A pod's namespace is named by its pod, a host namespace by its node, the switch
        // (collected behind a node's uplink) is the underlay.
        match h["pod"].as_str() {
            Some(p) => Some(p.rsplit('/').next().unwrap_or(p).to_string()),
            None if h["netns"] == "host" => s(&h["node"]),
            None if h["netns"].as_str().is_some_and(|n| n.ends_with("-sw")) => {
                Some(UNDERLAY.to_string())
            }
            None => s(&h["netns"]),
        }
    });
    let hops: Vec<&Value> = t["branches"]
        .as_array()
        .and_then(|b| b.first())
        .and_then(|b| b["hops"].as_array())
        .into_iter()
        .flatten()
        .collect();
    let step = |leg: &str, ty: &str, pred: &dyn Fn(&Value) -> bool| {
        hops.iter()
            .any(|h| h["leg"] == leg && h["step"]["type"] == ty && pred(&h["step"]))
    };
    let text = |v: &Value, k: &str, want: &str| v[k].as_str().is_some_and(|x| x.contains(want));
    let nat_through_conntrack = step("forward", "nat", &|s| {
        text(s, "kind", "dnat") && text(s, "after", &format!("{DS_POD_PORT}"))
    }) && step("forward", "conntrack", &|s| {
        s["state"] == "new" && text(s, "entry", "DST_NAT")
    }) && step("reply", "nat", &|s| text(s, "kind", "de-dnat"));
    Netray {
        ok,
        nat_through_conntrack,
        lost_at,
        disposition: failing.and_then(|b| s(&b["disposition"])),
        cause: failing.and_then(|b| s(&b["cause"])),
    }
}

struct Case {
    name: &'static str,
    faults: Vec<DsFault>,
    /// The scan finding the fault must raise: code, node, and a text its evidence or
    /// explanation holds.
    scan: Option<(&'static str, &'static str, &'static str)>,
    /// Flows (by label prefix) that fail, with the cause netray must name.
    failing: &'static [(&'static str, &'static str)],
}

fn check_case(
    lab: &mut DualStackLab,
    dir: &Path,
    c: &Case,
    table: &mut Vec<String>,
) -> Vec<String> {
    for f in &c.faults {
        lab.apply(f)
            .unwrap_or_else(|e| panic!("{}: apply {f:?}: {e}", c.name));
    }
    let matrix = flows(lab);
    let kernel: Vec<Kernel> = matrix.iter().map(|f| kernel(lab, f)).collect();
    lab.clear_counting().expect("remove counting rules");
    let bundle = dir.join(c.name);
    lab.collect_bundle(Path::new(NETRAY), &bundle)
        .unwrap_or_else(|e| panic!("{}: collect: {e}", c.name));
    let mut bad = check_scan(&bundle, c);
    if c.failing.iter().any(|(l, _)| *l == "svc/web-remote v6") {
        let worked: Vec<bool> = kernel.iter().map(|k| k.ok).collect();
        bad.extend(prove_fix(lab, &bundle, c, &matrix, &worked));
    }
    for f in &c.faults {
        if !matches!(f, DsFault::StaleV6Vtep { .. }) {
            lab.undo(f)
                .unwrap_or_else(|e| panic!("{}: undo {f:?}: {e}", c.name));
        }
    }
    for (f, k) in matrix.iter().zip(kernel) {
        let n = netray(&bundle, f);
        table.push(format!(
            "{:<22} {:<20} kernel {:<4} lost at {:<9} | netray {:<4} lost at {:<9} {} ({})",
            c.name,
            f.label,
            if k.ok { "ok" } else { "FAIL" },
            k.lost_at.as_deref().unwrap_or("-"),
            if n.ok { "ok" } else { "FAIL" },
            n.lost_at.as_deref().unwrap_or("-"),
            n.disposition.as_deref().unwrap_or("-"),
            n.cause.as_deref().unwrap_or("-"),
        ));
        let ctx = format!("{} / {}", c.name, f.label);
        let want_cause = c
            .failing
            .iter()
            .find(|(prefix, _)| f.label.starts_with(prefix))
            .map(|(_, cause)| *cause);
        // The lab itself must show the fault (else the case proves nothing).
        if k.ok == want_cause.is_some() {
            bad.push(format!(
                "{ctx}: the kernel says ok={} but the case expects {}",
                k.ok,
                if want_cause.is_some() {
                    "a failure"
                } else {
                    "success"
                }
            ));
        }
        if k.ok != n.ok {
            bad.push(format!("{ctx}: kernel ok={} netray ok={}", k.ok, n.ok));
            continue;
        }
        if k.ok && f.to.starts_with("svc/") && !n.nat_through_conntrack {
            bad.push(format!(
                "{ctx}: the working Service flow does not show DNAT through conntrack and the \
                 reply's de-DNAT"
            ));
        }
        if k.ok {
            continue;
        }
        if k.lost_at != n.lost_at {
            bad.push(format!(
                "{ctx}: the kernel lost it at {:?}, netray at {:?}",
                k.lost_at, n.lost_at
            ));
        }
        if let Some(want) = want_cause
            && n.cause.as_deref() != Some(want)
        {
            bad.push(format!("{ctx}: netray's cause {:?}, want {want}", n.cause));
        }
    }
    bad
}

/// netray's fix for the failing IPv6 Service flow, run in the lab: that flow must then work
/// in the kernel and no flow of the matrix that worked may fail (the fix is proven against the
/// kernel, not only the model).
fn prove_fix(
    lab: &DualStackLab,
    bundle: &Path,
    c: &Case,
    matrix: &[FlowCase],
    worked: &[bool],
) -> Vec<String> {
    let d = run_netray(&[
        "diagnose",
        "--bundle",
        bundle.to_str().expect("utf-8 path"),
        "--from",
        &format!("pod/default/{CLIENT}"),
        "--to",
        &format!("svc/default/web-remote:{DS_SERVICE_PORT}"),
        "--family",
        "6",
        "-o",
        "json",
    ]);
    let cmds: Vec<&Value> = d["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["fix_commands"].as_array().into_iter().flatten())
        .collect();
    if cmds.is_empty() {
        return vec![format!(
            "{}: diagnose proposes no fix command: {d:.1500}",
            c.name
        )];
    }
    let mut bad = Vec::new();
    for cmd in &cmds {
        let (Some(node), Some(run)) = (cmd["node"].as_str(), cmd["run"].as_str()) else {
            bad.push(format!("{}: malformed fix command {cmd}", c.name));
            continue;
        };
        if cmd["netns"] != "host" {
            bad.push(format!("{}: fix outside a host namespace: {cmd}", c.name));
            continue;
        }
        let ns = lab.ns(node).expect("fix node");
        if let Err(e) = ns.sh(run) {
            bad.push(format!("{}: fix `{run}` on {node} failed: {e}", c.name));
        }
    }
    for (f, before) in matrix.iter().zip(worked) {
        if !before && f.label != "svc/web-remote v6" {
            continue;
        }
        let ok = (0..2).any(|_| probe(lab, f));
        if !ok {
            bad.push(format!(
                "{}: after netray's fix ({}) {} still fails in the kernel",
                c.name,
                cmds.iter()
                    .filter_map(|c| c["run"].as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                f.label
            ));
        }
    }
    bad
}

/// The IPv6 scan codes: none may show up in the healthy lab.
const V6_CODES: &[&str] = &[
    "ipv6-forwarding-disabled",
    "ip6-forward-policy-drop",
    "ipv6-accept-ra-forwarding",
    "no-route",
    "stale-vxlan-neighbor",
    "stale-vxlan-fdb",
    "mtu-blackhole",
    "pod-mtu-exceeds-overlay",
    "service-family-no-endpoints",
    "bridge-nf-call-disabled",
];

/// `netray scan` over the case's bundle: the expected finding is there (code, node, text) and
/// no other IPv6 finding is.
fn check_scan(bundle: &Path, c: &Case) -> Vec<String> {
    let scan = run_netray(&[
        "scan",
        "--bundle",
        bundle.to_str().expect("utf-8 path"),
        "-o",
        "json",
    ]);
    let findings: Vec<&Value> = scan["findings"].as_array().into_iter().flatten().collect();
    let mut bad = Vec::new();
    for f in &findings {
        let code = f["code"].as_str().unwrap_or_default();
        if !V6_CODES.contains(&code) {
            continue;
        }
        let expected = c
            .scan
            .is_some_and(|(want, node, _)| want == code && f["node"] == node);
        // A stale VTEP also leaves a stale FDB entry: reported with the neighbour.
        let also_stale_fdb = code == "stale-vxlan-fdb" && c.name == "stale-v6-vtep";
        if !expected && !also_stale_fdb {
            bad.push(format!("{}: unexpected scan finding {f}", c.name));
        }
    }
    if let Some((code, node, text)) = c.scan {
        let hit = findings
            .iter()
            .any(|f| f["code"] == code && f["node"] == node && f.to_string().contains(text));
        if !hit {
            bad.push(format!(
                "{}: scan does not report {code} on {node} mentioning {text}: {}",
                c.name,
                findings
                    .iter()
                    .map(|f| format!("{}@{}", f["code"], f["node"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    bad
}

/// The IPv6 flows that cross from node0 to node1, all failing with `cause`.
fn v6_remote(cause: &'static str) -> &'static [(&'static str, &'static str)] {
    let v: Vec<(&'static str, &'static str)> = [
        "svc/web-remote v6",
        "pod/web-1 tcp v6",
        "pod/web-1 ping v6",
        "pod/web-1 ping1300 v6",
    ]
    .iter()
    .map(|l| (*l, cause))
    .collect();
    Box::leak(v.into_boxed_slice())
}

/// Build the lab, warm it up, check every case; the failures and the bundles' directory.
fn run_cases(overlay: V6Overlay, cases: &[Case]) -> (DualStackLab, Vec<String>, tempfile::TempDir) {
    let mut lab = DualStackLab::up(&DualStackSpec::standard(overlay)).expect("lab up");
    // Warm up neighbour discovery on every path before measuring.
    for f in &flows(&lab) {
        let ok = (0..5).any(|_| probe(&lab, f));
        assert!(ok, "the healthy dual-stack lab does not pass {}", f.label);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut table = Vec::new();
    let mut bad = Vec::new();
    for c in cases {
        bad.extend(check_case(&mut lab, dir.path(), c, &mut table));
    }
    eprintln!("{overlay:?}:\n{}", table.join("\n"));
    (lab, bad, dir)
}

/// IPv6 pod networks joined by plain routes (host-gw style) instead of VXLAN.
#[test]
fn dual_stack_plain_routes_match_the_kernel() {
    if !netray_lab::lab_tests_can_run("dual_stack_plain_routes_match_the_kernel") {
        return;
    }
    let t0 = Instant::now();
    let cases = [
        Case {
            name: "healthy",
            faults: vec![],
            scan: None,
            failing: &[],
        },
        Case {
            name: "missing-v6-route",
            faults: vec![DsFault::MissingV6Route { node: 0, peer: 1 }],
            scan: Some(("no-route", "node0", "fd00:10:244:1::/64")),
            failing: v6_remote("no-route"),
        },
        Case {
            name: "v6-forwarding-off",
            faults: vec![DsFault::V6ForwardingOff { node: 1 }],
            scan: Some((
                "ipv6-forwarding-disabled",
                "node1",
                "net.ipv6.conf.all.forwarding = 0",
            )),
            failing: v6_remote("ip-forward-disabled"),
        },
    ];
    let (lab, bad, _dir) = run_cases(V6Overlay::Routes, &cases);
    drop(lab);
    eprintln!(
        "dual-stack lab, plain routes: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        bad.is_empty(),
        "netray disagrees with the kernel:\n{}",
        bad.join("\n")
    );
}

#[test]
fn dual_stack_cluster_matches_the_kernel() {
    if !netray_lab::lab_tests_can_run("dual_stack_cluster_matches_the_kernel") {
        return;
    }
    let t0 = Instant::now();
    let with = v6_remote;
    let with_node0 = v6_remote;
    let cases = [
        Case {
            name: "healthy",
            faults: vec![],
            scan: None,
            failing: &[],
        },
        Case {
            name: "v6-forwarding-off",
            faults: vec![DsFault::V6ForwardingOff { node: 1 }],
            scan: Some((
                "ipv6-forwarding-disabled",
                "node1",
                "net.ipv6.conf.all.forwarding = 0",
            )),
            failing: with("ip-forward-disabled"),
        },
        Case {
            // The client's own node: everything it routes fails, but a Service backend on the
            // client's bridge is reached by bridged DNAT (br_netfilter), which IPv6 forwarding
            // does not gate.
            name: "v6-forwarding-off-node0",
            faults: vec![DsFault::V6ForwardingOff { node: 0 }],
            scan: Some((
                "ipv6-forwarding-disabled",
                "node0",
                "net.ipv6.conf.all.forwarding = 0",
            )),
            failing: with_node0("ip-forward-disabled"),
        },
        Case {
            name: "ip6tables-forward-drop",
            faults: vec![DsFault::Ip6ForwardDrop { node: 1 }],
            scan: Some(("ip6-forward-policy-drop", "node1", ":FORWARD DROP")),
            failing: with("forward-policy-drop"),
        },
        Case {
            name: "missing-v6-route",
            faults: vec![DsFault::MissingV6Route { node: 0, peer: 1 }],
            scan: Some(("no-route", "node0", "fd00:10:244:1::/64")),
            failing: with("no-route"),
        },
        Case {
            // The IPv6 reply of a Service backend on the client's own bridge skips conntrack:
            // it reaches the client from the pod's address, not the ClusterIP.
            name: "bridge-nf-v6-off",
            faults: vec![DsFault::BridgeNfV6Off { node: 0 }],
            scan: Some((
                "bridge-nf-call-disabled",
                "node0",
                "net.bridge.bridge-nf-call-ip6tables = 0",
            )),
            failing: &[("svc/web-local v6", "nat-reply-mismatch")],
        },
        Case {
            name: "underlay-mtu-1400",
            faults: vec![DsFault::UnderlayMtu { node: 1 }],
            scan: Some(("mtu-blackhole", "node1", "flannel-v6.1")),
            failing: &[("pod/web-1 ping1300 v6", "mtu-blackhole")],
        },
        Case {
            name: "accept-ra-2",
            faults: vec![DsFault::AcceptRa2 { node: 0 }],
            scan: Some((
                "ipv6-accept-ra-forwarding",
                "node0",
                "net.ipv6.conf.eth0.accept_ra = 2",
            )),
            failing: &[],
        },
        Case {
            name: "stale-v6-vtep",
            faults: vec![DsFault::StaleV6Vtep {
                node: 1,
                stale_on: 0,
            }],
            scan: Some(("stale-vxlan-neighbor", "node0", "flannel-v6.1")),
            failing: with("stale-vxlan-neighbor"),
        },
    ];
    let (lab, mut bad, dir) = run_cases(V6Overlay::Vxlan, &cases);

    // The collector keeps proxy NDP entries (`ip -6 neigh show proxy`, flag `proxy`) and
    // `force_forwarding`; the walk never takes a proxy entry for a neighbour.
    lab.ns("node0")
        .expect("node0")
        .sh("ip -6 neigh add proxy fd00:10:244::99 dev cni0")
        .expect("proxy entry");
    let proxy = dir.path().join("proxy-ndp");
    lab.collect_bundle(Path::new(NETRAY), &proxy)
        .expect("collect");
    let snap: Value = serde_json::from_str(
        &std::fs::read_to_string(proxy.join("nodes/node0.json")).expect("node0.json"),
    )
    .expect("snapshot");
    let host = snap["namespaces"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["role"] == "host"))
        .expect("host namespace");
    let has_proxy = host["neighbours"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| {
            n["dst"] == "fd00:10:244::99"
                && n["dev"] == "cni0"
                && n["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "proxy"))
        });
    if !has_proxy {
        bad.push(format!(
            "the proxy NDP entry was not collected: {}",
            host["neighbours"]
        ));
    }
    if host["sysctls"]["net.ipv6.conf.all.force_forwarding"].is_null() {
        bad.push("net.ipv6.conf.all.force_forwarding was not collected".into());
    }

    // A dual-stack Service named without a family: diagnose walks both families and reports
    // each (the stale VTEP breaks IPv6 only: one of two flows fails).
    let d = run_netray(&[
        "diagnose",
        "--bundle",
        dir.path().join("stale-v6-vtep").to_str().expect("utf-8"),
        "--from",
        &format!("pod/default/{CLIENT}"),
        "--to",
        "svc/default/web-remote:80",
        "-o",
        "json",
    ]);
    let text = d.to_string();
    for want in ["fd00:96::11", "10.96.0.11", "stale-vxlan-neighbor"] {
        if !text.contains(want) {
            bad.push(format!(
                "diagnose without --family does not mention {want}: {text:.2000}"
            ));
        }
    }
    // A dual-stack Service whose IPv6 EndpointSlice lost its endpoints (pods without IPv6
    // addresses, say): the IPv4 ones remain. Scan says which family of which Service.
    let edited = dir.path().join("v6-endpoints-gone");
    std::fs::create_dir_all(edited.join("nodes")).expect("dir");
    for f in ["nodes/node0.json", "nodes/node1.json", "cluster.json"] {
        std::fs::copy(dir.path().join("healthy").join(f), edited.join(f)).expect("copy");
    }
    let cj = edited.join("cluster.json");
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(&cj).expect("read")).expect("cluster.json");
    for item in c["items"].as_array_mut().expect("items") {
        if item["kind"] == "EndpointSlice" && item["metadata"]["name"] == "web-remote-v6" {
            item["endpoints"] = serde_json::json!([]);
        }
    }
    std::fs::write(&cj, c.to_string()).expect("write");
    bad.extend(check_scan(
        &edited,
        &Case {
            name: "v6-endpoints-gone",
            faults: vec![],
            scan: Some(("service-family-no-endpoints", "-", "fd00:96::11")),
            failing: &[],
        },
    ));
    eprintln!("dual-stack lab: {:.1} s", t0.elapsed().as_secs_f64());
    drop(lab);
    // scripts/capture-examples.sh keeps the ip6tables FORWARD DROP capture as
    // examples/006-dualstack-v6-forward-drop.
    if let Some(keep) = std::env::var_os("NETRAY_CAPTURE_EXAMPLE") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep.join("nodes")).expect("example dir");
        for f in ["cluster.json", "nodes/node0.json", "nodes/node1.json"] {
            std::fs::copy(
                dir.path().join("ip6tables-forward-drop").join(f),
                keep.join(f),
            )
            .expect("copy capture");
        }
    }
    // Keep the bundles for inspection (`NETRAY_DUALSTACK_KEEP=DIR`: one directory per case).
    if let Some(keep) = std::env::var_os("NETRAY_DUALSTACK_KEEP") {
        for c in &cases {
            let to = Path::new(&keep).join(c.name);
            std::fs::create_dir_all(to.join("nodes")).expect("keep dir");
            for f in ["cluster.json", "nodes/node0.json", "nodes/node1.json"] {
                std::fs::copy(dir.path().join(c.name).join(f), to.join(f)).expect("keep");
            }
        }
    }
    assert!(
        bad.is_empty(),
        "netray disagrees with the kernel:\n{}",
        bad.join("\n")
    );
}

/// Family selection on the checked-in dual-stack example (no root needed): a name resolves to
/// its address of the family asked for, an address fixes the family, contradictions and
/// ambiguous traces are errors that say what to do.
#[test]
fn family_selection_on_the_dual_stack_example() {
    let bundle = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/006-dualstack-v6-forward-drop"
    );
    let run = |args: &[&str]| {
        let out = Command::new(NETRAY)
            .args(args)
            .args(["--bundle", bundle, "--from", "pod/default/client-0"])
            .output()
            .expect("run netray");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dst = |stdout: &str| -> String {
        let v: Value = serde_json::from_str(stdout).expect("json");
        let p = &v["flow"]["packet"];
        format!(
            "{} > {}",
            p["src"].as_str().unwrap_or(""),
            p["dst"].as_str().unwrap_or("")
        )
    };
    // pod/NS/NAME and svc/NS/NAME per family; the source pod follows the destination's family.
    for (to, fam, want) in [
        (
            "pod/default/web-1:8080",
            "6",
            "fd00:10:244::10 > fd00:10:244:1::10",
        ),
        ("pod/default/web-1:8080", "4", "10.244.0.10 > 10.244.1.10"),
        (
            "svc/default/web-local:80",
            "6",
            "fd00:10:244::10 > fd00:96::10",
        ),
        ("svc/default/web-local:80", "4", "10.244.0.10 > 10.96.0.10"),
    ] {
        let (code, out, err) = run(&["trace", "--to", to, "--family", fam, "-o", "json"]);
        // Reachable or not (web-1 is not, over IPv6): a walk, not an error.
        assert!(matches!(code, Some(0 | 1)), "{to} --family {fam}: {err}");
        assert_eq!(dst(&out), want, "{to} --family {fam}");
    }
    // An address fixes the family of the names around it.
    let (code, out, err) = run(&["trace", "--to", "[fd00:96::10]:80", "-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(dst(&out), "fd00:10:244::10 > fd00:96::10");
    // A dual-stack Service without a family: trace asks for one, diagnose walks both.
    let (code, _, err) = run(&["trace", "--to", "svc/default/web-remote:80"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("dual-stack Service") && err.contains("--family 4|6"),
        "{err}"
    );
    let (code, out, err) = run(&[
        "diagnose",
        "--to",
        "svc/default/web-remote:80",
        "-o",
        "json",
    ]);
    assert_eq!(code, Some(1), "{err}");
    let d: Value = serde_json::from_str(&out).expect("json");
    let eps: Vec<(String, bool)> = d["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["endpoint"].as_str().unwrap_or("").to_string(),
                e["reachable"] == true,
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("10.244.1.10:8080".to_string(), true),
            ("[fd00:10:244:1::10]:8080".to_string(), false)
        ]
    );
    // Contradictions.
    let (code, _, err) = run(&["trace", "--to", "[fd00:96::11]:80", "--family", "4"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--to fd00:96::11 is an IPv6 address but --family 4 asks for IPv4"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "trace",
        "--to",
        "svc/default/web-remote:80",
        "--family",
        "5",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("is not an address family (4 or 6)"), "{err}");
}
