//! netray against the kernel on a Calico-style node layout (`netray_lab::calico`): per-pod /32
//! routes to `cali*` veths, the 169.254.1.1 gateway answered by proxy ARP, BIRD-style block
//! routes between nodes, Felix-like chains (raw `-m rpfilter`, ipset policy, accept marks) and
//! kube-proxy's rules. 2 nodes × 2 pods.
//!
//! Per case a lab is built (healthy, one fault, or two at once), every flow of
//! [`CalicoLab::flows`] is probed for real (pod → pod, pod → Service TCP/UDP, node → pod,
//! node → Service), the lab is collected — with the pods' neighbour tables flushed, so netray
//! must derive the proxy ARP answer itself — and `netray diagnose -o json` asked about every
//! flow. Per endpoint: reachability must equal the kernel's; for an endpoint that never
//! answered, netray's leg and node of every failure must equal where the kernel lost it, and
//! its cause must be an expected cause (`netray_lab::calico::expected_causes`) of a fault that
//! breaks that endpoint alone (single-fault labs decide; with several, the one whose single
//! lab loses the packet at the same place). Prints the table and the agreement count; fails on
//! any disagreement. Needs root (skipped with a message otherwise, failing under `CI=true`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use netray_lab::ProbeKind;
use netray_lab::calico::{CalicoFault, CalicoLab, expected_causes};
use netray_lab::matrix::{self, Diagnosis, FlowTruth, Leg, MatrixFlow, TargetTruth};
use netray_lab::spec::ClusterSpec;
use netray_lab::{Agent, lab_tests_can_run};

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

static SERIAL: Mutex<()> = Mutex::new(());
type Truths = BTreeMap<String, FlowTruth>;
static SINGLE: Mutex<BTreeMap<String, Truths>> = Mutex::new(BTreeMap::new());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn spec() -> ClusterSpec {
    ClusterSpec::standard(2, 2)
}

fn lab_with(faults: &[CalicoFault]) -> CalicoLab {
    let agent = Agent::subcommand(NETRAY, &["lab", "agent"]);
    let mut lab = CalicoLab::up(&spec(), &agent).expect("calico lab up");
    for f in faults {
        lab.apply(f).unwrap_or_else(|e| panic!("apply {f}: {e}"));
    }
    lab
}

/// Flows probed at once (one client per lane).
const LANES: usize = 3;

fn truths(lab: &CalicoLab, flows: &[MatrixFlow]) -> Truths {
    let all = lab
        .kernel_truths(flows, LANES)
        .unwrap_or_else(|e| panic!("probe: {e}"));
    flows.iter().map(|f| f.name.clone()).zip(all).collect()
}

/// Kernel outcome of every flow with `fault` alone (cached per run).
fn single(fault: &CalicoFault) -> Truths {
    let key = fault.to_string();
    if let Some(t) = SINGLE.lock().unwrap().get(&key) {
        return t.clone();
    }
    let lab = lab_with(std::slice::from_ref(fault));
    let t = truths(&lab, &lab.flows());
    drop(lab);
    SINGLE.lock().unwrap().insert(key, t.clone());
    t
}

fn diagnose_all(
    bundle: &Path,
    flows: &[MatrixFlow],
) -> BTreeMap<String, Result<Diagnosis, String>> {
    let mut out = BTreeMap::new();
    for chunk in flows.chunks(2) {
        let res: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = chunk
                .iter()
                .map(|f| s.spawn(move || matrix::diagnose(Path::new(NETRAY), bundle, f, &[])))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("diagnose"))
                .collect()
        });
        for (f, r) in chunk.iter().zip(res) {
            out.insert(f.name.clone(), r);
        }
    }
    out
}

fn lost_str(t: &TargetTruth) -> String {
    if t.reachable() {
        format!("ok ({}x)", t.answered)
    } else {
        match &t.lost {
            Some((leg, node)) => format!("lost {} @{node}", leg.as_str()),
            None => "lost".into(),
        }
    }
}

fn pod_name(spec: &ClusterSpec, ip: Ipv4Addr) -> String {
    spec.pods
        .iter()
        .find(|p| p.ip == ip)
        .map(|p| p.name.clone())
        .unwrap_or_else(|| ip.to_string())
}

fn is_from(f: &matrix::NetrayFailure, fault: &CalicoFault, spec: &ClusterSpec) -> bool {
    expected_causes(fault, spec)
        .iter()
        .any(|(c, n)| *c == f.code && n.as_ref().is_none_or(|n| *n == f.cause_node))
}

struct Row {
    flow: String,
    endpoint: String,
    kernel: String,
    netray: String,
    cause: String,
    problem: Option<String>,
}

