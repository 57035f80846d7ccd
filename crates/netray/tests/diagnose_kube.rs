//! `netray diagnose --kube` without `--bundle` (diagnose on demand, issue 12) against the
//! stand-in Kubernetes API of `collect_kube.rs` (`common/kube_standin.rs`): the nodes the flow
//! can touch are collected through collector pods (their exec streams examples/healthy's
//! recorded snapshots), the answer equals `diagnose --bundle` on the same snapshots, the cache
//! is used within `--max-age` and refreshed after, a node the plan could not foresee is named
//! with `--nodes NODE`, a failed node is named, and every collector pod is deleted.
//!
//! Loopback only; every run is bounded by a hang guard.
#![cfg(feature = "live")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

mod common;
use common::NETRAY;

#[path = "common/kube_standin.rs"]
mod kube_standin;
use kube_standin::*;

#[path = "../../netray-diagnose/benches/support/synth_bundle.rs"]
#[allow(dead_code)]
mod synth_bundle;

fn healthy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy")
}

/// A stand-in serving `items`, each of `nodes` answered by its recorded snapshot from `dir`.
fn standin(items: Vec<Value>, dir: &Path, nodes: &[&str]) -> StandIn {
    let behaviours = nodes
        .iter()
        .map(|n| {
            let json = Arc::new(std::fs::read(dir.join(format!("nodes/{n}.json"))).unwrap());
            (n.to_string(), NodeBehaviour::exec(Exec::Recorded(json)))
        })
        .collect();
    StandIn::start(items, behaviours, Faults::default(), "v4.channel.k8s.io")
}

