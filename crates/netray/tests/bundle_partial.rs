//! Partial bundles: a node whose collection failed (`failed-nodes.json`), or that the cluster
//! view lists without a snapshot. Paths through it end `unknown` naming it; diagnose, trace and
//! scan say whose state is missing. Also a single snapshot file as a one-node bundle.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Output, netray_bounded};
use serde_json::Value;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/healthy");
const REASON: &str = "collector pod timed out after 120 s";

/// `examples/healthy` without node2's snapshot; with `failed`, node2 listed as failed.
fn partial(failed: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("nodes")).unwrap();
    std::fs::copy(
        Path::new(EXAMPLE).join("cluster.json"),
        d.path().join("cluster.json"),
    )
    .unwrap();
    for n in ["node0", "node1"] {
        std::fs::copy(
            Path::new(EXAMPLE).join(format!("nodes/{n}.json")),
            d.path().join(format!("nodes/{n}.json")),
        )
        .unwrap();
    }
    if failed {
        netray_snapshot::write_failed_nodes(
            d.path(),
            &[netray_snapshot::FailedNode::new("node2", REASON)],
        )
        .unwrap();
    }
    d
}

fn run(args: &[&str]) -> Output {
    netray_bounded(args, Duration::from_secs(120))
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// Trace from a pod on node0 to a pod on node2: every branch ends unknown at node0, naming
/// node2 and why its state is missing.
fn check_trace(bundle: &str, why: &str) {
    let o = run(&[
        "trace",
        "--bundle",
        bundle,
        "--from",
        "pod/default/web-0",
        "--to",
        "pod/default/web-4:8080",
        "-o",
        "json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("node2") && stderr.contains(why), "{stderr}");
    let t = json(&o);
    let branches = t["branches"].as_array().unwrap();
    assert!(!branches.is_empty());
    for b in branches {
        assert_eq!(b["disposition"], "unknown", "{b:#}");
        assert_eq!(b["cause"], "node-snapshot-missing", "{b:#}");
        let reason = b["reason"].as_str().unwrap();
        assert!(reason.contains("node2") && reason.contains(why), "{reason}");
    }
}

#[test]
fn a_failed_node_makes_paths_through_it_uncertain_naming_it() {
    let d = partial(true);
    let b = d.path().to_str().unwrap();
    check_trace(b, REASON);

    // diagnose: the endpoints on node2 are uncertain, the others reachable; the note names
    // node2.
    let o = run(&[
        "diagnose",
        "--bundle",
        b,
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:80/tcp",
        "-o",
        "json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let d = json(&o);
    assert_eq!(d["verdict"], "uncertain", "{d:#}");
    for e in d["endpoints"].as_array().unwrap() {
        let ep = e["endpoint"].as_str().unwrap();
        let on_node2 = ep.starts_with("10.244.2.");
        assert_eq!(e["reachable"], !on_node2, "{e:#}");
    }
    assert!(
        d["causes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["code"] == "node-snapshot-missing"),
        "{d:#}"
    );
    let notes = d["notes"].to_string();
    assert!(notes.contains("node2") && notes.contains(REASON), "{notes}");

    // scan lists the missing node, in text and JSON.
    let o = run(&["scan", "--bundle", b]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("no snapshot of node node2") && text.contains(REASON),
        "{text}"
    );
    let o = run(&["scan", "--bundle", b, "-o", "json"]);
    let s = json(&o);
    assert_eq!(s["missing_nodes"][0]["node"], "node2", "{s:#}");
    assert!(
        s["missing_nodes"][0]["reason"]
            .as_str()
            .unwrap()
            .contains(REASON)
    );
}

#[test]
fn a_node_the_cluster_view_lists_without_a_snapshot_is_missing_too() {
    let d = partial(false);
    check_trace(d.path().to_str().unwrap(), "has no snapshot");
}

#[test]
fn a_partial_tar_gz_bundle_loads_its_failed_list() {
    let d = partial(true);
    let out = tempfile::tempdir().unwrap();
    let tgz = out.path().join("b.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&tgz).unwrap(),
        flate2::Compression::fast(),
    );
    let mut t = tar::Builder::new(gz);
    t.append_dir_all(".", d.path()).unwrap();
    t.into_inner().unwrap().finish().unwrap();
    check_trace(tgz.to_str().unwrap(), REASON);
}

#[test]
fn a_single_snapshot_file_is_a_one_node_bundle() {
    let node0 = Path::new(EXAMPLE).join("nodes/node0.json");
    let n = node0.to_str().unwrap();
    // Two pods on node0, by address (no cluster view in a single snapshot).
    let o = run(&[
        "trace",
        "--bundle",
        n,
        "--from",
        "10.244.0.2",
        "--to",
        "10.244.0.3:8080",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&["scan", "--bundle", n, "-o", "json"]);
    let s = json(&o);
    assert_eq!(s["nodes"], serde_json::json!(["node0"]), "{s:#}");
    // A cluster view is not a bundle: the error says what it is.
    let c = Path::new(EXAMPLE).join("cluster.json");
    let o = run(&["scan", "--bundle", c.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("cluster.json") && e.contains("not a netray snapshot"),
        "{e}"
    );
}

#[test]
fn a_flow_from_a_missing_node_is_an_error_that_says_so() {
    let d = partial(true);
    let b = d.path().to_str().unwrap();
    for from in ["pod/default/web-4", "node/node2"] {
        for cmd in ["trace", "diagnose"] {
            let o = run(&[
                cmd,
                "--bundle",
                b,
                "--from",
                from,
                "--to",
                "pod/default/web-0:8080",
            ]);
            let e = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{cmd} {from}: {e}");
            assert!(
                e.contains("node node2's snapshot is missing from the bundle")
                    && e.contains(REASON),
                "{cmd} {from}: {e}"
            );
        }
    }
}
