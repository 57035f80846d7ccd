//! Differential test of the datapath walk against the real kernel.
//!
//! For the healthy lab and each fault the lab offers: probe flows for real (TCP request /
//! response, UDP request / response, ICMP with DF and a size), collect every node with
//! `netray collect`, trace the same flows with netray's walk over the bundle, and compare
//! **per endpoint branch** (for Services: which backends answered for real vs which branches
//! netray delivers). Prints the table scenario × flow × real × netray; fails on any
//! disagreement. The `pod-gone` scenario checks the walk's use of the *collected* conntrack
//! table: UDP clients that keep their source port, some balanced to a pod that is then
//! deleted, are walked with their real ports. The TCP probes carry a few bytes each way, so
//! they are compared with netray's handshake: a branch where only a full-size data segment
//! fails (`data_segment`, established-then-stalls) counts as answered here; full-size data is
//! checked against the kernel in `tcp_data_lab.rs`. Needs root (skipped with a message otherwise,
//! failing under `CI=true`).
//! `NETRAY_DIFF_SCENARIOS=healthy,forward-drop:node1` restricts the scenarios.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use netray_datapath::{Flow, Options, RulesetEngine, Start, Trace, World};
use netray_lab::lab::{VM_CLUSTER_IP, VM_IP};
use netray_lab::spec::{
    ClusterSpec, EMPTY_CLUSTER_IP, EXTERNAL_IP, POD_TCP_PORT, POD_UDP_PORT, WEB_CLUSTER_IP,
    WEB_LB_HEALTH_PORT, WEB_LB_IP, WEB_NODE_PORTS, node_ip,
};
use netray_lab::{Agent, Fault, Lab, Probe};

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const SPREAD_TRIES: usize = 24;

fn can_run() -> bool {
    netray_lab::lab_tests_can_run("trace_differential")
}

/// A flow: how to probe it for real and how netray traces it.
struct Case {
    name: String,
    probe: Probe,
    flow: Flow,
    /// Probe repeatedly and compare per endpoint (Services).
    spread: bool,
    /// The flow is a real client's (fixed source port): walk it from the collected conntrack.
    collected_conntrack: bool,
}

/// The `pod-gone` scenario's pod, and how many fixed-port clients must have been balanced to
/// it before it goes (the others land elsewhere and keep working).
const GONE_POD: &str = "web-3";
const CLIENTS_ON_GONE_POD: usize = 3;

fn flow(
    src: Ipv4Addr,
    start: Start,
    dst: Ipv4Addr,
    proto: u8,
    dport: Option<u16>,
    size: Option<u32>,
) -> Flow {
    Flow {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        proto,
        sport: 40000,
        dport,
        size,
        start,
    }
}

fn pod_ip(spec: &ClusterSpec, pod: &str) -> Ipv4Addr {
    spec.pod(pod).expect("pod").ip
}

