//! Malformed bundles get exit code 2 and a message naming the file and the place, for every
//! command that reads a bundle.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/healthy");

/// A copy of the healthy example whose node0 snapshot is replaced by `node0`.
fn bundle_with(node0: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("nodes")).unwrap();
    std::fs::copy(
        Path::new(EXAMPLE).join("cluster.json"),
        dir.path().join("cluster.json"),
    )
    .unwrap();
    for e in std::fs::read_dir(Path::new(EXAMPLE).join("nodes")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("nodes").join(e.file_name())).unwrap();
    }
    std::fs::write(dir.path().join("nodes/node0.json"), node0).unwrap();
    dir
}

fn node0() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(Path::new(EXAMPLE).join("nodes/node0.json")).unwrap(),
    )
    .unwrap()
}

/// Run every bundle-reading command; each must exit 2 with all of `needles` in stderr.
fn expect_error(dir: &Path, needles: &[&str]) {
    let b = dir.to_str().unwrap();
    let runs: [&[&str]; 3] = [
        &["scan", "--bundle", b],
        &[
            "diagnose",
            "--bundle",
            b,
            "--from",
            "10.244.0.2",
            "--to",
            "10.244.1.2:8080",
        ],
        &[
            "trace",
            "--bundle",
            b,
            "--from",
            "10.244.0.2",
            "--to",
            "10.244.1.2:8080",
        ],
    ];
    for args in runs {
        let out = Command::new(NETRAY).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: `{n}` not in: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn truncated_json() {
    let text = serde_json::to_string_pretty(&node0()).unwrap();
    let dir = bundle_with(&text[..text.len() / 2]);
    expect_error(dir.path(), &["nodes/node0.json", "line", "EOF"]);
}

#[test]
fn unknown_schema_version() {
    let mut v = node0();
    v["schema_version"] = json!(99);
    let dir = bundle_with(&v.to_string());
    expect_error(
        dir.path(),
        &[
            "nodes/node0.json",
            ".schema_version",
            "unsupported schema version 99",
        ],
    );
}

#[test]
fn ill_typed_field() {
    let mut v = node0();
    v["namespaces"][0]["links"][1]["mtu"] = json!("big");
    let dir = bundle_with(&v.to_string());
    expect_error(
        dir.path(),
        &["nodes/node0.json", ".namespaces[0].links[1].mtu"],
    );
}

#[test]
fn missing_field() {
    let mut v = node0();
    v["namespaces"][0].as_object_mut().unwrap().remove("routes");
    let dir = bundle_with(&v.to_string());
    expect_error(dir.path(), &["nodes/node0.json", "routes"]);
}

#[test]
fn dangling_veth_peer() {
    let mut v = node0();
    let links = v["namespaces"][0]["links"].as_array_mut().unwrap();
    let (i, l) = links
        .iter_mut()
        .enumerate()
        .find(|(_, l)| l["kind"]["type"] == "veth")
        .expect("the host has a veth");
    l["kind"]["peer_netns"] = json!(4_000_000_001u64);
    let dir = bundle_with(&v.to_string());
    expect_error(
        dir.path(),
        &[
            "nodes/node0.json",
            &format!(".namespaces[0].links[{i}].kind.peer_netns"),
            "4000000001",
        ],
    );
}

#[test]
fn unknown_device_in_route() {
    let mut v = node0();
    v["namespaces"][0]["routes"][0]["dev"] = json!("nosuchdev0");
    let dir = bundle_with(&v.to_string());
    expect_error(
        dir.path(),
        &[
            "nodes/node0.json",
            ".namespaces[0].routes[0].dev",
            "nosuchdev0",
        ],
    );
}

#[test]
fn malformed_cluster_json() {
    let dir = bundle_with(&node0().to_string());
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cluster.json")).unwrap())
            .unwrap();
    let svc = c["items"]
        .as_array()
        .unwrap()
        .iter()
        .position(|i| i["kind"] == "Service")
        .unwrap();
    c["items"][svc]["spec"]["ports"][0]["port"] = json!("eighty");
    std::fs::write(dir.path().join("cluster.json"), c.to_string()).unwrap();
    expect_error(
        dir.path(),
        &["cluster.json", &format!(".items[{svc}].spec.ports[0].port")],
    );
}

#[test]
fn empty_or_missing_bundle() {
    let dir = tempfile::tempdir().unwrap();
    expect_error(dir.path(), &[dir.path().to_str().unwrap(), "nodes"]);
    std::fs::create_dir(dir.path().join("nodes")).unwrap();
    expect_error(dir.path(), &["no node snapshots"]);
}

#[test]
fn tar_gz_bundle_loads_and_garbage_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("b.tar.gz");
    let status = Command::new("tar")
        .args(["-czf", tgz.to_str().unwrap(), "-C", EXAMPLE, "."])
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(NETRAY)
        .args(["scan", "--bundle", tgz.to_str().unwrap(), "-o", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("scan of the .tar.gz prints JSON");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    let junk = dir.path().join("junk.tar.gz");
    std::fs::write(&junk, b"not a tarball at all").unwrap();
    let out = Command::new(NETRAY)
        .args(["scan", "--bundle", junk.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.tar.gz"));
}

/// The bundle-size limits are the defaults unless the environment raises (or lowers) them for
/// a trusted bundle; the refusal says which variable does it, and a malformed value is an
/// error naming it.
#[test]
fn bundle_limits_follow_the_environment() {
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new(NETRAY);
        c.args(["scan", "--bundle", EXAMPLE, "--fail-on", "critical"]);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(run(&[]).0, Some(0));
    let (code, err) = run(&[("NETRAY_MAX_BUNDLE_BYTES", "100K")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("limit of 102400 bytes (MAX_BUNDLE_BYTES")
            && err.contains("NETRAY_MAX_BUNDLE_BYTES=SIZE"),
        "{err}"
    );
    let (code, err) = run(&[("NETRAY_MAX_NODE_FILES", "2")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("more than 2 node snapshots"), "{err}");
    let (code, err) = run(&[("NETRAY_MAX_BUNDLE_BYTES", "lots")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("NETRAY_MAX_BUNDLE_BYTES=\"lots\""), "{err}");
    assert_eq!(run(&[("NETRAY_MAX_BUNDLE_BYTES", "16G")]).0, Some(0));
}
