//! `netray collect --kube` against a stand-in Kubernetes API (issue 12): an HTTP server on
//! 127.0.0.1 answering with the API's response shapes — lists of nodes, pods, services,
//! endpointslices and configmaps; pod create (201), get (Pending → Running), delete; the exec
//! subresource as a WebSocket upgrade (`v4.channel.k8s.io` / `v5.channel.k8s.io`: channel 1
//! stdout, 2 stderr, 3 the status JSON); errors 401/403/404/409/429/500/503; a node whose pod
//! never starts; dropped connections. Behind the exec, either the real collector runs inside a
//! lab node's namespace (`ip netns exec NODE netray collect --node NODE -o - --gzip`, the
//! command the pod receives) or a recorded snapshot is streamed in the same format.
//!
//! Loopback only; every run is bounded by a hang guard.
#![cfg(feature = "live")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::NETRAY;

#[path = "common/kube_standin.rs"]
mod kube_standin;
use kube_standin::*;

#[path = "../../netray-diagnose/benches/support/synth_bundle.rs"]
#[allow(dead_code)]
mod synth_bundle;

/// A synthetic 50-node cluster (consistent snapshots and cluster.json, written by the bench
/// generator), every node answered by its recorded snapshot; node7's pod never starts, node3's
/// first exec stream drops halfway, and the API answers 429, 500-after-create (then 409), 503
/// and a dropped connection on the way. The run must end partial (exit 1) naming node7 as timed
/// out, write the other 49 snapshots byte-for-byte equal (as JSON) to the recorded ones,
/// delete every pod it created, and the bundle must diagnose like the recorded one.
#[test]
fn fifty_nodes_in_parallel_with_a_timeout_and_transient_errors_give_a_partial_bundle() {
    let t0 = Instant::now();
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
    let mut nodes = BTreeMap::new();
    for k in 0..50 {
        let name = format!("node{k}");
        let json = Arc::new(std::fs::read(hand.join(format!("nodes/{name}.json"))).unwrap());
        let mut b = NodeBehaviour::exec(if k == 3 {
            Exec::DropFirst(json)
        } else {
            Exec::Recorded(json)
        });
        b.never_runs = k == 7;
        nodes.insert(name, b);
    }
    let api = StandIn::start(
        items_of(&cluster),
        nodes,
        Faults {
            create_429: 2,
            create_quota: 2,
            create_500_after_create: 1,
            get_503: 2,
            get_drop: 1,
            ..Faults::default()
        },
        "v4.channel.k8s.io",
    );
    let kc = api.kubeconfig(tmp.path());
    let out = tmp.path().join("out");
    let r = collect(
        &kc,
        &[
            "--all",
            "--parallel",
            "8",
            "--timeout",
            "4s",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let took = t0.elapsed();
    assert_eq!(r.code, Some(1), "partial must be exit 1: {}", r.stderr);
    assert!(
        r.stderr.contains("collected 49 of 50 nodes"),
        "{}\n{:?}",
        r.stderr,
        api.log()
            .iter()
            .filter(|l| l.contains("-3/") || l.ends_with("-3"))
            .collect::<Vec<_>>()
    );
    let failed = read_json(&out.join("failed-nodes.json"));
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["node"], "node7");
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("timed out after 4 s") && reason.contains("ContainerCreating"),
        "{reason}"
    );
    for k in (0..50).filter(|k| *k != 7) {
        let name = format!("node{k}.json");
        assert_eq!(
            read_json(&out.join("nodes").join(&name)),
            read_json(&hand.join("nodes").join(&name)),
            "{name}"
        );
    }
    assert!(!out.join("nodes/node7.json").exists());
    assert_eq!(
        std::fs::read_dir(out.join("nodes")).unwrap().count(),
        49,
        "no .partial files left"
    );
    // Every created pod was deleted, the slow one too.
    assert_eq!(api.created().len(), 50);
    assert!(api.not_deleted().is_empty(), "{:?}", api.not_deleted());
    // node3's stream was retried; the injected errors were met and retried.
    let log = api.log();
    let execs = |n: &str| {
        let st = api.state.lock().unwrap();
        st.pods
            .values()
            .filter(|p| p.node == n)
            .map(|p| p.execs)
            .sum::<u32>()
    };
    assert_eq!(execs("node3"), 2, "the dropped stream is retried once");
    assert_eq!(execs("node7"), 0);
    let posts = log.iter().filter(|l| l.starts_with("POST")).count();
    assert_eq!(
        posts,
        50 + 2 + 2 + 1,
        "50 creates, 2 retried 429s, 2 retried quota 403s, 1 retried 500 (→ 409)"
    );
    // The exec ran the collector as the pod would.
    let cmd = api.state.lock().unwrap().exec_commands[0].clone();
    assert_eq!(&cmd[..2], &["netray", "collect"]);
    assert!(cmd.iter().any(|a| a == "--gzip") && cmd.iter().any(|a| a == "-"));
    // The pod as posted: pinned, host namespaces, read-only host root, labelled.
    let pod = api
        .state
        .lock()
        .unwrap()
        .pods
        .values()
        .next()
        .unwrap()
        .body
        .clone();
    assert!(
        pod["spec"]["nodeName"]
            .as_str()
            .unwrap()
            .starts_with("node")
    );
    assert_eq!(pod["spec"]["hostNetwork"], true);
    assert_eq!(pod["spec"]["hostPID"], true);
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "netray"
    );
    assert!(pod["metadata"]["labels"]["netray.io/run"].is_string());
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["volumeMounts"][0]["readOnly"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    // The bundle diagnoses like the recorded one (a flow whose nodes were collected), and the
    // cluster view came from the same API.
    assert_eq!(
        read_json(&out.join("cluster.json"))["items"]
            .as_array()
            .unwrap()
            .len(),
        cluster["items"].as_array().unwrap().len()
    );
    // (The synthetic snapshots have no underlay namespace, so cross-node flows end at the
    // edge of the snapshot: the answer only has to be the same.) Diagnose on the partial
    // bundle adds a note naming the missing node; everything else is identical.
    for (from, to) in [
        ("pod/default/pod-1-0", "pod/default/pod-1-3:8080"),
        ("pod/default/pod-1-0", "pod/default/pod-2-1:8080"),
        ("node/node4", "pod/default/pod-12-3:8080"),
    ] {
        let (ca, a) = diagnose_json(&hand, from, to);
        let (cb, mut b) = diagnose_json(&out, from, to);
        let notes = b
            .as_object_mut()
            .unwrap()
            .remove("notes")
            .unwrap_or_default();
        assert!(
            notes.to_string().contains("node7"),
            "{from} → {to}: {notes}"
        );
        assert_eq!((ca, a), (cb, b), "{from} → {to}");
    }
    // A flow to a pod on the node that timed out: not a confident answer, and node7 named.
    let (code, v) = diagnose_json(&out, "pod/default/pod-1-0", "pod/default/pod-7-0:8080");
    assert_eq!(code, Some(1));
    assert_eq!(v["verdict"], "uncertain", "{v}");
    assert!(v.to_string().contains("node7"));
    eprintln!(
        "50-node collect and checks: {took:?} (collect), {:?} total",
        t0.elapsed()
    );
}