fn cases(spec: &ClusterSpec, scenario: &str, fixed_ports: &[u16]) -> Vec<Case> {
    if scenario.starts_with("pod-gone") {
        return fixed_port_cases(spec, fixed_ports);
    }
    let mut v = Vec::new();
    let mut pod_tcp = |from: &str, to: &str, src: Ipv4Addr| {
        let dst = pod_ip(spec, to);
        v.push(Case {
            name: format!("{from} -tcp-> {to}"),
            probe: Probe::tcp(from, dst, POD_TCP_PORT),
            flow: flow(src, Start::Auto, dst, 6, Some(POD_TCP_PORT), None),
            spread: false,
            collected_conntrack: false,
        });
    };
    pod_tcp("web-0", "web-2", pod_ip(spec, "web-0"));
    pod_tcp("web-2", "web-0", pod_ip(spec, "web-2"));
    pod_tcp("web-0", "web-1", pod_ip(spec, "web-0"));
    pod_tcp("node0", "web-3", node_ip(0));
    pod_tcp("web-1", "web-5", pod_ip(spec, "web-1"));
    let (w4, w1) = (pod_ip(spec, "web-4"), pod_ip(spec, "web-1"));
    v.push(Case {
        name: "web-4 -udp-> web-1".into(),
        probe: Probe::udp("web-4", w1, POD_UDP_PORT),
        flow: flow(w4, Start::Auto, w1, 17, Some(POD_UDP_PORT), None),
        spread: false,
        collected_conntrack: false,
    });
    let (w0, w2) = (pod_ip(spec, "web-0"), pod_ip(spec, "web-2"));
    v.push(Case {
        name: "web-0 -ping(1450)-> web-2".into(),
        probe: Probe::ping("web-0", w2, 1422),
        flow: flow(w0, Start::Auto, w2, 1, None, Some(1450)),
        spread: false,
        collected_conntrack: false,
    });
    v.push(Case {
        name: "web-0 -tcp-> svc web".into(),
        probe: Probe::tcp("web-0", WEB_CLUSTER_IP, 80),
        flow: flow(w0, Start::Auto, WEB_CLUSTER_IP, 6, Some(80), None),
        spread: true,
        collected_conntrack: false,
    });
    v.push(Case {
        name: "node0 -udp-> svc web".into(),
        probe: Probe::udp("node0", WEB_CLUSTER_IP, 53),
        flow: flow(node_ip(0), Start::Auto, WEB_CLUSTER_IP, 17, Some(53), None),
        spread: true,
        collected_conntrack: false,
    });
    v.push(Case {
        name: "ext -tcp-> node2:nodeport".into(),
        probe: Probe::tcp("ext", node_ip(2), WEB_NODE_PORTS.0),
        flow: flow(
            EXTERNAL_IP,
            Start::Node("node2".into()),
            node_ip(2),
            6,
            Some(WEB_NODE_PORTS.0),
            None,
        ),
        spread: true,
        collected_conntrack: false,
    });
    v.push(Case {
        name: "web-3 -tcp-> svc empty".into(),
        probe: Probe::tcp("web-3", EMPTY_CLUSTER_IP, 80),
        flow: flow(
            pod_ip(spec, "web-3"),
            Start::Auto,
            EMPTY_CLUSTER_IP,
            6,
            Some(80),
            None,
        ),
        spread: false,
        collected_conntrack: false,
    });
    if scenario.starts_with("bridge-nf-masq") {
        v.push(Case {
            name: "node0 -tcp-> svc vm".into(),
            probe: Probe::tcp("node0", VM_CLUSTER_IP, 80),
            flow: flow(node_ip(0), Start::Auto, VM_CLUSTER_IP, 6, Some(80), None),
            spread: false,
            collected_conntrack: false,
        });
        v.push(Case {
            name: "node0 -tcp-> vm-0".into(),
            probe: Probe::tcp("node0", VM_IP, 8080),
            flow: flow(node_ip(0), Start::Auto, VM_IP, 6, Some(8080), None),
            spread: false,
            collected_conntrack: false,
        });
    }
    if scenario.starts_with("local-service-ip") {
        for n in [0usize, 1] {
            v.push(Case {
                name: format!("gw(LB IP) -tcp-> node{n}:health"),
                probe: Probe::tcp("gw", node_ip(n), WEB_LB_HEALTH_PORT).from_source(WEB_LB_IP),
                flow: flow(
                    WEB_LB_IP,
                    Start::Node(format!("node{n}")),
                    node_ip(n),
                    6,
                    Some(WEB_LB_HEALTH_PORT),
                    None,
                ),
                spread: false,
                collected_conntrack: false,
            });
        }
    }
    v
}

/// UDP clients in web-0 that keep their source port: each was balanced to some backend before
/// [`GONE_POD`] was deleted; the kernel keeps following those entries.
fn fixed_port_cases(spec: &ClusterSpec, ports: &[u16]) -> Vec<Case> {
    let w0 = pod_ip(spec, "web-0");
    ports
        .iter()
        .map(|&p| {
            let mut f = flow(w0, Start::Auto, WEB_CLUSTER_IP, 17, Some(53), None);
            f.sport = p;
            Case {
                name: format!("web-0:{p} -udp-> svc web"),
                probe: Probe::udp("web-0", WEB_CLUSTER_IP, 53).from_port(p),
                flow: f,
                spread: false,
                collected_conntrack: true,
            }
        })
        .collect()
}

/// Endpoint IP → pod name (or the address itself).
fn pod_of(spec: &ClusterSpec, endpoint: &str) -> String {
    let ip = endpoint.split(':').next().unwrap_or(endpoint);
    spec.pods
        .iter()
        .find(|p| p.ip.to_string() == ip)
        .map(|p| p.name.clone())
        .unwrap_or_else(|| ip.to_string())
}

