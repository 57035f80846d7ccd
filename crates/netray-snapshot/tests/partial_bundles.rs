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

/// The version is judged before the shape: a snapshot of another version whose shape also
/// differs says "unsupported schema version"; a missing or non-integer version is named; a
/// syntax error gives line and column.
#[test]
fn the_version_is_judged_before_the_shape() {
    use netray_snapshot::{LoadError, NodeSnapshot};
    let real = String::from_utf8(example("nodes/node0.json")).unwrap();
    let v2 = real.replacen("\"schema_version\": 1", "\"schema_version\": 2", 1);
    let v2_other_shape = v2.replacen("\"namespaces\"", "\"netns\"", 1);
    for text in [&v2, &v2_other_shape] {
        let e = NodeSnapshot::from_json("n.json", text).unwrap_err();
        assert!(matches!(e, LoadError::Version { found: 2, .. }), "{e}");
    }
    let huge = real.replacen(
        "\"schema_version\": 1",
        "\"schema_version\": 99999999999",
        1,
    );
    let e = NodeSnapshot::from_json("n.json", &huge).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Version {
                found: 99999999999,
                ..
            }
        ),
        "{e}"
    );
    let null = real.replacen("\"schema_version\": 1", "\"schema_version\": null", 1);
    let e = NodeSnapshot::from_json("n.json", &null)
        .unwrap_err()
        .to_string();
    assert!(e.contains(".schema_version") && e.contains("null"), "{e}");
    let none = real.replacen("\"schema_version\": 1,", "", 1);
    let e = NodeSnapshot::from_json("n.json", &none)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing field `schema_version`"), "{e}");
    let cut = &real[..real.len() / 3];
    let e = NodeSnapshot::from_json("n.json", cut)
        .unwrap_err()
        .to_string();
    assert!(e.contains("n.json") && e.contains("line "), "{e}");
    let e = NodeSnapshot::from_json("n.json", "[1, 2]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("JSON object"), "{e}");
    // Trailing garbage after a good document is refused.
    let e = NodeSnapshot::from_json("n.json", &format!("{real} x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("trailing"), "{e}");
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any text as `failed-nodes.json` gives a list or an error naming the file; never a
        /// panic. What loads round-trips.
        #[test]
        fn failed_lists_never_panic(
            names in proptest::collection::vec("[a-z0-9./-]{0,12}", 0..4),
            reasons in proptest::collection::vec(".{0,20}", 0..4),
            cut in 0usize..200,
        ) {
            let list: Vec<serde_json::Value> = names
                .iter()
                .zip(reasons.iter().chain(std::iter::repeat(&String::new())))
                .map(|(n, r)| serde_json::json!({"node": n, "reason": r}))
                .collect();
            let text = serde_json::to_string(&list).unwrap();
            let at = (0..=cut.min(text.len()))
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            for t in [text.as_str(), &text[..at]] {
                match FailedNode::list_from_json("f.json", t) {
                    Ok(l) => {
                        let again =
                            FailedNode::list_from_json("f.json", &FailedNode::list_to_json(&l))
                                .unwrap();
                        prop_assert_eq!(again, l);
                    }
                    Err(e) => prop_assert!(e.to_string().contains("f.json"), "{}", e),
                }
            }
        }
    }
}
