//! Several faults in one lab: every failing endpoint must be attributed to its own fault, as the
//! kernel decides it.
//!
//! For each case a lab is built with all its faults, a matrix of flows is probed for real
//! (pods on each node → Service over TCP and UDP, → every other pod; nodes → Service), the
//! lab is collected and `netray diagnose -o json` asked about every flow. Per endpoint:
//!
//! - **reachability**: netray's `endpoints[].reachable` must equal the kernel's (an endpoint of
//!   a load-balanced flow is reachable when it answered at least once in up to 72 tries);
//! - **drop point**: for an endpoint that never answered, the leg and node where the kernel lost
//!   its packets (measured with counters: `netray_lab::matrix`) must be the `leg` and `node` of
//!   each of netray's `failures[]`;
//! - **attribution**: the same flows are probed in one lab per fault with that fault alone.
//!   The faults whose lab alone breaks the endpoint are its *breakers*; every `failures[]`
//!   entry must name (`code`, `cause_node`) a breaker's expected cause
//!   (`netray_lab::matrix::expected_causes`). When a path crosses several breakers the
//!   *primary* cause is the first one the packet meets, decided by the kernel: the breaker
//!   whose single-fault lab loses the packet at the same leg and node as the multi-fault lab
//!   does. netray must name the primary.
//!
//! Prints the table (flow, endpoint, kernel, netray, expected cause(s), netray cause) and
//! fails on any disagreement. Needs root (skipped with a message otherwise, failing under
//! `CI=true`); one lab at a time (a process-wide lock), single-fault outcomes cached per run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use netray_lab::matrix::{
    self, Diagnosis, FlowTruth, MatrixFlow, expected_causes, failure_is_from,
};
use netray_lab::spec::ClusterSpec;
use netray_lab::{Agent, Fault, Lab};

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

/// One lab at a time: 2 shared cores, and probes are timed.
static SERIAL: Mutex<()> = Mutex::new(());
/// Single-fault kernel outcomes: fault → flow name → outcome.
type Truths = BTreeMap<String, FlowTruth>;
static SINGLE: Mutex<BTreeMap<String, Truths>> = Mutex::new(BTreeMap::new());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn lab_with(faults: &[Fault]) -> Lab {
    let agent = Agent::subcommand(NETRAY, &["lab", "agent"]);
    let mut lab = Lab::up(&ClusterSpec::standard(3, 2), &agent).expect("lab up");
    for f in faults {
        lab.apply(f).unwrap_or_else(|e| panic!("apply {f}: {e}"));
    }
    lab
}

fn truths(lab: &Lab, flows: &[MatrixFlow]) -> Truths {
    flows
        .iter()
        .map(|f| {
            let t = lab
                .kernel_truth(f)
                .unwrap_or_else(|e| panic!("probe {}: {e}", f.name));
            (f.name.clone(), t)
        })
        .collect()
}

/// Kernel outcome of every flow with `fault` alone.
fn single(fault: &Fault) -> Truths {
    let key = fault.to_string();
    if let Some(t) = SINGLE.lock().unwrap().get(&key) {
        return t.clone();
    }
    let lab = lab_with(std::slice::from_ref(fault));
    let flows = matrix::standard_flows(lab.spec());
    let t = truths(&lab, &flows);
    drop(lab);
    SINGLE.lock().unwrap().insert(key, t.clone());
    t
}

fn pod_name(spec: &ClusterSpec, ip: Ipv4Addr) -> String {
    spec.pods
        .iter()
        .find(|p| p.ip == ip)
        .map(|p| p.name.clone())
        .unwrap_or_else(|| ip.to_string())
}

fn lost_str(t: &matrix::TargetTruth) -> String {
    if t.reachable() {
        format!("ok ({}x)", t.answered)
    } else {
        match &t.lost {
            Some((leg, node)) => format!("lost {} @{node}", leg.as_str()),
            None => "lost".into(),
        }
    }
}

/// One row of the table.
struct Row {
    flow: String,
    endpoint: String,
    kernel: String,
    netray: String,
    expected: String,
    cause: String,
    problem: Option<String>,
}

