//! No write through a planted symbolic link (issue 15, case 6): `collect --kube` (its per-node
//! temporary files, `nodes/NODE.json` and `failed-nodes.json`) and `bundle add` (its nodes and
//! `failed-nodes.json`). Links are planted at the names the old code wrote to
//! (`nodes/NODE.json.partial`, `.failed-nodes.json.tmp`) and at the targets themselves, each
//! pointing to a file outside the bundle; after the run that file is unchanged and the bundle
//! holds regular files.
#![cfg(feature = "live")]

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::NETRAY;

#[path = "common/kube_standin.rs"]
mod kube_standin;
use kube_standin::*;

const VICTIM: &str = "outside the bundle: must stay as it is\n";

fn healthy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy")
}

/// `path` is a regular file (not a link).
fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// collect --kube: while the collector pods are still Pending (the output directory exists,
/// nothing is written yet), links to an outside file are planted at node0's old temporary name
/// `nodes/node0.json.partial`, at `nodes/node0.json` itself and at the old temporary name of
/// `failed-nodes.json`; then the pods start. node0 is collected and node1, node2 fail, so both
/// a snapshot and the failed list are written. The outside file is unchanged; the snapshot and
/// the list are regular files with the right content; no temporary file is left.
#[test]
fn collect_kube_does_not_write_through_planted_links() {
    let node0 = Arc::new(std::fs::read(healthy().join("nodes/node0.json")).unwrap());
    let mut nodes = BTreeMap::new();
    for (name, exec) in [
        ("node0", Exec::Recorded(node0.clone())),
        ("node1", Exec::ExitFails),
        ("node2", Exec::ExitFails),
    ] {
        let mut b = NodeBehaviour::exec(exec);
        b.never_runs = true;
        nodes.insert(name.to_string(), b);
    }
    let cluster = read_json(&healthy().join("cluster.json"));
    let api = StandIn::start(
        items_of(&cluster),
        nodes,
        Faults::default(),
        "v4.channel.k8s.io",
    );
    let tmp = tempfile::tempdir().unwrap();
    let kc = api.kubeconfig(tmp.path());
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, VICTIM).unwrap();
    let out = tmp.path().join("out");
    let mut cmd = Command::new(NETRAY);
    cmd.args(["collect", "--kube", "--kubeconfig", kc.to_str().unwrap()])
        .args(["--all", "--timeout", "60s", "-o"])
        .arg(&out)
        .env("NETRAY_KUBE_BACKOFF_MS", "50")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Plant while every pod is Pending: the output directory and nodes/ exist by then.
    let start = Instant::now();
    while api.created().len() < 3 || !out.join("nodes").is_dir() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "pods not created"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let planted = [
        out.join("nodes/node0.json.partial"),
        out.join("nodes/node0.json"),
        out.join(".failed-nodes.json.tmp"),
        out.join("failed-nodes.json"),
    ];
    for p in &planted {
        symlink(&victim, p).unwrap();
    }
    for b in api.state.lock().unwrap().nodes.values_mut() {
        b.never_runs = false;
    }
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(start.elapsed() < HANG_GUARD, "{stderr}");
    assert_eq!(o.status.code(), Some(1), "node1, node2 fail: {stderr}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        VICTIM,
        "{stderr}"
    );
    let snap = out.join("nodes/node0.json");
    assert!(is_regular(&snap), "nodes/node0.json is still a link");
    assert_eq!(
        read_json(&snap),
        serde_json::from_slice::<serde_json::Value>(&node0).unwrap()
    );
    let failed = out.join("failed-nodes.json");
    assert!(is_regular(&failed), "failed-nodes.json is still a link");
    let failed = read_json(&failed);
    let names: Vec<&str> = failed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node1", "node2"]);
    // Only the planted links at the old temporary names remain besides the bundle's files.
    let mut left: Vec<String> = std::fs::read_dir(out.join("nodes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["node0.json", "node0.json.partial"]);
    assert!(api.not_deleted().is_empty(), "{:?}", api.not_deleted());
}

/// bundle add: links to outside files at `nodes/node1.json` (the node being replaced), at
/// `cluster.json` (being installed) and at the old temporary name of `failed-nodes.json`
/// (rewritten because node1 is no longer missing). The outside files are unchanged and the
/// bundle loads with node0 and node1 and only node2 still failed.
#[test]
fn bundle_add_does_not_write_through_planted_links() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("bundle");
    std::fs::create_dir_all(b.join("nodes")).unwrap();
    std::fs::copy(
        healthy().join("nodes/node0.json"),
        b.join("nodes/node0.json"),
    )
    .unwrap();
    std::fs::write(
        b.join("failed-nodes.json"),
        netray_snapshot::FailedNode::list_to_json(&[
            netray_snapshot::FailedNode::new("node1", "timed out"),
            netray_snapshot::FailedNode::new("node2", "forbidden"),
        ]),
    )
    .unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, VICTIM).unwrap();
    for p in [b.join("cluster.json"), b.join(".failed-nodes.json.tmp")] {
        symlink(&victim, p).unwrap();
    }
    // The node's link must point to a readable snapshot of it (anything else is refused
    // before writing): node1 in compact JSON, which netray never writes.
    let outside_node1 = tmp.path().join("outside-node1.json");
    let compact = read_json(&healthy().join("nodes/node1.json")).to_string();
    std::fs::write(&outside_node1, &compact).unwrap();
    symlink(&outside_node1, b.join("nodes/node1.json")).unwrap();
    let o = common::netray_bounded(
        &[
            "bundle",
            "add",
            b.to_str().unwrap(),
            healthy().join("nodes/node1.json").to_str().unwrap(),
            "--cluster",
            healthy().join("cluster.json").to_str().unwrap(),
            "--replace",
        ],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        VICTIM,
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&outside_node1).unwrap(), compact);
    for f in ["nodes/node1.json", "cluster.json", "failed-nodes.json"] {
        assert!(is_regular(&b.join(f)), "{f} is not a regular file");
    }
    let bundle = netray_snapshot::Bundle::load(&b).unwrap();
    let names: Vec<&str> = bundle.nodes.iter().map(|n| n.node.name.as_str()).collect();
    assert_eq!(names, ["node0", "node1"]);
    assert_eq!(bundle.failed.len(), 1);
    assert_eq!(bundle.failed[0].node, "node2");
    assert!(bundle.cluster.is_some());
}

/// man --out-dir: links to an outside file at two page names (the top page and a
/// subcommand's). The outside file is unchanged, every page is a regular file and no
/// temporary file is left.
#[test]
fn man_out_dir_does_not_write_through_planted_links() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, VICTIM).unwrap();
    let dir = tmp.path().join("man");
    std::fs::create_dir(&dir).unwrap();
    for page in ["netray.1", "netray-trace.1"] {
        symlink(&victim, dir.join(page)).unwrap();
    }
    let o = common::netray_bounded(
        &["man", "--out-dir", dir.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), VICTIM);
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for p in &pages {
        assert!(is_regular(&dir.join(p)), "{p} is not a regular file");
        assert!(p.ends_with(".1"), "{p}: a temporary file left");
    }
    assert!(pages.len() > 10, "{pages:?}");
    let trace = std::fs::read_to_string(dir.join("netray-trace.1")).unwrap();
    assert!(trace.contains(".TH") && trace.contains("failing"));
}