/// Build the lab with `faults`, compare, print, fail on disagreement. Returns (comparisons,
/// agreeing).
fn run_case(case: &str, faults: &[&str]) {
    if !lab_tests_can_run(case) {
        return;
    }
    let _guard = serial();
    let faults: Vec<CalicoFault> = faults.iter().map(|f| f.parse().expect("fault")).collect();
    let started = std::time::Instant::now();
    let lab = lab_with(&faults);
    let spec = lab.spec().clone();
    let flows = lab.flows();
    let kernel = truths(&lab, &flows);
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect bundle");
    if let Ok(keep) = std::env::var("NETRAY_KEEP_CALICO_BUNDLE") {
        let _ = std::process::Command::new("cp")
            .args(["-r"])
            .arg(dir.path())
            .arg(format!("{keep}/{case}"))
            .status();
    }
    drop(lab);
    let diags = diagnose_all(dir.path(), &flows);
    if let [f] = faults.as_slice() {
        SINGLE.lock().unwrap().insert(f.to_string(), kernel.clone());
    }
    let singles: Vec<(CalicoFault, Truths)> = if faults.len() > 1 {
        faults.iter().map(|f| (f.clone(), single(f))).collect()
    } else {
        faults.iter().map(|f| (f.clone(), kernel.clone())).collect()
    };

    let mut rows = Vec::new();
    let mut details = Vec::new();
    for flow in &flows {
        let kt = &kernel[&flow.name];
        let d = match &diags[&flow.name] {
            Ok(d) => d,
            Err(e) => {
                rows.push(Row {
                    flow: flow.name.clone(),
                    endpoint: "-".into(),
                    kernel: kt.verdict().into(),
                    netray: "error".into(),
                    cause: "-".into(),
                    problem: Some(e.clone()),
                });
                continue;
            }
        };
        if d.verdict != kt.verdict() {
            rows.push(Row {
                flow: flow.name.clone(),
                endpoint: "(verdict)".into(),
                kernel: kt.verdict().into(),
                netray: d.verdict.clone(),
                cause: "-".into(),
                problem: Some(format!(
                    "verdict: kernel {} ({} of {} tries failed: {}), netray {}",
                    kt.verdict(),
                    kt.failed,
                    kt.tries,
                    kt.last_error,
                    d.verdict
                )),
            });
        }
        for (server, n) in &kt.strays {
            rows.push(Row {
                flow: flow.name.clone(),
                endpoint: server.clone(),
                kernel: format!("answered {n}x"),
                netray: "no such endpoint".into(),
                cause: "-".into(),
                problem: Some("the kernel reached an endpoint netray does not list".into()),
            });
        }
        // A request lost before DNAT has no endpoint yet: netray lists the Service address,
        // and that failure is what every kernel endpoint of the flow must show.
        let vip = match &flow.probe.kind {
            ProbeKind::Tcp { dst, .. } | ProbeKind::Udp { dst, .. } => Some(*dst.ip()),
            ProbeKind::Ping { dst, .. } => Some(*dst),
        }
        .filter(|v| !kt.targets.contains_key(v));
        let pre_dnat = vip.and_then(|v| d.endpoints.get(&v)).cloned();
        let mut d = d.clone();
        if let (Some(v), Some(ne)) = (vip, &pre_dnat) {
            d.endpoints.remove(&v);
            for ip in kt.targets.keys() {
                d.endpoints.entry(*ip).or_insert_with(|| {
                    let mut e = ne.clone();
                    e.ip = *ip;
                    e
                });
            }
        }
        let d = &d;
        let listed: BTreeSet<Ipv4Addr> = d.endpoints.keys().copied().collect();
        let all: BTreeSet<Ipv4Addr> = listed
            .union(&kt.targets.keys().copied().collect())
            .copied()
            .collect();
        for ip in all {
            let endpoint = pod_name(&spec, ip);
            let (Some(t), Some(ne)) = (kt.targets.get(&ip), d.endpoints.get(&ip)) else {
                rows.push(Row {
                    flow: flow.name.clone(),
                    endpoint,
                    kernel: kt.targets.get(&ip).map_or("-".into(), lost_str),
                    netray: if listed.contains(&ip) {
                        "listed"
                    } else {
                        "missing"
                    }
                    .into(),
                    cause: "-".into(),
                    problem: Some("endpoint sets differ".into()),
                });
                continue;
            };
            let netray_s = if ne.reachable {
                "ok".to_string()
            } else {
                let legs: BTreeSet<String> = ne
                    .failures
                    .iter()
                    .map(|f| format!("lost {} @{}", f.leg, f.node))
                    .collect();
                legs.into_iter().collect::<Vec<_>>().join(", ")
            };
            let cause: BTreeSet<String> = ne
                .failures
                .iter()
                .map(|f| format!("{}@{}", f.code, f.cause_node))
                .collect();
            let mut row = Row {
                flow: flow.name.clone(),
                endpoint,
                kernel: lost_str(t),
                netray: netray_s,
                cause: cause.into_iter().collect::<Vec<_>>().join(", "),
                problem: None,
            };
            let mut problems = Vec::new();
            if t.reachable() != ne.reachable {
                problems.push(format!(
                    "reachability: kernel {}, netray {}",
                    t.reachable(),
                    ne.reachable
                ));
            }
            if !t.reachable() {
                let breakers: Vec<(&CalicoFault, Option<&(Leg, String)>)> = singles
                    .iter()
                    .filter_map(|(f, tr)| {
                        let st = tr.get(&flow.name)?.targets.get(&ip)?;
                        (!st.reachable()).then_some((f, st.lost.as_ref()))
                    })
                    .collect();
                let primary: Vec<&CalicoFault> = if breakers.len() == 1 {
                    vec![breakers[0].0]
                } else {
                    breakers
                        .iter()
                        .filter(|(_, lost)| t.lost.is_some() && *lost == t.lost.as_ref())
                        .map(|(f, _)| *f)
                        .collect()
                };
                if breakers.is_empty() {
                    problems.push(
                        "the kernel loses it but no fault breaks it alone (flaky or faults interact)"
                            .into(),
                    );
                }
                if ne.failures.is_empty() && !ne.reachable {
                    problems.push("netray names no failure for this endpoint".into());
                }
                for f in &ne.failures {
                    if !breakers.is_empty() && !breakers.iter().any(|(b, _)| is_from(f, b, &spec)) {
                        problems.push(format!(
                            "{}@{} is not an expected cause of {}",
                            f.code,
                            f.cause_node,
                            breakers
                                .iter()
                                .map(|(b, _)| b.to_string())
                                .collect::<Vec<_>>()
                                .join(" or ")
                        ));
                    }
                    if let Some((leg, node)) = &t.lost
                        && (f.leg != leg.as_str() || &f.node != node)
                    {
                        problems.push(format!(
                            "drop point: kernel lost {} @{node}, netray {} @{} ({})",
                            leg.as_str(),
                            f.leg,
                            f.node,
                            t.detail
                        ));
                    }
                }
                if primary.len() == 1
                    && !ne.failures.is_empty()
                    && !ne.failures.iter().any(|f| is_from(f, primary[0], &spec))
                {
                    problems.push(format!(
                        "the packet meets {} first (kernel), netray does not name it",
                        primary[0]
                    ));
                }
            }
            if !problems.is_empty() {
                problems.dedup();
                row.problem = Some(problems.join("; "));
                let ep = d.json["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| {
                        e["endpoint"]
                            .as_str()
                            .is_some_and(|s| s.split(':').next() == Some(&ip.to_string()))
                    })
                    .cloned()
                    .unwrap_or_default();
                details.push(format!(
                    "{case} | {} | {}: {}\n  endpoint: {}\n  causes: {}",
                    flow.name,
                    row.endpoint,
                    row.problem.as_deref().unwrap_or(""),
                    ep,
                    {
                        let c = serde_json::to_string(&d.json["causes"]).unwrap_or_default();
                        c.chars().take(700).collect::<String>()
                    }
                ));
            }
            rows.push(row);
        }
    }
    let names: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
    println!(
        "\n== {case}: {}",
        if names.is_empty() {
            "healthy".to_string()
        } else {
            names.join(" + ")
        }
    );
    for r in &rows {
        println!(
            "{:34}  {:9}  {:18}  {:18}  {}{}",
            r.flow,
            r.endpoint,
            r.kernel,
            r.netray,
            r.cause,
            match &r.problem {
                Some(p) => format!("   <-- DISAGREE: {p}"),
                None => String::new(),
            }
        );
    }
    for d in &details {
        println!("{d}");
    }
    let bad = rows.iter().filter(|r| r.problem.is_some()).count();
    println!(
        "{case}: {} flows, {} per-endpoint comparisons, {} agree ({:.0} s)",
        flows.len(),
        rows.len(),
        rows.len() - bad,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        bad,
        0,
        "{case}: {bad} of {} rows disagree with the kernel (table above)",
        rows.len()
    );
}