/// What one `netray diagnose --kube` run printed.
struct Answer {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

/// `netray diagnose --kube --kubeconfig KC --cache CACHE --from FROM --to TO -o json ARGS`.
fn diagnose_kube(kc: &Path, cache: &Path, from: &str, to: &str, args: &[&str]) -> Answer {
    let mut cmd = Command::new(NETRAY);
    cmd.args(["diagnose", "--kube", "--kubeconfig", kc.to_str().unwrap()])
        .args(["--cache", cache.to_str().unwrap()])
        .args(["--from", from, "--to", to, "-o", "json"])
        .args(args)
        .env("NETRAY_KUBE_BACKOFF_MS", "50");
    let o = common::run_bounded(cmd, "netray diagnose --kube", HANG_GUARD);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let json = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    Answer {
        code: o.status.code(),
        json,
        stderr,
    }
}

/// Collector pods the stand-in saw created, by name: (node, execs).
fn pods(api: &StandIn) -> BTreeMap<String, (String, u32)> {
    let st = api.state.lock().unwrap();
    st.pods
        .iter()
        .map(|(name, p)| (name.clone(), (p.node.clone(), p.execs)))
        .collect()
}

/// The nodes of the pods created after `before` (each pod exec'd: it streamed a snapshot).
fn collected_after(api: &StandIn, before: &BTreeMap<String, (String, u32)>) -> BTreeSet<String> {
    pods(api)
        .into_iter()
        .filter(|(name, _)| !before.contains_key(name))
        .map(|(name, (node, execs))| {
            assert!(execs >= 1, "pod {name} on {node} created but never exec'd");
            node
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Every pod the stand-in saw created was deleted again.
fn assert_all_deleted(api: &StandIn) {
    assert!(
        api.not_deleted().is_empty(),
        "collector pods left behind: {:?}",
        api.not_deleted()
    );
}

/// The parts of an answer that must not depend on how the snapshots were obtained.
fn core(v: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in ["verdict", "summary", "from", "to", "endpoints", "causes"] {
        out.insert(key.into(), v[key].clone());
    }
    Value::Object(out)
}

/// The cache's node files (one API server: one hashed directory).
fn cached_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(cache).unwrap() {
        let nodes = d.unwrap().path().join("nodes");
        if let Ok(rd) = std::fs::read_dir(&nodes) {
            out.extend(rd.map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

/// On examples/healthy's cluster: a pod → Service flow collects the source's node and every
/// node hosting an endpoint (here all three), a pod → pod flow only the two nodes it joins;
/// each answer equals `diagnose --bundle examples/healthy` (verdict, summary, endpoints,
/// causes, notes), and every collector pod is deleted.
#[test]
fn only_the_planned_nodes_are_collected_and_the_answer_equals_the_bundles() {
    let t0 = Instant::now();
    let cluster = read_json(&healthy().join("cluster.json"));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    for (from, to, planned) in [
        (
            "pod/default/web-0",
            "svc/default/web:80",
            &["node0", "node1", "node2"][..],
        ),
        (
            "pod/default/web-0",
            "pod/default/web-2:8080",
            &["node0", "node1"],
        ),
        ("pod/default/web-4", "pod/default/web-5:8080", &["node2"]),
        // Entering on a named interface (`%IFACE`): that node is the source's.
        (
            "192.168.50.100@node/node1%eth0",
            "pod/default/web-2:8080",
            &["node1"],
        ),
        ("node/node1", "svc/default/empty:80", &["node1"]),
        (
            "external/203.0.113.9",
            "svc/default/web-lb:80",
            &["node0", "node1", "node2"],
        ),
        (
            "external/203.0.113.9",
            "192.168.50.11:30080",
            &["node0", "node1", "node2"],
        ),
    ] {
        // A fresh API server (and so a fresh cache directory) per flow.
        let api = standin(items_of(&cluster), &healthy(), &["node0", "node1", "node2"]);
        let kc = api.kubeconfig(tmp.path());
        let a = diagnose_kube(&kc, &cache, from, to, &[]);
        let (code, b) = diagnose_json(&healthy(), from, to);
        assert_eq!(
            collected_after(&api, &BTreeMap::new()),
            set(planned),
            "{from} → {to}: {}",
            a.stderr
        );
        assert!(
            a.stderr.contains(&format!(
                "diagnose --kube: {} of 3 nodes to read",
                planned.len()
            )),
            "{from} → {to}: {}",
            a.stderr
        );
        assert_eq!(a.code, code, "{from} → {to}: {}", a.stderr);
        assert_eq!(core(&a.json), core(&b), "{from} → {to}: {}", a.stderr);
        assert_eq!(a.json["notes"], b["notes"], "{from} → {to}");
        assert_all_deleted(&api);
    }
    eprintln!("four on-demand diagnoses: {:?}", t0.elapsed());
}

/// The cache: a second run within `--max-age` starts no pod and says it used the cache; a run
/// needing one more node collects only that one; `--max-age 0s` collects everything again; a
/// cached file older than `--max-age` (its mtime set back), one with a modification time in
/// the future, and a corrupt one (warned about) are collected again, each alone; the cache
/// directory is mode 0700. Every answer equals the bundle's.
#[test]
fn cached_snapshots_are_reused_within_max_age_and_refreshed_after() {
    let cluster = read_json(&healthy().join("cluster.json"));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let api = standin(items_of(&cluster), &healthy(), &["node0", "node1", "node2"]);
    let kc = api.kubeconfig(tmp.path());
    let pod_to_pod = ("pod/default/web-0", "pod/default/web-2:8080");
    let pod_to_svc = ("pod/default/web-0", "svc/default/web:80");
    let expected = |(from, to): (&str, &str)| core(&diagnose_json(&healthy(), from, to).1);
    // Runs `flow` with `args`; returns the nodes collected and stderr.
    let run = |(from, to): (&str, &str), args: &[&str]| -> (BTreeSet<String>, String) {
        let before = pods(&api);
        let a = diagnose_kube(&kc, &cache, from, to, args);
        assert_eq!(a.code, Some(0), "{from} → {to} {args:?}: {}", a.stderr);
        assert_eq!(
            core(&a.json),
            expected((from, to)),
            "{from} → {to} {args:?}: {}",
            a.stderr
        );
        assert_all_deleted(&api);
        (collected_after(&api, &before), a.stderr)
    };
    let (got, _) = run(pod_to_pod, &[]);
    assert_eq!(got, set(&["node0", "node1"]));
    let files = cached_files(&cache);
    assert_eq!(
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect::<Vec<_>>(),
        ["node0.json", "node1.json"],
        "{files:?}"
    );
    // Within --max-age (default 5m): nothing collected, the cache named.
    let (got, err) = run(pod_to_pod, &[]);
    assert_eq!(got, set(&[]), "{err}");
    assert!(
        err.contains("from the cache") && err.contains("node0 (") && err.contains("node1 ("),
        "{err}"
    );
    assert!(!err.contains("netray: collected"), "{err}");
    // One more node needed: only that one is collected.
    let (got, err) = run(pod_to_svc, &["--max-age", "1h"]);
    assert_eq!(got, set(&["node2"]), "{err}");
    // --max-age 0s: every planned node again.
    let (got, err) = run(pod_to_svc, &["--max-age", "0s"]);
    assert_eq!(got, set(&["node0", "node1", "node2"]), "{err}");
    assert!(!err.contains("from the cache"), "{err}");
    // node0's file ten minutes old: older than the default 5m, collected again alone.
    let dir = files[0].parent().unwrap().to_path_buf();
    std::fs::File::options()
        .write(true)
        .open(dir.join("node0.json"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    let (got, err) = run(pod_to_svc, &[]);
    assert_eq!(got, set(&["node0"]), "{err}");
    // With --max-age 20m the same age would have been fresh enough.
    std::fs::File::options()
        .write(true)
        .open(dir.join("node0.json"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    let (got, err) = run(pod_to_svc, &["--max-age", "20m"]);
    assert_eq!(got, set(&[]), "{err}");
    assert!(err.contains("node0 (10m0"), "{err}");
    // A modification time in the future proves nothing: collected again.
    std::fs::File::options()
        .write(true)
        .open(dir.join("node1.json"))
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    let (got, err) = run(pod_to_svc, &["--max-age", "20m"]);
    assert_eq!(got, set(&["node1"]), "{err}");
    // The cache directory is the user's only (snapshots hold every rule and address).
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }
    // A corrupt file, and another node's snapshot under node2's name: warned, collected again
    // (node0's file made fresh again).
    std::fs::File::options()
        .write(true)
        .open(dir.join("node0.json"))
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();
    std::fs::write(dir.join("node1.json"), b"{\"version\": 1, \"trunc").unwrap();
    std::fs::copy(dir.join("node0.json"), dir.join("node2.json")).unwrap();
    let (got, err) = run(pod_to_svc, &[]);
    assert_eq!(got, set(&["node1", "node2"]), "{err}");
    for n in ["node1", "node2"] {
        assert!(
            err.contains(
                &format!("node2.json: not a valid snapshot of node {n}; collecting it again")
                    .replace("node2.json", &format!("{n}.json"))
            ),
            "{err}"
        );
    }
    // And the cache holds valid snapshots again.
    let (got, err) = run(pod_to_svc, &[]);
    assert_eq!(got, set(&[]), "{err}");
    assert!(!err.contains("warning"), "{err}");
}

/// The cluster view without pod CIDRs (as with an IPAM that does not set `spec.podCIDR`): an
/// address no pod holds yet cannot be placed, so the plan is only the source's node. The walk
/// follows node0's route over VXLAN to node2, which was not collected: the answer is
/// uncertain (node-snapshot-missing) with a note naming `--nodes node2`. With `--nodes node2`
/// that node is collected (node0 comes from the cache) and walked, and the answer equals
/// `diagnose --bundle` over the same cluster view.
#[test]
fn a_node_the_plan_did_not_foresee_is_named_and_walked_with_nodes() {
    let mut cluster = read_json(&healthy().join("cluster.json"));
    for i in cluster["items"].as_array_mut().unwrap() {
        if i["kind"] == "Node" {
            let spec = i["spec"].as_object_mut().unwrap();
            spec.remove("podCIDR");
            spec.remove("podCIDRs");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    // The same snapshots with this cluster view, as a bundle on disk.
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(bundle.join("nodes")).unwrap();
    for n in ["node0", "node1", "node2"] {
        std::fs::copy(
            healthy().join(format!("nodes/{n}.json")),
            bundle.join(format!("nodes/{n}.json")),
        )
        .unwrap();
    }
    std::fs::write(bundle.join("cluster.json"), cluster.to_string()).unwrap();
    let cache = tmp.path().join("cache");
    let api = standin(items_of(&cluster), &healthy(), &["node0", "node1", "node2"]);
    let kc = api.kubeconfig(tmp.path());
    let (from, to) = ("pod/default/web-0", "10.244.2.9:8080");

    let a = diagnose_kube(&kc, &cache, from, to, &[]);
    assert_eq!(
        collected_after(&api, &BTreeMap::new()),
        set(&["node0"]),
        "{}",
        a.stderr
    );
    assert_eq!(a.code, Some(1), "{}", a.stderr);
    assert_eq!(a.json["verdict"], "uncertain", "{}", a.json);
    let causes: Vec<&str> = a.json["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["code"].as_str())
        .collect();
    assert!(
        a.json.to_string().contains("node-snapshot-missing"),
        "{causes:?}: {}",
        a.json
    );
    let notes = a.json["notes"].to_string();
    assert!(
        notes.contains("the walk reached node node2") && notes.contains("--nodes node2"),
        "{notes}"
    );
    // node1 was left out too but not reached: not named.
    assert!(!notes.contains("node1"), "{notes}");
    // Left out on purpose is not a failure: no warning about it.
    assert!(!a.stderr.contains("warning"), "{}", a.stderr);

    let before = pods(&api);
    let b = diagnose_kube(&kc, &cache, from, to, &["--nodes", "node2"]);
    assert_eq!(
        collected_after(&api, &before),
        set(&["node2"]),
        "{}",
        b.stderr
    );
    assert!(b.stderr.contains("node2 (--nodes)"), "{}", b.stderr);
    assert!(
        !b.json.to_string().contains("node-snapshot-missing"),
        "{}",
        b.json
    );
    let (code, whole) = diagnose_json(&bundle, from, to);
    assert_eq!(b.code, code, "{}", b.stderr);
    assert_eq!(core(&b.json), core(&whole), "{}", b.stderr);
    assert_eq!(b.json["notes"], whole["notes"]);
    assert_ne!(b.json["verdict"], "uncertain", "{}", b.json);
    assert_all_deleted(&api);
}

/// `--nodes` naming a node the cluster does not have: a did-you-mean error, exit 2, no pod.
/// On-demand options without `--kube` (or with `--bundle`) are refused, exit 2.
#[test]
fn unknown_nodes_and_on_demand_options_without_kube_are_refused() {
    let cluster = read_json(&healthy().join("cluster.json"));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let api = standin(items_of(&cluster), &healthy(), &["node0", "node1", "node2"]);
    let kc = api.kubeconfig(tmp.path());
    let a = diagnose_kube(
        &kc,
        &cache,
        "pod/default/web-0",
        "svc/default/web:80",
        &["--nodes", "node1,nod2"],
    );
    assert_eq!(a.code, Some(2), "{}", a.stderr);
    assert!(
        a.stderr.contains("no node \"nod2\"") && a.stderr.contains("--nodes node2"),
        "{}",
        a.stderr
    );
    assert!(api.created().is_empty());
    let bundle = healthy();
    let bundle = bundle.to_str().unwrap();
    for (args, flag) in [
        (vec!["--nodes", "node1"], "--nodes"),
        (vec!["--all"], "--all"),
        (vec!["--max-age", "5m"], "--max-age"),
        (vec!["--cache", "/tmp/x"], "--cache"),
        (
            vec!["--kube", "--bundle", bundle, "--max-age", "5m"],
            "--max-age",
        ),
    ] {
        let mut full = vec![
            "diagnose",
            "--from",
            "pod/default/web-0",
            "--to",
            "svc/default/web:80",
        ];
        if !args.contains(&"--bundle") {
            full.extend(["--bundle", bundle]);
        }
        full.extend(args.iter().copied());
        let o = common::netray_bounded(&full, HANG_GUARD);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{full:?}: {err}");
        assert!(
            err.contains(&format!("{flag} is an option of diagnose on demand")),
            "{full:?}: {err}"
        );
    }
    assert!(api.created().is_empty());
}

/// An endpoint node whose collector fails (exits non-zero): the answer is still given over the
/// other nodes, the failed node is named with the reason in a note and on stderr, the branches
/// to its endpoints end uncertain, and the exit code is the verdict's (1: not reachable for
/// certain). Its pod is deleted too, and nothing is cached for it.
#[test]
fn a_node_whose_collection_fails_is_named_and_the_answer_still_given() {
    let cluster = read_json(&healthy().join("cluster.json"));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut nodes = BTreeMap::new();
    for n in ["node0", "node1"] {
        let json = Arc::new(std::fs::read(healthy().join(format!("nodes/{n}.json"))).unwrap());
        nodes.insert(n.to_string(), NodeBehaviour::exec(Exec::Recorded(json)));
    }
    nodes.insert("node2".into(), NodeBehaviour::exec(Exec::ExitFails));
    let api = StandIn::start(
        items_of(&cluster),
        nodes,
        Faults::default(),
        "v4.channel.k8s.io",
    );
    let kc = api.kubeconfig(tmp.path());
    let a = diagnose_kube(
        &kc,
        &cache,
        "pod/default/web-0",
        "svc/default/web:80",
        &["--timeout", "20s"],
    );
    assert_eq!(
        collected_after(&api, &BTreeMap::new()),
        set(&["node0", "node1", "node2"])
    );
    assert_all_deleted(&api);
    assert_eq!(a.code, Some(1), "{}", a.stderr);
    assert!(
        matches!(a.json["verdict"].as_str(), Some("partial" | "uncertain")),
        "{}",
        a.json
    );
    assert!(
        a.stderr.contains("failed: node2 (") && a.stderr.contains("warning"),
        "{}",
        a.stderr
    );
    let notes = a.json["notes"].to_string();
    assert!(
        notes.contains("node2 (collection failed") && notes.contains("exit"),
        "{notes}"
    );
    // Not "left out": no --nodes hint for a node that was tried.
    assert!(!notes.contains("--nodes node2"), "{notes}");
    // The endpoints on node0 and node1 are reachable; node2's are not known.
    for e in a.json["endpoints"].as_array().unwrap() {
        let ep = e["endpoint"].as_str().unwrap();
        let on_node2 = ep.starts_with("10.244.2.");
        assert_eq!(e["reachable"], !on_node2, "{e}");
    }
    let files: Vec<String> = cached_files(&cache)
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(files, ["node0.json", "node1.json"]);

    // The source's node failing: no walk can start; the error names the node and why.
    let mut nodes = BTreeMap::new();
    nodes.insert("node0".to_string(), NodeBehaviour::exec(Exec::ExitFails));
    for n in ["node1", "node2"] {
        let json = Arc::new(std::fs::read(healthy().join(format!("nodes/{n}.json"))).unwrap());
        nodes.insert(n.to_string(), NodeBehaviour::exec(Exec::Recorded(json)));
    }
    let api = StandIn::start(
        items_of(&cluster),
        nodes,
        Faults::default(),
        "v4.channel.k8s.io",
    );
    let kc = api.kubeconfig(tmp.path());
    let a = diagnose_kube(
        &kc,
        &cache,
        "pod/default/web-0",
        "pod/default/web-1:8080",
        &[],
    );
    assert_all_deleted(&api);
    assert_eq!(a.code, Some(2), "{}", a.stderr);
    assert!(
        a.stderr.contains("no node could be collected")
            && a.stderr.contains("node0: the collector failed"),
        "{}",
        a.stderr
    );
    // The source's node failing while others were collected: the error says why.
    let cache = tmp.path().join("cache2");
    let a = diagnose_kube(&kc, &cache, "pod/default/web-0", "svc/default/web:80", &[]);
    assert_all_deleted(&api);
    assert_eq!(a.code, Some(2), "{}", a.stderr);
    assert!(
        a.stderr.contains("node0") && a.stderr.contains("the collector failed"),
        "{}",
        a.stderr
    );
}

/// The 50-node synthetic cluster of collect_kube.rs (bench generator, every node answered by
/// its recorded snapshot): one pod → Service diagnosis on demand collects only the source's
/// node and the nodes of the Service's endpoints, against `collect --kube --all` collecting 50;
/// the answer equals `diagnose --bundle` over the whole recorded bundle. Prints both wall times
/// (end to end, same run) and their ratio.
#[test]
fn one_diagnosis_on_fifty_nodes_collects_a_handful() {
    let tmp = tempfile::tempdir().unwrap();
    let hand = tmp.path().join("hand");
    synth_bundle::write_bundle(
        &hand,
        &synth_bundle::Spec {
            nodes: 50,
            pods_per_node: 4,
            services: 20,
            endpoints: 3,
        },
    )
    .unwrap();
    let cluster = read_json(&hand.join("cluster.json"));
    let names: Vec<String> = (0..50).map(|k| format!("node{k}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let api = standin(items_of(&cluster), &hand, &refs);
    let kc = api.kubeconfig(tmp.path());
    let (from, to) = ("pod/default/pod-1-0", "svc/ns-5/svc-5:80");
    // The plan, from the cluster view: pod-1-0's node and svc-5's endpoint nodes.
    let mut planned = set(&["node1"]);
    for i in items_of(&cluster) {
        if i["kind"] == "EndpointSlice"
            && i["metadata"]["labels"]["kubernetes.io/service-name"] == "svc-5"
        {
            for e in i["endpoints"].as_array().unwrap() {
                planned.insert(e["nodeName"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(planned.len() >= 2 && planned.len() <= 4, "{planned:?}");

    let t0 = Instant::now();
    let a = diagnose_kube(&kc, &tmp.path().join("cache"), from, to, &[]);
    let on_demand = t0.elapsed();
    let collected = collected_after(&api, &BTreeMap::new());
    assert_eq!(collected, planned, "{}", a.stderr);
    let (code, whole) = diagnose_json(&hand, from, to);
    assert_eq!(a.code, code, "{}", a.stderr);
    assert_eq!(core(&a.json), core(&whole), "{}", a.stderr);
    assert_all_deleted(&api);

    // Again, every node from the cache.
    let before = pods(&api);
    let t2 = Instant::now();
    let again = diagnose_kube(&kc, &tmp.path().join("cache"), from, to, &[]);
    let cached_run = t2.elapsed();
    assert!(
        collected_after(&api, &before).is_empty(),
        "{}",
        again.stderr
    );
    assert_eq!(core(&again.json), core(&whole));

    let before = pods(&api);
    let out = tmp.path().join("all");
    let t1 = Instant::now();
    let r = collect(&kc, &["--all", "-o", out.to_str().unwrap()]);
    let all_collect = t1.elapsed();
    let (_, b) = diagnose_json(&out, from, to);
    let all_total = t1.elapsed();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(collected_after(&api, &before).len(), 50);
    assert_eq!(core(&b), core(&whole));
    assert_all_deleted(&api);
    let bytes = |files: Vec<PathBuf>| -> u64 {
        files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum()
    };
    let all_files: Vec<PathBuf> = std::fs::read_dir(out.join("nodes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    eprintln!(
        "50 nodes, {from} → {to}: diagnose --kube collected {} nodes ({}, {} KB of snapshots) in \
         {:.2} s end to end; collect --kube --all collected 50 ({} KB) in {:.2} s, + diagnose \
         --bundle = {:.2} s; ratio {:.1}x; diagnose --kube again from the cache: {:.2} s",
        collected.len(),
        collected.iter().cloned().collect::<Vec<_>>().join(","),
        bytes(cached_files(&tmp.path().join("cache"))) / 1000,
        on_demand.as_secs_f64(),
        bytes(all_files) / 1000,
        all_collect.as_secs_f64(),
        all_total.as_secs_f64(),
        all_total.as_secs_f64() / on_demand.as_secs_f64(),
        cached_run.as_secs_f64()
    );
}

/// SIGINT while the planned nodes' collector pods are starting: every pod is deleted, the exit
/// code is 130 (as for `collect --kube`), and the cache keeps neither a snapshot nor the run's
/// work directory.
#[test]
fn an_interrupted_diagnosis_deletes_its_pods_and_exits_130() {
    let cluster = read_json(&healthy().join("cluster.json"));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut nodes = BTreeMap::new();
    for n in ["node0", "node1", "node2"] {
        let mut b = NodeBehaviour::exec(Exec::ExitFails);
        b.never_runs = true;
        nodes.insert(n.to_string(), b);
    }
    let api = StandIn::start(
        items_of(&cluster),
        nodes,
        Faults::default(),
        "v4.channel.k8s.io",
    );
    let kc = api.kubeconfig(tmp.path());
    let mut child = Command::new(NETRAY)
        .args(["diagnose", "--kube", "--kubeconfig", kc.to_str().unwrap()])
        .args(["--cache", cache.to_str().unwrap(), "--timeout", "90s"])
        .args(["--from", "pod/default/web-0", "--to", "svc/default/web:80"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while api.created().len() < 3 {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("pods not created");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the pid of a child we spawned and have not waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            panic!("netray did not stop after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("interrupted while collecting"), "{stderr}");
    assert_eq!(api.created().len(), 3);
    assert_all_deleted(&api);
    let log = api.log();
    for pod in api.created() {
        assert!(
            log.iter()
                .any(|l| l == &format!("DELETE /api/v1/namespaces/netray/pods/{pod}")),
            "no DELETE for {pod}: {log:?}"
        );
    }
    // The API server's cache directory holds an empty nodes/ and nothing else.
    let dirs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let inside: Vec<String> = std::fs::read_dir(&dirs[0])
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(inside, ["nodes"], "work directory left behind");
    assert!(cached_files(&cache).is_empty());
}

/// The README's `diagnose --kube` commands, run as written against the stand-in serving
/// examples/healthy (its context standing for `prod`, `kubectl netray` being a link named
/// `kubectl-netray`, the kubeconfig from `$KUBECONFIG`, the cache in the default place under
/// `$XDG_CACHE_HOME`): both answer reachable; the second (the plugin, another flow over the same
/// API server) reads every node it needs from the cache the first filled.
#[test]
fn the_readme_commands_work_as_written() {
    let readme = std::fs::read_to_string(healthy().join("../../README.md")).unwrap();
    let section = readme
        .split("**Diagnose on demand.**")
        .nth(1)
        .expect("README section on diagnose --kube");
    let block = section.split("```sh\n").nth(1).unwrap();
    let block = block.split("```").next().unwrap();
    let commands: Vec<&str> = block
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands.len(), 2, "{block}");
    let cluster = read_json(&healthy().join("cluster.json"));
    let api = standin(items_of(&cluster), &healthy(), &["node0", "node1", "node2"]);
    let tmp = tempfile::tempdir().unwrap();
    let kc = api.kubeconfig(tmp.path());
    let plugin = tmp.path().join("kubectl-netray");
    std::os::unix::fs::symlink(NETRAY, &plugin).unwrap();
    let xdg = tmp.path().join("xdg");
    let mut created = Vec::new();
    for line in &commands {
        let line = line.replace("--context prod", "--context standin");
        let words: Vec<&str> = line.split_whitespace().collect();
        let (program, args) = match words[..] {
            ["netray", ..] => (PathBuf::from(NETRAY), &words[1..]),
            ["kubectl", "netray", ..] => (plugin.clone(), &words[2..]),
            _ => panic!("README command {line}"),
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("KUBECONFIG", &kc)
            .env("XDG_CACHE_HOME", &xdg)
            .env("NETRAY_KUBE_BACKOFF_MS", "50");
        let before = pods(&api);
        let o = common::run_bounded(cmd, &line, HANG_GUARD);
        let stderr = String::from_utf8_lossy(&o.stderr);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{line}: {stdout}\n{stderr}");
        assert!(
            stdout.starts_with("from ") && stdout.contains("\nREACHABLE: "),
            "{stdout}"
        );
        assert!(stderr.contains("3 of 3 nodes to read"), "{line}: {stderr}");
        created.push(collected_after(&api, &before));
    }
    assert_eq!(created, [set(&["node0", "node1", "node2"]), set(&[])]);
    assert_eq!(cached_files(&xdg.join("netray")).len(), 3);
    assert_all_deleted(&api);
}

/// An outside client to a LoadBalancer with `externalTrafficPolicy: Cluster` whose endpoints
/// (in the cluster view) are all on node1: the load balancer may send to any node, so the plan
/// walks the endpoint node and one other (node0), and the note says one entry node was not
/// walked; `--all` collects and walks all three and answers like `diagnose --bundle` over the
/// same cluster view. A NodePort on node2's address enters at node2 and reads the Service's
/// endpoint node, each named with why (the client as given).
#[test]
fn a_load_balancer_walks_its_endpoint_nodes_and_one_other_unless_all() {
    let mut cluster = read_json(&healthy().join("cluster.json"));
    for i in cluster["items"].as_array_mut().unwrap() {
        if i["kind"] == "EndpointSlice" && i["metadata"]["name"] == "web-lb-ux7f6" {
            let on_node1: Vec<Value> = i["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["nodeName"] == "node1")
                .cloned()
                .collect();
            i["endpoints"] = Value::Array(on_node1);
        }
        if i["kind"] == "Service" && i["metadata"]["name"] == "web-lb" {
            i["spec"]["externalTrafficPolicy"] = "Cluster".into();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(bundle.join("nodes")).unwrap();
    for n in ["node0", "node1", "node2"] {
        std::fs::copy(
            healthy().join(format!("nodes/{n}.json")),
            bundle.join(format!("nodes/{n}.json")),
        )
        .unwrap();
    }
    std::fs::write(bundle.join("cluster.json"), cluster.to_string()).unwrap();
    let cache = tmp.path().join("cache");
    let api = standin(items_of(&cluster), &healthy(), &["node0", "node1", "node2"]);
    let kc = api.kubeconfig(tmp.path());
    let (from, to) = ("external/203.0.113.9", "svc/default/web-lb:80");

    let a = diagnose_kube(&kc, &cache, from, to, &[]);
    assert_eq!(
        collected_after(&api, &BTreeMap::new()),
        set(&["node0", "node1"]),
        "{}",
        a.stderr
    );
    let notes = a.json["notes"].to_string();
    assert!(
        notes.contains("1 entry node the load balancer may also send to was not walked")
            && notes.contains("--all"),
        "{notes}"
    );
    assert!(
        !a.json["to"].to_string().contains("node2"),
        "node2 is not walked: {}",
        a.json["to"]
    );
    assert!(a.json["to"].to_string().contains("via node/node0"));

    let before = pods(&api);
    let b = diagnose_kube(&kc, &cache, from, to, &["--all"]);
    assert_eq!(
        collected_after(&api, &before),
        set(&["node2"]),
        "{}",
        b.stderr
    );
    let (code, whole) = diagnose_json(&bundle, from, to);
    assert_eq!(b.code, code, "{}", b.stderr);
    assert_eq!(core(&b.json), core(&whole), "{}", b.stderr);
    assert_eq!(b.json["notes"], whole["notes"]);

    // A NodePort on node2's address: entry node2, the Service's endpoint node1.
    let c = diagnose_kube(
        &kc,
        &tmp.path().join("cache2"),
        from,
        "192.168.50.12:30081",
        &[],
    );
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(
        c.stderr.contains("2 of 3 nodes to read: node1 (endpoint of svc/default/web-lb); node2 (destination 192.168.50.12 port 30081/tcp, entry of external/203.0.113.9)"),
        "{}",
        c.stderr
    );
    assert_all_deleted(&api);
}
