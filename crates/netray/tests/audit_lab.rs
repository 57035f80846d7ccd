//! `netray audit` against the kernel, on a lab with two faults on different nodes (FORWARD
//! policy DROP on node1; node0 holding a stale neighbour for node2's VTEP): every Service flow
//! of the lab's matrix (each node's first pod → `web` over TCP and UDP, each node → `web`) is
//! probed for real, the lab collected and audited. Per (source, Service port, endpoint): the
//! audit lists it as failing exactly when the kernel never got an answer from that endpoint,
//! and the group it is in names one of the faults' causes (`expected_causes`). Needs root
//! (skipped otherwise; fails under CI=true).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use netray_lab::matrix::{self, expected_causes};
use netray_lab::spec::ClusterSpec;
use netray_lab::{Agent, Fault, Lab};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

/// The audit's target label for a matrix flow's `--to` (`svc/default/web:80` →
/// `svc/default/web:80/tcp`).
fn label(to: &str) -> String {
    if to.ends_with("/udp") || to.ends_with("/tcp") {
        to.to_string()
    } else {
        format!("{to}/tcp")
    }
}

#[test]
fn audit_groups_match_the_kernel_on_a_two_fault_lab() {
    let case = "audit_groups_match_the_kernel_on_a_two_fault_lab";
    if !netray_lab::lab_tests_can_run(case) {
        return;
    }
    let started = std::time::Instant::now();
    let faults: Vec<Fault> = ["forward-drop:node1", "stale-vtep:node2:node0"]
        .iter()
        .map(|f| f.parse().expect("fault"))
        .collect();
    let agent = Agent::subcommand(NETRAY, &["lab", "agent"]);
    let mut lab = Lab::up(&ClusterSpec::standard(3, 2), &agent).expect("lab up");
    for f in &faults {
        lab.apply(f).unwrap_or_else(|e| panic!("apply {f}: {e}"));
    }
    let spec = lab.spec().clone();
    let flows: Vec<matrix::MatrixFlow> = matrix::standard_flows(&spec)
        .into_iter()
        .filter(|f| f.to.starts_with("svc/"))
        .collect();
    let truths: Vec<matrix::FlowTruth> = flows
        .iter()
        .map(|f| {
            lab.kernel_truth(f)
                .unwrap_or_else(|e| panic!("probe {}: {e}", f.name))
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect bundle");
    drop(lab);
    let out = Command::new(NETRAY)
        .args(["audit", "--bundle"])
        .arg(dir.path())
        .args(["-o", "json", "--list-flows", "--every-pod"])
        .output()
        .expect("netray audit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // (from, to, endpoint IP) → causes (code, node) the audit names for it.
    let mut failing: BTreeMap<(String, String, Ipv4Addr), BTreeSet<(String, String)>> =
        BTreeMap::new();
    for g in doc["groups"].as_array().unwrap() {
        let cause = (
            g["cause"]["code"].as_str().unwrap().to_string(),
            g["cause"]["node"].as_str().unwrap().to_string(),
        );
        for f in g["failing"].as_array().unwrap() {
            let ep = f["endpoint"].as_str().unwrap();
            let Ok(ip) = ep.split(':').next().unwrap().parse::<Ipv4Addr>() else {
                continue;
            };
            failing
                .entry((
                    f["from"].as_str().unwrap().to_string(),
                    f["to"].as_str().unwrap().to_string(),
                    ip,
                ))
                .or_default()
                .insert(cause.clone());
        }
    }
    let expected: Vec<(String, Option<String>)> = faults
        .iter()
        .flat_map(|f| expected_causes(f, &spec))
        .collect();
    let mut problems = Vec::new();
    let (mut ok, mut bad) = (0, 0);
    for (f, t) in flows.iter().zip(&truths) {
        for (ip, target) in &t.targets {
            let key = (f.from.clone(), label(&f.to), *ip);
            let audit = failing.get(&key);
            let kernel_fails = !target.reachable();
            if kernel_fails {
                bad += 1;
            } else {
                ok += 1;
            }
            println!(
                "{:<44} {:<15} kernel {:<8} audit {}",
                f.name,
                ip.to_string(),
                if kernel_fails { "fails" } else { "works" },
                match audit {
                    Some(c) => format!("fails: {c:?}"),
                    None => "works".into(),
                }
            );
            match (kernel_fails, audit) {
                (true, None) => problems.push(format!(
                    "{} → {ip}: the kernel fails, the audit does not list it",
                    f.name
                )),
                (false, Some(c)) => problems.push(format!(
                    "{} → {ip}: the kernel answers, the audit says {c:?}",
                    f.name
                )),
                (true, Some(causes)) => {
                    for (code, node) in causes {
                        if !expected
                            .iter()
                            .any(|(c, n)| c == code && n.as_ref().is_none_or(|n| n == node))
                        {
                            problems.push(format!("{} → {ip}: cause {code} on {node} is none of the faults' {expected:?}", f.name));
                        }
                    }
                }
                (false, None) => {}
            }
        }
    }
    println!(
        "{ok} endpoints work and {bad} fail in the kernel; {} s",
        started.elapsed().as_secs()
    );
    assert!(
        bad > 0 && ok > 0,
        "the lab must have working and failing endpoints"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