/// No fault: every flow works in the kernel, and netray must say so (proxy ARP answer,
/// scope-link /32 routes, `-m rpfilter`, ipset policy, accept marks all modelled).
#[test]
fn calico_healthy() {
    run_case("calico_healthy", &[]);
}

/// `proxy_arp=0` on web-1's host veth: web-1 cannot resolve 169.254.1.1, so it can send
/// nothing and cannot answer anyone (its replies die in the pod, on its node).
#[test]
fn calico_proxy_arp_off() {
    run_case("calico_proxy_arp_off", &["proxy-arp-off:web-1"]);
}

/// web-2's /32 route is gone from node1: traffic to it falls to the block's blackhole; its
/// own traffic fails the reverse-path check on its veth.
#[test]
fn calico_pod_route_missing() {
    run_case("calico_pod_route_missing", &["pod-route-missing:web-2"]);
}

/// node1's policy ipset lacks web-0: web-0's new connections to node1's pods are dropped by
/// their `cali-tw-` chains; everything else works.
#[test]
fn calico_ipset_member_missing() {
    run_case(
        "calico_ipset_member_missing",
        &["ipset-missing:node1:web-0"],
    );
}

/// Two at once: proxy ARP off for web-1 (node0) and web-0 missing from node1's ipset.
#[test]
fn calico_two_faults() {
    run_case(
        "calico_two_faults",
        &["proxy-arp-off:web-1", "ipset-missing:node1:web-0"],
    );
}