/// A lab (3 node namespaces with pods, kube-proxy rules and flannel VXLAN): the stand-in's
/// exec runs the real collector in each node's namespace, exactly the command the pod gets.
/// The bundle written through the API (`.tar.gz`, subprotocol v5) diagnoses like the bundle
/// collected by hand with `ip netns exec NODE netray collect`.
#[test]
fn lab_nodes_collected_through_the_stand_in_diagnose_like_a_hand_collected_bundle() {
    if !netray_lab::lab_tests_can_run("collect_kube lab") {
        return;
    }
    let t0 = Instant::now();
    let spec = netray_lab::ClusterSpec::standard(3, 2);
    let agent = netray_lab::Agent::subcommand(NETRAY, &["lab", "agent"]);
    let lab = netray_lab::Lab::up(&spec, &agent).expect("lab up");
    let tmp = tempfile::tempdir().unwrap();
    let hand = tmp.path().join("hand");
    lab.collect_bundle(Path::new(NETRAY), &hand).unwrap();
    let mut nodes = BTreeMap::new();
    for n in &spec.nodes {
        let ns = lab.ns(&n.name).unwrap().name().to_string();
        nodes.insert(n.name.clone(), NodeBehaviour::exec(Exec::Netns(ns)));
    }
    let api = StandIn::start(
        items_of(&lab.cluster_json()),
        nodes,
        Faults::default(),
        "v5.channel.k8s.io",
    );
    let kc = api.kubeconfig(tmp.path());
    let out = tmp.path().join("lab.tar.gz");
    let r = collect(
        &kc,
        &["--nodes", "node0,node1,node2", "-o", out.to_str().unwrap()],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("collected 3 of 3 nodes"), "{}", r.stderr);
    eprintln!(
        "{}",
        r.stderr
            .lines()
            .find(|l| l.starts_with("netray: collected"))
            .unwrap()
    );
    assert!(api.not_deleted().is_empty());
    let flows = [
        ("pod/default/web-0", "svc/default/web:80"),
        ("node/node0", "svc/default/web:53/udp"),
        ("pod/default/web-1", "pod/default/web-4:8080"),
    ];
    for (from, to) in flows {
        let (ca, a) = diagnose_json(&hand, from, to);
        let (cb, b) = diagnose_json(&out, from, to);
        assert_eq!(ca, cb, "{from} → {to}");
        for key in ["verdict", "summary", "from", "to"] {
            assert_eq!(a[key], b[key], "{from} → {to}: {key}");
        }
        let ends = |v: &Value| -> Vec<(Value, Value)> {
            v["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["endpoint"].clone(), e["reachable"].clone()))
                .collect()
        };
        assert_eq!(ends(&a), ends(&b), "{from} → {to}");
        assert_eq!(a["verdict"], "reachable", "{from} → {to}");
    }
    eprintln!("lab collect through the stand-in: {:?}", t0.elapsed());
}

/// SIGINT while pods are starting: netray deletes every pod it created and exits 130.
#[test]
fn an_interrupted_run_deletes_every_pod_it_created() {
    let tmp = tempfile::tempdir().unwrap();
    let healthy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
    let mut cluster = read_json(&healthy.join("cluster.json"));
    // Six nodes, all of whose pods stay Pending.
    let node0 = items_of(&cluster)
        .into_iter()
        .find(|i| i["kind"] == "Node")
        .unwrap();
    let items = cluster["items"].as_array_mut().unwrap();
    items.retain(|i| i["kind"] != "Node");
    let mut nodes = BTreeMap::new();
    for k in 0..6 {
        let mut n = node0.clone();
        n["metadata"]["name"] = json!(format!("n{k}"));
        items.push(n);
        let mut b = NodeBehaviour::exec(Exec::ExitFails);
        b.never_runs = true;
        nodes.insert(format!("n{k}"), b);
    }
    let api = StandIn::start(
        items_of(&cluster),
        nodes,
        Faults::default(),
        "v4.channel.k8s.io",
    );
    let kc = api.kubeconfig(tmp.path());
    let out = tmp.path().join("out");
    let mut child = Command::new(NETRAY)
        .args(["collect", "--kube", "--kubeconfig", kc.to_str().unwrap()])
        .args(["--all", "--parallel", "4", "--timeout", "90s", "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while api.created().len() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "pods not created"
        );
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
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(code, Some(130), "{stderr}");
    let created = api.created();
    // --parallel 4: four pods are starting when SIGINT comes, and the slots the interrupt
    // frees start no others (more only if a node failed early and freed its slot, which
    // stderr then explains).
    assert!(
        created.len() == 4 || stderr.contains("failed before the interrupt"),
        "{} pods for --parallel 4: {stderr}",
        created.len()
    );
    assert!(
        api.not_deleted().is_empty(),
        "left: {:?}",
        api.not_deleted()
    );
    let log = api.log();
    for pod in &created {
        assert!(
            log.iter()
                .any(|l| l == &format!("DELETE /api/v1/namespaces/netray/pods/{pod}")),
            "no DELETE for {pod}: {log:?}"
        );
    }
    assert!(stderr.contains("interrupted"), "{stderr}");
    // Nothing was collected: no bundle is left half-written.
    assert!(
        !out.join("nodes")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    );
}

fn small_cluster(nodes: &[(&str, NodeBehaviour)], faults: Faults) -> (StandIn, tempfile::TempDir) {
    let healthy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
    let cluster = read_json(&healthy.join("cluster.json"));
    let api = StandIn::start(
        items_of(&cluster),
        nodes
            .iter()
            .map(|(n, b)| (n.to_string(), b.clone()))
            .collect(),
        faults,
        "v4.channel.k8s.io",
    );
    (api, tempfile::tempdir().unwrap())
}

fn recorded(node: &str) -> Arc<Vec<u8>> {
    let healthy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
    Arc::new(std::fs::read(healthy.join(format!("nodes/{node}.json"))).unwrap())
}

/// Per-node failures are named in failed-nodes.json with their reason: an image that cannot
/// be pulled, a collector that exits non-zero, a checksum that does not match (retried, then
/// given up). The one good node is collected; exit 1.
#[test]
fn per_node_failures_are_listed_with_their_reason() {
    let (api, tmp) = small_cluster(
        &[
            (
                "node0",
                NodeBehaviour::exec(Exec::Recorded(recorded("node0"))),
            ),
            (
                "node1",
                NodeBehaviour {
                    exec: Exec::Recorded(recorded("node1")),
                    never_runs: false,
                    pull_fails: true,
                },
            ),
            ("node2", NodeBehaviour::exec(Exec::ExitFails)),
        ],
        Faults::default(),
    );
    let kc = api.kubeconfig(tmp.path());
    let out = tmp.path().join("b");
    let r = collect(
        &kc,
        &[
            "--all",
            "--image",
            "registry.example/netray:x",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let failed: BTreeMap<String, String> = read_json(&out.join("failed-nodes.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["node"].as_str().unwrap().into(),
                f["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed["node1"].contains("ErrImagePull")
            && failed["node1"].contains("registry.example/netray:x"),
        "{failed:?}"
    );
    assert!(
        failed["node2"].contains("the collector failed")
            && failed["node2"].contains("exit code 2")
            && failed["node2"].contains("Permission denied"),
        "{failed:?}"
    );
    assert!(out.join("nodes/node0.json").exists());
    assert!(
        r.stderr.contains("PARTIAL: 2 nodes missing"),
        "{}",
        r.stderr
    );
    assert!(api.not_deleted().is_empty());

    // A checksum that never matches: retried, then the node fails naming it.
    let (api, tmp) = small_cluster(
        &[
            (
                "node0",
                NodeBehaviour::exec(Exec::BadChecksum(recorded("node0"))),
            ),
            (
                "node1",
                NodeBehaviour::exec(Exec::Recorded(recorded("node1"))),
            ),
        ],
        Faults::default(),
    );
    let kc = api.kubeconfig(tmp.path());
    // A partial bundle as .tar.gz: failed-nodes.json travels inside it.
    let out = tmp.path().join("b.tar.gz");
    let r = collect(
        &kc,
        &[
            "--nodes",
            "node0,node1",
            "--retries",
            "2",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(!tmp.path().join("b.tar.gz.netray-partial").exists());
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&out).unwrap(),
    ))
    .unpack(&unpacked)
    .unwrap();
    let failed = read_json(&unpacked.join("failed-nodes.json"));
    let o = common::netray_bounded(
        &["scan", "--bundle", out.to_str().unwrap(), "-o", "json"],
        HANG_GUARD,
    );
    let scan = String::from_utf8_lossy(&o.stdout);
    assert!(
        scan.contains("missing_nodes") && scan.contains("checksum mismatch"),
        "{scan}"
    );
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("checksum mismatch") && reason.contains("after 2 retries"),
        "{reason}"
    );
    let execs: u32 = api
        .state
        .lock()
        .unwrap()
        .pods
        .values()
        .filter(|p| p.node == "node0")
        .map(|p| p.execs)
        .sum();
    assert_eq!(execs, 3);
    assert!(api.not_deleted().is_empty());
}

/// API errors that stop the whole run: exit 2, the reason and a hint, no bundle left.
#[test]
fn api_errors_401_403_404_and_unknown_nodes_are_named() {
    let good = || NodeBehaviour::exec(Exec::Recorded(recorded("node0")));
    for (faults, args, needles) in [
        (
            Faults {
                unauthorized: true,
                ..Faults::default()
            },
            vec!["--all"],
            vec!["HTTP 401", "listing nodes", "credentials were refused"],
        ),
        (
            Faults {
                create_forbidden: true,
                ..Faults::default()
            },
            vec!["--all"],
            vec![
                "no node could be collected",
                "HTTP 403",
                "deploy/rbac.yaml",
                "node0:",
            ],
        ),
        (
            Faults {
                create_no_namespace: true,
                ..Faults::default()
            },
            vec!["--nodes", "node0"],
            vec![
                "HTTP 404",
                "does namespace netray exist",
                "kubectl apply -f deploy/",
            ],
        ),
        (
            Faults::default(),
            vec!["--nodes", "node9"],
            vec!["no node \"node9\"", "did you mean"],
        ),
    ] {
        let (api, tmp) = small_cluster(
            &[("node0", good()), ("node1", good()), ("node2", good())],
            faults,
        );
        let kc = api.kubeconfig(tmp.path());
        let out = tmp.path().join("b");
        let mut a = args.clone();
        a.extend(["-o", out.to_str().unwrap()]);
        let r = collect(&kc, &a);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        for n in &needles {
            assert!(
                r.stderr.contains(n),
                "{args:?}: missing {n:?} in {}",
                r.stderr
            );
        }
        assert!(!out.exists(), "{args:?}: bundle left behind");
        assert!(api.not_deleted().is_empty());
    }
}

/// Installed as `kubectl-netray`, kubectl's `--kubeconfig`, `--context` and `-n` come before
/// the subcommand; help names `kubectl netray`. A `--selector` is evaluated by the API.
#[test]
fn the_kubectl_plugin_takes_kubectls_options_before_the_subcommand() {
    let (api, tmp) = small_cluster(
        &[
            (
                "node0",
                NodeBehaviour::exec(Exec::Recorded(recorded("node0"))),
            ),
            (
                "node1",
                NodeBehaviour::exec(Exec::Recorded(recorded("node1"))),
            ),
            (
                "node2",
                NodeBehaviour::exec(Exec::Recorded(recorded("node2"))),
            ),
        ],
        Faults::default(),
    );
    let kc = api.kubeconfig(tmp.path());
    let plugin = tmp.path().join("kubectl-netray");
    std::os::unix::fs::symlink(NETRAY, &plugin).unwrap();
    let o = common::run_bounded(
        {
            let mut c = Command::new(&plugin);
            c.arg("--help");
            c
        },
        "kubectl-netray --help",
        HANG_GUARD,
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("kubectl netray"));
    let out = tmp.path().join("b");
    let mut cmd = Command::new(&plugin);
    cmd.args([
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--context",
        "standin",
        "-n",
        "netray",
    ])
    .args([
        "collect",
        "--selector",
        "kubernetes.io/hostname=node1",
        "-o",
    ])
    .arg(&out)
    .env("NETRAY_KUBE_BACKOFF_MS", "50");
    let o = common::run_bounded(cmd, "kubectl-netray collect", HANG_GUARD);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("collected 1 of 1 node"), "{stderr}");
    assert!(out.join("nodes/node1.json").exists());
    assert!(
        api.log()
            .iter()
            .any(|l| l.starts_with("POST /api/v1/namespaces/netray/pods"))
    );
    // `kubectl netray diagnose` with kubectl's --context first: the cluster view comes live
    // from the API (--context implies --kube), the snapshot from the bundle.
    let mut cmd = Command::new(&plugin);
    cmd.args([
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--context",
        "standin",
        "diagnose",
    ])
    .args([
        "--bundle",
        out.to_str().unwrap(),
        "--from",
        "pod/default/web-2",
    ])
    .args(["--to", "pod/default/web-3:8080", "-o", "json"]);
    let lists_before = api
        .log()
        .iter()
        .filter(|l| *l == "GET /api/v1/nodes")
        .count();
    let o = common::run_bounded(cmd, "kubectl-netray diagnose", HANG_GUARD);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(v["verdict"], "reachable", "{v}");
    let lists_after = api
        .log()
        .iter()
        .filter(|l| *l == "GET /api/v1/nodes")
        .count();
    assert_eq!(
        lists_after,
        lists_before + 1,
        "the plugin's diagnose read the API"
    );
    // The collected node scans like the recorded one.
    let o = common::netray_bounded(
        &["scan", "--bundle", out.to_str().unwrap(), "-o", "json"],
        HANG_GUARD,
    );
    assert!(
        o.status.code().is_some_and(|c| c <= 1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `--parallel` bounds and uses concurrency: 24 nodes (each pod starts after ~250 ms) with
/// `--parallel 8` against `--parallel 1` in the same run.
#[test]
fn parallel_collection_is_faster_than_one_at_a_time() {
    let names: Vec<String> = (0..24).map(|k| format!("n{k}")).collect();
    let healthy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
    let mut cluster = read_json(&healthy.join("cluster.json"));
    let node0 = items_of(&cluster)
        .into_iter()
        .find(|i| i["kind"] == "Node")
        .unwrap();
    let snap: Value = read_json(&healthy.join("nodes/node0.json"));
    let items = cluster["items"].as_array_mut().unwrap();
    items.retain(|i| i["kind"] != "Node");
    let mut nodes = BTreeMap::new();
    for n in &names {
        let mut node = node0.clone();
        node["metadata"]["name"] = json!(n);
        items.push(node);
        let mut s = snap.clone();
        s["node"]["name"] = json!(n);
        nodes.insert(
            n.clone(),
            NodeBehaviour::exec(Exec::Recorded(Arc::new(serde_json::to_vec(&s).unwrap()))),
        );
    }
    let mut took = Vec::new();
    for parallel in ["1", "8"] {
        let api = StandIn::start(
            items_of(&cluster),
            nodes.clone(),
            Faults::default(),
            "v4.channel.k8s.io",
        );
        let tmp = tempfile::tempdir().unwrap();
        let kc = api.kubeconfig(tmp.path());
        let out = tmp.path().join("b");
        let t = Instant::now();
        let r = collect(
            &kc,
            &["--all", "--parallel", parallel, "-o", out.to_str().unwrap()],
        );
        took.push(t.elapsed());
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(std::fs::read_dir(out.join("nodes")).unwrap().count(), 24);
        assert!(api.not_deleted().is_empty());
    }
    eprintln!(
        "24 nodes: --parallel 1 {:?}, --parallel 8 {:?} ({:.1}x)",
        took[0],
        took[1],
        took[0].as_secs_f64() / took[1].as_secs_f64()
    );
    assert!(
        took[0] > took[1] * 3,
        "--parallel 8 ({:?}) is not 3x faster than --parallel 1 ({:?})",
        took[1],
        took[0]
    );
}

/// Progress (done/failed/running, bytes, ETA) is drawn when standard error is a terminal, not
/// with `--quiet`, and never into a pipe.
#[test]
fn progress_is_drawn_on_a_terminal_only() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED progress_is_drawn_on_a_terminal_only: no script(1) to give a terminal");
        return;
    }
    let good = |n: &str| NodeBehaviour::exec(Exec::Recorded(recorded(n)));
    for quiet in [false, true] {
        let (api, tmp) = small_cluster(
            &[
                ("node0", good("node0")),
                ("node1", good("node1")),
                ("node2", good("node2")),
            ],
            Faults::default(),
        );
        let kc = api.kubeconfig(tmp.path());
        let out = tmp.path().join("b");
        let line = format!(
            "{NETRAY} collect --kube --kubeconfig {} --all --parallel 1 -o {}{}",
            kc.display(),
            out.display(),
            if quiet { " --quiet" } else { "" }
        );
        // script(1) runs the command on a pseudo-terminal and copies what it shows.
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env("NETRAY_KUBE_BACKOFF_MS", "50");
        let o = common::run_bounded(cmd, "script netray collect --kube", HANG_GUARD);
        let shown = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{shown}");
        assert!(shown.contains("collected 3 of 3 nodes"), "{shown}");
        let progress = shown.contains("running,") && shown.contains("received");
        assert_eq!(progress, !quiet, "quiet={quiet}: {shown}");
        if !quiet {
            assert!(
                shown.contains("3/3 done") || shown.contains("/3 done"),
                "{shown}"
            );
        }
    }
    // Into a pipe: none.
    let (api, tmp) = small_cluster(&[("node0", good("node0"))], Faults::default());
    let kc = api.kubeconfig(tmp.path());
    let r = collect(
        &kc,
        &[
            "--nodes",
            "node0",
            "-o",
            tmp.path().join("b").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("running,"), "{}", r.stderr);
}

/// A pod create refused for a reason that holds for every node (403 here) is not asked again
/// for each of the remaining nodes: with `--parallel 1`, one POST for three nodes.
#[test]
fn a_refused_create_is_not_repeated_for_every_node() {
    let good = |n: &str| NodeBehaviour::exec(Exec::Recorded(recorded(n)));
    let (api, tmp) = small_cluster(
        &[
            ("node0", good("node0")),
            ("node1", good("node1")),
            ("node2", good("node2")),
        ],
        Faults {
            create_forbidden: true,
            ..Faults::default()
        },
    );
    let kc = api.kubeconfig(tmp.path());
    let r = collect(
        &kc,
        &[
            "--all",
            "--parallel",
            "1",
            "-o",
            tmp.path().join("b").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let posts = api.log().iter().filter(|l| l.starts_with("POST")).count();
    assert_eq!(posts, 1, "{:?}", api.log());
    // A create refused outright left no pod: nothing to delete.
    assert!(
        !api.log().iter().any(|l| l.starts_with("DELETE")),
        "{:?}",
        api.log()
    );
    assert!(
        r.stderr
            .contains("not tried: another node's pod create was refused"),
        "{}",
        r.stderr
    );
}

/// The 50-node simulation: a cluster whose node0..node2 are lab node namespaces (the
/// real collector runs in each behind the stand-in's exec) and whose node3..node49 are
/// answered by recorded snapshots (the bench generator's consistent cluster), collected with
/// `--parallel 16`. The bundle diagnoses like the one assembled by hand (`ip netns exec NODE
/// netray collect` for the lab nodes, the recorded files for the rest).
#[test]
fn a_fifty_node_cluster_of_lab_and_recorded_nodes_diagnoses_like_one_collected_by_hand() {
    if !netray_lab::lab_tests_can_run("collect_kube 50-node lab") {
        return;
    }
    let t0 = Instant::now();
    let spec = netray_lab::ClusterSpec::standard(3, 2);
    let agent = netray_lab::Agent::subcommand(NETRAY, &["lab", "agent"]);
    let lab = netray_lab::Lab::up(&spec, &agent).expect("lab up");
    let tmp = tempfile::tempdir().unwrap();
    let synth = tmp.path().join("synth");
    synth_bundle::write_bundle(
        &synth,
        &synth_bundle::Spec {
            nodes: 50,
            pods_per_node: 4,
            services: 20,
            endpoints: 3,
        },
    )
    .unwrap();
    // The cluster view: the lab's objects, and the generated ones that do not live on the
    // lab's nodes (a generated Service is kept only when none of its endpoints does).
    let lab_nodes: BTreeSet<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
    let on_lab = |v: &Value| v.as_str().is_some_and(|n| lab_nodes.contains(n));
    let lab_items = items_of(&lab.cluster_json());
    let synth_items = items_of(&read_json(&synth.join("cluster.json")));
    let mut dropped_services = BTreeSet::new();
    for s in synth_items.iter().filter(|i| i["kind"] == "EndpointSlice") {
        if s["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| on_lab(&e["nodeName"]))
        {
            dropped_services.insert(
                s["metadata"]["labels"]["kubernetes.io/service-name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    let mut items = lab_items.clone();
    for i in synth_items {
        let keep = match i["kind"].as_str().unwrap() {
            "Node" => !on_lab(&i["metadata"]["name"]),
            "Pod" => !on_lab(&i["spec"]["nodeName"]),
            "Service" => !dropped_services.contains(i["metadata"]["name"].as_str().unwrap()),
            "EndpointSlice" => !dropped_services.contains(
                i["metadata"]["labels"]["kubernetes.io/service-name"]
                    .as_str()
                    .unwrap(),
            ),
            _ => false,
        };
        if keep {
            items.push(i);
        }
    }
    let kept_service = (0..20)
        .map(|i| format!("svc-{i}"))
        .find(|s| !dropped_services.contains(s))
        .expect("a generated Service away from the lab nodes");
    // By hand: the lab nodes collected in their namespaces, the others' recorded files.
    let hand = tmp.path().join("hand");
    lab.collect_bundle(Path::new(NETRAY), &hand).unwrap();
    let mut nodes = BTreeMap::new();
    for k in 0..50 {
        let name = format!("node{k}");
        if lab_nodes.contains(&name) {
            let ns = lab.ns(&name).unwrap().name().to_string();
            nodes.insert(name, NodeBehaviour::exec(Exec::Netns(ns)));
        } else {
            let file = format!("nodes/{name}.json");
            std::fs::copy(synth.join(&file), hand.join(&file)).unwrap();
            let json = Arc::new(std::fs::read(synth.join(&file)).unwrap());
            nodes.insert(name, NodeBehaviour::exec(Exec::Recorded(json)));
        }
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items});
    std::fs::write(hand.join("cluster.json"), list.to_string()).unwrap();
    let api = StandIn::start(items, nodes, Faults::default(), "v4.channel.k8s.io");
    let kc = api.kubeconfig(tmp.path());
    let out = tmp.path().join("out");
    let t1 = Instant::now();
    let r = collect(
        &kc,
        &["--all", "--parallel", "16", "-o", out.to_str().unwrap()],
    );
    let took = t1.elapsed();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("collected 50 of 50 nodes"),
        "{}",
        r.stderr
    );
    eprintln!(
        "{}",
        r.stderr
            .lines()
            .find(|l| l.starts_with("netray: collected"))
            .unwrap()
    );
    assert_eq!(api.created().len(), 50);
    assert!(api.not_deleted().is_empty());
    // Flows inside the lab: the live namespaces were collected twice (by hand and through
    // the API), so compare the answer, not counters.
    for (from, to) in [
        ("pod/default/web-0", "svc/default/web:80"),
        ("node/node1", "svc/default/web:53/udp"),
    ] {
        let (ca, a) = diagnose_json(&hand, from, to);
        let (cb, b) = diagnose_json(&out, from, to);
        assert_eq!(ca, cb, "{from} → {to}");
        for key in ["verdict", "summary", "from", "to"] {
            assert_eq!(a[key], b[key], "{from} → {to}: {key}");
        }
        let ends = |v: &Value| -> Vec<(Value, Value)> {
            v["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["endpoint"].clone(), e["reachable"].clone()))
                .collect()
        };
        assert_eq!(ends(&a), ends(&b), "{from} → {to}");
        assert_eq!(a["verdict"], "reachable", "{from} → {to}");
    }
    // Flows among recorded nodes: the same files, so the very same answer.
    let ns = format!("ns-{}", kept_service[4..].parse::<usize>().unwrap() % 97);
    for (from, to) in [
        (
            "pod/default/pod-5-0",
            "pod/default/pod-5-1:8080".to_string(),
        ),
        ("pod/default/pod-9-2", format!("svc/{ns}/{kept_service}:80")),
    ] {
        let a = diagnose_json(&hand, from, &to);
        let b = diagnose_json(&out, from, &to);
        assert_eq!(a, b, "{from} → {to}");
    }
    eprintln!(
        "50 nodes (3 lab, 47 recorded) collected in {took:?}; whole test {:?}",
        t0.elapsed()
    );
}

/// Options that only mean something for one mode are refused in the other, naming them.
#[test]
fn options_of_the_other_mode_are_refused() {
    for (args, needle) in [
        (
            vec!["collect", "--parallel", "3", "-o", "/dev/null"],
            "--parallel is an option of collect --kube",
        ),
        (
            vec!["collect", "-n", "x", "-o", "/dev/null"],
            "--namespace is an option of collect --kube",
        ),
        (vec!["collect", "--all"], "add --kube"),
        (
            vec!["collect", "--gzip", "-o", "/nonexistent/x.json"],
            "--gzip writes to standard output",
        ),
        (vec!["collect", "--kube", "-o", "b"], "choose the nodes"),
        (
            vec!["collect", "--kube", "--all"],
            "-o DIR or -o FILE.tar.gz",
        ),
        (
            vec!["collect", "--kube", "--all", "-o", "-"],
            "--kube writes a bundle",
        ),
        (
            vec!["collect", "--kube", "--all", "--node", "a", "-o", "b"],
            "with --kube choose nodes",
        ),
        (
            vec!["collect", "--kube", "--all", "--timeout", "0s", "-o", "b"],
            "more than 0",
        ),
    ] {
        let o = common::netray_bounded(&args, HANG_GUARD);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// (apiGroup, resource, verb).
type Grant = (String, String, String);

/// (apiGroup, resource, verb) granted by deploy/rbac.yaml: cluster-wide by the ClusterRole,
/// and in the `netray` namespace by the Role.
fn rbac_grants() -> (BTreeSet<Grant>, BTreeSet<Grant>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut cluster = BTreeSet::new();
    let mut ns = BTreeSet::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        let into = match v["kind"].as_str().unwrap() {
            "ClusterRole" => &mut cluster,
            "Role" => {
                assert_eq!(v["metadata"]["namespace"], "netray");
                &mut ns
            }
            _ => continue,
        };
        for rule in v["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        let (g, r, verb) = (
                            g.as_str().unwrap(),
                            r.as_str().unwrap(),
                            verb.as_str().unwrap(),
                        );
                        assert!(
                            g != "*" && r != "*" && verb != "*",
                            "no wildcards in {}",
                            path.display()
                        );
                        into.insert((g.to_string(), r.to_string(), verb.to_string()));
                    }
                }
            }
        }
    }
    (cluster, ns)
}

/// Every request the stand-in saw, as (namespace, apiGroup, resource, verb) the way the API
/// server authorizes it (the exec WebSocket as `create` on pods/exec, as recent servers do).
fn authorized_as(log: &[String]) -> BTreeSet<(Option<String>, String, String, String)> {
    let mut out = BTreeSet::new();
    for l in log {
        let (method, path) = l.split_once(' ').unwrap();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, rest) = match parts[0] {
            "api" => (String::new(), &parts[2..]),
            "apis" => (parts[1].to_string(), &parts[3..]),
            _ => panic!("unexpected path {path}"),
        };
        let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
            (Some(rest[1].to_string()), &rest[2..])
        } else {
            (None, rest)
        };
        let resource = match rest {
            [r, _, sub] => format!("{r}/{sub}"),
            [r, ..] => r.to_string(),
            [] => panic!("no resource in {path}"),
        };
        let verb = match (method, rest.len()) {
            ("GET", 1) => "list",
            ("GET", 2) => "get",
            ("GET", 3) => "create",
            ("POST", _) => "create",
            ("DELETE", _) => "delete",
            _ => panic!("unexpected request {l}"),
        };
        out.insert((namespace, group, resource, verb.to_string()));
    }
    out
}

/// deploy/rbac.yaml grants exactly what `collect --kube` asks of the API (every request of
/// full runs, including an interrupted one's clean-up by label), and nothing else.
#[test]
fn deploy_rbac_grants_exactly_what_collect_kube_uses() {
    let (cluster, ns) = rbac_grants();
    // Requests of a complete run, a run with a failing node and an interrupted run.
    let good = |n: &str| NodeBehaviour::exec(Exec::Recorded(recorded(n)));
    let mut used = BTreeSet::new();
    let (api, tmp) = small_cluster(
        &[
            ("node0", good("node0")),
            ("node1", good("node1")),
            ("node2", NodeBehaviour::exec(Exec::ExitFails)),
        ],
        Faults::default(),
    );
    let kc = api.kubeconfig(tmp.path());
    let r = collect(
        &kc,
        &[
            "--all",
            "--selector",
            "kubernetes.io/os=linux",
            "-o",
            tmp.path().join("b").to_str().unwrap(),
        ],
    );
    assert!(
        r.code == Some(2),
        "--all with --selector is refused: {}",
        r.stderr
    );
    let r = collect(
        &kc,
        &[
            "--selector",
            "kubernetes.io/os=linux",
            "-o",
            tmp.path().join("b").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    used.extend(authorized_as(&api.log()));
    let (api, tmp) = small_cluster(
        &[(
            "node0",
            NodeBehaviour {
                exec: Exec::ExitFails,
                never_runs: true,
                pull_fails: false,
            },
        )],
        Faults::default(),
    );
    let kc = api.kubeconfig(tmp.path());
    let mut child = Command::new(NETRAY)
        .args([
            "collect",
            "--kube",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--nodes",
            "node0",
            "-o",
        ])
        .arg(tmp.path().join("b"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while api.created().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of a child we spawned and have not waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    used.extend(authorized_as(&api.log()));
    // Every request is allowed: cluster-wide by the ClusterRole, or in `netray` by the Role.
    for (namespace, g, r, v) in &used {
        let key = (g.clone(), r.clone(), v.clone());
        let ok =
            cluster.contains(&key) || (namespace.as_deref() == Some("netray") && ns.contains(&key));
        assert!(
            ok,
            "{v} {g}/{r} in {namespace:?} is not granted by deploy/rbac.yaml"
        );
    }
    // And every grant is used (pods/exec `get`: what API servers before the exec
    // authorization change check for the WebSocket upgrade).
    let used_keys: BTreeSet<(String, String, String)> = used
        .iter()
        .map(|(_, g, r, v)| (g.clone(), r.clone(), v.clone()))
        .collect();
    let mut unused: Vec<_> = cluster
        .iter()
        .chain(ns.iter())
        .filter(|k| !used_keys.contains(*k))
        .collect();
    unused.retain(|(g, r, v)| !(g.is_empty() && r == "pods/exec" && v == "get"));
    // The read-only role is get/list on each kind it lists (issue 12); the collector itself
    // `get`s only ConfigMaps and its own pods.
    unused.retain(|(_, r, v)| {
        !(v == "get" && ["nodes", "pods", "services", "endpointslices"].contains(&r.as_str()))
    });
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
}

/// A node labelled `kubernetes.io/os=windows` is not collected (no pod is created for it) and
/// is listed as missing with the reason.
#[test]
fn non_linux_nodes_are_listed_not_collected() {
    let healthy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
    let mut cluster = read_json(&healthy.join("cluster.json"));
    for i in cluster["items"].as_array_mut().unwrap() {
        if i["kind"] == "Node" && i["metadata"]["name"] == "node2" {
            i["metadata"]["labels"]["kubernetes.io/os"] = json!("windows");
        }
    }
    let nodes: BTreeMap<String, NodeBehaviour> = ["node0", "node1", "node2"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                NodeBehaviour::exec(Exec::Recorded(recorded(n))),
            )
        })
        .collect();
    let api = StandIn::start(
        items_of(&cluster),
        nodes,
        Faults::default(),
        "v4.channel.k8s.io",
    );
    let tmp = tempfile::tempdir().unwrap();
    let kc = api.kubeconfig(tmp.path());
    let out = tmp.path().join("b");
    let r = collect(&kc, &["--all", "-o", out.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let failed = read_json(&out.join("failed-nodes.json"));
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["node"], "node2");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not a Linux node (kubernetes.io/os=windows)"),
        "{failed}"
    );
    assert_eq!(api.created().len(), 2, "no pod for node2");
    assert!(out.join("nodes/node0.json").exists() && out.join("nodes/node1.json").exists());
}
