//! netray's fixes, proven on the real kernel.
//!
//! For every lab fault case with a node- or pod-level fix (the single-fault cases of
//! `lab_cases.rs`, the lab's newer faults and the multi-fault cases of `multi_fault.rs`): build
//! the lab, probe the flow matrix for real, collect, and run `netray diagnose -o json` for every
//! flow. Every cause of a failing flow must carry `fix_commands`
//! (`[{node, netns, pod?, run}]`): a missing field fails the test with a message saying so.
//!
//! 1. **what-if**: for each flow, `netray diagnose … --what-if 'NODE[/NETNS]: RUN'` with every
//!    fix command of the case walks the patched snapshot;
//! 2. **apply**: each `run` is executed as root inside the lab namespace it names (`host` is
//!    the node's namespace; any other `netns` is the collected name of a pod namespace, which
//!    `netray collect` records as the `/run/netns` name, i.e. the lab's `nrl-TAG-POD`; commands
//!    outside netray's fix vocabulary or that switch namespaces are refused:
//!    `netray_lab::matrix::check_fix_command`);
//! 3. **re-probe**: the whole matrix again. Every flow that failed must now work, no endpoint
//!    that worked may break, and the what-if verdict (and per-endpoint reachability) of every
//!    flow must equal the kernel's after the fix;
//! 4. **diff**: the lab collected again after the fix; `netray diff --before --after` of every
//!    flow must call `fixed` each endpoint the fix made work in the kernel (or `appeared`, working,
//!    when the walk before never reached it), and `broken` none that worked both times.
//!
//! Prints a table per case and fails on any disagreement. Needs root (skipped with a message
//! otherwise, failing under `CI=true`); one lab at a time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use netray_lab::matrix::{self, Diagnosis, FlowTruth, MatrixFlow};
use netray_lab::spec::{ClusterSpec, WEB_LB_HEALTH_PORT, WEB_LB_IP};
use netray_lab::{Agent, Fault, Lab};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One fix command as netray gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FixCommand {
    node: String,
    netns: String,
    pod: Option<String>,
    run: String,
}

impl FixCommand {
    /// `NODE[/NETNS]: RUN`, the `--what-if` form.
    fn what_if(&self) -> String {
        if self.netns == "host" {
            format!("{}: {}", self.node, self.run)
        } else {
            format!("{}/{}: {}", self.node, self.netns, self.run)
        }
    }
}

/// Extra flows a fault is about, beyond the standard matrix.
fn extra_flows(spec: &ClusterSpec, faults: &[Fault]) -> Vec<MatrixFlow> {
    let mut v = Vec::new();
    for f in faults {
        match f {
            Fault::RpFilterAsymmetric { node } => {
                v.push(matrix::node_port_flow(spec, "web-np", node));
            }
            Fault::OverlayMtu => {
                for to in ["web-1", "web-2", "web-4"] {
                    v.push(matrix::ping_flow(spec, "web-0", to, 1420));
                }
            }
            Fault::BridgeNfMasq { node } => {
                v.push(matrix::service_flow(
                    spec,
                    node,
                    "vm",
                    netray_lab::Proto::Tcp,
                ));
            }
            Fault::LocalServiceIp { node } => {
                for n in [node.clone(), "node1".to_string()] {
                    v.push(matrix::node_port_from(
                        spec,
                        "gw",
                        WEB_LB_IP,
                        &n,
                        WEB_LB_HEALTH_PORT,
                    ));
                }
            }
            _ => {}
        }
    }
    v
}