/// Build the multi-fault lab, compare netray with the kernel, print the table, fail on any
/// disagreement.
fn run_case(case: &str, faults: &[&str]) {
    if !netray_lab::lab_tests_can_run(case) {
        return;
    }
    let _guard = serial();
    let faults: Vec<Fault> = faults.iter().map(|f| f.parse().expect("fault")).collect();
    let lab = lab_with(&faults);
    let spec = lab.spec().clone();
    let flows = matrix::standard_flows(&spec);
    let multi = truths(&lab, &flows);
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect bundle");
    drop(lab);
    let diags: BTreeMap<String, Result<Diagnosis, String>> = flows
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                matrix::diagnose(Path::new(NETRAY), dir.path(), f, &[]),
            )
        })
        .collect();
    let singles: Vec<(Fault, Truths)> = faults.iter().map(|f| (f.clone(), single(f))).collect();

    let mut rows = Vec::new();
    let mut details = Vec::new();
    for flow in &flows {
        let kt = &multi[&flow.name];
        let d = match &diags[&flow.name] {
            Ok(d) => d,
            Err(e) => {
                rows.push(Row {
                    flow: flow.name.clone(),
                    endpoint: "-".into(),
                    kernel: kt.verdict().into(),
                    netray: "error".into(),
                    expected: "-".into(),
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
                expected: "-".into(),
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
                expected: "-".into(),
                cause: "-".into(),
                problem: Some("the kernel reached an endpoint netray does not list".into()),
            });
        }
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
                    expected: "-".into(),
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
            let cause = cause.into_iter().collect::<Vec<_>>().join(", ");
            let mut row = Row {
                flow: flow.name.clone(),
                endpoint,
                kernel: lost_str(t),
                netray: netray_s,
                expected: "-".into(),
                cause: if cause.is_empty() { "-".into() } else { cause },
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
                // Breakers: the faults whose lab alone breaks this endpoint.
                let breakers: Vec<(&Fault, Option<&(matrix::Leg, String)>)> = singles
                    .iter()
                    .filter_map(|(f, tr)| {
                        let st = tr.get(&flow.name)?.targets.get(&ip)?;
                        (!st.reachable()).then_some((f, st.lost.as_ref()))
                    })
                    .collect();
                let primary: Vec<&Fault> = if breakers.len() == 1 {
                    vec![breakers[0].0]
                } else {
                    breakers
                        .iter()
                        .filter(|(_, lost)| t.lost.is_some() && *lost == t.lost.as_ref())
                        .map(|(f, _)| *f)
                        .collect()
                };
                let primary = (primary.len() == 1).then(|| primary[0]);
                row.expected = breakers
                    .iter()
                    .map(|(f, _)| {
                        let codes: Vec<String> = expected_causes(f, &spec)
                            .iter()
                            .map(|(c, n)| format!("{c}@{}", n.as_deref().unwrap_or("*")))
                            .collect();
                        let star = if primary == Some(*f) && breakers.len() > 1 {
                            "*"
                        } else {
                            ""
                        };
                        format!("{star}{f} ({})", codes.join("|"))
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                if breakers.is_empty() {
                    row.expected = "(no single fault breaks it)".into();
                    problems.push(
                        "no fault breaks this endpoint alone: the faults interact; no expected cause"
                            .into(),
                    );
                }
                if ne.failures.is_empty() && !ne.reachable {
                    problems.push("netray names no failure for this endpoint".into());
                }
                for f in &ne.failures {
                    if !breakers.is_empty()
                        && !breakers.iter().any(|(b, _)| failure_is_from(f, b, &spec))
                    {
                        problems.push(format!(
                            "{}@{} is not the cause of any fault that breaks this endpoint",
                            f.code, f.cause_node
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
                if let Some(p) = primary
                    && !ne.failures.is_empty()
                    && !ne.failures.iter().any(|f| failure_is_from(f, p, &spec))
                {
                    problems.push(format!(
                        "the packet meets {p} first (kernel), netray does not name it"
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
                let causes: Vec<_> = d.json["causes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        serde_json::json!({"code": c["code"], "node": c["node"], "netns": c["netns"], "explanation": c["explanation"]})
                    })
                    .collect();
                details.push(format!(
                    "{case} | {} | {}: {}\n  endpoint: {}\n  causes: {}",
                    flow.name,
                    row.endpoint,
                    row.problem.as_deref().unwrap_or(""),
                    ep,
                    serde_json::to_string(&causes).unwrap_or_default()
                ));
            }
            rows.push(row);
        }
    }
    print_table(case, &faults, &rows);
    println!(
        "{case}: {} per-endpoint comparisons, {} agree",
        rows.len(),
        rows.iter().filter(|r| r.problem.is_none()).count()
    );
    for d in &details {
        println!("{d}");
    }
    let bad = rows.iter().filter(|r| r.problem.is_some()).count();
    assert_eq!(
        bad,
        0,
        "{case}: {bad} of {} rows disagree with the kernel (table above)",
        rows.len()
    );
}

fn print_table(case: &str, faults: &[Fault], rows: &[Row]) {
    let names: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
    println!("\n== {case}: {}", names.join(" + "));
    let w =
        |f: &dyn Fn(&Row) -> usize, min: usize| rows.iter().map(f).max().unwrap_or(min).max(min);
    let (w0, w1, w2, w3, w4) = (
        w(&|r| r.flow.len(), 4),
        w(&|r| r.endpoint.len(), 8),
        w(&|r| r.kernel.len(), 6),
        w(&|r| r.netray.len(), 6),
        w(&|r| r.expected.len(), 17),
    );
    println!(
        "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {:w4$}  netray cause",
        "flow", "endpoint", "kernel", "netray", "expected cause(s)"
    );
    for r in rows {
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {:w4$}  {}{}",
            r.flow,
            r.endpoint,
            r.kernel,
            r.netray,
            r.expected,
            r.cause,
            match &r.problem {
                Some(p) => format!("   <-- DISAGREE: {p}"),
                None => String::new(),
            }
        );
    }
}

/// The example: FORWARD policy DROP on node1, and node0 holding a stale neighbour for
/// node2's VTEP (node2 "rebooted"). Different nodes; node2's replies to node0 are fine, node0's
/// requests to node2 and node0's replies to node2's clients die at node2's flannel.1.
#[test]
fn forward_drop_node1_and_stale_vtep_node2_on_node0() {
    run_case(
        "forward_drop_node1_and_stale_vtep_node2_on_node0",
        &["forward-drop:node1", "stale-vtep:node2:node0"],
    );
}

/// Two faults on node1: a NetworkPolicy drop for web-2 and no route to node2's pods. A
/// request from node2 to web-2 crosses both (policy on the request, the missing route on the
/// reply): the policy is met first.
#[test]
fn policy_drop_and_missing_route_same_node() {
    run_case(
        "policy_drop_and_missing_route_same_node",
        &["policy-drop:web-2", "missing-route:node1:node2"],
    );
}

/// Three faults on three nodes: node0 has no route to node1's pods, node1's FORWARD policy
/// drops, web-5 (node2) is behind a deny-all policy. web-0 → web-2 crosses the missing route
/// (node0, met first) and the FORWARD drop (node1).
#[test]
fn missing_route_forward_drop_policy_three_nodes() {
    run_case(
        "missing_route_forward_drop_policy_three_nodes",
        &[
            "missing-route:node0:node1",
            "forward-drop:node1",
            "policy-drop:web-5",
        ],
    );
}

/// Two faults on node2: FORWARD policy DROP, and a stale neighbour for node1's VTEP. web-2 →
/// web-4 meets the FORWARD drop on the request before the stale entry on the reply.
#[test]
fn forward_drop_and_stale_vtep_same_node() {
    run_case(
        "forward_drop_and_stale_vtep_same_node",
        &["forward-drop:node2", "stale-vtep:node1:node2"],
    );
}

/// A DROP rule for web-3 on node1, a blackhole route on node0 for node2's pods, and web-5's
/// host veth down on node2. web-0 → web-5 crosses the blackhole (node0, met first) and the
/// down veth (node2); node2's clients lose their replies at node0's blackhole.
#[test]
fn drop_rule_blackhole_route_veth_down() {
    run_case(
        "drop_rule_blackhole_route_veth_down",
        &[
            "drop-rule:web-3",
            "blackhole-route:node0:node2",
            "veth-down:web-5",
        ],
    );
}
