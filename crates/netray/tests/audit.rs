//! `netray audit` on the bundled examples (real state captured from the kernel lab): each
//! failing example's documented cause is one of the audit's groups, on its node; `healthy` is
//! clean; the JSON conforms to `schemas/audit.schema.json`; exit codes follow `--fail-on` as
//! `scan`'s do. Needs no root.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example(name: &str) -> String {
    workspace()
        .join("examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn validator() -> jsonschema::Validator {
    let path = workspace().join("schemas/audit.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid JSON Schema: {e}", path.display()))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(NETRAY).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `netray audit --bundle examples/NAME -o json`, checked against the schema and `exit`.
fn audit(name: &str, extra: &[&str], exit: i32) -> Value {
    let bundle = example(name);
    let mut args = vec!["audit", "--bundle", bundle.as_str(), "-o", "json"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, exit, "netray {}: stderr: {stderr}", args.join(" "));
    let doc: Value = serde_json::from_str(&stdout).expect("JSON");
    let errors: Vec<String> = validator()
        .iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {}", errors.join("\n"));
    doc
}

/// `(code, node, severity)` of every group.
fn groups(doc: &Value) -> Vec<(String, String, String)> {
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["cause"]["code"].as_str().unwrap().to_string(),
                g["cause"]["node"].as_str().unwrap().to_string(),
                g["cause"]["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Each failing example and the causes its README documents (code, node).
const DOCUMENTED: &[(&str, &[(&str, &str)])] = &[
    (
        "000-bridge-nf-masq",
        &[("bridge-nf-snat-conflict", "node0")],
    ),
    (
        "001-checklist",
        &[
            ("ip-forward-disabled", "node1"),
            ("rp-filter-drop", "node2"),
            ("pod-no-default-route", "node0"),
        ],
    ),
    (
        "002-stale-vtep",
        &[
            ("stale-vxlan-neighbor", "node2"),
            ("stale-vxlan-neighbor", "node3"),
        ],
    ),
    ("003-forward-drop", &[("forward-policy-drop", "node1")]),
    ("004-local-service-ip", &[("martian-source", "node1")]),
    ("005-stale-conntrack", &[("stale-conntrack-entry", "node0")]),
];

#[test]
fn each_failing_example_names_its_documented_cause() {
    for (name, causes) in DOCUMENTED {
        let doc = audit(name, &[], 1);
        let got = groups(&doc);
        for (code, node) in *causes {
            assert!(
                got.iter().any(|(c, n, _)| c == code && n == node),
                "{name}: no group {code} on {node}; groups: {got:?}"
            );
        }
        // Every group counts its flows and names one to diagnose.
        for g in doc["groups"].as_array().unwrap() {
            assert!(g["flows"].as_u64().unwrap() >= 1, "{name}: {g:#}");
            assert!(g["summary"].as_str().unwrap().contains(" fail"), "{g:#}");
            assert!(g["example"]["from"].as_str().is_some_and(|s| !s.is_empty()));
        }
        let s = &doc["summary"];
        assert!(
            s["failing_flows"].as_u64() <= s["flows"].as_u64(),
            "{name}: {s}"
        );
    }
}

#[test]
fn healthy_is_clean_and_fail_on_works_like_scan() {
    // Only the Service without endpoints, which kube-proxy rejects by design: info.
    let doc = audit("healthy", &[], 0);
    for (code, node, severity) in groups(&doc) {
        assert_eq!(
            (code.as_str(), severity.as_str()),
            ("no-endpoints", "info"),
            "healthy: {node}"
        );
    }
    assert!(doc["not_walked"].is_null(), "{doc:#}");
    audit("healthy", &["--fail-on", "info"], 1);
    // 005's stale conntrack entry is a warning: not at or above critical.
    audit("005-stale-conntrack", &["--fail-on", "critical"], 0);
    audit("003-forward-drop", &["--fail-on", "critical"], 1);
}

#[test]
fn the_text_report_groups_flows_by_cause_with_the_fix() {
    let bundle = example("002-stale-vtep");
    let (code, out, stderr) = run(&["audit", "--bundle", &bundle]);
    assert_eq!(code, 1, "{stderr}");
    let line = out
        .lines()
        .find(|l| l.contains("stale-vxlan-neighbor on node2"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(" flows from "), "{line}");
    assert!(out.contains("ip neigh replace 10.244.0.0 lladdr"), "{out}");
    assert!(
        out.contains(&format!("netray diagnose --bundle {bundle} --from ")),
        "{out}"
    );
}

#[test]
fn protocol_filter_and_bad_input() {
    // UDP only: no TCP Service port and no echo probe is walked.
    let doc = audit("002-stale-vtep", &["--proto", "udp"], 1);
    for g in doc["groups"].as_array().unwrap() {
        for t in g["targets"].as_array().unwrap() {
            let t = t.as_str().unwrap();
            assert!(t.ends_with("/udp"), "{t}");
        }
    }
    // A bundle without cluster.json: audit needs the cluster view (exit 2, saying so).
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes");
    std::fs::create_dir(&nodes).unwrap();
    std::fs::copy(
        workspace().join("examples/healthy/nodes/node0.json"),
        nodes.join("node0.json"),
    )
    .unwrap();
    let (code, _, stderr) = run(&["audit", "--bundle", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("needs the cluster view"), "{stderr}");
}
