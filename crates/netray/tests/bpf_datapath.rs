//! Issue 10, BPF datapaths, on edited copies of `examples/healthy`: `diagnose` and `trace`
//! say up front which nodes on the path carry BPF programs, even when no branch crosses one;
//! cgroup socket programs (connect4, sendmsg4) make Service flows sent by a socket of that node
//! uncertain, naming the program, and leave other flows and other nodes' sockets alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

fn copy_example(name: &str) -> tempfile::TempDir {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("nodes")).unwrap();
    std::fs::copy(src.join("cluster.json"), dir.path().join("cluster.json")).unwrap();
    for e in std::fs::read_dir(src.join("nodes")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("nodes").join(e.file_name())).unwrap();
    }
    dir
}

/// Edit node `node`'s snapshot in the bundle at `dir`.
fn edit_node(dir: &Path, node: &str, f: impl FnOnce(&mut Value)) {
    let p = dir.join("nodes").join(format!("{node}.json"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn host(v: &mut Value) -> &mut Value {
    v["namespaces"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["role"] == "host")
        .unwrap()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(NETRAY).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn diagnose(b: &str, from: &str, to: &str) -> (i32, Value) {
    let (code, out, err) = run(&[
        "diagnose", "--bundle", b, "--from", from, "--to", to, "-o", "json",
    ]);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{from} -> {to}: {e}: {err}"));
    (code, v)
}

fn notes(d: &Value) -> Vec<String> {
    d["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// A tc program on node1's eth0: a flow between two pods of node1 does not cross it and
/// stays reachable, but diagnose says first that node1's datapath runs BPF, naming it; a flow
/// between node0's pods says nothing of the kind.
#[test]
fn a_bpf_node_on_the_path_is_said_up_front() {
    let dir = copy_example("healthy");
    edit_node(dir.path(), "node1", |v| {
        host(v)["attachments"] = serde_json::json!([{
            "point": "tc-ingress", "dev": "eth0", "kind": "bpf",
            "prog": {"id": 7, "name": "cil_from_netdev"},
            "pref": 1, "chain": 0, "handle": 1, "direct_action": true
        }]);
    });
    let b = dir.path().to_str().unwrap();
    let (code, d) = diagnose(b, "pod/default/web-2", "pod/default/web-3:8080");
    assert_eq!((code, d["verdict"].as_str()), (0, Some("reachable")));
    let n = notes(&d);
    assert!(
        n.first()
            .is_some_and(|n| n.starts_with("node node1 has a BPF datapath")
                && n.contains("tc ingress on eth0 program id 7 `cil_from_netdev`")),
        "{n:?}"
    );
    // Text: the note comes right under the verdict line.
    let (_, text, _) = run(&[
        "diagnose",
        "--bundle",
        b,
        "--from",
        "pod/default/web-2",
        "--to",
        "pod/default/web-3:8080",
    ]);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("REACHABLE"))
        .unwrap();
    assert!(
        lines[at + 1].starts_with("note: node node1 has a BPF datapath"),
        "{text}"
    );
    // trace says it too (standard error with JSON output).
    let (_, _, err) = run(&[
        "trace",
        "--bundle",
        b,
        "--from",
        "pod/default/web-2",
        "--to",
        "pod/default/web-3:8080",
        "-o",
        "json",
    ]);
    assert!(err.contains("node node1 has a BPF datapath"), "{err}");
    assert!(!n[0].contains("kube-proxy is replaced"), "{n:?}");
    let (code, d) = diagnose(b, "pod/default/web-0", "pod/default/web-1:8080");
    assert_eq!(code, 0);
    assert!(
        notes(&d).iter().all(|n| !n.contains("BPF datapath")),
        "{:?}",
        notes(&d)
    );
    // node1 without kube-proxy's chains (a BPF dataplane replacing it): said so.
    edit_node(dir.path(), "node1", |v| {
        for d in host(v)["firewall"]["iptables"].as_array_mut().unwrap() {
            let text: String = d["text"]
                .as_str()
                .unwrap()
                .lines()
                .filter(|l| !l.contains("KUBE-"))
                .map(|l| format!("{l}\n"))
                .collect();
            d["text"] = text.into();
        }
    });
    let (_, d) = diagnose(b, "pod/default/web-2", "pod/default/web-3:8080");
    let n = notes(&d);
    assert!(
        n[0].starts_with("node node1 has a BPF datapath")
            && n[0].contains("kube-proxy is replaced"),
        "{n:?}"
    );
}

/// A cgroup connect4 program on node0 (root cgroup, as Cilium's socket load balancing
/// attaches it): a pod of node0 calling a Service is uncertain, naming the program; the same
/// pod calling a pod directly, and a pod of node1 calling the Service, are not.
#[test]
fn a_cgroup_connect_program_makes_service_flows_from_its_node_uncertain() {
    let dir = copy_example("healthy");
    edit_node(dir.path(), "node0", |v| {
        v["cgroup_programs"] = serde_json::json!([{
            "point": "cgroup", "kind": "bpf",
            "prog": {"id": 99, "name": "cil_sock4_connect"},
            "cgroup": "/", "attach_type": "cgroup_inet4_connect"
        }, {
            "point": "cgroup", "kind": "bpf",
            "prog": {"id": 100, "name": "cil_sock4_sendmsg"},
            "cgroup": "/", "attach_type": "cgroup_udp4_sendmsg"
        }]);
    });
    let b = dir.path().to_str().unwrap();
    let (code, d) = diagnose(b, "pod/default/web-0", "svc/default/web:80");
    assert_eq!(
        (code, d["verdict"].as_str()),
        (1, Some("uncertain")),
        "{d:#}"
    );
    let causes = d["causes"].to_string();
    assert!(
        causes.contains("program id 99 `cil_sock4_connect`")
            && causes.contains("cgroup / cgroup_inet4_connect")
            && !causes.contains("program id 100"),
        "{causes}"
    );
    // UDP: connect and sendmsg programs both run.
    let (_, d) = diagnose(b, "pod/default/web-0", "svc/default/web:53/udp");
    assert_eq!(d["verdict"], "uncertain");
    let causes = d["causes"].to_string();
    assert!(
        causes.contains("program id 99") && causes.contains("program id 100"),
        "{causes}"
    );
    // The node's own sockets too, and the ClusterIP given as an address.
    let (_, d) = diagnose(b, "node/node0", "10.96.0.100:80");
    assert_eq!(d["verdict"], "uncertain");
    // Not a Service: the program leaves the address alone (as far as netray can tell).
    let (code, d) = diagnose(b, "pod/default/web-0", "pod/default/web-2:8080");
    assert_eq!((code, d["verdict"].as_str()), (0, Some("reachable")));
    assert!(
        notes(&d)[0].contains("cgroup / cgroup_inet4_connect program id 99"),
        "{:?}",
        notes(&d)
    );
    // A socket of node1 (no programs) calling the Service: certain (its walk may still cross
    // node0, which the notes say).
    let (code, d) = diagnose(b, "pod/default/web-2", "svc/default/web:80");
    assert_eq!(
        (code, d["verdict"].as_str()),
        (0, Some("reachable")),
        "{d:#}"
    );
    // trace: the one flow ends uncertain at the socket.
    let (code, out, _) = run(&[
        "trace",
        "--bundle",
        b,
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:80",
        "-o",
        "json",
    ]);
    assert_eq!(code, 1);
    let t: Value = serde_json::from_str(&out).unwrap();
    let branches = t["branches"].as_array().unwrap();
    assert_eq!(branches.len(), 1, "{t:#}");
    assert_eq!(branches[0]["disposition"], "unknown");
    assert_eq!(branches[0]["cause"], "bpf-program");
    // audit: the Service flows of node0's sockets, and only those, are named.
    let (_, out, err) = run(&["audit", "--bundle", b, "-o", "json"]);
    let a: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    let bpf: Vec<&Value> = a["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["cause"]["code"] == "bpf-program")
        .collect();
    let sources: Vec<&str> = bpf
        .iter()
        .flat_map(|g| g["sources"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    for s in ["node/node0", "pod/default/web-0", "pod/default/web-1"] {
        assert!(sources.contains(&s), "{s} not in {sources:?}");
    }
    assert!(
        sources
            .iter()
            .all(|s| ["node/node0", "pod/default/web-0", "pod/default/web-1"].contains(s)),
        "{sources:?}"
    );
    assert!(
        bpf.iter()
            .flat_map(|g| g["targets"].as_array().unwrap())
            .all(|t| t.as_str().is_some_and(|t| t.starts_with("svc/"))),
        "{bpf:?}"
    );
}
