//! Namespaces are identified by `(boot_id, inode)`, never by inode alone: inode numbers repeat
//! across machines, so on a real multi-node bundle a check keyed by inode can pick another
//! node's pod. A two-node bundle from `examples/healthy` (node0, node1) whose node1 is another
//! machine (its own boot id) whose pods reuse node0's pod inode numbers.

use std::path::Path;

use netray_diagnose::finding::Finding;
use netray_diagnose::scan::scan;
use netray_kube::ClusterView;
use netray_snapshot::Bundle;
use serde_json::Value;

/// Inodes of node0's pods web-0 and web-1, and of node1's web-2 and web-3.
const WEB0: &str = "4026532957";
const WEB1: &str = "4026533099";
const WEB2: &str = "4026533171";
const WEB3: &str = "4026533242";

fn two_nodes(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
    std::fs::create_dir_all(dir.join("nodes")).unwrap();
    std::fs::copy(src.join("nodes/node0.json"), dir.join("nodes/node0.json")).unwrap();
    // node1: another machine, whose pod namespaces happen to have node0's pods' inode numbers.
    let text = std::fs::read_to_string(src.join("nodes/node1.json"))
        .unwrap()
        .replace(WEB2, WEB0)
        .replace(WEB3, WEB1);
    let mut n1: Value = serde_json::from_str(&text).unwrap();
    n1["node"]["boot_id"] = "0b0b0b0b-1111-4222-8333-444444444444".into();
    for ns in n1["namespaces"].as_array_mut().unwrap() {
        let name = ns["id"]["name"].as_str().unwrap_or_default().to_string();
        if ns["role"] == "host" {
            for l in ns["links"].as_array_mut().unwrap() {
                // Hairpin off on both pod ports.
                if l["kind"]["peer_netns"].as_u64().is_some() && l["bridge_port"].is_object() {
                    l["bridge_port"]["hairpin"] = false.into();
                }
            }
        } else if name.ends_with("-web-2") {
            // web-2 routes via an address that is not its bridge's: bridged replies.
            for r in ns["routes"].as_array_mut().unwrap() {
                if r["dst"] == "0.0.0.0/0" {
                    r["gateway"] = "10.244.1.254".into();
                }
            }
        }
    }
    std::fs::write(
        dir.join("nodes/node1.json"),
        serde_json::to_string(&n1).unwrap(),
    )
    .unwrap();
    // web-3 is not a pod of the cluster view (a namespace on node1 that is no workload).
    let mut cluster: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("cluster.json")).unwrap()).unwrap();
    cluster["items"]
        .as_array_mut()
        .unwrap()
        .retain(|i| !(i["kind"] == "Pod" && i["metadata"]["name"] == "web-3"));
    std::fs::write(
        dir.join("cluster.json"),
        serde_json::to_string(&cluster).unwrap(),
    )
    .unwrap();
}

fn scan_dir(dir: &Path) -> Vec<Finding> {
    let b = Bundle::load(dir).unwrap();
    let c = b
        .cluster
        .as_ref()
        .map(|v| ClusterView::from_value("cluster.json", v).unwrap());
    scan(&b, c.as_ref())
}

#[test]
fn checks_find_the_pod_on_the_same_node() {
    let tmp = tempfile::tempdir().unwrap();
    two_nodes(tmp.path());
    let found = scan_dir(tmp.path());
    let on = |code: &str| -> Vec<&Finding> {
        found
            .iter()
            .filter(|f| f.code == code && f.node == "node1")
            .collect()
    };
    // bridge-nf: exactly web-2 (its own gateway), never node0's web-0 / web-1 that share the
    // inodes of node1's ports' peers.
    let conflicts = on("bridge-nf-snat-conflict");
    assert_eq!(conflicts.len(), 1, "{conflicts:#?}");
    let e = conflicts[0].evidence.join("\n");
    assert!(e.contains("web-2") && e.contains("via 10.244.1.254"), "{e}");
    assert!(!found.iter().any(|f| {
        f.code == "bridge-nf-snat-conflict"
            && f.evidence
                .iter()
                .any(|e| e.contains("web-0") || e.contains("web-1"))
    }));
    // hairpin: the port to web-2 (a pod), not the one to web-3 (no workload), though web-3's
    // inode is node0's pod web-1's.
    let hairpin = on("hairpin-disabled");
    assert_eq!(hairpin.len(), 1, "{hairpin:#?}");
    assert!(
        hairpin[0].evidence[0].starts_with("veth77b7b8b2 "),
        "{hairpin:#?}"
    );
}
