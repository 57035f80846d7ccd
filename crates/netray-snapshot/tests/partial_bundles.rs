//! Partial bundles (`failed-nodes.json`) from a directory and a `.tar.gz`, and a single
//! snapshot file loaded as a one-node bundle.

use std::path::{Path, PathBuf};

use netray_snapshot::{Bundle, FAILED_NODES_FILE, FailedNode, write_failed_nodes};

fn example(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/healthy")
            .join(rel),
    )
    .unwrap()
}

/// `examples/healthy` without node2, whose collection "failed".
fn partial_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("nodes")).unwrap();
    std::fs::write(d.path().join("cluster.json"), example("cluster.json")).unwrap();
    for n in ["node0", "node1"] {
        std::fs::write(
            d.path().join(format!("nodes/{n}.json")),
            example(&format!("nodes/{n}.json")),
        )
        .unwrap();
    }
    write_failed_nodes(
        d.path(),
        &[FailedNode::new(
            "node2",
            "collector pod timed out\nafter 120 s",
        )],
    )
    .unwrap();
    d
}

fn targz(dir: &Path, from: &Path) -> PathBuf {
    let path = dir.join("b.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    b.append_dir_all("bundle", from).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    path
}

#[test]
fn failed_nodes_load_from_a_directory_and_a_tar_gz() {
    let d = partial_dir();
    let text = std::fs::read_to_string(d.path().join(FAILED_NODES_FILE)).unwrap();
    assert!(text.contains("node2"), "{text}");
    let b = Bundle::load(d.path()).unwrap();
    assert_eq!(b.nodes.len(), 2);
    assert_eq!(b.failed.len(), 1);
    let f = b.failed_node("node2").expect("node2 listed");
    // The writer keeps the reason on one line.
    assert_eq!(f.reason, "collector pod timed out\\nafter 120 s");
    assert!(b.failed_node("node0").is_none());

    let out = tempfile::tempdir().unwrap();
    let tgz = targz(out.path(), d.path());
    let t = Bundle::load(&tgz).unwrap();
    assert_eq!(t.failed, b.failed);
    assert_eq!(t.nodes.len(), 2);

    // write_dir keeps the list; an empty list removes the file.
    let again = tempfile::tempdir().unwrap();
    b.write_dir(again.path()).unwrap();
    assert_eq!(Bundle::load(again.path()).unwrap().failed, b.failed);
    write_failed_nodes(again.path(), &[]).unwrap();
    assert!(!again.path().join(FAILED_NODES_FILE).exists());
    assert!(Bundle::load(again.path()).unwrap().failed.is_empty());
}

#[test]
fn bad_failed_node_lists_are_refused_naming_file_and_place() {
    let cases: [(&str, &str); 5] = [
        (
            "[{\"node\": \"a\", \"reason\": \"x\"}, {\"node\": \"a\", \"reason\": \"y\"}]",
            "listed twice",
        ),
        ("[{\"node\": \"a/b\", \"reason\": \"x\"}]", "[0].node"),
        ("[{\"node\": \"a\"}]", "reason"),
        ("{\"node\": \"a\"}", "failed-nodes.json"),
        (
            "[{\"node\": \"node0\", \"reason\": \"x\"}]",
            "has its snapshot",
        ),
    ];
    for (text, want) in cases {
        let d = partial_dir();
        std::fs::write(d.path().join(FAILED_NODES_FILE), text).unwrap();
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains(FAILED_NODES_FILE), "{text}: {e}");
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn a_bundle_of_only_failed_nodes_says_why_it_has_no_snapshots() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("nodes")).unwrap();
    write_failed_nodes(d.path(), &[FailedNode::new("n1", "forbidden")]).unwrap();
    let e = Bundle::load(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("no node snapshots") && e.contains("n1: forbidden"),
        "{e}"
    );
}

#[test]
fn a_single_snapshot_file_is_a_one_node_bundle() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("host.json");
    std::fs::write(&p, example("nodes/node1.json")).unwrap();
    let b = Bundle::load(&p).unwrap();
    assert_eq!(b.nodes.len(), 1);
    assert_eq!(b.nodes[0].node.name, "node1");
    assert!(b.cluster.is_none() && b.failed.is_empty());

    // A cluster view given as a bundle says what it is.
    let c = d.path().join("cluster.json");
    std::fs::write(&c, example("cluster.json")).unwrap();
    let e = Bundle::load(&c).unwrap_err().to_string();
    assert!(
        e.contains("cluster.json") && e.contains("not a netray snapshot"),
        "{e}"
    );

    // A broken snapshot file names the file and the place.
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, "{\"schema_version\": 1, \"node\": 3}").unwrap();
    let e = Bundle::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains(".node"), "{e}");
}
