//! `netray bundle add`: a bundle assembled from hand-collected snapshot files diagnoses like
//! the original; bad files are refused naming file and reason, with nothing written; a node
//! already in the bundle needs --replace.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Output, netray_bounded};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/healthy");

fn ex(rel: &str) -> PathBuf {
    Path::new(EXAMPLE).join(rel)
}

fn run(args: &[&str]) -> Output {
    netray_bounded(args, Duration::from_secs(120))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dir` with its contents, to check that a refused add wrote nothing.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.push((e.clone(), std::fs::read(&e).unwrap()));
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn an_assembled_bundle_diagnoses_like_the_original() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("bundle");
    // A gzip-compressed snapshot (collect --gzip) is accepted too.
    let gz = t.path().join("node2.json.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&std::fs::read(ex("nodes/node2.json")).unwrap())
        .unwrap();
    enc.finish().unwrap();
    let o = run(&[
        "bundle",
        "add",
        s(&b),
        s(&ex("nodes/node0.json")),
        s(&ex("nodes/node1.json")),
        s(&gz),
        "--cluster",
        s(&ex("cluster.json")),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("3 node snapshots"), "{}", stderr(&o));
    let flow = [
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:80/tcp",
        "-o",
        "json",
    ];
    let mine = run(&[&["diagnose", "--bundle", s(&b)][..], &flow[..]].concat());
    let orig = run(&[&["diagnose", "--bundle", EXAMPLE][..], &flow[..]].concat());
    assert_eq!(mine.status.code(), Some(0), "{}", stderr(&mine));
    let v = |o: &Output| -> serde_json::Value { serde_json::from_slice(&o.stdout).unwrap() };
    assert_eq!(v(&mine)["verdict"], v(&orig)["verdict"]);
    assert_eq!(v(&mine)["endpoints"], v(&orig)["endpoints"]);
}

#[test]
fn bad_files_are_refused_naming_file_and_reason_and_nothing_is_written() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("bundle");
    let o = run(&["bundle", "add", s(&b), s(&ex("nodes/node0.json"))]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = tree(&b);

    let bad_json = t.path().join("cut.json");
    let full = std::fs::read_to_string(ex("nodes/node1.json")).unwrap();
    std::fs::write(&bad_json, &full[..full.len() / 2]).unwrap();
    let wrong_type = t.path().join("wrong.json");
    std::fs::write(
        &wrong_type,
        full.replacen("\"mtu\": 1500", "\"mtu\": \"big\"", 1),
    )
    .unwrap();
    let future = t.path().join("future.json");
    std::fs::write(
        &future,
        full.replacen("\"schema_version\": 1", "\"schema_version\": 9", 1),
    )
    .unwrap();
    let dup = t.path().join("also-node1.json");
    std::fs::copy(ex("nodes/node1.json"), &dup).unwrap();
    let missing = t.path().join("nope.json");
    let (n0, n1, n2, cl) = (
        ex("nodes/node0.json"),
        ex("nodes/node1.json"),
        ex("nodes/node2.json"),
        ex("cluster.json"),
    );
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![s(&bad_json)], vec!["cut.json", "line"]),
        (vec![s(&wrong_type)], vec!["wrong.json", "mtu"]),
        (vec![s(&future)], vec!["future.json", "schema version 9"]),
        (vec![s(&missing)], vec!["nope.json", "cannot read"]),
        // A cluster view given as a node.
        (vec![s(&cl)], vec!["cluster.json", "schema_version"]),
        // Already in the bundle.
        (
            vec![s(&n0)],
            vec!["node0.json", "already in the bundle", "--replace"],
        ),
        // Twice on the command line.
        (
            vec![s(&n1), s(&dup)],
            vec!["node1.json", "also-node1.json", "both node `node1`"],
        ),
        // A good file first: still nothing written.
        (vec![s(&n2), s(&bad_json)], vec!["cut.json"]),
    ];
    for (files, needles) in cases {
        let args = [&["bundle", "add", s(&b)][..], &files[..]].concat();
        let o = run(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        for n in needles {
            assert!(e.contains(n), "{args:?}: missing {n:?} in {e}");
        }
        assert_eq!(tree(&b), before, "{args:?} wrote something");
    }
    // A bad cluster view is refused too.
    let o = run(&["bundle", "add", s(&b), "--cluster", s(&n1)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("node1.json"), "{}", stderr(&o));
    assert_eq!(tree(&b), before);
}

#[test]
fn replace_swaps_a_node_and_clears_it_from_the_failed_list() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("bundle");
    let o = run(&["bundle", "add", s(&b), s(&ex("nodes/node0.json"))]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The same node under another file name, replaced: one file for node0 remains.
    std::fs::rename(b.join("nodes/node0.json"), b.join("nodes/n0.json")).unwrap();
    netray_snapshot::write_failed_nodes(
        &b,
        &[
            netray_snapshot::FailedNode::new("node1", "timed out"),
            netray_snapshot::FailedNode::new("node2", "forbidden"),
        ],
    )
    .unwrap();
    let o = run(&[
        "bundle",
        "add",
        s(&b),
        s(&ex("nodes/node0.json")),
        s(&ex("nodes/node1.json")),
        "--replace",
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(
        e.contains("replaced node node0") && e.contains("added node node1"),
        "{e}"
    );
    assert!(e.contains("node1 is no longer listed as failed"), "{e}");
    assert!(!b.join("nodes/n0.json").exists());
    let bundle = netray_snapshot::Bundle::load(&b).unwrap();
    let names: Vec<&str> = bundle.nodes.iter().map(|n| n.node.name.as_str()).collect();
    assert_eq!(names, ["node0", "node1"]);
    assert_eq!(bundle.failed.len(), 1);
    assert_eq!(bundle.failed[0].node, "node2");
}