fn collect(lab: &Lab, dir: &Path) {
    std::fs::create_dir_all(dir.join("nodes")).expect("bundle dir");
    let names = lab.namespaces();
    for n in &lab.spec().nodes {
        let ns = names.get(&n.name).expect("node namespace");
        let out = dir.join("nodes").join(format!("{}.json", n.name));
        let st = Command::new("ip")
            .args([
                "netns", "exec", ns, NETRAY, "collect", "--node", &n.name, "-o",
            ])
            .arg(&out)
            .output()
            .expect("run netray collect");
        assert!(
            st.status.success(),
            "netray collect in {ns}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

fn summary(t: &Trace) -> String {
    let mut parts: Vec<String> = t
        .shares
        .iter()
        .map(|(d, p)| format!("{} {:.0}%", d.as_str(), p * 100.0))
        .collect();
    parts.sort();
    parts.join(", ")
}

#[test]
fn trace_matches_the_kernel() {
    if !can_run() {
        return;
    }
    let all = [
        "healthy",
        "forward-drop:node1",
        "ip-forward-off:node1",
        "stale-vtep:node0:node2",
        "rp-filter-asymmetric:node2",
        "missing-route:node0:node1",
        "pod-no-default-route:web-1",
        "policy-drop:web-2",
        "overlay-mtu",
        "bridge-nf-masq:node0",
        "local-service-ip:node1",
        "no-endpoints:web",
        "pod-gone:web-3", // GONE_POD
    ];
    let wanted: Option<BTreeSet<String>> = std::env::var("NETRAY_DIFF_SCENARIOS")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let agent = Agent::subcommand(NETRAY, &["lab", "agent"]);
    let mut rows: Vec<(String, String, String, String, bool)> = Vec::new();
    for scenario in all {
        if wanted.as_ref().is_some_and(|w| !w.contains(scenario)) {
            continue;
        }
        let mut lab = Lab::up(&ClusterSpec::standard(3, 2), &agent).expect("lab up");
        let mut fixed_ports = Vec::new();
        if scenario.starts_with("pod-gone") {
            // Fixed-port clients talk once before the pod goes (conntrack remembers where each
            // was balanced), until enough of them landed on the pod about to go.
            let mut on_gone = 0;
            for p in 5300..5400 {
                let r = lab.probe(&Probe::udp("web-0", WEB_CLUSTER_IP, 53).from_port(p));
                assert!(r.ok, "warm-up from port {p}: {r:?}");
                fixed_ports.push(p);
                on_gone += usize::from(r.answered_by.as_deref() == Some(GONE_POD));
                if on_gone == CLIENTS_ON_GONE_POD {
                    break;
                }
            }
            assert_eq!(
                on_gone, CLIENTS_ON_GONE_POD,
                "clients balanced to {GONE_POD}"
            );
        }
        if scenario != "healthy" {
            let f: Fault = scenario.parse().expect("fault");
            lab.apply(&f).expect("apply fault");
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        collect(&lab, tmp.path());
        let bundle = netray_snapshot::Bundle::load(tmp.path()).expect("load bundle");
        let world = World::new(&bundle);
        let engine = RulesetEngine::new(&world);
        let spec = lab.spec().clone();
        for c in cases(&spec, scenario, &fixed_ports) {
            let opts = Options {
                collected_conntrack: c.collected_conntrack,
                ..Options::default()
            };
            let t = match netray_datapath::trace(&world, &engine, &c.flow, opts) {
                Ok(t) => t,
                Err(e) => {
                    rows.push((
                        scenario.into(),
                        c.name,
                        "-".into(),
                        format!("error: {e}"),
                        false,
                    ));
                    continue;
                }
            };
            if c.spread {
                let mut s = lab.spread(&c.probe, SPREAD_TRIES);
                let mut tries = SPREAD_TRIES;
                // A delivered endpoint that never answered may just not have been picked yet:
                // sample more before calling it a disagreement.
                let missing = |s: &netray_lab::Spread| {
                    t.branches.iter().any(|b| {
                        handshake_ok(b)
                            && b.endpoint
                                .as_ref()
                                .is_some_and(|e| !s.answered.contains_key(&pod_of(&spec, e)))
                    })
                };
                if missing(&s) {
                    let more = lab.spread(&c.probe, 3 * SPREAD_TRIES);
                    for (k, n) in more.answered {
                        *s.answered.entry(k).or_insert(0) += n;
                    }
                    s.failed += more.failed;
                    tries += 3 * SPREAD_TRIES;
                }
                // Per endpoint: real answered at least once vs netray delivers the branch.
                let mut eps: BTreeMap<String, bool> = BTreeMap::new();
                for b in &t.branches {
                    let ep = b
                        .endpoint
                        .clone()
                        .map(|e| pod_of(&spec, &e))
                        .unwrap_or_else(|| "-".into());
                    let e = eps.entry(ep).or_insert(true);
                    *e &= handshake_ok(b);
                }
                for (ep, ok) in &eps {
                    let real = s.answered.contains_key(ep);
                    let agree = real == *ok;
                    let why = if *ok {
                        "delivered".to_string()
                    } else {
                        t.branches
                            .iter()
                            .find(|b| {
                                b.endpoint.as_ref().map(|e| pod_of(&spec, e)).as_deref()
                                    == Some(ep.as_str())
                            })
                            .map(|b| {
                                format!(
                                    "{} ({})",
                                    b.disposition.as_str(),
                                    b.cause.clone().unwrap_or_default()
                                )
                            })
                            .unwrap_or_default()
                    };
                    rows.push((
                        scenario.into(),
                        format!("{} [endpoint {ep}]", c.name),
                        if real {
                            format!("answered {}x", s.answered[ep])
                        } else {
                            "never answered".into()
                        },
                        why,
                        agree,
                    ));
                }
                // Answers from an endpoint netray does not know about, or failures netray
                // does not predict.
                for (ep, n) in &s.answered {
                    if !eps.contains_key(ep) {
                        rows.push((
                            scenario.into(),
                            format!("{} [endpoint {ep}]", c.name),
                            format!("answered {n}x"),
                            "no such branch".into(),
                            false,
                        ));
                    }
                }
                if s.failed > 0 && eps.values().all(|ok| *ok) {
                    rows.push((
                        scenario.into(),
                        format!("{} [failures]", c.name),
                        format!("{} of {tries} failed: {}", s.failed, s.last_error),
                        "all branches delivered".into(),
                        false,
                    ));
                }
            } else {
                let r = lab.probe(&c.probe);
                let reachable = !t.branches.is_empty() && t.branches.iter().all(handshake_ok);
                let agree = r.ok == reachable;
                rows.push((
                    scenario.into(),
                    c.name,
                    if r.ok {
                        "ok".into()
                    } else {
                        format!("fail ({})", r.detail.lines().next().unwrap_or(""))
                    },
                    if t.reachable {
                        "reachable".into()
                    } else if reachable {
                        "handshake ok, full-size data stalls".into()
                    } else {
                        summary(&t)
                    },
                    agree,
                ));
                if !agree {
                    eprintln!("{}", netray_datapath::text::render(&t));
                }
            }
        }
        drop(lab);
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(8);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(8);
    let w2 = rows.iter().map(|r| r.2.len().min(40)).max().unwrap_or(8);
    println!("{:w0$}  {:w1$}  {:w2$}  netray", "scenario", "flow", "real");
    for (s, f, real, nr, agree) in &rows {
        let real: String = real.chars().take(40).collect();
        println!(
            "{s:w0$}  {f:w1$}  {real:w2$}  {nr}{}",
            if *agree { "" } else { "   <-- DISAGREE" }
        );
    }
    // Per scenario (topology state): how many comparisons, how many agree.
    let mut per: Vec<(&str, usize, usize)> = Vec::new();
    for (s, _, _, _, agree) in &rows {
        match per.iter_mut().find(|p| p.0 == s.as_str()) {
            Some(p) => {
                p.1 += 1;
                p.2 += usize::from(*agree);
            }
            None => per.push((s.as_str(), 1, usize::from(*agree))),
        }
    }
    for (s, n, ok) in &per {
        println!("{s}: {n} comparisons, {ok} agree");
    }
    println!(
        "total: {} comparisons, {} agree",
        rows.len(),
        rows.iter().filter(|r| r.4).count()
    );
    let bad = rows.iter().filter(|r| !r.4).count();
    assert_eq!(
        bad,
        0,
        "{bad} of {} comparisons disagree with the kernel (table above)",
        rows.len()
    );
}

/// Whether a branch answers a probe that carries only a few bytes each way: it succeeds, or
/// only a full-size data segment failed after its handshake.
fn handshake_ok(b: &netray_datapath::Branch) -> bool {
    b.disposition.is_success() || b.data_segment.is_some()
}
