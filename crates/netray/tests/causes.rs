//! The symptoms issue 9 was filed with, one test each, over the bundled examples (no root
//! needed): a cause must be the object that decided, a fix must cover what the cluster uses,
//! and what netray cannot know must make the answer uncertain, never confident.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::NETRAY;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// `netray diagnose --bundle B --from F --to T -o json`: exit code and the JSON answer.
fn diagnose(bundle: &Path, from: &str, to: &str, extra: &[&str]) -> (i32, Value) {
    let b = bundle.to_str().unwrap();
    let mut args = vec![
        "diagnose", "--bundle", b, "--from", from, "--to", to, "-o", "json",
    ];
    args.extend(extra);
    let out = Command::new(NETRAY).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn codes(d: &Value) -> Vec<&str> {
    d["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect()
}

/// A copy of example `name` with `from` replaced by `to` (once) in `nodes/NODE.json`.
fn edited(name: &str, node: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = example(name);
    std::fs::create_dir(dir.path().join("nodes")).unwrap();
    std::fs::copy(src.join("cluster.json"), dir.path().join("cluster.json")).unwrap();
    for e in std::fs::read_dir(src.join("nodes")).unwrap() {
        let e = e.unwrap();
        let mut text = std::fs::read_to_string(e.path()).unwrap();
        if e.file_name() == format!("{node}.json").as_str() {
            assert!(text.contains(from), "{name}/{node} has no {from:?}");
            text = text.replacen(from, to, 1);
        }
        std::fs::write(dir.path().join("nodes").join(e.file_name()), text).unwrap();
    }
    dir
}

/// examples/003: the fix opens the cluster's pod network (flannel's `Network` in
/// cluster.json), not a guess from the node's own routes.
#[test]
fn forward_fix_opens_the_cluster_pod_network() {
    let cluster = std::fs::read_to_string(example("003-forward-drop/cluster.json")).unwrap();
    let network = "10.244.0.0/16";
    assert!(
        cluster.contains(&format!("\\\"Network\\\": \\\"{network}\\\"")),
        "003's flannel net-conf is {network}"
    );
    let (code, d) = diagnose(
        &example("003-forward-drop"),
        "node/node0",
        "pod/default/web-2:8080",
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(codes(&d), ["forward-policy-drop"]);
    let c = &d["causes"][0];
    assert_eq!(c["node"], "node1");
    let runs: Vec<&str> = c["fix_commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["run"].as_str().unwrap())
        .collect();
    assert_eq!(
        runs,
        [
            format!("iptables -t filter -I FORWARD 1 -s {network} -j ACCEPT"),
            format!("iptables -t filter -I FORWARD 1 -d {network} -j ACCEPT"),
        ]
    );
    assert_eq!(c["proof"]["proven"], true);
}

/// A pod reaching an address outside the cluster through its node's gateway is reachable as
/// far as netray can see (exit 0), with a note naming where it leaves and with which source.
#[test]
fn traffic_leaving_the_cluster_is_not_a_failure() {
    let (code, d) = diagnose(&example("healthy"), "pod/default/web-0", "1.1.1.1:443", &[]);
    assert_eq!(code, 0, "{d:#}");
    assert_eq!(d["verdict"], "reachable");
    assert!(codes(&d).is_empty(), "{d:#}");
    let notes = d["notes"].to_string();
    assert!(
        notes.contains("leaves the collected namespaces from node0/host via eth0")
            && notes.contains("source 192.168.50.10"),
        "{notes}"
    );
}

/// A closed port on a pod is that pod's socket table, not an unrelated Service's missing
/// endpoints.
#[test]
fn a_closed_pod_port_is_blamed_on_the_pod() {
    let (code, d) = diagnose(
        &example("healthy"),
        "pod/default/web-0",
        "pod/default/web-5:9999",
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(codes(&d), ["port-not-listening"], "{d:#}");
    let c = &d["causes"][0];
    assert_eq!(c["node"], "node2");
    assert!(!d.to_string().contains("no-endpoints"), "{d:#}");
}

/// A chain policy that does not parse decides nothing: a packet reaching it is uncertain,
/// and the cause names the line.
#[test]
fn an_unparsable_policy_makes_the_answer_uncertain() {
    let bundle = edited(
        "003-forward-drop",
        "node1",
        ":FORWARD DROP",
        ":FORWARD DORP",
    );
    let (code, d) = diagnose(bundle.path(), "node/node0", "pod/default/web-2:8080", &[]);
    assert_eq!(code, 1);
    assert_eq!(d["verdict"], "uncertain", "{d:#}");
    assert_eq!(codes(&d), ["uncertain-rule"]);
    let why = d["causes"][0]["explanation"].as_str().unwrap();
    assert!(
        why.contains("could not be parsed") && why.contains(":FORWARD DORP"),
        "{why}"
    );
}

/// An exploration cut at the branch limit is not a confident answer.
#[test]
fn a_truncated_exploration_is_uncertain() {
    let healthy = example("healthy");
    let (code, d) = diagnose(&healthy, "pod/default/web-0", "svc/default/web:80", &[]);
    assert_eq!((code, d["verdict"].as_str()), (0, Some("reachable")));
    let (code, d) = diagnose(
        &healthy,
        "pod/default/web-0",
        "svc/default/web:80",
        &["--max-branches", "2"],
    );
    assert_eq!(code, 1);
    assert_eq!(d["verdict"], "uncertain", "{d:#}");
    assert!(d["summary"].as_str().unwrap().contains("--max-branches"));
}

/// A blackhole `ip rule` is named by its priority (a typed field of the route lookup, not
/// parsed back from text), and its fix deletes exactly that rule: proven on the snapshot.
#[test]
fn a_blackhole_rule_is_named_and_deleted_by_its_priority() {
    let dir = tempfile::tempdir().unwrap();
    let src = example("healthy");
    std::fs::create_dir(dir.path().join("nodes")).unwrap();
    std::fs::copy(src.join("cluster.json"), dir.path().join("cluster.json")).unwrap();
    for e in std::fs::read_dir(src.join("nodes")).unwrap() {
        let e = e.unwrap();
        let mut j: Value =
            serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
        if e.file_name() == "node1.json" {
            let host = j["namespaces"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|n| n["role"] == "host")
                .unwrap();
            let mut rule = host["rules"][1].clone();
            rule["priority"] = 100.into();
            rule["dst"] = "10.244.1.0/24".into();
            rule["action"] = "blackhole".into();
            rule["table"] = Value::Null;
            host["rules"].as_array_mut().unwrap().insert(1, rule);
        }
        std::fs::write(
            dir.path().join("nodes").join(e.file_name()),
            serde_json::to_string(&j).unwrap(),
        )
        .unwrap();
    }
    let (code, d) = diagnose(
        dir.path(),
        "pod/default/web-0",
        "pod/default/web-2:8080",
        &[],
    );
    assert_eq!(code, 1, "{d:#}");
    assert_eq!(codes(&d), ["blackhole-rule"], "{d:#}");
    let c = &d["causes"][0];
    assert_eq!(c["node"], "node1");
    assert_eq!(c["fix_commands"][0]["run"], "ip rule del priority 100");
    assert_eq!(c["proof"]["proven"], true, "{c:#}");
    assert!(
        c["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "route-lookup" && o["rule_priority"] == 100),
        "{c:#}"
    );
}