fn truths(lab: &Lab, flows: &[MatrixFlow]) -> BTreeMap<String, FlowTruth> {
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

/// Every cause's `fix_commands` of the failing flows; also the causes without them and the
/// causes netray says are not proven.
fn fix_commands(
    diags: &BTreeMap<String, Diagnosis>,
) -> (Vec<FixCommand>, Vec<String>, Vec<String>) {
    // In netray's order (a cause's commands may depend on each other), without repeats.
    let mut cmds = Vec::new();
    let mut missing = Vec::new();
    let mut unproven = Vec::new();
    for (flow, d) in diags {
        if d.verdict == "reachable" {
            continue;
        }
        for c in d.json["causes"].as_array().into_iter().flatten() {
            let what = format!(
                "{flow}: {}@{} ({})",
                c["code"].as_str().unwrap_or("?"),
                c["node"].as_str().unwrap_or("?"),
                c["netns"].as_str().unwrap_or("?")
            );
            match c.get("proven") {
                Some(Value::Bool(true)) => {}
                Some(Value::Bool(false)) => unproven.push(what.clone()),
                _ => {}
            }
            let Some(list) = c.get("fix_commands").and_then(Value::as_array) else {
                missing.push(what);
                continue;
            };
            if list.is_empty() {
                missing.push(format!("{what} (empty)"));
            }
            for fc in list {
                let s = |k: &str| fc[k].as_str().map(str::to_string);
                let c = FixCommand {
                    node: s("node").unwrap_or_default(),
                    netns: s("netns").unwrap_or_default(),
                    pod: s("pod"),
                    run: s("run").unwrap_or_default(),
                };
                if !cmds.contains(&c) {
                    cmds.push(c);
                }
            }
        }
    }
    (cmds, missing, unproven)
}

fn endpoints_str(spec: &ClusterSpec, t: &FlowTruth) -> String {
    let bad: Vec<String> = t
        .failing()
        .iter()
        .map(|ip| {
            spec.pods
                .iter()
                .find(|p| p.ip == *ip)
                .map_or(ip.to_string(), |p| p.name.clone())
        })
        .collect();
    if bad.is_empty() {
        t.verdict().to_string()
    } else {
        format!("{} (fail: {})", t.verdict(), bad.join(","))
    }
}

fn run_case(case: &str, faults: &[&str]) {
    if !netray_lab::lab_tests_can_run(case) {
        return;
    }
    let _guard = serial();
    let faults: Vec<Fault> = faults.iter().map(|f| f.parse().expect("fault")).collect();
    let agent = Agent::subcommand(NETRAY, &["lab", "agent"]);
    let mut lab = Lab::up(&ClusterSpec::standard(3, 2), &agent).expect("lab up");
    for f in &faults {
        lab.apply(f).unwrap_or_else(|e| panic!("apply {f}: {e}"));
    }
    let spec = lab.spec().clone();
    let mut flows = matrix::standard_flows(&spec);
    flows.extend(extra_flows(&spec, &faults));
    let before = truths(&lab, &flows);
    assert!(
        before.values().any(|t| t.verdict() != "reachable"),
        "{case}: the faults break no flow of the matrix"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect bundle");
    let bundle = dir.path();
    let mut diags = BTreeMap::new();
    for f in &flows {
        let d = matrix::diagnose(Path::new(NETRAY), bundle, f, &[])
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        diags.insert(f.name.clone(), d);
    }
    let (cmds, missing, unproven) = fix_commands(&diags);
    assert!(
        missing.is_empty(),
        "{case}: netray diagnose -o json gives no causes[].fix_commands for {} cause(s) of failing \
         flows (issue 9 item 4; the fix-proof test needs them):\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
    println!("\n== {case}: {}", {
        let n: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
        n.join(" + ")
    });
    for c in &cmds {
        println!(
            "fix: {} [{}{}]: {}",
            c.node,
            c.netns,
            c.pod
                .as_ref()
                .map(|p| format!(", pod {p}"))
                .unwrap_or_default(),
            c.run
        );
    }
    for u in &unproven {
        println!("not proven by netray: {u}");
    }
    // What-if on the snapshot, before anything changes in the lab.
    let what_if: Vec<String> = cmds
        .iter()
        .flat_map(|c| ["--what-if".to_string(), c.what_if()])
        .collect();
    let mut predicted = BTreeMap::new();
    for f in &flows {
        let d = matrix::diagnose(Path::new(NETRAY), bundle, f, &what_if).unwrap_or_else(|e| {
            panic!("{case}: netray diagnose --what-if (issue 9 item 5) failed: {e}")
        });
        predicted.insert(f.name.clone(), d);
    }
    // Apply every fix command in the namespace it names.
    let mut problems = Vec::new();
    for c in &cmds {
        let member = if c.netns == "host" {
            Some(c.node.clone())
        } else {
            lab.member_of_netns(&c.netns)
        };
        let Some(member) = member else {
            problems.push(format!(
                "fix `{}`: netns `{}` on {} is no namespace of this lab",
                c.run, c.netns, c.node
            ));
            continue;
        };
        if let Some(pod) = &c.pod
            && pod.rsplit('/').next() != Some(member.as_str())
        {
            problems.push(format!(
                "fix `{}`: pod {pod} but netns {} is lab member {member}",
                c.run, c.netns
            ));
        }
        // A pod's namespace lives on its node; shared lab infrastructure (the underlay switch,
        // the router) is a veth peer of every node and may be named under any of them.
        if c.netns != "host"
            && let Some(p) = spec.pod(&member)
        {
            let node_of = spec.nodes[p.node].name.clone();
            if node_of != c.node {
                problems.push(format!(
                    "fix `{}`: netns {} belongs to {node_of}, not {}",
                    c.run, c.netns, c.node
                ));
            }
        }
        if let Err(e) = lab.run_fix(&member, &c.run) {
            problems.push(format!("fix on {}: {e}", c.node));
        }
    }
    let after = truths(&lab, &flows);
    // The state after the fix, for `netray diff` against the state before.
    let dir_after = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir_after.path())
        .expect("collect bundle after the fix");
    drop(lab);
    for f in &flows {
        problems.extend(
            diff_disagreements(
                bundle,
                dir_after.path(),
                f,
                &before[&f.name],
                &after[&f.name],
            )
            .into_iter()
            .map(|p| format!("{}: {p}", f.name)),
        );
    }
    println!(
        "{:40}  {:32}  {:32}  what-if",
        "flow", "kernel before", "kernel after fix"
    );
    for f in &flows {
        let (b, a, p) = (&before[&f.name], &after[&f.name], &predicted[&f.name]);
        let mut row_problems = Vec::new();
        if b.verdict() != "reachable" && a.verdict() != "reachable" {
            row_problems.push("still failing after netray's fix".to_string());
        }
        let broke: Vec<_> = a
            .failing()
            .into_iter()
            .filter(|ip| b.targets.get(ip).is_some_and(|t| t.reachable()))
            .collect();
        if !broke.is_empty() {
            row_problems.push(format!("the fix broke endpoints {broke:?}"));
        }
        if p.verdict != a.verdict() {
            row_problems.push(format!(
                "what-if says {}, kernel after the fix {}",
                p.verdict,
                a.verdict()
            ));
        }
        for (ip, t) in &a.targets {
            if let Some(e) = p.endpoints.get(ip)
                && e.reachable != t.reachable()
            {
                row_problems.push(format!(
                    "what-if endpoint {ip}: {}, kernel {}",
                    e.reachable,
                    t.reachable()
                ));
            }
        }
        println!(
            "{:40}  {:32}  {:32}  {}{}",
            f.name,
            endpoints_str(&spec, b),
            endpoints_str(&spec, a),
            p.verdict,
            if row_problems.is_empty() {
                String::new()
            } else {
                format!("   <-- {}", row_problems.join("; "))
            }
        );
        problems.extend(row_problems.into_iter().map(|p| format!("{}: {p}", f.name)));
    }
    assert!(
        problems.is_empty(),
        "{case}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// `netray diff --before B1 --after B2` for one flow against what the kernel did before and
/// after the fix: every endpoint the fix made work must be `fixed`, none that worked both
/// times may be `broken`.
fn diff_disagreements(
    before_bundle: &Path,
    after_bundle: &Path,
    f: &MatrixFlow,
    before: &FlowTruth,
    after: &FlowTruth,
) -> Vec<String> {
    let mut cmd = std::process::Command::new(NETRAY);
    cmd.arg("diff")
        .arg("--before")
        .arg(before_bundle)
        .arg("--after")
        .arg(after_bundle)
        .args(["--from", &f.from, "--to", &f.to])
        .args(&f.args)
        .args(["-o", "json"]);
    // As `matrix::diagnose`: the lab's TCP probes carry a few bytes (the handshake).
    if f.proto == Some(netray_lab::spec::Proto::Tcp) && !f.args.iter().any(|a| a == "--size") {
        cmd.args(["--size", "60"]);
    }
    let out = cmd.output().expect("run netray diff");
    let v: Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            return vec![format!(
                "netray diff printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )];
        }
    };
    // The endpoint's change, and whether every path to it works after.
    let change_of = |ip: &std::net::Ipv4Addr| -> Option<(String, bool)> {
        v["endpoints"].as_array()?.iter().find_map(|e| {
            let ep = e["endpoint"].as_str()?;
            let works = e["after"].as_array().is_some_and(|a| {
                !a.is_empty()
                    && a.iter().all(|d| {
                        matches!(d.as_str(), Some("delivered" | "accepted-by-host" | "exits"))
                    })
            });
            (ep.split(':').next() == Some(ip.to_string().as_str()))
                .then(|| (e["change"].as_str().unwrap_or("").to_string(), works))
        })
    };
    let mut bad = Vec::new();
    for (ip, a) in &after.targets {
        let Some(b) = before.targets.get(ip) else {
            continue;
        };
        let change = change_of(ip);
        // `appeared`: the walk before the fix never reached this endpoint (it failed earlier,
        // e.g. at the client's own route lookup); it counts when every path to it works after.
        let fixed =
            matches!(&change, Some((c, works)) if c == "fixed" || (c == "appeared" && *works));
        if !b.reachable() && a.reachable() && !fixed {
            bad.push(format!(
                "the fix made {ip} work in the kernel; netray diff says {change:?}"
            ));
        }
        if b.reachable() && a.reachable() && matches!(&change, Some((c, _)) if c == "broken") {
            bad.push(format!(
                "{ip} works before and after in the kernel; netray diff says broken"
            ));
        }
    }
    bad
}

// Single-fault cases of lab_cases.rs.

#[test]
fn fix_forward_drop() {
    run_case("fix_forward_drop", &["forward-drop:node1"]);
}

#[test]
fn fix_stale_vtep() {
    run_case("fix_stale_vtep", &["stale-vtep:node0:node2"]);
}

#[test]
fn fix_ip_forward_off() {
    run_case("fix_ip_forward_off", &["ip-forward-off:node1"]);
}

#[test]
fn fix_rp_filter_asymmetric() {
    run_case("fix_rp_filter_asymmetric", &["rp-filter-asymmetric:node1"]);
}

#[test]
fn fix_missing_route() {
    run_case("fix_missing_route", &["missing-route:node0:node1"]);
}

#[test]
fn fix_pod_no_default_route() {
    run_case("fix_pod_no_default_route", &["pod-no-default-route:web-4"]);
}

#[test]
fn fix_policy_drop() {
    run_case("fix_policy_drop", &["policy-drop:web-2"]);
}

#[test]
fn fix_overlay_mtu() {
    run_case("fix_overlay_mtu", &["overlay-mtu"]);
}

#[test]
fn fix_bridge_nf_masq() {
    run_case("fix_bridge_nf_masq", &["bridge-nf-masq:node0"]);
}

#[test]
fn fix_local_service_ip() {
    run_case("fix_local_service_ip", &["local-service-ip:node0"]);
}

// The lab's newer faults.

#[test]
fn fix_drop_rule() {
    run_case("fix_drop_rule", &["drop-rule:web-3"]);
}

#[test]
fn fix_blackhole_route() {
    run_case("fix_blackhole_route", &["blackhole-route:node0:node2"]);
}

#[test]
fn fix_veth_down() {
    run_case("fix_veth_down", &["veth-down:web-5"]);
}

// The multi-fault cases of multi_fault.rs.

#[test]
fn fix_multi_forward_drop_and_stale_vtep() {
    run_case(
        "fix_multi_forward_drop_and_stale_vtep",
        &["forward-drop:node1", "stale-vtep:node2:node0"],
    );
}

#[test]
fn fix_multi_policy_drop_and_missing_route() {
    run_case(
        "fix_multi_policy_drop_and_missing_route",
        &["policy-drop:web-2", "missing-route:node1:node2"],
    );
}

#[test]
fn fix_multi_missing_route_forward_drop_policy() {
    run_case(
        "fix_multi_missing_route_forward_drop_policy",
        &[
            "missing-route:node0:node1",
            "forward-drop:node1",
            "policy-drop:web-5",
        ],
    );
}

#[test]
fn fix_multi_forward_drop_and_stale_vtep_same_node() {
    run_case(
        "fix_multi_forward_drop_and_stale_vtep_same_node",
        &["forward-drop:node2", "stale-vtep:node1:node2"],
    );
}

#[test]
fn fix_multi_drop_rule_blackhole_veth_down() {
    run_case(
        "fix_multi_drop_rule_blackhole_veth_down",
        &[
            "drop-rule:web-3",
            "blackhole-route:node0:node2",
            "veth-down:web-5",
        ],
    );
}
